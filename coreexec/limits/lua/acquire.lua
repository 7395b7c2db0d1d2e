-- acquire.lua: take one unit of every slot a request needs, all at once or none.
--
-- KEYS: the namespace keys 1..6, then holders, queue and waiting of each slot (lib.lua).
-- ARGV[1] lease id          ARGV[2] run id            ARGV[3] step key
-- ARGV[4] priority (integer, higher is served first)
-- ARGV[5] lease TTL ms      ARGV[6] waiter TTL ms     ARGV[7] wake key ('' for none)
-- ARGV[8] '1': place only (take or keep the waiter's place, never grant), else '0'
-- ARGV[9 + 2 * (i - 1)], ARGV[10 + 2 * (i - 1)]: name and limit of slot i.
--
-- Returns when granted: {1, lease TTL ms, full JSON, wake key, slot name, ...}
--         when refused: {0, retry in ms, blocks JSON, wake key, slot name, ...}
-- blocks JSON: [[slot index, waiters ahead, [[lease id, run id, step key], ...]], ...].
-- full JSON: [slot index, ...], the slots this grant took the last free unit of ([] when
-- the lease was held already).
-- The wake key / slot name pairs name other waiters that the purge of lapsed leases or
-- waiters done here may have let on; the caller sends them a wake-up.
-- Error reply when the lease id holds some but not all of the slots.
--
-- Rule: granted when, for every slot, fewer live waiters rank ahead of the request than
-- there are free units. Ranks are one total order over the namespace (priority, then
-- first arrival), so the waits-for relation among waiters has no cycle.

local FIRST = 9
local place_only = ARGV[8] == '1'
local lease_id = ARGV[1]
local priority = tonumber(ARGV[4])
local lease_ttl = tonumber(ARGV[5])
local waiter_ttl = tonumber(ARGV[6])
local n = slot_count()
local now = now_ms()

purge_records(now)
local changed = purge_slots(n, now)

local held = 0
for i = 1, n do
  if redis.call('ZSCORE', holders_key(i), lease_id) then held = held + 1 end
end
if held > 0 and held < n then
  return redis.error_reply('lease ' .. lease_id .. ' holds some but not all of the slots asked for')
end
if held == n then
  -- Asked again for what it holds (say, its first reply was lost): extend the lease.
  local deadline = now + lease_ttl
  for i = 1, n do redis.call('ZADD', holders_key(i), 'XX', deadline, lease_id) end
  redis.call('ZADD', KEYS[4], deadline, lease_id)
  return wakes_for(changed, n, FIRST, {1, lease_ttl, '[]'}, lease_id)
end

local rec = redis.call('HGET', KEYS[5], lease_id)
local member = false
if rec then member = cjson.decode(rec)[1] end
local score = -priority

local blocked = {}
for i = 1, n do
  local free = slot_limit(FIRST, i) - redis.call('ZCARD', holders_key(i))
  local ahead
  if member then
    -- A known waiter keeps its rank; (re)queue it here in case this slot is new to it.
    redis.call('ZADD', queue_key(i), score, member)
    ahead = redis.call('ZRANK', queue_key(i), member)
  else
    -- A newcomer would rank after every waiter of the same or higher priority.
    ahead = redis.call('ZCOUNT', queue_key(i), '-inf', score)
  end
  if ahead >= free then blocked[#blocked + 1] = {i, ahead} end
end

if #blocked == 0 and not place_only then
  local deadline = now + lease_ttl
  for i = 1, n do
    redis.call('ZADD', holders_key(i), deadline, lease_id)
    redis.call('HSET', KEYS[2], slot_name(FIRST, i), slot_limit(FIRST, i))
    if member then
      redis.call('ZREM', queue_key(i), member)
      redis.call('ZREM', waiting_key(i), member)
    end
  end
  redis.call('ZADD', KEYS[4], deadline, lease_id)
  redis.call('HSET', KEYS[3], lease_id, cjson.encode({ARGV[2], ARGV[3]}))
  local full = {}
  for i = 1, n do
    if redis.call('ZCARD', holders_key(i)) >= slot_limit(FIRST, i) then full[#full + 1] = i end
  end
  if member then
    redis.call('HDEL', KEYS[5], lease_id)
    redis.call('ZREM', KEYS[6], lease_id)
  end
  -- cjson encodes an empty table as {}; '[]' keeps the reply a JSON list.
  local full_json = '[]'
  if #full > 0 then full_json = cjson.encode(full) end
  return wakes_for(changed, n, FIRST, {1, lease_ttl, full_json}, lease_id)
end

-- Refused (or place only): queue (or keep queued) as a waiter; its TTL starts again
-- with every try.
local deadline = now + waiter_ttl
if not member then
  member = string.format('%016d:%s', redis.call('INCR', KEYS[1]), lease_id)
end
redis.call('HSET', KEYS[5], lease_id, cjson.encode({member, ARGV[2], ARGV[3], ARGV[7]}))
redis.call('ZADD', KEYS[6], deadline, lease_id)
for i = 1, n do
  redis.call('ZADD', queue_key(i), score, member)
  redis.call('ZADD', waiting_key(i), deadline, member)
  redis.call('HSET', KEYS[2], slot_name(FIRST, i), slot_limit(FIRST, i))
end

-- Ask again by the time a blocking lease or an earlier waiter may lapse, and well
-- before this waiter's own entry would.
local retry = math.floor(waiter_ttl / 2)
local blocks = {}
for _, b in ipairs(blocked) do
  local i = b[1]
  for _, key in ipairs({holders_key(i), waiting_key(i)}) do
    local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    if first[2] then
      local left = tonumber(first[2]) - now
      if left < retry then retry = left end
    end
  end
  local ids = redis.call('ZRANGE', holders_key(i), 0, 19)
  local holders = {}
  if #ids > 0 then
    local recs = redis.call('HMGET', KEYS[3], unpack(ids))
    for j, id in ipairs(ids) do
      local run, step = '', ''
      if recs[j] then
        local r = cjson.decode(recs[j])
        run, step = r[1], r[2]
      end
      holders[#holders + 1] = {id, run, step}
    end
  end
  blocks[#blocks + 1] = {i, b[2], holders}
end
if retry < 1 then retry = 1 end
-- cjson encodes an empty table (place only, nothing blocked) as {}: keep it a list.
local blocks_json = '[]'
if #blocks > 0 then blocks_json = cjson.encode(blocks) end
return wakes_for(changed, n, FIRST, {0, retry, blocks_json}, lease_id)
