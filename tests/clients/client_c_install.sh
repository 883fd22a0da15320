#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# client_c_install.sh: the installed C client library works from outside
# the tree (ctest client_c_install).
#
#   client_c_install.sh --build-dir DIR --source-dir DIR --cc PATH
#                       --broker PATH [--cflags "FLAGS"]
#
# Installs the paygate-rpc component of the build in DIR into a temporary
# prefix (cmake --install), compiles clients/c/examples/*.c against it with
# only `pkg-config --cflags --libs paygate-rpc` (plus FLAGS: the build's
# sanitizer flags, since the archive is built with them) and -Werror, then
# runs paygate_demo --help and echo_pipeline against a real broker (no
# database needed: it is its own worker).
set -uo pipefail

die() {
    echo "client_c_install: $*" >&2
    exit 1
}

build_dir="" source_dir="" cc="" broker="" cflags=""
while (($#)); do
    case "$1" in
        --build-dir | --source-dir | --cc | --broker | --cflags)
            ((${#} >= 2)) || die "$1 needs a value"
            name=${1#--}
            printf -v "${name//-/_}" '%s' "$2"
            shift 2
            ;;
        *) die "unknown argument $1" ;;
    esac
done
[[ -d "$build_dir" && -d "$source_dir" && -x "$broker" ]] ||
    die "--build-dir, --source-dir and --broker are required"
command -v "$cc" >/dev/null || die "no C compiler '$cc'"
command -v pkg-config >/dev/null || die "no pkg-config (apt-get install pkg-config)"

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=checks.sh
source "$here/checks.sh"
work="$(mktemp -d /tmp/paygate-client-c-install-XXXXXX)"
broker_pid=""
cleanup() {
    if [[ -n "$broker_pid" ]]; then
        kill -TERM "$broker_pid" 2>/dev/null
        wait "$broker_pid" 2>/dev/null
    fi
    rm -rf "$work"
}
trap cleanup EXIT
out="$work/out" err="$work/err"
prefix="$work/prefix"

if run "cmake --install --component paygate-rpc" 0 \
    cmake --install "$build_dir" --prefix "$prefix" --component paygate-rpc; then
    ok "installed into a temporary prefix"
fi
for file in lib/libpaygate-rpc.a lib/pkgconfig/paygate-rpc.pc include/paygate/rpc/rpc.h \
    include/paygate/broker.pb-c.h include/paygate/user.pb-c.h include/paygate/log/log.h include/paygate/curve/curve.h; do
    if [[ -f "$prefix/$file" ]]; then ok "installed $file"; else not_ok "$file is not installed"; fi
done

export PKG_CONFIG_PATH="$prefix/lib/pkgconfig"
if run "pkg-config paygate-rpc" 0 pkg-config --cflags --libs paygate-rpc; then
    flags="$(cat "$out")"
    echo "    pkg-config --cflags --libs paygate-rpc: $flags"
    expect "pkg-config names the archive and the include directory" "$out" \
        "-I$prefix/lib/pkgconfig/../../include/paygate .*-lpaygate-rpc"
    for example in paygate_demo echo_pipeline; do
        # shellcheck disable=SC2086 # the flags are words
        run "compile $example against the installed library" 0 \
            "$cc" -std=c17 -Wall -Wextra -Werror $cflags \
            "$source_dir/clients/c/examples/$example.c" -o "$work/$example" $flags &&
            ok "$example compiles and links with the pkg-config flags alone"
    done
fi

if [[ -x "$work/paygate_demo" ]] && run "installed paygate_demo --help" 0 "$work/paygate_demo" --help; then
    expect "installed paygate_demo prints its usage" "$out" '^usage: paygate_demo '
fi

if [[ -x "$work/echo_pipeline" ]]; then
    # A broker on a free port (started again on another when a parallel
    # test takes the port first); ready when its port accepts connections.
    for attempt in 1 2 3 4 5; do
        port=$((20000 + RANDOM % 40000))
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && continue
        # With test certificates the broker has its own key (the examples
        # use the test process's, PAYGATE_CURVE_CERT).
        PAYGATE_CURVE_CERT="${PAYGATE_TEST_CERTS_DIR:+$PAYGATE_TEST_CERTS_DIR/broker.cert_secret}" \
            PAYGATE_BROKER_ENDPOINT="tcp://127.0.0.1:$port" "$broker" >"$work/broker.log" 2>&1 </dev/null &
        broker_pid=$!
        for _ in $(seq 100); do
            (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
            kill -0 "$broker_pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -0 "$broker_pid" 2>/dev/null && break
        wait "$broker_pid" 2>/dev/null
        broker_pid=""
        echo "broker did not start on port $port (attempt $attempt)"
    done
    [[ -n "$broker_pid" ]] || die "the broker did not start: $(tail -3 "$work/broker.log")"
    if run "installed echo_pipeline against a broker" 0 "$work/echo_pipeline" \
        --endpoint "tcp://127.0.0.1:$port" --count 4; then
        sed 's/^/    /' "$out"
        expect "installed echo_pipeline got its replies" "$out" '^all 4 replies matched$'
    fi
fi

checks_summary
