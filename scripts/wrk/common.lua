-- Shared by events.lua and batch.lua (loaded with dofile from the same folder): keys,
-- counters, dedup ids and the summary line. Not a wrk script on its own.
local M = {}

M.unique = (os.getenv("WRK_UNIQUE") or "1") ~= "0"
local with_dedup = (os.getenv("WRK_DEDUP") or "0") == "1"
local keys, key_at, event_at = {}, 0, 0
local threads = {}

-- Main state, once per thread: a thread number and one nonce for the whole run, so
-- dedup ids differ between threads and between runs.
-- (`id` and `nonce` become globals of each thread's own Lua state.)
local run_nonce = nil
function M.setup(thread)
  run_nonce = run_nonce or string.format("%x%04x", os.time(), math.floor(os.clock() * 1e6) % 65536)
  thread:set("id", #threads + 1)
  thread:set("nonce", run_nonce)
  table.insert(threads, thread)
end

-- Each thread's own state: its copy of the keys.
function M.init(args)
  local path = os.getenv("WRK_KEYS")
  if not path then
    error("WRK_KEYS must name a file with one API key per line")
  end
  for line in io.lines(path) do
    local key = line:match("^%s*(%S+)%s*$")
    if key then
      table.insert(keys, key)
    end
  end
  if #keys == 0 then
    error("no API keys in " .. path)
  end
  -- Threads start at different keys so that they do not move in step.
  key_at = (id or 1) - 1
end

function M.thread_id()
  return id or 1
end

-- The next event's number (per thread) and the next request's key.
function M.next()
  event_at = event_at + 1
  return event_at
end

function M.next_key()
  key_at = key_at + 1
  return keys[(key_at % #keys) + 1]
end

function M.dedup(n)
  if not with_dedup then
    return ""
  end
  return string.format('"dedup_id":"wrk-%s-%d-%d",', _G.nonce or "0", id or 1, n)
end

-- One event's JSON: its number in the payload (0 with WRK_UNIQUE=0), and a dedup_id
-- unique to the run with WRK_DEDUP=1.
function M.event(n)
  return string.format('{"type":"order.created",%s"payload":{"order_id":%d,"thread":%d,' ..
    '"amount":"19.90","currency":"EUR","items":[{"sku":"A-1","qty":2}]}}',
    M.dedup(n), M.unique and n or 0, M.unique and M.thread_id() or 0)
end

function M.headers(key)
  return { ["X-API-Key"] = key, ["Content-Type"] = "application/json" }
end

-- Latency percentiles in µs, human-readable and as one line scripts/bench parses.
function M.done(summary, latency, requests)
  local p = function(q) return latency:percentile(q) end
  io.write(string.format("latency µs: p50 %d  p90 %d  p99 %d  p99.9 %d  max %d\n",
    p(50), p(90), p(99), p(99.9), latency.max))
  io.write(string.format("PCTL %d %d %d %d %d %d\n", p(50), p(90), p(95), p(99), p(99.9), latency.max))
end

return M
