# shellcheck shell=bash
# SC2034: the variables set here for ./dev's functions are used there.
# shellcheck disable=SC2034
# bench/e2e.sh: the end-to-end benchmarks of `./dev bench`: the real system
# over HTTP, each figure beside a reference measured on the same machine in
# the same run (pgbench on the same PostgreSQL, nginx), then the summary
# bench/results/latest.md (also for bench_broker_hop and bench_event_bus)
# and the scaling plots.
#
# Sourced by ./dev (cmd_bench), never run alone: it uses ./dev's process
# table and functions (define_processes, process_start, pg_start,
# redis_start, ...) on a run dir and ports of its own, so it never touches
# what `./dev up` runs. Everything it starts is stopped on the way out.
# bench/README.md ("End to end") describes what is measured and the knobs.

# --- settings ------------------------------------------------------------------

E2E_QUICK="${PAYGATE_BENCH_QUICK:-0}"
if [[ "$E2E_QUICK" == 1 ]]; then
    E2E_SECONDS="${BENCH_SECONDS:-1}"
    E2E_WARMUP_MS="${BENCH_WARMUP_MS:-500}"
    E2E_REPEATS="${BENCH_REPEATS:-1}"
    E2E_USERS="${PAYGATE_BENCH_USERS:-8}"
    E2E_PGBENCH_SCALE="${PAYGATE_BENCH_PGBENCH_SCALE:-2}"
else
    E2E_SECONDS="${BENCH_SECONDS:-5}"
    E2E_WARMUP_MS="${BENCH_WARMUP_MS:-2000}"
    E2E_REPEATS="${BENCH_REPEATS:-3}"
    E2E_USERS="${PAYGATE_BENCH_USERS:-64}"
    E2E_PGBENCH_SCALE="${PAYGATE_BENCH_PGBENCH_SCALE:-32}"
fi
E2E_CONNECTIONS="${PAYGATE_BENCH_CONNECTIONS:-1,2,4,8,16,32,64}"
E2E_INSTANCES="${PAYGATE_BENCH_INSTANCES:-1,2,4}"
E2E_INSTANCES_CONNECTIONS="${PAYGATE_BENCH_INSTANCES_CONNECTIONS:-32}"
E2E_RUN_DIR="${PAYGATE_BENCH_RUN_DIR:-$RUN_DIR/bench}"
[[ "$E2E_RUN_DIR" == /* ]] || E2E_RUN_DIR="$ROOT/$E2E_RUN_DIR"
E2E_PORT_BASE="${PAYGATE_BENCH_PORT_BASE:-}"
E2E_STATEMENTS="${PAYGATE_BENCH_STATEMENTS:-0}" # 1: pg_stat_statements of payments.c8
E2E_WRK_THREADS_MAX=2           # wrk threads: at most this, at most one per connection
E2E_WRK_TIMEOUT_S=10            # a request unanswered this long is a wrk timeout (an error)
E2E_ORDER_AMOUNT=100            # paise per order: ₹1
E2E_TOPUP_AMOUNT=10000000       # paise per user: the largest top-up, 100,000 orders' worth
E2E_SEED_PARALLEL=8             # users registered at once (Argon2id makes each ~50 ms)
E2E_SETTLE_TIMEOUT_S=20         # longest wait for the system to go idle between runs
E2E_SETTLE_CPU_PERCENT=10       # "idle": the paygate processes use less CPU than this
E2E_RATE_GUESS=300              # payments/s assumed before the first run, to size the orders
E2E_MEMORY_IDLE_TARGET_MIB=64
E2E_MEMORY_LOAD_TARGET_MIB=256
E2E_STARTUP_TARGET_MS=1000
E2E_RATIO_TARGET=0.5
E2E_PORTS=11
E2E_SUBSETS=(payments wallet healthz startup scaling hop bus)

# --- small helpers ---------------------------------------------------------------

# e2e_now_ms prints CLOCK_REALTIME in milliseconds.
e2e_now_ms() { local t; t=$(date +%s%N); printf '%s\n' $((t / 1000000)); }

# e2e_median prints the median of the numbers "$@" (the lower middle one for
# an even count), or "-" when there are none.
e2e_median() {
    (($# > 0)) || { echo -; return; }
    printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'
}

# e2e_ratio prints "$1" / "$2" with two decimals, or "-" if either is missing.
e2e_ratio() {
    awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-" || b + 0 == 0) print "-"; else printf "%.2f\n", a / b }'
}

# e2e_met prints "met" when "$1" compared by "$2" (ge or le) with "$3" holds, else "**missed**".
e2e_met() {
    awk -v v="$1" -v op="$2" -v t="$3" 'BEGIN {
        if (v == "-") { print "-"; exit }
        ok = (op == "ge") ? (v + 0 >= t + 0) : (v + 0 <= t + 0)
        print ok ? "met" : "**missed**" }'
}

# e2e_field prints the value of "key=" "$1" in the BENCH line "$2".
e2e_field() { sed -n "s/.*[[:space:]]$1=\([^[:space:]]*\).*/\1/p" <<<"$2"; }

# e2e_record KEY VALUE appends one measurement to the run's results file.
e2e_record() { printf '%s %s\n' "$1" "$2" >>"$E2E_RUN_DIR/results.txt"; }

# e2e_recorded KEY prints the values recorded under KEY, one per line.
e2e_recorded() { awk -v k="$1" '$1 == k { print $2 }' "$E2E_RUN_DIR/results.txt"; }

# e2e_median_of KEY prints the median of the values recorded under KEY.
e2e_median_of() {
    local -a values
    mapfile -t values < <(e2e_recorded "$1")
    e2e_median "${values[@]}"
}

# e2e_port_free succeeds when nothing listens on 127.0.0.1:"$1".
e2e_port_free() { ! port_in_use "$1"; }

# e2e_pick_ports sets E2E_PORT_BASE to a base port whose E2E_PORTS ports
# (PostgreSQL, Redis, broker, gateway, nginx, six /metrics) are all free,
# unless the user chose one.
e2e_pick_ports() {
    local try base i free
    if [[ -n "$E2E_PORT_BASE" ]]; then
        if ! [[ "$E2E_PORT_BASE" =~ ^[0-9]+$ ]] || ((E2E_PORT_BASE < 1024 || E2E_PORT_BASE > 65524)); then
            die "PAYGATE_BENCH_PORT_BASE must be a port from 1024 to 65524"
        fi
        return 0
    fi
    # Below Linux's ephemeral range (32768+), so no client socket holds one.
    for ((try = 0; try < 50; try++)); do
        base=$((20000 + RANDOM % 12000))
        free=1
        for ((i = 0; i < E2E_PORTS; i++)); do
            e2e_port_free $((base + i)) || { free=0; break; }
        done
        if ((free)); then
            E2E_PORT_BASE=$base
            return 0
        fi
    done
    die "found no $E2E_PORTS free ports in a row; set PAYGATE_BENCH_PORT_BASE"
}

# e2e_http METHOD PATH [TOKEN] [BODY] [IDEMPOTENCY-KEY]: one request to the
# gateway; prints the body, then a line "HTTP <status>".
e2e_http() {
    local method=$1 path=$2 token=${3:-} body=${4:-} key=${5:-}
    local -a args=(-s -S -X "$method" --max-time 30 -w '\nHTTP %{http_code}\n')
    [[ -n "$token" ]] && args+=(-H "Authorization: Bearer $token")
    [[ -n "$key" ]] && args+=(-H "Idempotency-Key: $key")
    [[ -n "$body" ]] && args+=(-H 'Content-Type: application/json' -d "$body")
    curl "${args[@]}" "http://127.0.0.1:${GATEWAY_PORT}${path}"
}

# e2e_json_string prints the string field "$1" of the JSON text "$2" (flat match).
e2e_json_string() { sed -n "s/.*\"$1\" *: *\"\([^\"]*\)\".*/\1/p" <<<"$2" | head -n 1; }

# e2e_readyz_ok succeeds when the gateway's /readyz answers 200.
e2e_readyz_ok() {
    [[ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 \
        "http://127.0.0.1:${GATEWAY_PORT}/readyz" 2>/dev/null)" == 200 ]]
}

# --- the system under test -------------------------------------------------------

# e2e_configure points ./dev's process table, run dir, ports and DSN at the
# benchmark's own copies, and the process binaries at the release build.
e2e_configure() {
    e2e_pick_ports
    PG_PORT=$E2E_PORT_BASE
    REDIS_PORT=$((E2E_PORT_BASE + 1))
    BROKER_PORT=$((E2E_PORT_BASE + 2))
    GATEWAY_PORT=$((E2E_PORT_BASE + 3))
    E2E_NGINX_PORT=$((E2E_PORT_BASE + 4))
    METRICS_PORT_BASE=$((E2E_PORT_BASE + 5))
    RUN_DIR="$E2E_RUN_DIR"
    CERTS_DIR="$RUN_DIR/certs"
    CTL_ENV=("PAYGATE_CURVE_CERT=$CERTS_DIR/paygatectl.cert_secret" "PAYGATE_BROKER_CERT=$CERTS_DIR/broker.cert")
    LOG_DIR="$RUN_DIR/logs"
    PID_DIR="$RUN_DIR/pids"
    SECRETS_FILE="$RUN_DIR/secrets.env"
    PROCESS_BUILD_DIR="$RELEASE_BUILD_DIR"
    PROCESS_PG_DSN="host=127.0.0.1 port=${PG_PORT} dbname=paygate user=paygate"
    # Tokens must outlive the run; warnings only (as the other benchmarks).
    # The gateway's abuse limits would cut the load of one client address
    # (wrk on 127.0.0.1): all off, as in the other test harnesses. CURVE
    # stays on, as `./dev up` and a deployment run it.
    PROCESS_EXTRA_ENV=(PAYGATE_JWT_TTL_S=86400 "PAYGATE_LOG_LEVEL=${PAYGATE_LOG_LEVEL:-warn}"
        PAYGATE_GATEWAY_RATE_ADDRESS_PER_MIN=0 PAYGATE_GATEWAY_RATE_USER_PER_MIN=0
        PAYGATE_GATEWAY_RATE_REGISTER_ADDRESS_PER_MIN=0 PAYGATE_GATEWAY_RATE_LOGIN_ADDRESS_PER_MIN=0
        PAYGATE_GATEWAY_RATE_LOGIN_EMAIL_PER_MIN=0 PAYGATE_GATEWAY_RATE_PAYMENT_USER_PER_MIN=0
        PAYGATE_GATEWAY_CONNECTIONS_PER_ADDRESS_MAX=0)
    define_processes
    log "bench: run dir $RUN_DIR; ports: PostgreSQL $PG_PORT, Redis $REDIS_PORT," \
        "broker $BROKER_PORT, gateway $GATEWAY_PORT, nginx $E2E_NGINX_PORT, /metrics $METRICS_PORT_BASE.."
}

# e2e_servers_start starts a fresh PostgreSQL (durable: fsync and synchronous
# commit on, as in production) and Redis in the benchmark's run dir, with
# empty databases `paygate` and `pgbench`.
e2e_servers_start() {
    local pg_base
    rm -rf "$E2E_RUN_DIR"
    ensure_run_dir
    ensure_secrets
    ensure_certs
    : >"$E2E_RUN_DIR/results.txt"
    pg_base="$(pg_base_dir pg)"
    rm -rf "$pg_base"
    # No checkpoint of its own during a measured run (e2e_checkpoint makes
    # one before each warm-up): see "Checkpoints" in bench/README.md.
    local conf=$'max_connections = 300\nmax_wal_size = 16GB\ncheckpoint_timeout = 1h'
    [[ "$E2E_STATEMENTS" == 1 ]] && conf+=$'\n'"shared_preload_libraries = 'pg_stat_statements'"$'\n'"pg_stat_statements.track_planning = on"
    pg_start "$pg_base" "$PG_PORT" "$conf"
    pg_wait_ready "$pg_base" "$PG_PORT"
    pg_ensure_paygate_db "$PG_PORT"
    [[ "$E2E_STATEMENTS" == 1 ]] && pg_admin_sql "$PG_PORT" "create extension pg_stat_statements" >/dev/null
    pg_admin_sql "$PG_PORT" "create database pgbench" >/dev/null
    mkdir -p "$RUN_DIR/redis"
    redis_start "$RUN_DIR/redis" "$REDIS_PORT" "$PID_DIR/redis.pid" "$LOG_DIR/redis.log"
    redis_wait_ready "$REDIS_PORT" "$LOG_DIR/redis.log"
}

# e2e_processes_stop stops every paygate process of the benchmark, extra
# payment processes too (reverse start order).
e2e_processes_stop() {
    local names i
    mapfile -t names < <(process_names)
    for ((i = ${#names[@]} - 1; i >= 0; i--)); do process_stop "${names[i]}"; done
}

# e2e_cleanup stops everything the benchmark started (the EXIT trap).
e2e_cleanup() {
    set +e
    e2e_nginx_stop
    e2e_processes_stop
    redis_stop "$PID_DIR/redis.pid" "$REDIS_PORT"
    pg_stop "$(pg_base_dir pg)"
}

# e2e_processes_start_timed starts the paygate processes as `./dev up` does
# and sets E2E_STARTUP_MS to the milliseconds from the first launch to
# /readyz answering 200.
e2e_processes_start_timed() {
    local name t0 t1
    WAIT_POLL_S=0.01
    t0=$(e2e_now_ms)
    while read -r name; do process_start "$name" >/dev/null 2>&1; done < <(process_names)
    wait_until "$READY_TIMEOUT_S" e2e_readyz_ok || {
        while read -r name; do process_wait_ready "$name"; done < <(process_names)
        die "the gateway's /readyz did not answer 200 within ${READY_TIMEOUT_S}s"
    }
    t1=$(e2e_now_ms)
    WAIT_POLL_S=0.2
    E2E_STARTUP_MS=$((t1 - t0))
}

# e2e_startup measures start-up BENCH_REPEATS times (stopping in between) and
# leaves the system running.
e2e_startup() {
    local r ms
    for ((r = 1; r <= E2E_REPEATS; r++)); do
        ((r == 1)) || e2e_processes_stop 2>/dev/null
        e2e_processes_start_timed
        ms=$E2E_STARTUP_MS
        log "bench: start-up run $r: ${ms} ms to /readyz OK"
        e2e_record startup.ms "$ms"
    done
}

# e2e_pids prints "name pid" for every running paygate process of the benchmark.
e2e_pids() {
    local name pid
    while read -r name; do
        pid="$(process_pid "$name")"
        [[ -n "$pid" ]] && printf '%s %s\n' "$name" "$pid"
    done < <(process_names)
}

# e2e_memory LABEL records every paygate process's VmRSS (and VmHWM, the peak)
# and its PSS (proportional set size, /proc/PID/smaps_rollup) in KiB under
# memory.LABEL.NAME(.hwm|.pss), and the sums under memory.LABEL.total(...).
# The processes share most of their resident pages (libc, libzmq, libpq,
# libsodium...: about 9 of a service's 12 MiB of VmRSS): summing VmRSS counts
# those pages once per process, summing PSS counts each page once in all,
# which is what "all the processes together" hold. Both are reported; the
# target is judged on PSS.
e2e_memory() {
    local label=$1 name pid rss hwm pss total=0 total_hwm=0 total_pss=0
    while read -r name pid; do
        rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status")
        hwm=$(awk '/^VmHWM:/ { print $2 }' "/proc/$pid/status")
        pss=$(awk '/^Pss:/ { print $2 }' "/proc/$pid/smaps_rollup")
        e2e_record "memory.$label.$name" "$rss"
        e2e_record "memory.$label.$name.hwm" "$hwm"
        e2e_record "memory.$label.$name.pss" "$pss"
        total=$((total + rss))
        total_hwm=$((total_hwm + hwm))
        total_pss=$((total_pss + pss))
    done < <(e2e_pids)
    e2e_record "memory.$label.total" "$total"
    e2e_record "memory.$label.total.hwm" "$total_hwm"
    e2e_record "memory.$label.total.pss" "$total_pss"
    log "bench: memory $label: PSS $((total_pss / 1024)) MiB in all; VmRSS sum $((total / 1024)) MiB (peak $((total_hwm / 1024)) MiB)"
}

# e2e_cpu_ticks prints the CPU time (clock ticks, user + system) used so far by
# every paygate process and the PostgreSQL server.
e2e_cpu_ticks() {
    local pid pids sum=0 pg
    pids=$(e2e_pids | awk '{ print $2 }')
    pg=$(pg_pid "$(pg_base_dir pg)")
    [[ -n "$pg" ]] && pids="$pids $(pgrep -P "$pg" | tr '\n' ' ' || true) $pg"
    for pid in $pids; do
        [[ -r "/proc/$pid/stat" ]] || continue
        sum=$((sum + $(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$pid/stat" 2>/dev/null || echo 0)))
    done
    printf '%s\n' "$sum"
}

# --- cost accounting -------------------------------------------------------------
# What one payment (or wallet read) costs the machine beside what one
# pgbench transaction costs it, counted by the kernel and PostgreSQL, not
# sampled: CPU time and context switches of every server process, and the
# database's write transactions and WAL bytes, before and after a measured run,
# divided by the work done. For the runs named in E2E_COST_KEYS.

E2E_COST_KEYS=" payments.c8 tpcb.c8 payments.c32 tpcb.c32 wallet.c64 selectonly.c64 "
E2E_COST_WAIT=()

# e2e_cost_wanted KEY succeeds when KEY's run is costed (each time it runs:
# the summary quotes the median).
e2e_cost_wanted() { [[ "$E2E_COST_KEYS" == *" $1 "* ]]; }

# e2e_cost_snapshot FILE [WATCH] writes the counters now: "NAME PID TICKS
# SWITCHES" for each paygate process, each PostgreSQL process (NAME
# postgres) and Redis: CPU time in clock ticks (user + system; for the
# postmaster also that of its children that ended and were reaped, as
# PostgreSQL's backends are) and context switches (voluntary and
# involuntary, all threads); "ended" when process WATCH was no longer
# running after they were read; then "db XID WAL_BYTES TIME_US": a new
# transaction id, the WAL position and the time (Unix us) when the query
# ran, which may be a while later under load (PostgreSQL's statistics
# views would lag up to a second behind busy backends; these are exact).
# The processes are read by two commands in all (cat and grep), so that a
# snapshot takes milliseconds even when 64 busy clients leave it little
# CPU, and before the query, so its backend is not among them. A process
# that ends while it is read counts as nothing. The "db" line goes to
# FILE.db; with WATCH, in the background (under 64 busy clients a new
# connection may take seconds; its pid is added to E2E_COST_WAIT).
e2e_cost_snapshot() {
    local file=$1 watch=${2:-} name pid pg redis
    local -a procs pids stats tasks
    mapfile -t procs < <(e2e_pids)
    pg=$(pg_pid "$(pg_base_dir pg)")
    if [[ -n "$pg" ]]; then
        procs+=("postmaster $pg")
        mapfile -t pids < <(pgrep -P "$pg" || true)
        for pid in "${pids[@]}"; do procs+=("postgres $pid"); done
    fi
    redis=$(redis_pid "$PID_DIR/redis.pid")
    [[ -n "$redis" ]] && procs+=("redis $redis")
    for name in "${procs[@]}"; do
        pid=${name#* }
        stats+=("/proc/$pid/stat")
        tasks+=("/proc/$pid/task/"*/status)
    done
    {
        {
            printf 'map %s\n' "${procs[@]}"
            cat "${stats[@]}" 2>/dev/null || true
            grep -s -H ctxt_switches "${tasks[@]}" || true
        } | awk '
            $1 == "map" { name[$3] = $2; order[++n] = $3; next }
            /^\/proc\// { split($1, path, "/"); switches[path[3]] += $2; next }
            {
                pid = $1; sub(/^.*\) /, "")
                ticks[pid] = $12 + $13 + (name[pid] == "postmaster" ? $14 + $15 : 0)
            }
            END {
                for (i = 1; i <= n; i++) {
                    p = order[i]; nm = name[p] == "postmaster" ? "postgres" : name[p]
                    if (p in ticks) printf "%s %s %d %d\n", nm, p, ticks[p], switches[p]
                }
            }'
        [[ -n "$watch" ]] && ! kill -0 "$watch" 2>/dev/null && echo "ended"
    } >"$file"
    if [[ -n "$watch" ]]; then
        e2e_cost_db_line >"$file.db" &
        E2E_COST_WAIT+=($!)
    else
        e2e_cost_db_line >"$file.db"
    fi
}

# e2e_cost_db_line prints the "db" line of a snapshot (see above).
e2e_cost_db_line() {
    printf 'db %s\n' "$(pg_admin_sql "$PG_PORT" \
        "select txid_current(), pg_current_wal_lsn() - '0/0', (extract(epoch from clock_timestamp()) * 1000000)::bigint" |
        tr '|' ' ')"
}

# e2e_cost_record KEY UNITS DB_UNITS BEFORE AFTER [ONLY] records, per unit
# of work (UNITS payments or transactions between the process counters of
# snapshot files BEFORE and AFTER, DB_UNITS between their database lines):
# CPU ms and context switches of each process group (only group ONLY, when
# given: pgbench is costed on PostgreSQL alone, not on the idle paygate
# processes beside it) and in all; the database's write transactions
# (transaction ids handed out, the snapshots' own not counted) and WAL
# bytes; under cost.KEY.*. A process that ended between the snapshots
# (an autovacuum worker, say) counts its CPU through the postmaster's
# children time; its last context switches are not counted.
e2e_cost_record() {
    local key=$1 units=$2 db_units=$3
    ((units > 0 && db_units > 0)) || return 0
    awk -v key="$key" -v units="$units" -v db_units="$db_units" -v hz="$(getconf CLK_TCK)" -v only="${6:-}" '
        FNR == NR {
            if ($1 == "db") { x0 = $2; w0 = $3 } else { name[$2] = $1; t0[$2] = $3; s0[$2] = $4 }
            next
        }
        $1 == "db" { x1 = $2; w1 = $3; next }
        $1 == "ended" { next }
        { name[$2] = $1; t1[$2] = $3; s1[$2] = $4; seen[$2] = 1 }
        END {
            for (p in name) {
                n = name[p]
                if (only != "" && n != only) continue
                groups[n] = 1
                if (p in seen) { cpu[n] += t1[p] - t0[p]; sw[n] += s1[p] - s0[p] }
                else cpu[n] -= t0[p] # ended: its whole time is in the postmaster children time
            }
            for (n in groups) {
                printf "cost.%s.cpu_ms.%s %.3f\ncost.%s.switches.%s %.1f\n", key, n, cpu[n] * 1000 / hz / units, key, n, sw[n] / units
                all_cpu += cpu[n]; all_sw += sw[n]
            }
            printf "cost.%s.cpu_ms %.3f\ncost.%s.switches %.1f\n", key, all_cpu * 1000 / hz / units, key, all_sw / units
            printf "cost.%s.write_xacts %.2f\ncost.%s.wal_bytes %.0f\n", key, (x1 - x0 - 1) / db_units, key, (w1 - w0) / db_units
        }' <(cat "$4" "$4.db") <(cat "$5" "$5.db") >>"$E2E_RUN_DIR/results.txt"
}

# e2e_checkpoint makes PostgreSQL checkpoint now, before a warm-up, so that
# no checkpoint (and no burst of full-page writes after one) falls inside
# the measured run that follows, ours or pgbench's alike.
e2e_checkpoint() {
    pg_admin_sql "$PG_PORT" "checkpoint" >/dev/null || warn "bench: CHECKPOINT failed"
}

# e2e_settle waits until the paygate processes and PostgreSQL are idle (the
# transaction and notification services consume the last run's events after
# it ends), at most E2E_SETTLE_TIMEOUT_S, so runs do not overlap.
e2e_settle() {
    local deadline=$((SECONDS + E2E_SETTLE_TIMEOUT_S)) a b hz
    hz=$(getconf CLK_TCK)
    while ((SECONDS < deadline)); do
        a=$(e2e_cpu_ticks)
        sleep 0.5
        b=$(e2e_cpu_ticks)
        # ticks in 0.5 s * 200 = percent of one core
        (((b - a) * 200 / hz < E2E_SETTLE_CPU_PERCENT)) && return 0
    done
    warn "bench: the system was still busy ${E2E_SETTLE_TIMEOUT_S}s after the run"
}

# e2e_payment_processes N runs N paygate-payment processes (each with its
# default worker threads) and waits until the broker lists all their
# instances. The extra ones use the payment service's CURVE key (replicas
# of one service share it) and no /metrics port.
e2e_payment_processes() {
    local want=$1 i per_process listed deadline
    E2E_PAYMENT_EXTRA_ENV="PAYGATE_CURVE_CERT=${CERTS_DIR}/payment.cert_secret"
    define_processes
    for ((i = 2; i <= 4; i++)); do
        PROCESSES+=("payment$i|services/payment/paygate-payment|service:payment|$E2E_PAYMENT_EXTRA_ENV")
    done
    for ((i = want + 1; i <= 4; i++)); do process_stop "payment$i" 2>/dev/null; done
    for ((i = 2; i <= want; i++)); do process_start "payment$i" 2>/dev/null; done
    # Keep only the processes that run in the table, so that e2e_pids and
    # e2e_processes_stop see exactly them.
    define_processes
    for ((i = 2; i <= want; i++)); do
        PROCESSES+=("payment$i|services/payment/paygate-payment|service:payment|$E2E_PAYMENT_EXTRA_ENV")
    done
    per_process="${PAYGATE_PAYMENT_THREADS:-2}"
    deadline=$((SECONDS + READY_TIMEOUT_S))
    while :; do
        listed=$(timeout 5 env "${CTL_ENV[@]}" "$(paygatectl_path)" --broker "tcp://127.0.0.1:${BROKER_PORT}" \
            services --json payment 2>/dev/null | grep -o '"instance_id"' | wc -l || true)
        ((listed >= want * per_process)) && break
        ((SECONDS < deadline)) || die "the broker lists $listed payment instances, not $((want * per_process))"
        sleep 0.2
    done
    log "bench: $want payment process(es), $listed instances registered"
}

# --- users and orders --------------------------------------------------------------

# e2e_seed_user I registers bench user I, logs in, tops the wallet up, and
# writes "user_id token" to users/I.
e2e_seed_user() {
    local i=$1 answer user_id token
    answer=$(e2e_http POST /v1/users "" \
        "{\"email\":\"bench-$i@example.com\",\"password\":\"bench password $i\",\"name\":\"Bench $i\"}")
    [[ "$answer" == *"HTTP 201" ]] || { echo "register $i: $answer" >&2; return 1; }
    user_id=$(e2e_json_string id "$answer")
    answer=$(e2e_http POST /v1/auth/login "" \
        "{\"email\":\"bench-$i@example.com\",\"password\":\"bench password $i\"}")
    [[ "$answer" == *"HTTP 200" ]] || { echo "login $i: $answer" >&2; return 1; }
    token=$(e2e_json_string access_token "$answer")
    answer=$(e2e_http POST /v1/wallet/topups "$token" "{\"amount\":$E2E_TOPUP_AMOUNT}" "bench-topup-$i")
    [[ "$answer" == *"HTTP 201" ]] || { echo "top-up $i: $answer" >&2; return 1; }
    printf '%s %s\n' "$user_id" "$token" >"$E2E_RUN_DIR/users/$i"
}

# e2e_seed_users registers E2E_USERS funded users; their tokens go to tokens.txt.
e2e_seed_users() {
    local i failed=0
    [[ -s "$E2E_RUN_DIR/tokens.txt" ]] && return 0
    log "bench: registering $E2E_USERS users (Argon2id: slow by design), topping them up"
    mkdir -p "$E2E_RUN_DIR/users"
    for ((i = 0; i < E2E_USERS; i++)); do
        e2e_seed_user "$i" &
        if (((i + 1) % E2E_SEED_PARALLEL == 0)); then wait || failed=1; fi
    done
    wait || failed=1
    for ((i = 0; i < E2E_USERS; i++)); do
        [[ -s "$E2E_RUN_DIR/users/$i" ]] || failed=1
    done
    ((failed == 0)) || die "bench: could not set up the users (see above)"
    for ((i = 0; i < E2E_USERS; i++)); do cat "$E2E_RUN_DIR/users/$i"; done >"$E2E_RUN_DIR/tokens.txt"
    E2E_ORDERS_USED=0
    : >"$E2E_RUN_DIR/orders.txt"
}

# e2e_wrk CONNECTIONS SECONDS SCRIPT PATH [ENV...] runs wrk against the gateway
# (or URL in E2E_WRK_URL) and sets E2E_LINE to its BENCH line (see
# bench/wrk/stats.lua). Not in a subshell: callers keep their state.
e2e_wrk() {
    local connections=$1 seconds=$2 script=$3 path=$4 threads out
    shift 4
    threads=$((connections < E2E_WRK_THREADS_MAX ? connections : E2E_WRK_THREADS_MAX))
    out=$(env BENCH_LUA_DIR="$ROOT/bench/wrk" BENCH_THREADS="$threads" BENCH_PATH="$path" "$@" \
        wrk -t "$threads" -c "$connections" -d "${seconds}s" --timeout "${E2E_WRK_TIMEOUT_S}s" \
        -s "$ROOT/bench/wrk/$script" "${E2E_WRK_URL:-http://127.0.0.1:${GATEWAY_PORT}}$path" 2>&1) ||
        die "wrk failed: $out"
    E2E_LINE=$(grep '^BENCH ' <<<"$out") || die "wrk printed no BENCH line: $out"
}

# e2e_orders_make N creates N more PENDING orders through POST /v1/orders
# (wrk with orders.lua, 8 connections) and appends them, shuffled, to
# orders.txt. wrk always runs for its whole -d, so it runs in short rounds
# until there are enough (a thread stops once it made its share).
e2e_orders_make() {
    local count=$1 made=0 round line
    log "bench: creating $count orders"
    rm -f "$E2E_RUN_DIR/new-orders".*
    for ((round = 0; made < count; round++)); do
        ((round < 1000)) || die "bench: made only $made of $count orders"
        e2e_wrk 8 2 orders.lua /v1/orders BENCH_TOKENS="$E2E_RUN_DIR/tokens.txt" \
            BENCH_ORDERS_COUNT=$((count - made)) BENCH_ORDER_AMOUNT="$E2E_ORDER_AMOUNT" \
            BENCH_OUT="$E2E_RUN_DIR/new-orders"
        line=$E2E_LINE
        [[ "$(e2e_field bad "$line")" == 0 ]] || warn "bench: order loader: $line"
        cat "$E2E_RUN_DIR/new-orders".* | shuf >>"$E2E_RUN_DIR/orders.txt"
        made=$((made + $(cat "$E2E_RUN_DIR/new-orders".* | wc -l)))
        rm -f "$E2E_RUN_DIR/new-orders".*
    done
}

# e2e_orders_take N writes the next N unused orders to run-orders.txt, making
# more first when fewer are left.
e2e_orders_take() {
    local want=$1 have
    have=$(($(wc -l <"$E2E_RUN_DIR/orders.txt") - E2E_ORDERS_USED))
    if ((have < want)); then e2e_orders_make $((want - have + want / 2)); fi
    # Not `tail | head`: under pipefail tail's SIGPIPE would end ./dev.
    sed -n "$((E2E_ORDERS_USED + 1)),$((E2E_ORDERS_USED + want))p" "$E2E_RUN_DIR/orders.txt" \
        >"$E2E_RUN_DIR/run-orders.txt"
    E2E_ORDERS_USED=$((E2E_ORDERS_USED + want))
}

# e2e_payments_wrk CONNECTIONS SECONDS [COST] sets E2E_LINE to the BENCH line
# of one payments run on fresh orders; when a thread ran out of orders it is
# run again with more of them. With COST it takes the cost snapshot
# cost.before just before the run (after making orders).
e2e_payments_wrk() {
    local connections=$1 seconds=$2 cost=${3:-} want line try rate
    for ((try = 0; try < 4; try++)); do
        rate=$((E2E_RATE_MAX > E2E_RATE_GUESS ? E2E_RATE_MAX : E2E_RATE_GUESS))
        want=$(((rate * seconds * 3 / 2 + 200 + connections * 4) << try))
        e2e_orders_take "$want"
        [[ -n "$cost" ]] && e2e_cost_snapshot "$E2E_RUN_DIR/cost.before"
        e2e_wrk "$connections" "$seconds" payments.lua /v1/payments \
            BENCH_TOKENS="$E2E_RUN_DIR/tokens.txt" BENCH_ORDERS="$E2E_RUN_DIR/run-orders.txt"
        line=$E2E_LINE
        [[ "$(e2e_field exhausted "$line")" == 0 ]] && break
        log "bench: a wrk thread ran out of orders; again with more"
    done
    [[ "$(e2e_field exhausted "$line")" == 0 ]] || die "bench: payments keep running out of orders"
}

# e2e_seconds_warmup prints the warm-up in whole seconds (wrk and pgbench
# take whole seconds), at least 1.
e2e_seconds_warmup() { printf '%s\n' $(((E2E_WARMUP_MS + 999) / 1000 > 0 ? (E2E_WARMUP_MS + 999) / 1000 : 1)); }

# e2e_rate LINE prints the successes per second of BENCH line "$1".
e2e_rate() {
    awk -v ok="$(e2e_field ok "$1")" -v us="$(e2e_field duration_us "$1")" \
        'BEGIN { printf "%.1f\n", ok / (us / 1e6) }'
}

# e2e_record_wrk KEY LINE records rate, p99 (ms) and errors of BENCH line "$2"
# under KEY.*, and says so on stderr.
e2e_record_wrk() {
    local key=$1 line=$2 rate p99 errors
    rate=$(e2e_rate "$line")
    p99=$(awk -v us="$(e2e_field p99_us "$line")" 'BEGIN { printf "%.2f\n", us / 1000 }')
    errors=$(($(e2e_field bad "$line") + $(e2e_field socket_errors "$line")))
    e2e_record "$key.rate" "$rate"
    e2e_record "$key.p99" "$p99"
    e2e_record "$key.errors" "$errors"
    log "bench: $key: $rate/s, p99 $p99 ms, $errors errors (statuses $(e2e_field statuses "$line"))"
}

# e2e_statements_reset / e2e_statements_write KEY N: with
# PAYGATE_BENCH_STATEMENTS=1, what each statement cost PostgreSQL over one
# measured run of N units of work, into statements.KEY.txt of the results.
e2e_statements_reset() {
    [[ "$E2E_STATEMENTS" == 1 ]] || return 0
    pg_admin_sql "$PG_PORT" "select pg_stat_statements_reset()" >/dev/null
}
e2e_statements_write() {
    [[ "$E2E_STATEMENTS" == 1 && "$2" -gt 0 ]] || return 0
    local out="$E2E_RESULTS_DIR/statements.$1.txt"
    mkdir -p "$E2E_RESULTS_DIR"
    {
        printf '# per unit of work (%s units), by total execution time; calls, ms, rows, WAL bytes, plans, planning ms\n' "$2"
        "$PG_BIN/psql" -X -q -A -F ' | ' -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -c \
            "select round(calls::numeric / $2, 2) as calls, round((total_exec_time / $2)::numeric, 4) as ms,
                    round(rows::numeric / $2, 2) as rows, round(wal_bytes / $2) as wal,
                    round(plans::numeric / $2, 2) as plans, round((total_plan_time / $2)::numeric, 4) as plan_ms,
                    left(regexp_replace(query, '\s+', ' ', 'g'), 110) as query
               from pg_stat_statements order by total_exec_time desc limit 30"
    } >"$out"
    log "bench: wrote $out"
}

# Where a gathered payment's time goes (for the costed payments runs): the
# gateway's and the payment service's /metrics histograms before and
# after the measured run (e2e_steps_snapshot FILE); e2e_steps_record KEY
# BEFORE AFTER records the means over the run: calls per batch.Create,
# each step of a batch (ms), and a payment's wait for a caller thread and
# its whole time in the gateway (ms).
E2E_STEPS="order_get insert debit mark_paid finish"
e2e_steps_snapshot() {
    {
        curl -s --max-time 5 "http://127.0.0.1:${GATEWAY_PORT}/metrics" |
            grep -E '^paygate_gateway_(gather_wait_seconds|request_duration_seconds)_(sum|count)\{[^}]*route="/v1/payments"' |
            grep -v 'method="GET"'
        curl -s --max-time 5 "http://127.0.0.1:$((METRICS_PORT_BASE + 3))/metrics" |
            grep -E '^paygate_payment_batch_(calls|step_seconds)_(sum|count)'
    } >"$1" || true
}
e2e_steps_record() {
    local key=$1 name
    # "NAME{LABELS} VALUE" lines: the mean of each histogram over the run
    # is (sum after - sum before) / (count after - count before).
    awk -v key="$key" -v steps="$E2E_STEPS" '
        function label(line) {
            if (line ~ /^paygate_payment_batch_calls/) return "batch_calls"
            if (line ~ /^paygate_gateway_gather_wait/) return "gather_wait_ms"
            if (line ~ /^paygate_gateway_request_duration/) return "request_ms"
            if (match(line, /step="[a-z_]+"/)) return substr(line, RSTART + 6, RLENGTH - 7) "_ms"
            return ""
        }
        {
            name = label($1); if (name == "") next
            kind = ($1 ~ /_sum[{ ]/ || $1 ~ /_sum$/) ? "sum" : "count"
            v[name, kind] += (FILENAME == ARGV[1] ? -1 : 1) * $2
            seen[name] = 1
        }
        END {
            for (name in seen) {
                if (v[name, "count"] <= 0) continue
                mean = v[name, "sum"] / v[name, "count"]
                if (name ~ /_ms$/) mean *= 1000
                printf "steps.%s.%s %.2f\n", key, name, mean
            }
        }' "$2" "$3" >>"$E2E_RUN_DIR/results.txt"
}

# e2e_payments_measure CONNECTIONS KEY: warm-up, then one measured payments run
# recorded under KEY.
e2e_payments_measure() {
    local connections=$1 key=$2 line rate
    e2e_checkpoint
    e2e_settle
    e2e_payments_wrk "$connections" "$(e2e_seconds_warmup)"
    e2e_settle
    e2e_statements_reset
    e2e_cost_wanted "$key" && e2e_steps_snapshot "$E2E_RUN_DIR/steps.before"
    e2e_payments_wrk "$connections" "$E2E_SECONDS" "$(e2e_cost_wanted "$key" && echo 1)"
    line=$E2E_LINE
    if e2e_cost_wanted "$key"; then
        e2e_steps_snapshot "$E2E_RUN_DIR/steps.after"
        e2e_steps_record "$key" "$E2E_RUN_DIR/steps.before" "$E2E_RUN_DIR/steps.after"
        # The events of these payments are consumed after wrk ends: wait for
        # that work too, it is part of what a payment costs.
        e2e_settle
        e2e_cost_snapshot "$E2E_RUN_DIR/cost.after"
        e2e_cost_record "$key" "$(e2e_field ok "$line")" "$(e2e_field ok "$line")" \
            "$E2E_RUN_DIR/cost.before" "$E2E_RUN_DIR/cost.after"
        e2e_statements_write "$key" "$(e2e_field ok "$line")"
    fi
    e2e_record_wrk "$key" "$line"
    rate=$(e2e_rate "$line")
    rate=${rate%.*}
    ((rate > E2E_RATE_MAX)) && E2E_RATE_MAX=$rate
    return 0
}

# --- references ----------------------------------------------------------------------

# e2e_pgbench_init initialises the pgbench tables at E2E_PGBENCH_SCALE, once.
e2e_pgbench_init() {
    [[ -n "${E2E_PGBENCH_READY:-}" ]] && return 0
    log "bench: pgbench -i at scale $E2E_PGBENCH_SCALE"
    "$PG_BIN/pgbench" -i -q -s "$E2E_PGBENCH_SCALE" -h 127.0.0.1 -p "$PG_PORT" -U postgres pgbench \
        >"$LOG_DIR/pgbench-init.log" 2>&1 || {
        show_log_tail "$LOG_DIR/pgbench-init.log"
        die "pgbench -i failed"
    }
    E2E_PGBENCH_READY=1
}

# e2e_pgbench_count LOGDIR FROM_US TO_US prints how many transactions in
# pgbench's per-transaction logs under LOGDIR ended from FROM_US to TO_US
# (Unix us). Each log line: client, transaction, latency us, script, end
# time s, us.
e2e_pgbench_count() {
    cat "$1"/pgbench_log.* |
        awk -v a="$2" -v b="$3" '{ t = $5 * 1000000 + $6 } t >= a && t < b { n++ } END { print n + 0 }'
}

# e2e_pgbench CLIENTS SECONDS KEY [ARGS...] runs pgbench (TPC-B-like, or -S)
# after a warm-up and records its TPS and p99 (ms, from its per-transaction
# log) under KEY.
e2e_pgbench() {
    local clients=$1 seconds=$2 key=$3 out tps p99 failed jobs logdir="$E2E_RUN_DIR/pgbench-log"
    local pid start_us from_us to_us costed=0
    shift 3
    jobs=$((clients < 2 ? clients : 2))
    e2e_pgbench_init
    e2e_checkpoint
    e2e_settle
    "$PG_BIN/pgbench" -n -c "$clients" -j "$jobs" -T "$(e2e_seconds_warmup)" "$@" \
        -h 127.0.0.1 -p "$PG_PORT" -U postgres pgbench >/dev/null 2>&1 || die "pgbench warm-up failed"
    rm -rf "$logdir"
    mkdir -p "$logdir"
    start_us=$(($(date +%s%N) / 1000))
    (cd "$logdir" && exec "$PG_BIN/pgbench" -n -c "$clients" -j "$jobs" -T "$seconds" -l "$@" \
        -h 127.0.0.1 -p "$PG_PORT" -U postgres pgbench >"$E2E_RUN_DIR/pgbench.out" 2>&1) &
    pid=$!
    if e2e_cost_wanted "$key" && ((seconds >= 3)); then
        # pgbench's backends exit with it (their switches would be lost), so
        # it is costed inside the run, from 1 s after the start, counting
        # the transactions its log times between the snapshots (their
        # process counters, then their database lines, which come later).
        # The second snapshot starts 1 s before pgbench's end, however long
        # the first took.
        sleep 1
        from_us=$(($(date +%s%N) / 1000))
        e2e_cost_snapshot "$E2E_RUN_DIR/cost.before" "$pid"
        to_us=$(($(date +%s%N) / 1000))
        if ((to_us < start_us + (seconds - 1) * 1000000)); then
            sleep "$(awk -v us=$((start_us + (seconds - 1) * 1000000 - to_us)) 'BEGIN { printf "%.3f\n", us / 1e6 }')"
        fi
        to_us=$(($(date +%s%N) / 1000))
        e2e_cost_snapshot "$E2E_RUN_DIR/cost.after" "$pid"
        if grep -q '^ended' "$E2E_RUN_DIR/cost.before" "$E2E_RUN_DIR/cost.after"; then
            warn "bench: $key not costed: pgbench ended before the second snapshot"
        else
            costed=1
        fi
    fi
    wait "$pid" || die "pgbench failed: $(cat "$E2E_RUN_DIR/pgbench.out")"
    ((${#E2E_COST_WAIT[@]} == 0)) || wait "${E2E_COST_WAIT[@]}"
    E2E_COST_WAIT=()
    out=$(cat "$E2E_RUN_DIR/pgbench.out")
    if ((costed)); then
        e2e_cost_record "$key" "$(e2e_pgbench_count "$logdir" "$from_us" "$to_us")" \
            "$(e2e_pgbench_count "$logdir" "$(awk '{ print $4 }' "$E2E_RUN_DIR/cost.before.db")" \
                "$(awk '{ print $4 }' "$E2E_RUN_DIR/cost.after.db")")" \
            "$E2E_RUN_DIR/cost.before" "$E2E_RUN_DIR/cost.after" postgres
    fi
    tps=$(sed -n 's/^tps = \([0-9.]*\) (without initial connection time)/\1/p' <<<"$out" |
        awk '{ printf "%.1f\n", $1 }')
    failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' <<<"$out")
    # Each log line: client, transaction, latency in us, ...
    p99=$(cat "$logdir"/pgbench_log.* | awk '{ print $3 }' | sort -n |
        awk '{ v[NR] = $1 } END { i = int(NR * 0.99); if (i < 1) i = 1; printf "%.2f\n", v[i] / 1000 }')
    [[ -n "$tps" ]] || die "pgbench printed no tps: $out"
    e2e_record "$key.rate" "$tps"
    e2e_record "$key.p99" "$p99"
    e2e_record "$key.errors" "${failed:-0}"
    log "bench: $key: $tps tps, p99 $p99 ms, ${failed:-0} failed"
}

# e2e_nginx_start runs nginx from Debian with a private prefix and config
# under the run dir (no system service, nothing in /etc or /var), answering
# GET /healthz with the same 200 and body as the gateway, on E2E_NGINX_PORT.
e2e_nginx_start() {
    local dir="$E2E_RUN_DIR/nginx"
    command -v nginx >/dev/null || die "nginx is not installed (deploy/debian-packages.txt, [bench])"
    mkdir -p "$dir/logs" "$dir/tmp"
    cat >"$dir/nginx.conf" <<EOF
# Written by ./dev bench: the reference for GET /healthz.
worker_processes auto;
pid $dir/nginx.pid;
error_log $dir/logs/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:$E2E_NGINX_PORT;
        location = /healthz {
            default_type application/json;
            return 200 '{"status":"ok"}';
        }
    }
}
EOF
    nginx -e "$dir/logs/error.log" -p "$dir" -c "$dir/nginx.conf" 9>&- || die "nginx did not start"
    wait_until 5 port_in_use "$E2E_NGINX_PORT" || die "nginx does not listen on $E2E_NGINX_PORT"
}

# e2e_nginx_stop stops the benchmark's nginx, if it runs.
e2e_nginx_stop() {
    local pid
    pid="$(pid_from_file "$E2E_RUN_DIR/nginx/nginx.pid")"
    if pid_is "$pid" nginx; then stop_pid "$pid" nginx; fi
}

# e2e_get_measure CONNECTIONS PATH KEY [ENV...]: warm-up, then one measured run
# of GET PATH recorded under KEY.
e2e_get_measure() {
    local connections=$1 path=$2 key=$3 line
    shift 3
    e2e_settle
    e2e_wrk "$connections" "$(e2e_seconds_warmup)" get.lua "$path" "$@"
    e2e_cost_wanted "$key" && e2e_cost_snapshot "$E2E_RUN_DIR/cost.before"
    e2e_wrk "$connections" "$E2E_SECONDS" get.lua "$path" "$@"
    line=$E2E_LINE
    if e2e_cost_wanted "$key"; then
        e2e_cost_snapshot "$E2E_RUN_DIR/cost.after"
        e2e_cost_record "$key" "$(e2e_field ok "$line")" "$(e2e_field ok "$line")" \
            "$E2E_RUN_DIR/cost.before" "$E2E_RUN_DIR/cost.after"
        e2e_statements_write "$key" "$(e2e_field ok "$line")"
    fi
    e2e_record_wrk "$key" "$line"
}

# --- the benchmarks --------------------------------------------------------------------

# e2e_bench_payments: benchmark 1 and 6. Payments at 8 and 32 connections
# beside pgbench TPC-B-like at 8 and 32 clients, interleaved; memory idle
# before and at the end.
e2e_bench_payments() {
    local r c
    for ((r = 1; r <= E2E_REPEATS; r++)); do
        for c in 8 32; do
            e2e_payments_measure "$c" "payments.c$c"
            e2e_pgbench "$c" "$E2E_SECONDS" "tpcb.c$c"
        done
    done
    e2e_memory load
}

# e2e_bench_wallet: benchmark 2. GET /v1/wallet at 64 connections beside
# pgbench select-only at 64 clients.
e2e_bench_wallet() {
    local r
    for ((r = 1; r <= E2E_REPEATS; r++)); do
        e2e_get_measure 64 /v1/wallet wallet.c64 BENCH_TOKENS="$E2E_RUN_DIR/tokens.txt"
        e2e_pgbench 64 "$E2E_SECONDS" selectonly.c64 -S
    done
}

# e2e_bench_healthz: benchmark 3. GET /healthz on the gateway and on nginx,
# 64 connections each, interleaved.
e2e_bench_healthz() {
    local r
    e2e_nginx_start
    for ((r = 1; r <= E2E_REPEATS; r++)); do
        e2e_get_measure 64 /healthz healthz.c64
        E2E_WRK_URL="http://127.0.0.1:${E2E_NGINX_PORT}" e2e_get_measure 64 /healthz nginx.c64
    done
    e2e_nginx_stop
}

# e2e_bench_scaling: benchmark 8. Payments against connections (one payment
# process), then against payment processes at E2E_INSTANCES_CONNECTIONS.
# Points benchmark 1 measured already are not measured again.
e2e_bench_scaling() {
    local r c n
    local -a conns instances
    IFS=, read -r -a conns <<<"$E2E_CONNECTIONS"
    IFS=, read -r -a instances <<<"$E2E_INSTANCES"
    for ((r = 1; r <= E2E_REPEATS; r++)); do
        for c in "${conns[@]}"; do
            (($(e2e_recorded "payments.c$c.rate" | wc -l) >= E2E_REPEATS)) && continue
            e2e_payments_measure "$c" "payments.c$c"
        done
    done
    for n in "${instances[@]}"; do
        ((n >= 1 && n <= 4)) || die "PAYGATE_BENCH_INSTANCES: each 1..4"
        e2e_payment_processes "$n"
        for ((r = 1; r <= E2E_REPEATS; r++)); do
            if ((n == 1)) && (($(e2e_recorded "payments.c$E2E_INSTANCES_CONNECTIONS.rate" | wc -l) >= E2E_REPEATS)); then
                e2e_record "instances.n1.rate" "$(e2e_recorded "payments.c$E2E_INSTANCES_CONNECTIONS.rate" | sed -n "${r}p")"
                e2e_record "instances.n1.p99" "$(e2e_recorded "payments.c$E2E_INSTANCES_CONNECTIONS.p99" | sed -n "${r}p")"
                e2e_record "instances.n1.errors" "$(e2e_recorded "payments.c$E2E_INSTANCES_CONNECTIONS.errors" | sed -n "${r}p")"
                continue
            fi
            e2e_payments_measure "$E2E_INSTANCES_CONNECTIONS" "instances.n$n"
        done
    done
    e2e_payment_processes 1
    e2e_plots
}

# e2e_plots writes the scaling data and draws the PNGs with gnuplot.
e2e_plots() {
    local c n dir="$E2E_RESULTS_DIR" conns_dat instances_dat
    local -a conns instances
    IFS=, read -r -a conns <<<"$E2E_CONNECTIONS"
    IFS=, read -r -a instances <<<"$E2E_INSTANCES"
    conns_dat="$E2E_RUN_DIR/scaling_connections.dat"
    instances_dat="$E2E_RUN_DIR/scaling_instances.dat"
    for c in "${conns[@]}"; do
        printf '%s %s %s\n' "$c" "$(e2e_median_of "payments.c$c.rate")" "$(e2e_median_of "payments.c$c.p99")"
    done >"$conns_dat"
    for n in "${instances[@]}"; do
        printf '%s %s %s\n' "$n" "$(e2e_median_of "instances.n$n.rate")" "$(e2e_median_of "instances.n$n.p99")"
    done >"$instances_dat"
    mkdir -p "$dir"
    command -v gnuplot >/dev/null || die "gnuplot is not installed (deploy/debian-packages.txt, [bench])"
    gnuplot -e "datafile='$conns_dat'; out='$dir/scaling_connections.png'; xlabel='concurrent connections (wrk)'; logx=1; title='POST /v1/payments against connections (1 payment process)'" \
        "$ROOT/bench/scaling.gp" || die "gnuplot failed"
    gnuplot -e "datafile='$instances_dat'; out='$dir/scaling_instances.png'; xlabel='paygate-payment processes'; logx=0; title='POST /v1/payments against payment processes ($E2E_INSTANCES_CONNECTIONS connections)'" \
        "$ROOT/bench/scaling.gp" || die "gnuplot failed"
}

# --- the summary ------------------------------------------------------------------------

# e2e_row NAME OURS REFERENCE UNIT TARGET_TEXT OP TARGET prints one table row
# of latest.md; the ratio is OURS/REFERENCE, checked against TARGET with OP.
e2e_row() {
    local name=$1 ours=$2 ref=$3 unit=$4 target_text=$5 op=$6 target=$7 ratio
    ratio=$(e2e_ratio "$ours" "$ref")
    printf '| %s | %s %s | %s | %s | %s | %s |\n' "$name" "$ours" "$unit" "$ref" "$ratio" \
        "$target_text" "$(e2e_met "$ratio" "$op" "$target")"
}

# e2e_errors_of KEY prints the sum of KEY.errors over the runs.
e2e_errors_of() { e2e_recorded "$1.errors" | awk '{ s += $1 } END { print s + 0 }'; }

# e2e_md_ratio FILE ROW COLUMN prints a cell of the ratio table of a C
# benchmark's Markdown result (row by its first cell, COLUMN counted from 2).
e2e_md_ratio() {
    [[ -f "$1" ]] || { echo -; return; }
    awk -F'|' -v row="$2" -v col="$3" '{ gsub(/^ +| +$/, "", $2) } $2 == row { gsub(/ /, "", $(col + 1)); print $(col + 1); exit }' "$1"
}

# e2e_summary writes latest.md: the table of every benchmark that ran.
e2e_summary() {
    local out="$E2E_RESULTS_DIR/latest.md" c v sum_idle sum_load hwm_load name
    local -a names
    mkdir -p "$E2E_RESULTS_DIR"
    {
        echo "# paygate benchmarks: the summary"
        echo
        echo "Written by \`./dev bench\` (bench/e2e.sh; see bench/README.md); do not edit by hand."
        echo
        echo "- when: $(date -u '+%Y-%m-%d %H:%M UTC')"
        echo "- machine: $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo), $(nproc) cores, kernel $(uname -r)"
        echo "- load average before / after: $E2E_LOAD_BEFORE / $(cut -d' ' -f1-3 /proc/loadavg)"
        echo "- settings: each figure the median of $E2E_REPEATS runs of ${E2E_SECONDS} s after a ${E2E_WARMUP_MS} ms warm-up (whole seconds for wrk and pgbench); $E2E_USERS users; orders of ₹$((E2E_ORDER_AMOUNT / 100)); PostgreSQL with fsync and synchronous_commit on; wrk $E2E_WRK_THREADS_MAX threads (at most one per connection); release build; paygate logs at ${PAYGATE_LOG_LEVEL:-warn}"
        echo "- ran: ${E2E_RAN[*]}$([[ "$E2E_QUICK" == 1 ]] && echo " (QUICK MODE: not for comparison)")"
        [[ -n "${PAYGATE_BENCH_NOTE:-}" ]] && echo "- note: $PAYGATE_BENCH_NOTE"
        echo
        echo "| benchmark | ours | reference | ratio | target | met? |"
        echo "| --- | ---: | ---: | ---: | --- | --- |"
        for c in 8 32; do
            [[ -n "$(e2e_recorded "payments.c$c.rate")" ]] || continue
            e2e_row "1. POST /v1/payments, $c connections (p99 $(e2e_median_of "payments.c$c.p99") ms; pgbench p99 $(e2e_median_of "tpcb.c$c.p99") ms)" \
                "$(e2e_median_of "payments.c$c.rate")" "$(e2e_median_of "tpcb.c$c.rate")" "/s" \
                ">= 0.5 x pgbench TPC-B-like TPS, $c clients" ge "$E2E_RATIO_TARGET"
        done
        if [[ -n "$(e2e_recorded wallet.c64.rate)" ]]; then
            e2e_row "2. GET /v1/wallet, 64 connections (p99 $(e2e_median_of wallet.c64.p99) ms)" \
                "$(e2e_median_of wallet.c64.rate)" "$(e2e_median_of selectonly.c64.rate)" "/s" \
                ">= 0.5 x pgbench -S TPS, 64 clients" ge "$E2E_RATIO_TARGET"
        fi
        if [[ -n "$(e2e_recorded healthz.c64.rate)" ]]; then
            e2e_row "3. GET /healthz, 64 connections (p99 $(e2e_median_of healthz.c64.p99) ms; nginx $(e2e_median_of nginx.c64.p99) ms)" \
                "$(e2e_median_of healthz.c64.rate)" "$(e2e_median_of nginx.c64.rate)" "/s" \
                ">= 0.5 x nginx" ge "$E2E_RATIO_TARGET"
        fi
        if [[ " ${E2E_RAN[*]} " == *" hop "* ]]; then
            for c in 2 3; do
                v=$(e2e_md_ratio "$E2E_RESULTS_DIR/broker_hop.md" "broker/relay throughput" "$c")
                printf '| 4. broker hop, %s in flight (bench_broker_hop) | broker/relay throughput | | %s | >= 0.80 | %s |\n' \
                    "$([[ $c == 2 ]] && echo 1 || echo 64)" "$v" "$(e2e_met "$v" ge 0.80)"
            done
        fi
        if [[ " ${E2E_RAN[*]} " == *" bus "* ]]; then
            for c in 2 3; do
                v=$(e2e_md_ratio "$E2E_RESULTS_DIR/event_bus.md" "paygate/redis throughput" "$c")
                printf '| 5. event bus, %s (bench_event_bus) | paygate/Redis Streams throughput | | %s | >= 1.0 | %s |\n' \
                    "$(sed -n 's/^| ratio | \([^|]*\) | \([^|]*\) |.*/\1|\2/p' "$E2E_RESULTS_DIR/event_bus.md" | cut -d'|' -f$((c - 1)) | sed 's/ *$//')" \
                    "$v" "$(e2e_met "$v" ge 1.0)"
            done
        fi
        if [[ -n "$(e2e_recorded memory.idle.total.pss)" ]]; then
            sum_idle=$(($(e2e_recorded memory.idle.total.pss) / 1024))
            rss_idle=$(($(e2e_recorded memory.idle.total) / 1024))
            printf '| 6. memory, all paygate processes, idle (PSS: shared pages counted once; VmRSS summed per process: %s MiB) | %s MiB | | | < %s MiB | %s |\n' \
                "$rss_idle" "$sum_idle" "$E2E_MEMORY_IDLE_TARGET_MIB" "$(e2e_met "$sum_idle" le $((E2E_MEMORY_IDLE_TARGET_MIB - 1)))"
        fi
        if [[ -n "$(e2e_recorded memory.load.total.pss)" ]]; then
            sum_load=$(($(e2e_recorded memory.load.total.pss) / 1024))
            rss_load=$(($(e2e_recorded memory.load.total) / 1024))
            hwm_load=$(($(e2e_recorded memory.load.total.hwm) / 1024))
            printf '| 6. memory, all paygate processes, end of benchmark 1 (PSS; VmRSS summed: %s MiB, peak VmHWM summed %s MiB) | %s MiB | | | < %s MiB | %s |\n' \
                "$rss_load" "$hwm_load" "$sum_load" "$E2E_MEMORY_LOAD_TARGET_MIB" "$(e2e_met "$sum_load" le $((E2E_MEMORY_LOAD_TARGET_MIB - 1)))"
        fi
        if [[ -n "$(e2e_recorded startup.ms)" ]]; then
            v=$(e2e_median_of startup.ms)
            printf '| 7. start-up: launch to /readyz 200 (PostgreSQL, Redis up) | %s ms | | | < %s ms | %s |\n' \
                "$v" "$E2E_STARTUP_TARGET_MS" "$(e2e_met "$v" le $((E2E_STARTUP_TARGET_MS - 1)))"
        fi
        echo
        echo "Errors (answers other than 201/200, and socket errors; never counted as throughput):"
        for name in payments.c8 payments.c32 wallet.c64 healthz.c64 nginx.c64 tpcb.c8 tpcb.c32 selectonly.c64; do
            [[ -n "$(e2e_recorded "$name.rate")" ]] && printf ' %s %s;' "$name" "$(e2e_errors_of "$name")"
        done
        echo
        if [[ -n "$(e2e_recorded cost.payments.c8.cpu_ms)$(e2e_recorded cost.wallet.c64.cpu_ms)" ]]; then
            echo
            echo "Where the time goes: what one unit of work costs the server processes (counted by the kernel and PostgreSQL over the measured run, median of $E2E_REPEATS; load generators not counted; pgbench's own figures are PostgreSQL's alone):"
            echo
            echo "| per unit of work | payment, 8 connections | pgbench TPC-B-like transaction, 8 clients | payment, 32 connections | TPC-B-like, 32 clients | wallet read, 64 connections | pgbench -S transaction, 64 clients |"
            echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
            for v in "CPU ms, all server processes:cpu_ms" "CPU ms, PostgreSQL:cpu_ms.postgres" \
                "context switches, all:switches" "context switches, PostgreSQL:switches.postgres" \
                "database write transactions:write_xacts" "WAL bytes:wal_bytes"; do
                printf '| %s |' "${v%%:*}"
                for name in payments.c8 tpcb.c8 payments.c32 tpcb.c32 wallet.c64 selectonly.c64; do
                    printf ' %s |' "$(e2e_median_of "cost.$name.${v#*:}")"
                done
                echo
            done
            echo
            echo "| process | payment (8 connections): CPU ms | context switches | payment (32 connections): CPU ms | context switches | wallet read: CPU ms | wallet read: context switches |"
            echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
            mapfile -t names < <(awk '$1 ~ /^cost\.(payments\.c8|payments\.c32|wallet\.c64)\.cpu_ms\./ { sub(/^cost\.[a-z]+\.c[0-9]+\.cpu_ms\./, "", $1); print $1 }' "$E2E_RUN_DIR/results.txt" | sort -u)
            for name in "${names[@]}"; do
                printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$name" \
                    "$(e2e_median_of "cost.payments.c8.cpu_ms.$name")" "$(e2e_median_of "cost.payments.c8.switches.$name")" \
                    "$(e2e_median_of "cost.payments.c32.cpu_ms.$name")" "$(e2e_median_of "cost.payments.c32.switches.$name")" \
                    "$(e2e_median_of "cost.wallet.c64.cpu_ms.$name")" "$(e2e_median_of "cost.wallet.c64.switches.$name")"
            done
        fi
        if [[ -n "$(e2e_recorded steps.payments.c32.batch_calls)$(e2e_recorded steps.payments.c8.batch_calls)" ]]; then
            echo
            echo "Where a payment's time goes: means over the measured run, from the gateway's and the payment service's /metrics histograms (median of $E2E_REPEATS). The gateway hands each payment to one of its caller threads, which sends what is waiting as one batch.Create; the payment service takes the batch through the steps below, each one call or statement for the whole batch, its commit included:"
            echo
            echo "| | payment, 8 connections | payment, 32 connections |"
            echo "| --- | ---: | ---: |"
            for v in "payments per batch.Create:batch_calls" "ms waiting for a caller thread (gateway):gather_wait_ms" \
                "ms, order.Get of the batch:order_get_ms" "ms, the batch's inserts (commit):insert_ms" \
                "ms, user.Debit of the batch (commit):debit_ms" "ms, order.MarkPaid of the batch (commit):mark_paid_ms" \
                "ms, the outcomes and events (commit):finish_ms" "ms, a request in the gateway, end to end:request_ms"; do
                printf '| %s | %s | %s |\n' "${v%%:*}" "$(e2e_median_of "steps.payments.c8.${v#*:}")" \
                    "$(e2e_median_of "steps.payments.c32.${v#*:}")"
            done
        fi
        if [[ -n "$(e2e_recorded memory.idle.total)" ]]; then
            echo
            echo "| process | PSS idle KiB | VmRSS idle KiB | PSS end of benchmark 1 KiB | VmRSS end of benchmark 1 KiB | VmHWM (peak) KiB |"
            echo "| --- | ---: | ---: | ---: | ---: | ---: |"
            mapfile -t names < <(awk '$1 ~ /^memory\.idle\./ && $1 !~ /\.(hwm|pss)$/ && $1 !~ /\.total$/ { sub(/^memory\.idle\./, "", $1); print $1 }' "$E2E_RUN_DIR/results.txt")
            for name in "${names[@]}"; do
                printf '| %s | %s | %s | %s | %s | %s |\n' "$name" "$(e2e_recorded "memory.idle.$name.pss")" \
                    "$(e2e_recorded "memory.idle.$name")" "$(e2e_recorded "memory.load.$name.pss" | head -n 1)" \
                    "$(e2e_recorded "memory.load.$name" | head -n 1)" "$(e2e_recorded "memory.load.$name.hwm" | head -n 1)"
            done
        fi
        if [[ -s "$E2E_RUN_DIR/scaling_connections.dat" ]]; then
            echo
            echo "Scaling (8.), payments/s and p99 ms, median of $E2E_REPEATS runs:"
            echo
            echo "![payments against connections](scaling_connections.png) ![payments against payment processes](scaling_instances.png)"
            echo
            echo "| connections (1 payment process) | payments/s | p99 ms | errors |"
            echo "| ---: | ---: | ---: | ---: |"
            while read -r c v name; do
                printf '| %s | %s | %s | %s |\n' "$c" "$v" "$name" "$(e2e_errors_of "payments.c$c")"
            done <"$E2E_RUN_DIR/scaling_connections.dat"
            echo
            echo "| payment processes ($E2E_INSTANCES_CONNECTIONS connections) | payments/s | p99 ms | errors |"
            echo "| ---: | ---: | ---: | ---: |"
            while read -r c v name; do
                printf '| %s | %s | %s | %s |\n' "$c" "$v" "$name" "$(e2e_errors_of "instances.n$c")"
            done <"$E2E_RUN_DIR/scaling_instances.dat"
        fi
        echo
        echo "Every run, in run order (rate per second, p99 ms, errors; start-up ms):"
        echo
        echo '```'
        grep -E '\.(rate|p99|errors) |^startup' "$E2E_RUN_DIR/results.txt" |
            awk '{ v[$1] = v[$1] " " $2 } END { for (k in v) print k ":" v[k] }' | sort
        echo '```'
    } >"$out"
    log "bench: wrote $out"
    cat "$out"
}

# --- entry point ------------------------------------------------------------------------

# e2e_main SUBSET... runs the chosen benchmarks (all without arguments):
# payments (with memory), wallet, healthz, startup, scaling, hop, bus.
e2e_main() {
    local subset want bench program v rc=0 system=0
    local -a chosen failed=()
    if (($# == 0)); then chosen=("${E2E_SUBSETS[@]}"); else chosen=("$@"); fi
    for subset in "${chosen[@]}"; do
        [[ " ${E2E_SUBSETS[*]} memory " == *" $subset "* ]] ||
            die "unknown benchmark '$subset'; known: ${E2E_SUBSETS[*]} (memory is part of payments)"
        [[ "$subset" == memory ]] && subset=payments
        [[ "$subset" == hop || "$subset" == bus ]] || system=1
    done
    for v in "$E2E_SECONDS" "$E2E_WARMUP_MS" "$E2E_REPEATS" "$E2E_USERS" "$E2E_PGBENCH_SCALE"; do
        [[ "$v" =~ ^[0-9]+$ && "$v" -ge 1 ]] || die "bench settings must be whole numbers >= 1 (got '$v')"
    done
    # A partial or quick run does not overwrite the committed results.
    if [[ -n "${BENCH_RESULTS_DIR:-}" ]]; then
        E2E_RESULTS_DIR="$BENCH_RESULTS_DIR"
    elif (($# == 0)) && [[ "$E2E_QUICK" != 1 ]]; then
        E2E_RESULTS_DIR="$ROOT/bench/results"
    else
        E2E_RESULTS_DIR="$E2E_RUN_DIR/results"
    fi
    mkdir -p "$E2E_RESULTS_DIR"
    export BENCH_RESULTS_DIR="$E2E_RESULTS_DIR"
    if [[ "$E2E_QUICK" == 1 ]]; then
        export BENCH_SECONDS="$E2E_SECONDS" BENCH_WARMUP_MS="${BENCH_WARMUP_MS:-200}" BENCH_REPEATS="$E2E_REPEATS"
    fi
    E2E_LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
    E2E_RATE_MAX=0
    E2E_RAN=()
    take_lock bench
    e2e_configure
    if ((system)); then
        trap e2e_cleanup EXIT
        trap 'exit 130' INT
        trap 'exit 143' TERM
        e2e_servers_start
        e2e_startup
        # Idle: started, ready, nothing asked yet.
        sleep 1
        e2e_memory idle
        e2e_seed_users
    fi
    # The order of E2E_SUBSETS, whatever the order asked for.
    for bench in "${E2E_SUBSETS[@]}"; do
        want=0
        for subset in "${chosen[@]}"; do
            [[ "$subset" == "$bench" || ("$subset" == memory && "$bench" == payments) ]] && want=1
        done
        ((want)) || continue
        E2E_RAN+=("$bench")
        case "$bench" in
            startup) ;; # measured above, whenever the system starts
            payments) e2e_bench_payments ;;
            wallet) e2e_bench_wallet ;;
            healthz) e2e_bench_healthz ;;
            scaling) e2e_bench_scaling ;;
        esac
    done
    # The C benchmarks start their own processes: the system is stopped first
    # so that it does not share the cores with them.
    if ((system)); then
        e2e_cleanup
        trap - EXIT
    fi
    for bench in "${E2E_RAN[@]}"; do
        case "$bench" in
            hop) program=bench_broker_hop ;;
            bus) program=bench_event_bus ;;
            *) continue ;;
        esac
        log "bench: running $program"
        mkdir -p "$E2E_RESULTS_DIR"
        "$RELEASE_BUILD_DIR/bench/$program" || failed+=("$bench")
    done
    e2e_summary
    ((${#failed[@]} == 0)) || die "benchmarks failed: ${failed[*]}"
    return "$rc"
}
