-- lib.lua: shared prelude of the tag-limiter scripts. It is not run on its own: the
-- loader puts it in front of acquire.lua, release.lua, refresh.lua and withdraw.lua.
--
-- KEYS layout shared by every script (names in coreexec/limits/keys.py):
--   KEYS[1] seq               STRING  arrival counter for waiters
--   KEYS[2] slot registry     HASH    slot name -> limit
--   KEYS[3] leases            HASH    lease id -> JSON [run id, step key]
--   KEYS[4] lease deadlines   ZSET    lease id, score = expiry ms
--   KEYS[5] waiters           HASH    lease id -> JSON [member, run id, step key, wake key]
--   KEYS[6] waiter deadlines  ZSET    lease id, score = expiry ms
--   then for slot i (1-based) three keys from 7 + 3 * (i - 1):
--   holders (ZSET lease id, score = expiry ms), queue (ZSET waiter member,
--   score = -priority) and waiting (ZSET waiter member, score = expiry ms).
-- Each script passes slot i's name and limit as ARGV[first + 2 * (i - 1)] and the next.
--
-- A waiter member is '<16-digit arrival number>:<lease id>': equal scores sort by
-- member, so a queue orders by priority (higher first), then by first arrival.
-- Time is the server's (TIME), so clocks of clients never matter. A lease or waiter is
-- live while its expiry is later than now.

local NS = 6
local BATCH = 500

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function slot_count()
  return (#KEYS - NS) / 3
end

local function holders_key(i) return KEYS[NS + 3 * (i - 1) + 1] end
local function queue_key(i) return KEYS[NS + 3 * (i - 1) + 2] end
local function waiting_key(i) return KEYS[NS + 3 * (i - 1) + 3] end

local function slot_name(first, i) return ARGV[first + 2 * (i - 1)] end
local function slot_limit(first, i) return tonumber(ARGV[first + 2 * (i - 1) + 1]) end

-- Remove the members of deadline set `zkey` whose expiry has passed, and the same
-- members from `also` (a ZSET) or fields of `also_hash` (a HASH). Returns how many.
local function drop_expired(zkey, now, also, also_hash)
  local total = 0
  while true do
    local dead = redis.call('ZRANGEBYSCORE', zkey, '-inf', now, 'LIMIT', 0, BATCH)
    if #dead == 0 then return total end
    redis.call('ZREM', zkey, unpack(dead))
    if also then redis.call('ZREM', also, unpack(dead)) end
    if also_hash then redis.call('HDEL', also_hash, unpack(dead)) end
    total = total + #dead
    if #dead < BATCH then return total end
  end
end

-- Records of leases that lapsed and of waiters that stopped asking.
local function purge_records(now)
  drop_expired(KEYS[4], now, nil, KEYS[3])
  drop_expired(KEYS[6], now, nil, KEYS[5])
end

-- Lapsed holders and lapsed waiters of slot i. True when that may let a waiter on.
local function purge_slot(i, now)
  local freed = redis.call('ZREMRANGEBYSCORE', holders_key(i), '-inf', now)
  local gone = drop_expired(waiting_key(i), now, queue_key(i), nil)
  return freed + gone > 0
end

local function purge_slots(n, now)
  local changed = {}
  for i = 1, n do changed[i] = purge_slot(i, now) end
  return changed
end

-- Wake-ups after slot i freed capacity or lost a waiter: the waiters at the head of
-- its queue that its free capacity now covers (slot i no longer holds them back).
-- Appends wake key, slot name pairs to `out`, one per wake key; skips `self_id`.
local function collect_wakes(i, first, out, seen, self_id)
  local free = slot_limit(first, i) - redis.call('ZCARD', holders_key(i))
  if free <= 0 then return end
  local heads = redis.call('ZRANGE', queue_key(i), 0, free - 1)
  for _, member in ipairs(heads) do
    local id = string.sub(member, 18)
    if id ~= self_id then
      local rec = redis.call('HGET', KEYS[5], id)
      if rec then
        local wake = cjson.decode(rec)[4]
        if wake ~= '' and not seen[wake] then
          seen[wake] = true
          out[#out + 1] = wake
          out[#out + 1] = slot_name(first, i)
        end
      end
    end
  end
end

local function wakes_for(changed, n, first, out, self_id)
  local seen = {}
  for i = 1, n do
    if changed[i] then collect_wakes(i, first, out, seen, self_id) end
  end
  return out
end

-- Forget slot i in the registry once nobody holds or waits for it.
local function forget_if_idle(i, first)
  if redis.call('ZCARD', holders_key(i)) == 0 and redis.call('ZCARD', queue_key(i)) == 0 then
    redis.call('HDEL', KEYS[2], slot_name(first, i))
  end
end
