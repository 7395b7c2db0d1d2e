-- publish_end.lua: put the end of a supervised attempt on the run's stream, once.
--
-- The step entrypoint in a container or pod holds the events that end its attempt (its
-- outputs and its STEP_SUCCESS / STEP_FAILURE) in a list; its supervisor publishes them
-- when it has seen the process end, so the coordinator releases the step's slots only
-- then. A process that ended without holding anything (killed, crashed, out of memory)
-- gets the supervisor's own failure event instead. However many supervisors adopted the
-- attempt, one publishes.
--
-- KEYS[1] the attempt's end list        (coreexec:attempt:{run}:<attempt>:end)
-- KEYS[2] the run's event stream        (coreexec:run:{run}:events); same slot
-- KEYS[3] the "published" marker        (coreexec:attempt:{run}:<attempt>:end:published)
-- ARGV[1] approximate MAXLEN of the stream   ARGV[2] event field name
-- ARGV[3] TTL of the marker in seconds       ARGV[4] n, the number of leading events
-- ARGV[5 .. 4+n]  events published first (the process's logs)
-- ARGV[5+n ..]    events published when the list is empty (the supervisor's verdict)
--
-- Returns {0} when the end was published already (nothing written);
--         {1, 1, held events...} when the held events were published;
--         {1, 0} when the list was empty and the fallback events were published.

if not redis.call('SET', KEYS[3], '1', 'NX', 'EX', ARGV[3]) then
  return {0}
end
local n = tonumber(ARGV[4])
for i = 5, 4 + n do
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*', ARGV[2], ARGV[i])
end
local held = redis.call('LRANGE', KEYS[1], 0, -1)
if #held > 0 then
  for _, event in ipairs(held) do
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*', ARGV[2], event)
  end
  local reply = {1, 1}
  for _, event in ipairs(held) do
    reply[#reply + 1] = event
  end
  return reply
end
for i = 5 + n, #ARGV do
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*', ARGV[2], ARGV[i])
end
return {1, 0}
