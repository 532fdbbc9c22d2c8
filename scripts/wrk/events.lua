-- wrk script: durable POST /api/events, the way scripts/bench drives triggerd.
--
--   WRK_KEYS=keys.txt wrk -t2 -c64 -d30s -s scripts/wrk/events.lua http://127.0.0.1:8080/api/events
--
-- The URL gives the path (it must end in /api/events). Environment:
--   WRK_KEYS    a file with one API key per line (required); requests rotate over them,
--               so load spreads over organisations as it does in production. Keep each
--               organisation's share under its tier's rate limit, or expect 429s.
--   WRK_DEDUP   1: every event carries a dedup_id unique to this run (exercises the
--               deduplication index); default 0.
--   WRK_UNIQUE  0: send one identical body (compressible, cache-friendly: flattering);
--               default 1, every body differs (a counter and the thread in the payload).
-- At the end it prints latency percentiles and the count of non-2xx answers (wrk's own "Non-2xx" line).
local shared = dofile((debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./") .. "common.lua")

request = function()
  return wrk.format("POST", nil, shared.headers(shared.next_key()), shared.event(shared.next()))
end

setup = shared.setup
init = shared.init
done = shared.done
