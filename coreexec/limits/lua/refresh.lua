-- refresh.lua: extend a live lease by its TTL; a lapsed lease is lost for good.
--
-- KEYS: the namespace keys 1..6, then holders, queue and waiting of each slot (lib.lua).
-- ARGV[1] lease id          ARGV[2] lease TTL ms
-- ARGV[3 + 2 * (i - 1)], ARGV[4 + 2 * (i - 1)]: name and limit of slot i.
--
-- Returns {1 or 0, wake key, slot name, ...}: 1 when the lease was live in every slot
-- and now expires TTL ms from now; 0 when it had lapsed: then whatever is left of it is
-- removed (its own entries only) and it must not be used again. The pairs name waiters
-- that capacity freed here (lapsed leases or waiters purged, a lost lease dropped) may
-- let on; the caller sends each wake key a wake-up.

local FIRST = 3
local lease_id = ARGV[1]
local ttl = tonumber(ARGV[2])
local n = slot_count()
local now = now_ms()

purge_records(now)
local changed = purge_slots(n, now)

local held = 0
for i = 1, n do
  if redis.call('ZSCORE', holders_key(i), lease_id) then held = held + 1 end
end

local out
if n > 0 and held == n then
  local deadline = now + ttl
  for i = 1, n do redis.call('ZADD', holders_key(i), 'XX', deadline, lease_id) end
  redis.call('ZADD', KEYS[4], deadline, lease_id)
  out = {1}
else
  for i = 1, n do
    if redis.call('ZREM', holders_key(i), lease_id) == 1 then changed[i] = true end
  end
  redis.call('HDEL', KEYS[3], lease_id)
  redis.call('ZREM', KEYS[4], lease_id)
  out = {0}
end
return wakes_for(changed, n, FIRST, out, lease_id)
