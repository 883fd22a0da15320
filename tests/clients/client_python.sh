#!/usr/bin/env bash
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
# starts a broker with its event bus (PAYGATE_BROKER_DATA_DIR in a temporary
# directory) and the user, order, payment, transaction and notification
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
services=(user order payment transaction notification)
for name in broker "${services[@]}"; do
    [[ -x "${bin[$name]:-}" ]] || die "--bin $name=PATH is required"
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

psql_bin=psql
[[ -n "${PAYGATE_PG_BIN:-}" && -x "$PAYGATE_PG_BIN/psql" ]] && psql_bin=$PAYGATE_PG_BIN/psql
db="client_python_$$"
work="$(mktemp -d /tmp/paygate-client-python-XXXXXX)"
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
export PAYGATE_JWT_SECRET="client-python-test-secret-0123456789abcdefgh"
export PAYGATE_BROKER_DATA_DIR="$work/bus"

ready() { "$python" "$checks" ready --endpoint "$PAYGATE_BROKER_ENDPOINT" "$@" >/dev/null 2>&1; }

# The broker first, on a free port; another test may take that port between
# our pick and the bind, so a broker that cannot bind is started again on a
# new one (a few times at most). Ready when it answers broker.services.
for attempt in 1 2 3 4 5; do
    broker_port="$(free_port)"
    export PAYGATE_BROKER_ENDPOINT="tcp://127.0.0.1:$broker_port"
    "${bin[broker]}" >"$log_dir/client-python-broker.log" 2>&1 </dev/null &
    pid[broker]=$!
    started=0
    deadline=$((SECONDS + 10))
    while ((SECONDS < deadline)); do
        kill -0 "${pid[broker]}" 2>/dev/null || break
        if ready; then
            started=1
            break
        fi
        sleep 0.1
    done
    ((started)) && break
    kill "${pid[broker]}" 2>/dev/null || true
    wait "${pid[broker]}" 2>/dev/null || true
    echo "broker did not start on port $broker_port (attempt $attempt): $(tail -1 "$log_dir/client-python-broker.log")"
done
((started)) || die "the broker did not start (logs in $log_dir)"

for name in "${services[@]}"; do
    "${bin[$name]}" >"$log_dir/client-python-$name.log" 2>&1 </dev/null &
    pid[$name]=$!
done

# Ready when every service is registered; bounded by the clock.
deadline=$((SECONDS + 60))
until ready "${services[@]}"; do
    kill -0 "${pid[broker]}" 2>/dev/null || die "the broker exited: $(tail -5 "$log_dir/client-python-broker.log")"
    for name in "${services[@]}"; do
        kill -0 "${pid[$name]}" 2>/dev/null || die "$name exited at start-up: $(tail -5 "$log_dir/client-python-$name.log")"
    done
    ((SECONDS < deadline)) || die "the services did not register within 60 s (logs in $log_dir)"
    sleep 0.2
done
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
    [[ -s "$out" ]] && sed 's/^/    stdout: /' "$out" | head -40
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

# expect NAME FILE PATTERN: FILE matches the extended regex PATTERN.
expect() {
    if grep -Eq -- "$3" "$2"; then
        ok "$1"
    else
        not_ok "$1: no match for /$3/"
    fi
}

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
kill -TERM "${pid[transaction]}"
wait "${pid[transaction]}"
unset 'pid[transaction]'
run "demo without the transaction service" 1 demo --wait-ms 0 &&
    expect "demo says which step failed and why" "$err" \
        '^paygate_demo: step 8 failed: transaction\.List: UNAVAILABLE no_worker'

echo
echo "$passed passed, $failed failed"
((failed == 0))
