-- release.lua: give back every slot of a lease, unless the lease already lapsed.
--
-- KEYS: the namespace keys 1..6, then holders, queue and waiting of each slot (lib.lua).
-- ARGV[1] lease id
-- ARGV[2 + 2 * (i - 1)], ARGV[3 + 2 * (i - 1)]: name and limit of slot i.
--
-- Returns {1 or 0, wake key, slot name, wake key, slot name, ...}: 1 when the lease was
-- live in every slot and is released; 0 when it had lapsed (fencing: only this lease
-- id's own entries are removed, so nothing that now belongs to another lease is freed).
-- The pairs name the waiters that the freed capacity (this release, or lapsed leases
-- and waiters purged here) may let on; the caller sends each wake key a wake-up.

local FIRST = 2
local lease_id = ARGV[1]
local n = slot_count()
local now = now_ms()

purge_records(now)
local changed = purge_slots(n, now)

local live = 0
for i = 1, n do
  if redis.call('ZREM', holders_key(i), lease_id) == 1 then
    live = live + 1
    changed[i] = true
  end
end
redis.call('HDEL', KEYS[3], lease_id)
redis.call('ZREM', KEYS[4], lease_id)

local released = 0
if n > 0 and live == n then released = 1 end
local out = wakes_for(changed, n, FIRST, {released}, lease_id)
for i = 1, n do forget_if_idle(i, FIRST) end
return out
