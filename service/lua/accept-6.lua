-- Accept a verified event: dedup, ledger entry, arq job, queue and counters in one atomic step.
-- Returns {'accepted' | 'duplicate' | 'conflict', sha256 of the body the ledger holds}.
--
-- KEYS[1] event        oa:event:<id>, the ledger hash
-- KEYS[2] job          arq:job:<id>
-- KEYS[3] queue        oa:queue, arq's sorted set
-- KEYS[4] pending      oa:pending, ids not yet done or dead
-- KEYS[5] stats        oa:stats, counters
-- KEYS[6] minute stats oa:stats:m:<minute>
--
-- ARGV[1] id
-- ARGV[2] body, as received
-- ARGV[3] sha256 of the body
-- ARGV[4] received, ms
-- ARGV[5] index of the secret that verified it
-- ARGV[6] type
-- ARGV[7] arq job bytes
-- ARGV[8] job ttl, ms
-- ARGV[9] minute stats ttl, s
local first = redis.call('HGET', KEYS[1], 'sha256')
if first then
  if first == ARGV[3] then
    redis.call('HINCRBY', KEYS[5], 'duplicate_total', 1)
    return {'duplicate', first}
  end
  redis.call('HINCRBY', KEYS[5], 'conflict_total', 1)
  return {'conflict', first}
end
redis.call('HSET', KEYS[1], 'body', ARGV[2], 'sha256', ARGV[3], 'received_ms', ARGV[4],
           'secret', ARGV[5], 'type', ARGV[6], 'state', 'queued')
redis.call('SET', KEYS[2], ARGV[7], 'PX', ARGV[8])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[4], ARGV[1])
redis.call('HINCRBY', KEYS[5], 'received_total', 1)
redis.call('HINCRBY', KEYS[5], 'received:' .. ARGV[6], 1)
redis.call('HINCRBY', KEYS[5], 'secret:' .. ARGV[5], 1)
redis.call('HSET', KEYS[5], 'last_received_ms', ARGV[4])
redis.call('HINCRBY', KEYS[6], 'received', 1)
redis.call('EXPIRE', KEYS[6], ARGV[9])
return {'accepted', ARGV[3]}
