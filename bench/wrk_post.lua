-- POST AiFi's example bodies round robin, with a bearer token, and print the
-- figures the bench needs as one JSON line (wrk's own text is not parsed).
--
--   BENCH_TOKEN=... wrk -s bench/wrk_post.lua http://127.0.0.1:8080 -- /path=file.json ...

local requests = {}
local next_index = 0

local function read_file(path)
  local file = assert(io.open(path, "rb"))
  local body = file:read("*a")
  file:close()
  return body
end

-- Runs once per wrk thread, each in a Lua state of its own.
function init(args)
  local token = os.getenv("BENCH_TOKEN") or ""
  local headers = {
    ["Authorization"] = "Bearer " .. token,
    ["Content-Type"] = "application/json",
  }
  for _, arg in ipairs(args) do
    local path, file = arg:match("^([^=]+)=(.+)$")
    assert(path, "expected PATH=FILE, got " .. arg)
    -- Formatted once: wrk then only copies the bytes, keeping the load generator cheap.
    requests[#requests + 1] = wrk.format("POST", path, headers, read_file(file))
  end
  assert(#requests > 0, "no PATH=FILE given")
end

function request()
  next_index = next_index % #requests + 1
  return requests[next_index]
end

-- wrk counts a status above 399 in errors.status; socket errors are counted apart.
function done(summary, latency, _)
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"tool": "wrk", "duration_s": %.6f, "requests": %d, "non_2xx": %d, '
      .. '"socket_errors": %d, "p50_ms": %.3f, "p99_ms": %.3f, "max_ms": %.3f}\n',
    summary.duration / 1e6, summary.requests, e.status,
    e.connect + e.read + e.write + e.timeout,
    latency:percentile(50) / 1e3, latency:percentile(99) / 1e3, latency.max / 1e3
  ))
end
