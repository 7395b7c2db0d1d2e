-- claim_and_start.lua: claim a step attempt for a worker and, if that worked, put the
-- attempt's STEP_START event on the run's stream: one round trip where a claim and a
-- publish took two, and never a start announced for an attempt someone else holds.
--
-- KEYS[1] the attempt's claim key (coreexec:attempt:{run}:<attempt>:claim)
-- KEYS[2] the run's event stream  (coreexec:run:{run}:events); same hash tag, same slot
-- ARGV[1] owner (e.g. worker@host:pid)     ARGV[2] claim TTL in seconds
-- ARGV[3] approximate MAXLEN of the stream ARGV[4] event field name
-- ARGV[5] the STEP_START event as JSON
--
-- Returns {1, stream entry id} when claimed (the event is on the stream);
--         {0, holder} when the attempt was claimed or fenced already (nothing written).

if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then
  local entry_id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', ARGV[4], ARGV[5])
  return {1, entry_id}
end
return {0, redis.call('GET', KEYS[1])}
