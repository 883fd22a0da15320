# shellcheck shell=bash disable=SC2154 # log_dir, system_name: set by the sourcing test
# system.sh: a real paygate system for the client tests, sourced by
# client_python.sh and client_c.sh (not run on its own).
#
# The test sets, before calling system_start:
#   bin         associative array: broker, user, order, payment, transaction
#               and notification -> the binaries to run
#   log_dir     where the processes' logs go (<system_name>-<process>.log)
#   system_name e.g. "client-c": names the database, the logs and the
#               temporary directory
#   die MESSAGE...           prints "<test>: MESSAGE" and exits 1
#   ready [SERVICE...]       returns 0 when the broker at
#                            $PAYGATE_BROKER_ENDPOINT answers and lists an
#                            instance of every SERVICE
#
# system_start makes a scratch database on the server of PAYGATE_TEST_PG_DSN
# (Redis on PAYGATE_TEST_REDIS_PORT: ./dev test exports both), starts a
# broker with its event bus on a free loopback port and the five services,
# and returns when every service is registered (bounded by the clock). It
# exports PAYGATE_BROKER_ENDPOINT and the services' settings, sets 'work'
# (a temporary directory the test may use; removed on exit) and 'pid'
# (process -> pid), and installs an EXIT trap that stops every process it
# started and drops the database. system_stop NAME stops one process.

system_services=(user order payment transaction notification)
system_start_attempts=5       # broker start-ups when another test takes our port
system_broker_ready_s=10      # per broker start-up
system_services_ready_s=60    # for all five services to register (sanitizer builds)
declare -A pid=()

system_cleanup() {
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
    if [[ -n "${system_db:-}" ]]; then
        "$system_psql" -X -q -d "$PAYGATE_TEST_PG_DSN" \
            -c "DROP DATABASE IF EXISTS $system_db WITH (FORCE)" >/dev/null 2>&1
    fi
    [[ -n "${work:-}" ]] && rm -rf "$work"
}

# A loopback TCP port nobody listens on (a moment ago).
system_free_port() {
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

# CURVE: with test certificates (PAYGATE_TEST_CERTS_DIR, ctest fixture
# "certs") every process gets its own key; the client under test uses the
# test process's key (PAYGATE_CURVE_CERT: "test", which may claim any
# principal and name users). Without them the environment must say
# PAYGATE_INSECURE_PLAINTEXT=1.
# system_key_of NAME prints process NAME's PAYGATE_CURVE_CERT.
system_key_of() {
    if [[ -n "${PAYGATE_TEST_CERTS_DIR:-}" ]]; then
        printf '%s\n' "$PAYGATE_TEST_CERTS_DIR/$1.cert_secret"
    else
        printf '%s\n' "${PAYGATE_CURVE_CERT:-}"
    fi
}

system_start() {
    local name attempt started deadline broker_port
    for name in broker "${system_services[@]}"; do
        [[ -x "${bin[$name]:-}" ]] || die "--bin $name=PATH is required"
    done
    if [[ -z "${PAYGATE_TEST_PG_DSN:-}" || -z "${PAYGATE_TEST_REDIS_PORT:-}" ]]; then
        die "PAYGATE_TEST_PG_DSN and PAYGATE_TEST_REDIS_PORT must be set: run the suite with ./dev test"
    fi
    mkdir -p "$log_dir"
    system_psql=psql
    [[ -n "${PAYGATE_PG_BIN:-}" && -x "$PAYGATE_PG_BIN/psql" ]] && system_psql=$PAYGATE_PG_BIN/psql
    system_db="${system_name//-/_}_$$"
    work="$(mktemp -d "/tmp/paygate-$system_name-XXXXXX")"
    trap system_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM

    "$system_psql" -X -q -v ON_ERROR_STOP=1 -d "$PAYGATE_TEST_PG_DSN" \
        -c "DROP DATABASE IF EXISTS $system_db WITH (FORCE)" -c "CREATE DATABASE $system_db" ||
        die "cannot create database $system_db on $PAYGATE_TEST_PG_DSN"
    export PAYGATE_PG_DSN="$PAYGATE_TEST_PG_DSN dbname=$system_db"
    export PAYGATE_REDIS_HOST=127.0.0.1
    export PAYGATE_REDIS_PORT="$PAYGATE_TEST_REDIS_PORT"
    export PAYGATE_JWT_SECRET="$system_name-test-secret-0123456789abcdefgh"
    export PAYGATE_BROKER_DATA_DIR="$work/bus"

    # The broker first, on a free port; another test may take that port
    # between our pick and the bind, so a broker that cannot bind is started
    # again on a new one (a few times at most). Ready when it answers.
    started=0
    for ((attempt = 1; attempt <= system_start_attempts; attempt++)); do
        broker_port="$(system_free_port)"
        export PAYGATE_BROKER_ENDPOINT="tcp://127.0.0.1:$broker_port"
        PAYGATE_CURVE_CERT="$(system_key_of broker)" "${bin[broker]}" \
            >"$log_dir/$system_name-broker.log" 2>&1 </dev/null &
        pid[broker]=$!
        deadline=$((SECONDS + system_broker_ready_s))
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
        echo "broker did not start on port $broker_port (attempt $attempt):" \
            "$(tail -1 "$log_dir/$system_name-broker.log")"
    done
    ((started)) || die "the broker did not start (logs in $log_dir)"

    for name in "${system_services[@]}"; do
        PAYGATE_CURVE_CERT="$(system_key_of "$name")" "${bin[$name]}" \
            >"$log_dir/$system_name-$name.log" 2>&1 </dev/null &
        pid[$name]=$!
    done

    # Ready when every service is registered; bounded by the clock.
    deadline=$((SECONDS + system_services_ready_s))
    until ready "${system_services[@]}"; do
        kill -0 "${pid[broker]}" 2>/dev/null ||
            die "the broker exited: $(tail -5 "$log_dir/$system_name-broker.log")"
        for name in "${system_services[@]}"; do
            kill -0 "${pid[$name]}" 2>/dev/null ||
                die "$name exited at start-up: $(tail -5 "$log_dir/$system_name-$name.log")"
        done
        ((SECONDS < deadline)) ||
            die "the services did not register within $system_services_ready_s s (logs in $log_dir)"
        sleep 0.2
    done
    echo "system up: broker $PAYGATE_BROKER_ENDPOINT, database $system_db, logs in $log_dir"
}

# system_stop NAME: stops process NAME (SIGTERM, waits for it).
system_stop() {
    kill -TERM "${pid[$1]}"
    wait "${pid[$1]}"
    unset "pid[$1]"
}
