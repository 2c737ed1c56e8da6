-- wrk script: every request is a POST with the next caller token of a file, round robin, so a
-- few hundred distinct callers (each its own token, its own `oid`) share the load the same way
-- for every contender. Requests are formatted once per thread, in init(), so the script costs
-- the load generator nothing per request.
--
-- Environment: BENCH_TOKENS (file, one token per line, required).
-- done() prints one JSON line (prefixed "WRK_JSON ") that bench/run.sh parses.

local requests = {}
local next_index = 1

function init(args)
  local path = os.getenv("BENCH_TOKENS")
  if path == nil or path == "" then
    error("BENCH_TOKENS is not set")
  end
  for token in io.lines(path) do
    if token ~= "" then
      requests[#requests + 1] = wrk.format("POST", wrk.path, {
        ["Authorization"] = "Bearer " .. token,
        ["Content-Length"] = "0",
      }, nil)
    end
  end
  if #requests == 0 then
    error("no tokens in " .. path)
  end
end

function request()
  local r = requests[next_index]
  next_index = next_index % #requests + 1
  return r
end

function done(summary, latency, _)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"status_errors":%d,"connect_errors":%d,' ..
    '"read_errors":%d,"write_errors":%d,"timeouts":%d,"p50_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
