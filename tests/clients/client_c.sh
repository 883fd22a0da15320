#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# client_c.sh: the C client library's examples against a real system
# (ctest client_c).
#
#   client_c.sh --demo PATH --echo PATH --paygatectl PATH --log-dir DIR
#               --bin broker=PATH --bin user=PATH --bin order=PATH
#               --bin payment=PATH --bin transaction=PATH --bin notification=PATH
#
# Starts a broker with its event bus and the user, order, payment,
# transaction and notification services on a scratch database
# (tests/clients/system.sh, shared with client_python; readiness asked of
# paygatectl), and checks:
#   - clients/c/examples/paygate_demo exits 0 and prints each step:
#     register, log in, top up, create an order, pay it, the order
#     COMPLETED, the wallet, and the history with the top-up and the payment;
#   - echo_pipeline (a worker and a pipelined caller in one process) gets
#     its eight replies, each matched to its request;
#   - echo_pipeline --method Missing exits 1 printing the worker's
#     UNIMPLEMENTED status (a method the service does not have);
#   - the broker is still running, and the demo passes again;
#   - with the transaction service stopped, the demo exits 1 naming the
#     step and the status (UNAVAILABLE no_worker).
# Every process it started is stopped on the way out, the database dropped.
set -uo pipefail

die() {
    echo "client_c: $*" >&2
    exit 1
}

demo="" echo="" paygatectl="" log_dir="."
declare -A bin=()
while (($#)); do
    case "$1" in
        --demo | --echo | --paygatectl | --log-dir)
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
[[ -x "$demo" && -x "$echo" && -x "$paygatectl" ]] ||
    die "--demo, --echo and --paygatectl must name the built programs"

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=system.sh
source "$here/system.sh"
# shellcheck source=checks.sh
source "$here/checks.sh"
system_name=client-c

# ready [SERVICE...]: the broker answers, and lists an instance of each SERVICE.
ready() {
    local service
    "$paygatectl" --broker "$PAYGATE_BROKER_ENDPOINT" --timeout 1000 services >/dev/null 2>&1 ||
        return 1
    for service; do
        "$paygatectl" --broker "$PAYGATE_BROKER_ENDPOINT" --timeout 1000 probe "$service" \
            >/dev/null 2>&1 || return 1
    done
}
system_start

out="$work/out" err="$work/err"

# Calls get time: the services run with sanitizers.
demo() { "$demo" --deadline-ms 10000 "$@"; }

# demo_passes NAME: the demo exits 0 and prints every step.
demo_passes() {
    if run "$1" 0 demo --wait-ms 30000; then
        sed 's/^/    /' "$out"
        ok "$1 exits 0"
        for step in '^paygate C client demo: broker tcp://127\.0\.0\.1:[0-9]+, principal c-demo$' \
            '\[1/8\] register +user\.Register +-> usr_[0-9a-z]+ \(c-[0-9a-f-]+@example\.com\)' \
            '\[2/8\] log in +user\.Login +-> Bearer token for usr_[0-9a-z]+, expires in [0-9]+ s' \
            '\[3/8\] top up +user\.TopUp +-> top_[0-9a-z]+, ₹2,000 added, balance ₹2,000$' \
            '\[4/8\] create order +order\.Create +-> ord_[0-9a-z]+, ₹1,000, PENDING$' \
            '\[5/8\] pay +payment\.Create +-> pay_[0-9a-z]+, ₹1,000, SUCCEEDED$' \
            '\[6/8\] order paid +order\.Get +-> ord_[0-9a-z]+ COMPLETED by pay_' \
            '\[7/8\] wallet +user\.GetWallet +-> balance ₹1,000$' \
            '\[8/8\] transactions +transaction\.List +-> 2 recorded \(after [0-9]+ polls?\)' \
            'txn_[0-9a-z]+ +PAYMENT +₹1,000 +₹1,000 paid for Order #ord_' \
            'txn_[0-9a-z]+ +TOPUP +₹2,000 ' '^all steps passed$'; do
            expect "$1 prints $step" "$out" "$step"
        done
    fi
}

demo_passes "demo"

if run "echo_pipeline" 0 "$echo" --endpoint "$PAYGATE_BROKER_ENDPOINT" --count 8; then
    sed 's/^/    /' "$out"
    ok "echo_pipeline exits 0"
    expect "echo_pipeline sent 8 pipelined requests" "$out" '^sent 8 requests to example-echo\.Upper$'
    for i in 1 8; do
        expect "echo_pipeline reply $i matched" "$out" \
            "^reply $i: HELLO $i \\(from example-echo-[^ ]+-[01]\\)$"
    done
    if [[ "$(grep -c '^reply [0-9]*: HELLO' "$out")" == 8 ]]; then
        ok "echo_pipeline printed 8 replies"
    else
        not_ok "echo_pipeline printed $(grep -c '^reply [0-9]*: HELLO' "$out") replies, wanted 8"
    fi
    expect "echo_pipeline says all matched" "$out" '^all 8 replies matched$'
fi

# Negative: a method the worker does not have is UNIMPLEMENTED, printed as
# the README documents ("<program>: service.Method: CODE reason: message").
run "echo_pipeline with an unknown method" 1 "$echo" --endpoint "$PAYGATE_BROKER_ENDPOINT" \
    --method Missing &&
    expect "echo_pipeline prints UNIMPLEMENTED for an unknown method" "$err" \
        '^echo_pipeline: example-echo\.Missing: UNIMPLEMENTED: service example-echo has no method Missing$'
run "usage error" 2 "$demo" --deadline-ms 0 &&
    expect "demo explains a bad argument" "$err" "^paygate_demo: bad argument '--deadline-ms 0'"

if kill -0 "${pid[broker]}" 2>/dev/null; then
    ok "the broker is still running"
else
    not_ok "the broker died: $(tail -5 "$log_dir/client-c-broker.log")"
fi
demo_passes "demo again"

# The demo fails (exit 1, naming the step and the status) when a service it
# needs is down.
system_stop transaction
run "demo without the transaction service" 1 demo --wait-ms 0 &&
    expect "demo says which step failed and why" "$err" \
        '^paygate_demo: step 8 failed: transaction\.List: UNAVAILABLE no_worker: '

checks_summary
