-- claim_and_start.lua: claim a step attempt for a worker and, if that worked, put the
-- attempt's STEP_START event on the run's stream: one round trip where a claim and a
-- publish took two, and never a start announced for an attempt someone else holds.
-- Only an attempt the run's coordinator issued (recorded in the run's issued hash when
-- it published the message) of a run that has not finished can be claimed: a forged or
-- replayed message writes nothing.
--
-- KEYS[1] the attempt's claim key (coreexec:attempt:{run}:<attempt>:claim)
-- KEYS[2] the run's event stream  (coreexec:run:{run}:events); same hash tag, same slot
-- KEYS[3] the run's issued attempts (coreexec:run:{run}:issued, HASH attempt id -> value)
-- KEYS[4] the run's settings      (coreexec:run:{run}:settings, field 'finished' at the end)
-- ARGV[1] owner (e.g. worker@host:pid)     ARGV[2] claim TTL in seconds
-- ARGV[3] approximate MAXLEN of the stream ARGV[4] event field name
-- ARGV[5] the STEP_START event as JSON     ARGV[6] the attempt id
-- ARGV[7] the issued value the message implies ('<attempt number>:<step key>')
--
-- Returns {1, stream entry id} when claimed (the event is on the stream);
--         {0, holder} when the attempt was claimed or fenced already (nothing written);
--         {-1, reason} when the coordinator never issued it, or
--         {-1, reason, holder or ''} when the run has finished (holder: who had claimed or
--         fenced the attempt, so a cancelled attempt still reads as fenced).

if redis.call('HGET', KEYS[3], ARGV[6]) ~= ARGV[7] then
  return {-1, 'not issued by the coordinator of the run'}
end
if redis.call('HEXISTS', KEYS[4], 'finished') == 1 then
  return {-1, 'the run has finished', redis.call('GET', KEYS[1]) or ''}
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then
  local entry_id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', ARGV[4], ARGV[5])
  return {1, entry_id}
end
return {0, redis.call('GET', KEYS[1])}
