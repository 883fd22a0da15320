#!/usr/bin/env bash
# run_fuzzer.sh: one bounded libFuzzer run, as the fuzz_* ctest entries do it
# (fuzz/CMakeLists.txt).
#
#   run_fuzzer.sh BINARY CORPUS WORK_DIR [LIBFUZZER FLAGS...]
#       copies CORPUS (the committed seeds, never written to) into
#       WORK_DIR/corpus, fuzzes that copy with the flags, writes findings to
#       WORK_DIR/artifacts/ and, when there are any, prints how to reproduce
#       each. Exits with the fuzzer's status (0: nothing found).
#   run_fuzzer.sh --unavailable REASON_FILE
#       the targets could not be built: says why and fails.
set -euo pipefail

if [[ ${1:-} == --unavailable ]]; then
    echo "fuzz: the fuzz targets were not built:" >&2
    cat -- "$2" >&2
    echo >&2
    echo "fuzz: install clang and libclang-rt-14-dev (Debian 12), then build again" >&2
    echo "      (cmake reconfigures and checks clang on every ./dev test)" >&2
    exit 1
fi

if (($# < 3)); then
    echo "usage: $0 BINARY CORPUS WORK_DIR [LIBFUZZER FLAGS...]" >&2
    exit 2
fi
binary=$1 corpus=$2 work=$3
shift 3
if [[ ! -x $binary ]]; then
    echo "fuzz: $binary is missing: build first (cmake --build of this build dir)" >&2
    exit 1
fi

rm -rf -- "$work"
mkdir -p -- "$work/corpus" "$work/artifacts"
cp -- "$corpus"/* "$work/corpus/"

set +e
"$binary" "$@" -print_final_stats=1 -artifact_prefix="$work/artifacts/" "$work/corpus"
status=$?
set -e

if ((status != 0)); then
    echo "fuzz: $(basename -- "$binary") failed (status $status); findings:" >&2
    for artifact in "$work"/artifacts/*; do
        [[ -e $artifact ]] || continue
        echo "  $artifact" >&2
        echo "    reproduce: $binary $artifact" >&2
        echo "    base64:    $(base64 -w0 -- "$artifact")" >&2
    done
fi
exit "$status"
