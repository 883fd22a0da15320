#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# cli_paygatectl.sh: paygatectl against a real system (ctest cli_paygatectl).
#
#   cli_paygatectl.sh --ctl PATH --log-dir DIR --bin broker=PATH --bin user=PATH
#                     --bin order=PATH --bin payment=PATH --bin transaction=PATH
#                     --bin notification=PATH
#
# Starts a broker with its event bus and the user, order, payment,
# transaction and notification services on a scratch database
# (tests/clients/system.sh, shared with the client tests; readiness asked
# of paygatectl), then checks (reported as tests/clients/checks.sh does):
#   - `--help` of paygatectl and of every command exits 0 with usage text,
#     an unknown command exits 2;
#   - `services` lists the user service;
#   - `call user Register --json ...`, then `call user GetWallet --user <id>`
#     answers balance 0; bad JSON, an unknown field and a failed call exit 1
#     with a clear message, an unknown method exits 2;
#   - `demo` exits 0 and prints each step;
#   - `topics --json` lists the payments topic after the demo, `groups
#     --json` the transaction service's group on it;
#   - `tail payments --from-beginning --max 1` prints the demo's payment
#     event as JSON (the decoded MoneyEvent); a tail stopped by SIGINT
#     exits 0;
#   - with the transaction service stopped, `demo` exits 1 naming the step.
# Every process it started is stopped on the way out, the database dropped.
set -uo pipefail

die() {
    echo "cli_paygatectl: $*" >&2
    exit 1
}

ctl="" log_dir="."
declare -A bin=()
while (($#)); do
    case "$1" in
        --ctl)
            ctl=$2
            shift 2
            ;;
        --log-dir)
            log_dir=$2
            shift 2
            ;;
        --bin)
            bin["${2%%=*}"]=${2#*=}
            shift 2
            ;;
        *) die "unknown argument $1" ;;
    esac
done
[[ -x "$ctl" ]] || die "--ctl PATH (paygatectl) is required"

# ---- the system ---------------------------------------------------------------

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../clients/system.sh
source "$here/../clients/system.sh"
# shellcheck source=../clients/checks.sh
source "$here/../clients/checks.sh"
system_name=cli

# paygatectl uses its operator key, as in production (the processes get
# their own from system.sh).
if [[ -n "${PAYGATE_TEST_CERTS_DIR:-}" ]]; then
    export PAYGATE_CURVE_CERT="$PAYGATE_TEST_CERTS_DIR/paygatectl.cert_secret"
    export PAYGATE_BROKER_CERT="$PAYGATE_TEST_CERTS_DIR/broker.cert"
    export PAYGATE_CURVE_CLIENTS_DIR="$PAYGATE_TEST_CERTS_DIR/clients"
fi

# paygatectl talks to $PAYGATE_BROKER_ENDPOINT; calls get time (sanitizers).
ctl() { "$ctl" --timeout 10000 "$@"; }

# ready [SERVICE...]: the broker answers, and lists an instance of each SERVICE.
ready() {
    local service
    "$ctl" --timeout 500 services >/dev/null 2>&1 || return 1
    for service; do
        "$ctl" --timeout 1000 services --json "$service" 2>/dev/null | grep -q '"instance_id"' ||
            return 1
    done
}
system_start

# ---- the checks ---------------------------------------------------------------

out="$work/out" err="$work/err"

# check NAME COMMAND...: passes when COMMAND succeeds.
check() {
    local name=$1
    shift
    if "$@"; then ok "$name"; else not_ok "$name"; fi
}

# --help of paygatectl and of every command, and an unknown command.
run "paygatectl --help" 0 "$ctl" --help && expect "paygatectl --help prints usage" "$out" '^usage: paygatectl'
for command in services probe call tail topics groups demo; do
    run "paygatectl $command --help" 0 "$ctl" "$command" --help &&
        expect "paygatectl $command --help prints usage" "$out" "^usage: paygatectl $command"
done
run "unknown command" 2 "$ctl" frobnicate && expect "unknown command says so" "$err" "unknown command 'frobnicate'"
run "call without METHOD" 2 "$ctl" call user && ok "call without METHOD is a usage error"

# services
run "services" 0 ctl services && expect "services lists user" "$out" '^user +user-'

# call: register, then the wallet as that user
email="cli-$$-$RANDOM@example.com"
register_json="{\"email\": \"$email\", \"password\": \"cli-password-1\", \"name\": \"Cli\"}"
user_id=""
if run "call user Register" 0 ctl call user Register --json "$register_json"; then
    user_id="$(grep -Eo '"id": "usr_[0-9a-z]+"' "$out" | grep -Eo 'usr_[0-9a-z]+')"
    check "call user Register prints the user id ($user_id)" test -n "$user_id"
fi
if [[ -n "$user_id" ]] && run "call user GetWallet" 0 ctl call user GetWallet --user "$user_id"; then
    expect "call user GetWallet: balance 0" "$out" '"balance": 0,'
    expect "call user GetWallet: the caller's wallet" "$out" "\"user_id\": \"$user_id\""
fi
run "call with bad JSON" 1 ctl call user Register --json '{"email": ' &&
    expect "call with bad JSON says so" "$err" 'is not valid JSON'
run "call with an unknown field" 1 ctl call user Register --json '{"nickname": "x"}' &&
    expect "call with an unknown field names it" "$err" 'unknown field "nickname"'
run "call that fails" 1 ctl call user Register --json "$register_json" &&
    expect "call that fails prints code, reason and message" "$err" 'user\.Register: ALREADY_EXISTS email_taken: '
run "call an unknown method" 2 ctl call user Teleport &&
    expect "call an unknown method lists the known ones" "$err" 'user Register'
run "call from stdin" 0 ctl call broker.services List --json - --compact <<<'{"service": "user"}' &&
    expect "call from stdin (broker.services List)" "$out" '"name":"user"'

# demo
if run "demo" 0 ctl demo; then
    for step in "\[1/7\] register" "\[2/7\] log in" "\[3/7\] top up" "\[4/7\] create order" \
        "\[5/7\] pay .* SUCCEEDED" "\[6/7\] wallet .* balance ₹1,000" "\[7/7\] transactions" "PAYMENT +₹1,000"; do
        expect "demo prints $step" "$out" "$step"
    done
fi
demo_payment="$(grep -Eo 'payment pay_[0-9a-z]+' "$out" | grep -Eo 'pay_[0-9a-z]+')"

# topics and groups
run "topics --json" 0 ctl topics --json && expect "topics --json lists payments" "$out" '"name": "payments"'
run "topics" 0 ctl topics && expect "topics lists payments" "$out" '^payments +'
run "groups --json" 0 ctl groups --json payments &&
    expect "groups --json lists the transaction service's group" "$out" '"name": "transaction"'

# tail: the demo's payment event, decoded
if run "tail payments --from-beginning --max 1" 0 timeout 60 "$ctl" tail payments --from-beginning --max 1; then
    lines="$(wc -l <"$out")"
    check "tail --max 1 prints one line (it printed $lines)" test "$lines" -eq 1
    expect "tail prints the event as JSON" "$out" '^\{"topic":"payments","offset":0,"event_id":"payment\.succeeded:pay_'
    expect "tail decodes the MoneyEvent" "$out" '"payload":\{"event_id":"payment\.succeeded:pay_[0-9a-z]+","type":"PAYMENT_SUCCEEDED"'
    [[ -n "$demo_payment" ]] && expect "tail prints the demo's payment" "$out" "\"payment_id\":\"$demo_payment\""
fi
"$ctl" tail wallet >"$out" 2>"$err" &
tail_pid=$!
sleep 1
kill -INT "$tail_pid"
wait "$tail_pid"
rc=$?
check "tail stops on SIGINT with exit code 0 (it gave $rc)" test "$rc" -eq 0
run "tail with a bad topic" 2 "$ctl" tail 'Bad Topic' && ok "tail with a bad topic is a usage error"

# demo fails (exit 1, naming the step) when a service it needs is down
system_stop transaction
run "demo without the transaction service" 1 ctl demo --wait 0 &&
    expect "demo says which step failed and why" "$err" 'step 7 failed: transaction\.List: UNAVAILABLE no_worker'

checks_summary
