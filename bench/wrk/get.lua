-- get.lua: GET BENCH_PATH, expecting 200. With BENCH_TOKENS set, each
-- request carries the next user's access token in turn (GET /v1/wallet);
-- without, no Authorization header (GET /healthz, and nginx's fixed 200).
--
-- Environment: BENCH_LUA_DIR, BENCH_PATH, BENCH_TOKENS (optional),
-- BENCH_THREADS (wrk's -t).
local stats = dofile(os.getenv("BENCH_LUA_DIR") .. "/stats.lua")
stats.install(200)

local requests = {}
local next_request = 1

function init(args)
    local path = os.getenv("BENCH_PATH")
    local tokens = os.getenv("BENCH_TOKENS")
    if tokens and tokens ~= "" then
        local threads = tonumber(os.getenv("BENCH_THREADS"))
        for i, words in ipairs(stats.lines(tokens)) do
            if (i - 1) % threads == tid then
                table.insert(requests, wrk.format("GET", path,
                    { ["Authorization"] = "Bearer " .. words[2] }))
            end
        end
    else
        requests[1] = wrk.format("GET", path)
    end
    assert(#requests > 0, "fewer users than wrk threads")
end

function request()
    local r = requests[next_request]
    next_request = next_request % #requests + 1
    return r
end
