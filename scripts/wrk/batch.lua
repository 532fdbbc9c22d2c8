-- wrk script: POST /api/events/batch with WRK_BATCH events per request (default 100).
--
--   WRK_KEYS=keys.txt wrk -t2 -c16 -d30s -s scripts/wrk/batch.lua http://127.0.0.1:8080/api/events/batch
--
-- The URL gives the path (it must end in /api/events/batch). WRK_KEYS, WRK_DEDUP and
-- WRK_UNIQUE as in events.lua. Each request counts for WRK_BATCH events against its
-- organisation's rate limit: multiply wrk's requests/s by WRK_BATCH for events/s.
local shared = dofile((debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./") .. "common.lua")
local size = tonumber(os.getenv("WRK_BATCH") or "100")

request = function()
  local events = {}
  for i = 1, size do
    events[i] = shared.event(shared.next())
  end
  return wrk.format("POST", nil, shared.headers(shared.next_key()), '{"events":[' .. table.concat(events, ",") .. "]}")
end

setup = shared.setup
init = shared.init
done = shared.done
