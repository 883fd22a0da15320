-- stats.lua: what every wrk script of `./dev bench` counts, and the one
-- line it prints at the end for bench/e2e.sh to read.
--
-- A script loads it with dofile() and calls stats.install(expected), which
-- defines wrk's setup(), response() and done() hooks: each thread counts
-- the answers per HTTP status; only answers with status "expected" are
-- throughput (wrk's own "Requests/sec" counts every answer, errors too).
-- A thread may also set "consumed" (requests that used up an order) and
-- "exhausted" (it ran out of input): done() adds them up over threads.
--
-- The line, on stdout, one per run:
--   BENCH ok=N bad=N socket_errors=N duration_us=N p50_us=N p99_us=N
--         consumed=N exhausted=N statuses=201:N,409:N
-- where bad counts answers with any other status and socket_errors wrk's
-- connect, read, write and timeout errors. Latencies are wrk's, over every
-- answer (in a clean run all of them are "expected").

local stats = {}

local threads = {}
local next_tid = 0

-- install(expected): defines the hooks; "expected" is the success status.
function stats.install(expected)
    function setup(thread)
        thread:set("tid", next_tid)
        next_tid = next_tid + 1
        table.insert(threads, thread)
    end

    function response(status, headers, body)
        statuses[status] = (statuses[status] or 0) + 1
        if stats.on_response then
            stats.on_response(status, body)
        end
    end

    function done(summary, latency, requests)
        local ok, bad, consumed, exhausted = 0, 0, 0, 0
        local by_status = {}
        for _, thread in ipairs(threads) do
            local counts = thread:get("statuses") or {}
            for status, n in pairs(counts) do
                by_status[status] = (by_status[status] or 0) + n
                if status == expected then ok = ok + n else bad = bad + n end
            end
            consumed = consumed + (thread:get("consumed") or 0)
            exhausted = exhausted + (thread:get("exhausted") or 0)
        end
        local keys = {}
        for status in pairs(by_status) do table.insert(keys, status) end
        table.sort(keys)
        local parts = {}
        for _, status in ipairs(keys) do
            table.insert(parts, status .. ":" .. by_status[status])
        end
        local e = summary.errors
        io.write(string.format(
            "BENCH ok=%d bad=%d socket_errors=%d duration_us=%d p50_us=%d p99_us=%d " ..
            "consumed=%d exhausted=%d statuses=%s\n",
            ok, bad, e.connect + e.read + e.write + e.timeout, summary.duration,
            latency:percentile(50), latency:percentile(99), consumed, exhausted,
            #parts > 0 and table.concat(parts, ",") or "-"))
    end
end

-- lines(path): the lines of file "path" split into words, as a list.
function stats.lines(path)
    local out = {}
    for line in io.lines(path) do
        local words = {}
        for word in line:gmatch("%S+") do table.insert(words, word) end
        if #words > 0 then table.insert(out, words) end
    end
    return out
end

statuses = {}

return stats
