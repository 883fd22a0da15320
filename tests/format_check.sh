#!/usr/bin/env bash
# Fails when any C file of ours is not as clang-format (with the project's
# .clang-format) would lay it out, and names the files.
set -euo pipefail
clang_format=${1:-clang-format}
cd "$(dirname "$0")/.."
mapfile -t files < <(find lib broker services gateway-http tests bench tools fuzz clients \
    -name '*.[ch]' -not -path '*/build/*' 2>/dev/null | sort)
bad=()
for f in "${files[@]}"; do
    if ! "$clang_format" --dry-run -Werror "$f" >/dev/null 2>&1; then
        bad+=("$f")
    fi
done
if ((${#bad[@]})); then
    echo "not clang-formatted (run ./dev format):"
    printf '  %s\n' "${bad[@]}"
    exit 1
fi
echo "format_check: ${#files[@]} files clang-formatted"
