-- wrk script for bench/read.sh (issue 11): GETs a list of URL paths, round-robin or at random, and prints one
-- parseable result line when the run ends.
--
--   wrk -t 2 -c 64 -d 10s --timeout 10s --latency -s bench/read.lua http://127.0.0.1:PORT -- PATHS [ORDER [THREADS]]
--
-- PATHS   a file with one URL path per line (e.g. /content/ID/chunk-0-00001.m4s); blank lines and lines
--         starting with # are skipped
-- ORDER   "roundrobin" (default): each thread walks the list in order, thread k starting k/threads of the way
--         in, so the threads do not ask for the same file at the same moment; "random": uniform picks,
--         seeded per thread
-- THREADS the -t given to wrk (default 2), for the round-robin starting points (wrk sets each thread up
--         before it knows how many there are)
--
-- done() prints, on one line (latencies in microseconds, from wrk's latency histogram of completed requests):
--   READ_RESULT requests=N duration_us=N bytes=N rps=F p50_us=N p90_us=N p99_us=N max_us=N mean_us=F
--               connect=N read=N write=N timeout=N status=N paths=N
-- connect/read/write/timeout are wrk's socket errors; status counts responses with a status >= 400 (wrk's own
-- count). A response() hook could also count 3xx, but defining one makes wrk hand every response body to Lua,
-- a copy per request that would slow the client down more than the servers measured; neither target answers
-- 3xx for these paths, and read.sh checks every path answers 200 on both targets before the runs.

local threads = {}

-- Main Lua state: numbers the threads before their init() runs in their own states.
function setup(thread)
  thread:set("thread_index", #threads)
  table.insert(threads, thread)
end

local requests = {}
local order = "roundrobin"
local next_index = 1

function init(args)
  local file = args[1]
  if file == nil then
    error("read.lua: pass the paths file after --, e.g. -- paths.txt")
  end
  order = args[2] or "roundrobin"
  if order ~= "roundrobin" and order ~= "random" then
    error("read.lua: ORDER must be roundrobin or random, not " .. order)
  end
  local f = assert(io.open(file, "r"))
  for line in f:lines() do
    line = line:gsub("%s+$", "")
    if line ~= "" and line:sub(1, 1) ~= "#" then
      -- Built once: wrk.format per request would allocate a new string every time.
      table.insert(requests, wrk.format("GET", line))
    end
  end
  f:close()
  if #requests == 0 then
    error("read.lua: no paths in " .. file)
  end
  npaths = #requests -- a global of this thread's state, read by done() through thread:get
  local index = thread_index or 0
  local nthreads = tonumber(args[3] or "2") or 2
  next_index = (math.floor(#requests * index / math.max(nthreads, 1)) % #requests) + 1
  math.randomseed(os.time() + 7919 * index)
end

function request()
  local r
  if order == "random" then
    r = requests[math.random(#requests)]
  else
    r = requests[next_index]
    next_index = next_index % #requests + 1
  end
  return r
end

function done(summary, latency, _)
  local e = summary.errors
  local secs = summary.duration / 1e6
  local rps = 0
  if secs > 0 then
    rps = summary.requests / secs
  end
  local paths = 0
  if threads[1] then
    -- The paths live in the threads' states; the main state only has the thread objects.
    paths = tonumber(threads[1]:get("npaths")) or 0
  end
  io.write(string.format(
    "READ_RESULT requests=%d duration_us=%d bytes=%d rps=%.2f p50_us=%d p90_us=%d p99_us=%d max_us=%d " ..
    "mean_us=%.1f connect=%d read=%d write=%d timeout=%d status=%d paths=%d\n",
    summary.requests, summary.duration, summary.bytes, rps,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean,
    e.connect, e.read, e.write, e.timeout, e.status, paths))
end
