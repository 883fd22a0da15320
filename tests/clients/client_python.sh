#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# client_python.sh: the Python client example against a real system
# (ctest client_python).
#
#   client_python.sh --python PATH --protoc PATH --proto-dir DIR --client-dir DIR
#                    --checks PATH --gen-dir DIR --log-dir DIR
#                    --bin broker=PATH --bin user=PATH --bin order=PATH
#                    --bin payment=PATH --bin transaction=PATH --bin notification=PATH
#
# Generates the Python protobuf modules from DIR/*.proto with protoc into
# --gen-dir (emptied first: nothing generated is reused or committed), then
# starts (tests/clients/system.sh, shared with client_c) a broker with its
# event bus (PAYGATE_BROKER_DATA_DIR in a temporary directory) and the user, order, payment, transaction and notification
# services on a scratch database of their own (on the server of
# PAYGATE_TEST_PG_DSN; Redis on PAYGATE_TEST_REDIS_PORT: ./dev test exports
# both), and checks, all from Python (Debian's python3-zmq and
# python3-protobuf):
#   - paygate_demo.py exits 0 and prints each step: register, log in, top
#     up, create an order, pay it, the order COMPLETED, the wallet, and the
#     history with the top-up and the payment;
#   - client_python_checks.py negative: bad protobuf bytes, an unknown
#     service, a malformed service name, a deadline over the maximum, an
#     unknown method and a call without a user each get the status
#     broker/README.md documents; non-protocol frames get no answer and are
#     counted; the broker and the user service still answer;
#   - the broker process is still running, and the demo passes again;
#   - with the transaction service stopped, the demo exits 1 naming the
#     step and the status.
# Every process it started is stopped on the way out, the database dropped.
set -uo pipefail

die() {
    echo "client_python: $*" >&2
    exit 1
}

python="" protoc="" proto_dir="" client_dir="" checks="" gen_dir="" log_dir="."
declare -A bin=()
while (($#)); do
    case "$1" in
        --python | --protoc | --proto-dir | --client-dir | --checks | --gen-dir | --log-dir)
            ((${#} >= 2)) || die "$1 needs a value"
            name=${1#--}
            printf -v "${name//-/_}" '%s' "$2"
            shift 2
            ;;
        --bin)
            bin["${2%%=*}"]=${2#*=}
            shift 2
            ;;
        *) die "unknown argument $1" ;;
    esac
done
[[ -d "$proto_dir" && -f "$client_dir/paygate_demo.py" && -f "$checks" && -n "$gen_dir" ]] ||
    die "--proto-dir, --client-dir, --checks and --gen-dir are required"
[[ -x "$python" ]] || die "no Debian python3 at '$python' (apt-get install python3)"
command -v "$protoc" >/dev/null || die "no protoc ('$protoc'): apt-get install protobuf-compiler"
if [[ -z "${PAYGATE_TEST_PG_DSN:-}" || -z "${PAYGATE_TEST_REDIS_PORT:-}" ]]; then
    die "PAYGATE_TEST_PG_DSN and PAYGATE_TEST_REDIS_PORT must be set: run the suite with ./dev test"
fi
mkdir -p "$log_dir"

# ---- the generated code --------------------------------------------------------

rm -rf "$gen_dir"
mkdir -p "$gen_dir"
"$protoc" --proto_path="$proto_dir" --python_out="$gen_dir" "$proto_dir"/*.proto ||
    die "protoc failed on $proto_dir/*.proto"
echo "generated with $("$protoc" --version): $(cd "$gen_dir" && echo *.py)"
export PYTHONPATH="$gen_dir:$client_dir"
export PYTHONDONTWRITEBYTECODE=1 # no __pycache__ in the source tree
"$python" -c 'import zmq, google.protobuf, broker_pb2, paygate_client' ||
    die "$python cannot import zmq, google.protobuf or the generated modules (apt-get install python3-zmq python3-protobuf)"

# ---- the system ---------------------------------------------------------------

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=system.sh
source "$here/system.sh"
# shellcheck source=checks.sh
source "$here/checks.sh"
system_name=client-python
ready() { "$python" "$checks" ready --endpoint "$PAYGATE_BROKER_ENDPOINT" "$@" >/dev/null 2>&1; }
system_start

# ---- the checks ---------------------------------------------------------------

out="$work/out" err="$work/err"

# Calls get time: the services run with sanitizers.
demo() { "$python" "$client_dir/paygate_demo.py" --deadline-ms 10000 "$@"; }

# demo_passes NAME: the demo exits 0 and prints every step.
demo_passes() {
    if run "$1" 0 demo --wait-ms 30000; then
        sed 's/^/    /' "$out"
        ok "$1 exits 0"
        for step in '\[1/8\] register +user\.Register +-> usr_' \
            '\[2/8\] log in +user\.Login +-> Bearer token for usr_' \
            '\[3/8\] top up +user\.TopUp +-> top_[0-9a-z]+, ₹2,000 added, balance ₹2,000' \
            '\[4/8\] create order +order\.Create +-> ord_[0-9a-z]+, ₹1,000, PENDING' \
            '\[5/8\] pay +payment\.Create +-> pay_[0-9a-z]+, ₹1,000, SUCCEEDED' \
            '\[6/8\] order paid +order\.Get +-> ord_[0-9a-z]+ COMPLETED by pay_' \
            '\[7/8\] wallet +user\.GetWallet +-> balance ₹1,000$' \
            '\[8/8\] transactions +transaction\.List +-> 2 recorded' \
            'PAYMENT +₹1,000 +₹1,000 paid for Order #ord_' \
            'TOPUP +₹2,000 ' '^all steps passed$'; do
            expect "$1 prints $step" "$out" "$step"
        done
    fi
}

demo_passes "demo"

if run "negative checks" 0 "$python" "$checks" negative --endpoint "$PAYGATE_BROKER_ENDPOINT" \
    --deadline-ms 10000; then
    sed 's/^/    /' "$out"
    ok "negative checks: every malformed request got its documented status"
fi

if kill -0 "${pid[broker]}" 2>/dev/null; then
    ok "the broker is still running after the malformed requests"
else
    not_ok "the broker died: $(tail -5 "$log_dir/client-python-broker.log")"
fi
demo_passes "demo after the malformed requests"

# The demo fails (exit 1, naming the step and the status) when a service it
# needs is down.
system_stop transaction
run "demo without the transaction service" 1 demo --wait-ms 0 &&
    expect "demo says which step failed and why" "$err" \
        '^paygate_demo: step 8 failed: transaction\.List: UNAVAILABLE no_worker'

checks_summary
