-- Re-queue an unfinished event whose arq job is gone, atomically with the check, so a job that a
-- worker finishes at the same moment is never queued twice.
-- Returns what was found: 'missing', 'finished', 'running', 'queued' or 'requeued'.
--
-- KEYS[1] event        oa:event:<id>
-- KEYS[2] job          arq:job:<id>
-- KEYS[3] in-progress  arq:in-progress:<id>
-- KEYS[4] queue        oa:queue
-- KEYS[5] pending      oa:pending
--
-- ARGV[1] id
-- ARGV[2] now, ms (the new job's score)
-- ARGV[3] arq job bytes
-- ARGV[4] job ttl, ms
local state = redis.call('HGET', KEYS[1], 'state')
if not state then
  redis.call('ZREM', KEYS[5], ARGV[1])
  return 'missing'
end
if state == 'done' or state == 'dead' or state == 'purged' then
  redis.call('ZREM', KEYS[5], ARGV[1])
  return 'finished'
end
if redis.call('EXISTS', KEYS[3]) == 1 then return 'running' end
if redis.call('EXISTS', KEYS[2]) == 1 and redis.call('ZSCORE', KEYS[4], ARGV[1]) then return 'queued' end
redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4])
redis.call('ZADD', KEYS[4], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[1], 'state', 'queued')
return 'requeued'
