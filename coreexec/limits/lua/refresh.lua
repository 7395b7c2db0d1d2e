-- refresh.lua: extend a live lease by its TTL; a lapsed lease is dropped, or taken back.
--
-- KEYS: the namespace keys 1..6, then holders, queue and waiting of each slot (lib.lua).
-- ARGV[1] lease id          ARGV[2] lease TTL ms
-- ARGV[3] '1': take a lapsed lease back for its holder, else '0'
-- ARGV[4] run id            ARGV[5] step key (the lease's record, when taken back)
-- ARGV[6 + 2 * (i - 1)], ARGV[7 + 2 * (i - 1)]: name and limit of slot i.
--
-- Returns {1 or 0, wake key, slot name, ...}: 1 when the lease was live in every slot
-- and now expires TTL ms from now; 0 when it had lapsed (in some slot or all, say
-- because Redis lost its data or was unreachable for longer than the TTL). Then, when
-- ARGV[3] is '0', whatever is left of it is removed (its own entries only) and it must
-- not be used again; when '1', it is held again in every slot, TTL ms from now, even
-- past a slot's limit: its holder still runs, so the slot counts it and grants nothing
-- more until enough holders release. The pairs name waiters that capacity freed here
-- (lapsed leases or waiters purged, a lost lease dropped) may let on; the caller sends
-- each wake key a wake-up.

local FIRST = 6
local lease_id = ARGV[1]
local ttl = tonumber(ARGV[2])
local reclaim = ARGV[3] == '1'
local n = slot_count()
local now = now_ms()

purge_records(now)
local changed = purge_slots(n, now)

local held = 0
for i = 1, n do
  if redis.call('ZSCORE', holders_key(i), lease_id) then held = held + 1 end
end

local deadline = now + ttl
local out
if n > 0 and held == n then
  for i = 1, n do redis.call('ZADD', holders_key(i), 'XX', deadline, lease_id) end
  redis.call('ZADD', KEYS[4], deadline, lease_id)
  out = {1}
elseif n > 0 and reclaim then
  for i = 1, n do
    redis.call('ZADD', holders_key(i), deadline, lease_id)
    redis.call('HSET', KEYS[2], slot_name(FIRST, i), slot_limit(FIRST, i))
  end
  redis.call('ZADD', KEYS[4], deadline, lease_id)
  redis.call('HSET', KEYS[3], lease_id, cjson.encode({ARGV[4], ARGV[5]}))
  out = {0}
else
  for i = 1, n do
    if redis.call('ZREM', holders_key(i), lease_id) == 1 then changed[i] = true end
  end
  redis.call('HDEL', KEYS[3], lease_id)
  redis.call('ZREM', KEYS[4], lease_id)
  out = {0}
end
return wakes_for(changed, n, FIRST, out, lease_id)
