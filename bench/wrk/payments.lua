-- payments.lua: POST /v1/payments, each request paying a fresh PENDING order
-- with a fresh Idempotency-Key. Success is 201.
--
-- Environment (set by bench/e2e.sh):
--   BENCH_LUA_DIR  this directory
--   BENCH_TOKENS   file of "user_id access_token" lines
--   BENCH_ORDERS   file of "user_id order_id" lines: this run's orders,
--                  every one PENDING and never offered to another run
--   BENCH_THREADS  wrk's -t
-- Thread "tid" pays the orders on lines tid, tid + threads, ... in turn. A
-- thread that runs out sets "exhausted" and stops (bench/e2e.sh then makes
-- more orders and runs again): an order is never paid twice, so no answer
-- is an idempotent replay.
local stats = dofile(os.getenv("BENCH_LUA_DIR") .. "/stats.lua")
stats.install(201)

local orders = {}
local next_order = 1

function init(args)
    local token_of = {}
    for _, words in ipairs(stats.lines(os.getenv("BENCH_TOKENS"))) do
        token_of[words[1]] = words[2]
    end
    local threads = tonumber(os.getenv("BENCH_THREADS"))
    for i, words in ipairs(stats.lines(os.getenv("BENCH_ORDERS"))) do
        if (i - 1) % threads == tid then
            local token = token_of[words[1]]
            assert(token, "no token for user " .. words[1])
            table.insert(orders, { token, words[2] })
        end
    end
    consumed = 0
    exhausted = 0
end

function request()
    local order = orders[next_order]
    if not order then
        exhausted = 1
        wrk.thread:stop()
        return wrk.format("GET", "/healthz")
    end
    next_order = next_order + 1
    consumed = consumed + 1
    return wrk.format("POST", "/v1/payments", {
        ["Authorization"] = "Bearer " .. order[1],
        ["Content-Type"] = "application/json",
        ["Idempotency-Key"] = "bench-" .. order[2],
    }, '{"order_id":"' .. order[2] .. '"}')
end
