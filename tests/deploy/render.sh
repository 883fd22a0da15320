#!/usr/bin/env bash
# render.sh OUT_DIR: renders deploy/k8s (base and the dev and prod overlays)
# with `kubectl kustomize`, offline, into OUT_DIR/{base,dev,prod}.yaml.
# Fails when a kustomization does not render.
#
# kubectl is $KUBECTL if set, else `kubectl` on PATH: Debian 12's
# kubernetes-client (kubectl v1.20.2, built-in kustomize v2.0.3) or a newer
# kubectl (kustomize v5). The kustomizations use only what both accept
# (deploy/README.md, "Which kubectl"); no version is pinned, the one used is
# printed. Deprecation warnings of kustomize v5 (`bases`, `patchesJson6902`)
# are expected and not shown.
set -euo pipefail

ROOT="$(cd -P -- "$(dirname -- "${BASH_SOURCE[0]}")/../.." && pwd)"
OUT=${1:?usage: render.sh OUT_DIR}
KUBECTL=${KUBECTL:-kubectl}
mkdir -p "$OUT"

command -v "$KUBECTL" >/dev/null || {
    echo "render: $KUBECTL not found (package kubernetes-client in deploy/debian-packages.txt)" >&2
    exit 1
}
# kubectl >= 1.21 reports "kustomizeVersion"; 1.20 does not (its built-in
# kustomize is v2.0.3).
json="$("$KUBECTL" version --client -o json)"
client="$(sed -n 's/.*"gitVersion": *"\([^"]*\)".*/\1/p' <<<"$json" | head -n 1)"
kustomize="$(sed -n 's/.*"kustomizeVersion": *"\([^"]*\)".*/\1/p' <<<"$json")"
echo "render: $(command -v "$KUBECTL"): kubectl ${client:-?}, kustomize ${kustomize:-built-in (v2.0.3 in kubectl 1.20)}"

status=0
for set in base overlays/dev overlays/prod; do
    name="$(basename "$set")"
    if "$KUBECTL" kustomize "$ROOT/deploy/k8s/$set" >"$OUT/$name.yaml.tmp" 2>"$OUT/$name.err"; then
        mv "$OUT/$name.yaml.tmp" "$OUT/$name.yaml"
        printf 'render: %-5s %3d objects -> %s\n' "$name" "$(grep -c '^kind:' "$OUT/$name.yaml")" "$OUT/$name.yaml"
    else
        echo "render: deploy/k8s/$set does not render:" >&2
        cat "$OUT/$name.err" >&2
        rm -f "$OUT/$name.yaml" "$OUT/$name.yaml.tmp"
        status=1
    fi
done
exit "$status"
