#!/usr/bin/env bash
# compose_check.sh OUT_DIR: validates deploy/compose.yaml with Debian's
# docker-compose (`config` needs no Docker engine) using the committed
# example secrets, writes the resolved file to OUT_DIR/compose.yaml for the
# deploy_commands test, checks that a missing secrets file is refused, and
# runs yamllint over every YAML file in deploy/.
set -euo pipefail

ROOT="$(cd -P -- "$(dirname -- "${BASH_SOURCE[0]}")/../.." && pwd)"
OUT=${1:?usage: compose_check.sh OUT_DIR}
mkdir -p "$OUT"
cd "$ROOT"

command -v docker-compose >/dev/null || {
    echo "compose: docker-compose not found (deploy/debian-packages.txt)" >&2
    exit 1
}
docker-compose --env-file deploy/secrets.env.example -f deploy/compose.yaml config >"$OUT/compose.yaml"
echo "compose: deploy/compose.yaml is valid ($(docker-compose version --short)); resolved into $OUT/compose.yaml"

# Without the secrets, Compose must refuse to start anything.
empty="$(mktemp)"
trap 'rm -f "$empty"' EXIT
if docker-compose --env-file "$empty" -f deploy/compose.yaml config -q 2>/dev/null; then
    echo "compose: deploy/compose.yaml is accepted without PAYGATE_PG_PASSWORD and PAYGATE_JWT_SECRET" >&2
    exit 1
fi
echo "compose: refused without secrets, as it should be"

# Secrets must never be written into the file itself.
# shellcheck disable=SC2016 # literal ${ in the patterns
if grep -nE '(PASSWORD|SECRET)[A-Z_]*: *[^${ ]' deploy/compose.yaml | grep -v '\${'; then
    echo "compose: a secret value is written into deploy/compose.yaml" >&2
    exit 1
fi

command -v yamllint >/dev/null || {
    echo "compose: yamllint not found (deploy/debian-packages.txt)" >&2
    exit 1
}
yamllint -s -c "$ROOT/tests/deploy/yamllint.yaml" deploy/
echo "compose: yamllint found nothing in deploy/"
