#!/usr/bin/env bash
# cli_paygatectl.sh: paygatectl against a real system (ctest cli_paygatectl).
#
#   cli_paygatectl.sh --ctl PATH --log-dir DIR --bin broker=PATH --bin user=PATH
#                     --bin order=PATH --bin payment=PATH --bin transaction=PATH
#                     --bin notification=PATH
#
# Starts a broker with its event bus (PAYGATE_BROKER_DATA_DIR in a temporary
# directory) and the user, order, payment, transaction and notification
# services on a scratch database of their own (on the server of
# PAYGATE_TEST_PG_DSN; Redis on PAYGATE_TEST_REDIS_PORT: ./dev test exports
# both), then checks:
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
services=(user order payment transaction notification)
[[ -x "$ctl" ]] || die "--ctl PATH (paygatectl) is required"
for name in broker "${services[@]}"; do
    [[ -x "${bin[$name]:-}" ]] || die "--bin $name=PATH is required"
done
if [[ -z "${PAYGATE_TEST_PG_DSN:-}" || -z "${PAYGATE_TEST_REDIS_PORT:-}" ]]; then
    die "PAYGATE_TEST_PG_DSN and PAYGATE_TEST_REDIS_PORT must be set: run the suite with ./dev test"
fi
mkdir -p "$log_dir"

# ---- the system ---------------------------------------------------------------

psql_bin=psql
[[ -n "${PAYGATE_PG_BIN:-}" && -x "$PAYGATE_PG_BIN/psql" ]] && psql_bin=$PAYGATE_PG_BIN/psql
db="cli_$$"
work="$(mktemp -d /tmp/paygate-cli-XXXXXX)"
declare -A pid=()

cleanup() {
    local name
    for name in notification transaction payment order user broker; do
        [[ -n "${pid[$name]:-}" ]] && kill -TERM "${pid[$name]}" 2>/dev/null
    done
    for name in notification transaction payment order user broker; do
        [[ -n "${pid[$name]:-}" ]] || continue
        for _ in $(seq 100); do
            kill -0 "${pid[$name]}" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "${pid[$name]}" 2>/dev/null
        wait "${pid[$name]}" 2>/dev/null
    done
    "$psql_bin" -X -q -d "$PAYGATE_TEST_PG_DSN" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" \
        >/dev/null 2>&1
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A loopback TCP port nobody listens on (a moment ago).
free_port() {
    local port
    for _ in $(seq 100); do
        port=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return 0
        fi
    done
    die "no free port"
}

"$psql_bin" -X -q -v ON_ERROR_STOP=1 -d "$PAYGATE_TEST_PG_DSN" \
    -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db" ||
    die "cannot create database $db on $PAYGATE_TEST_PG_DSN"
export PAYGATE_PG_DSN="$PAYGATE_TEST_PG_DSN dbname=$db"
export PAYGATE_REDIS_HOST=127.0.0.1
export PAYGATE_REDIS_PORT="$PAYGATE_TEST_REDIS_PORT"
export PAYGATE_JWT_SECRET="cli-test-secret-0123456789abcdefghijklmnopqrst"
export PAYGATE_BROKER_DATA_DIR="$work/bus"

# CURVE: with test certificates (PAYGATE_TEST_CERTS_DIR, ctest fixture
# "certs") every process gets its own key, and paygatectl its operator key,
# as in production; without them the environment must say
# PAYGATE_INSECURE_PLAINTEXT=1.
# key_of NAME prints process NAME's PAYGATE_CURVE_CERT.
key_of() {
    if [[ -n "${PAYGATE_TEST_CERTS_DIR:-}" ]]; then
        printf '%s\n' "$PAYGATE_TEST_CERTS_DIR/$1.cert_secret"
    else
        printf '%s\n' "${PAYGATE_CURVE_CERT:-}"
    fi
}
if [[ -n "${PAYGATE_TEST_CERTS_DIR:-}" ]]; then
    export PAYGATE_CURVE_CERT="$PAYGATE_TEST_CERTS_DIR/paygatectl.cert_secret"
    export PAYGATE_BROKER_CERT="$PAYGATE_TEST_CERTS_DIR/broker.cert"
    export PAYGATE_CURVE_CLIENTS_DIR="$PAYGATE_TEST_CERTS_DIR/clients"
fi

# paygatectl talks to $PAYGATE_BROKER_ENDPOINT; calls get time (sanitizers).
ctl() { "$ctl" --timeout 10000 "$@"; }

# The broker first, on a free port; another test may take that port between
# our pick and the bind, so a broker that cannot bind is started again on a
# new one (a few times at most).
for attempt in 1 2 3 4 5; do
    broker_port="$(free_port)"
    export PAYGATE_BROKER_ENDPOINT="tcp://127.0.0.1:$broker_port"
    PAYGATE_CURVE_CERT="$(key_of broker)" "${bin[broker]}" >"$log_dir/cli-broker.log" 2>&1 </dev/null &
    pid[broker]=$!
    started=0
    for _ in $(seq 50); do
        kill -0 "${pid[broker]}" 2>/dev/null || break
        if "$ctl" --timeout 500 services >/dev/null 2>&1; then
            started=1
            break
        fi
        sleep 0.1
    done
    ((started)) && break
    kill "${pid[broker]}" 2>/dev/null || true
    wait "${pid[broker]}" 2>/dev/null || true
    echo "broker did not start on port $broker_port (attempt $attempt): $(tail -1 "$log_dir/cli-broker.log")"
done
((started)) || die "the broker did not start (logs in $log_dir)"

for name in "${services[@]}"; do
    PAYGATE_CURVE_CERT="$(key_of "$name")" "${bin[$name]}" >"$log_dir/cli-$name.log" 2>&1 </dev/null &
    pid[$name]=$!
done

# Ready when every service is registered; bounded by the clock, not by a
# number of tries (each try may wait for the broker).
ready=0
deadline=$((SECONDS + 60))
while ((SECONDS < deadline)); do
    ready=1
    kill -0 "${pid[broker]}" 2>/dev/null || die "the broker exited: $(tail -5 "$log_dir/cli-broker.log")"
    for name in "${services[@]}"; do
        kill -0 "${pid[$name]}" 2>/dev/null || die "$name exited at start-up: $(tail -5 "$log_dir/cli-$name.log")"
        "$ctl" --timeout 1000 services --json "$name" 2>/dev/null | grep -q '"instance_id"' || ready=0
    done
    ((ready)) && break
    sleep 0.2
done
((ready)) || die "the services did not register within 60 s (logs in $log_dir)"
echo "system up: broker $PAYGATE_BROKER_ENDPOINT, database $db, logs in $log_dir"

# ---- the checks ---------------------------------------------------------------

passed=0 failed=0
out="$work/out" err="$work/err"

ok() {
    passed=$((passed + 1))
    echo "ok - $1"
}
not_ok() {
    failed=$((failed + 1))
    echo "not ok - $1"
    [[ -s "$out" ]] && sed 's/^/    stdout: /' "$out" | head -20
    [[ -s "$err" ]] && sed 's/^/    stderr: /' "$err" | head -20
}

# run NAME WANT_RC COMMAND...: runs COMMAND (stdout in $out, stderr in $err)
# and checks its exit code; returns 0 when it matched.
run() {
    local name=$1 want=$2 rc
    shift 2
    "$@" >"$out" 2>"$err"
    rc=$?
    if ((rc != want)); then
        not_ok "$name: exit code $rc, wanted $want"
        return 1
    fi
    return 0
}

# check NAME COMMAND...: passes when COMMAND succeeds.
check() {
    local name=$1
    shift
    if "$@"; then ok "$name"; else not_ok "$name"; fi
}

# expect NAME FILE PATTERN: FILE matches the extended regex PATTERN.
expect() {
    if grep -Eq -- "$3" "$2"; then
        ok "$1"
    else
        not_ok "$1: no match for /$3/"
    fi
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
kill -TERM "${pid[transaction]}"
wait "${pid[transaction]}"
unset 'pid[transaction]'
run "demo without the transaction service" 1 ctl demo --wait 0 &&
    expect "demo says which step failed and why" "$err" 'step 7 failed: transaction\.List: UNAVAILABLE no_worker'

echo
echo "$passed passed, $failed failed"
((failed == 0))
