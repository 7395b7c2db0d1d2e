-- withdraw.lua: a waiter stops waiting (its run was cancelled or failed).
--
-- KEYS: the namespace keys 1..6, then holders, queue and waiting of each slot (lib.lua).
-- ARGV[1] lease id
-- ARGV[2 + 2 * (i - 1)], ARGV[3 + 2 * (i - 1)]: name and limit of slot i.
--
-- Returns {1 or 0, wake key, slot name, ...}: 1 when a waiter was removed, 0 when the
-- lease id was not waiting (idempotent). Holds are not touched: release frees those.
-- The pairs name the waiters that ranked behind it and may now go on; the caller sends
-- each wake key a wake-up.

local FIRST = 2
local lease_id = ARGV[1]
local n = slot_count()
local now = now_ms()

purge_records(now)
local changed = purge_slots(n, now)

local removed = 0
local rec = redis.call('HGET', KEYS[5], lease_id)
if rec then
  local member = cjson.decode(rec)[1]
  for i = 1, n do
    if redis.call('ZREM', queue_key(i), member) == 1 then changed[i] = true end
    redis.call('ZREM', waiting_key(i), member)
  end
  redis.call('HDEL', KEYS[5], lease_id)
  redis.call('ZREM', KEYS[6], lease_id)
  removed = 1
end

local out = wakes_for(changed, n, FIRST, {removed}, lease_id)
for i = 1, n do forget_if_idle(i, FIRST) end
return out
