-- orders.lua: the order loader. POST /v1/orders for the bench users in
-- turn until this thread made its share of BENCH_ORDERS_COUNT orders (201),
-- and append "user_id order_id" for each to BENCH_OUT.<tid>.
--
-- Environment: BENCH_LUA_DIR, BENCH_TOKENS ("user_id access_token" lines),
-- BENCH_THREADS (wrk's -t), BENCH_ORDERS_COUNT, BENCH_ORDER_AMOUNT (paise),
-- BENCH_OUT. The user and order ids come from the answer's body, which
-- holds both.
local stats = dofile(os.getenv("BENCH_LUA_DIR") .. "/stats.lua")
stats.install(201)

local requests = {}
local next_request = 1
local made, wanted = 0, 0
local out

function init(args)
    local threads = tonumber(os.getenv("BENCH_THREADS"))
    local body = '{"amount":' .. tonumber(os.getenv("BENCH_ORDER_AMOUNT")) .. '}'
    for i, words in ipairs(stats.lines(os.getenv("BENCH_TOKENS"))) do
        if (i - 1) % threads == tid then
            table.insert(requests, wrk.format("POST", "/v1/orders", {
                ["Authorization"] = "Bearer " .. words[2],
                ["Content-Type"] = "application/json",
            }, body))
        end
    end
    assert(#requests > 0, "fewer users than wrk threads")
    local total = tonumber(os.getenv("BENCH_ORDERS_COUNT"))
    wanted = math.floor(total / threads) + ((tid < total % threads) and 1 or 0)
    out = assert(io.open(os.getenv("BENCH_OUT") .. "." .. tid, "w"))
end

function request()
    local r = requests[next_request]
    next_request = next_request % #requests + 1
    return r
end

stats.on_response = function(status, body)
    if status ~= 201 then return end
    local order_id = body:match('"id"%s*:%s*"([^"]+)"')
    local user_id = body:match('"user_id"%s*:%s*"([^"]+)"')
    if order_id and user_id and made < wanted then
        out:write(user_id, " ", order_id, "\n")
        made = made + 1
        if made >= wanted then
            out:flush()
            wrk.thread:stop()
        end
    end
end
