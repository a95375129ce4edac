-- Accept a verified event: dedup, ledger entry, history indexes, arq job, queue and counters in one
-- atomic step.
-- Returns {'accepted' | 'duplicate' | 'conflict', sha256 of the body the ledger holds}.
--
-- KEYS[1] event        oa:event:<id>, the ledger hash
-- KEYS[2] job          arq:job:<id>
-- KEYS[3] queue        oa:queue, arq's sorted set
-- KEYS[4] pending      oa:pending, ids not yet done or dead
-- KEYS[5] stats        oa:stats, counters
-- KEYS[6] minute stats oa:stats:m:<minute>
-- KEYS[7] sequence     oa:seq, the order of acceptance across every API process
-- KEYS[8] lead index   oa:idx:lead:<lead id>, event ids by sequence (unused without a lead id)
-- KEYS[9] invoice index oa:idx:invoice:<invoice id>, the same for invoices
-- KEYS[10] time index  oa:idx:time, a stream: one entry per event, ID <received ms>-<seq>,
--                      fields i = id, l = lead id, n = invoice id ('' for none)
-- KEYS[11] type index  oa:idx:type:<type>, the same for one type, field i only
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
-- ARGV[10] lead id, or '' when the payload has none
-- ARGV[11] invoice id, or ''
-- ARGV[12] retention, s: an index key lives as long as its newest event is remembered
-- ARGV[13] traceparent of the webhook's span (W3C), or '' when tracing is off: nothing is stored
local first = redis.call('HGET', KEYS[1], 'sha256')
if first then
  if first == ARGV[3] then
    redis.call('HINCRBY', KEYS[5], 'duplicate_total', 1)
    return {'duplicate', first}
  end
  redis.call('HINCRBY', KEYS[5], 'conflict_total', 1)
  return {'conflict', first}
end
local seq = redis.call('INCR', KEYS[7])
-- Stream IDs must grow. <received ms>-<seq> does unless another API process's clock is behind;
-- then the stream's last ms is used: the order stays the acceptance order (seq) either way.
-- No trimming here: an entry dropped unread would leave its event in its lead and invoice sets
-- for good. The reconciler reads each expired entry, then trims exactly (service/store/trim.py).
local function index(key, ...)
  local added = redis.pcall('XADD', key, ARGV[4] .. '-' .. seq, ...)
  if type(added) == 'table' and added.err then
    local info = redis.call('XINFO', 'STREAM', key)
    local last = ARGV[4]
    for i = 1, #info, 2 do
      if info[i] == 'last-generated-id' then last = string.match(info[i + 1], '^(%d+)') end
    end
    redis.call('XADD', key, last .. '-' .. seq, ...)
  end
end
-- The time index keeps the lead and invoice ids too, so that trimming finds their index entries
-- after the event itself has expired (the same fields in every entry cost only their values).
index(KEYS[10], 'i', ARGV[1], 'l', ARGV[10], 'n', ARGV[11])
index(KEYS[11], 'i', ARGV[1])
-- Each redis.call costs about 1.5 us of Lua and argument handling besides the command itself, as
-- much as the commands: one HSET for every field of the event, and the minute's TTL set once.
local fields = {'body', ARGV[2], 'sha256', ARGV[3], 'received_ms', ARGV[4], 'secret', ARGV[5],
                'type', ARGV[6], 'state', 'queued', 'seq', seq}
if ARGV[13] ~= '' then
  fields[#fields + 1] = 'traceparent'
  fields[#fields + 1] = ARGV[13]
end
if ARGV[10] ~= '' then
  fields[#fields + 1] = 'lead_id'
  fields[#fields + 1] = ARGV[10]
  redis.call('ZADD', KEYS[8], seq, ARGV[1])
  redis.call('EXPIRE', KEYS[8], ARGV[12])
end
if ARGV[11] ~= '' then
  fields[#fields + 1] = 'invoice_id'
  fields[#fields + 1] = ARGV[11]
  redis.call('ZADD', KEYS[9], seq, ARGV[1])
  redis.call('EXPIRE', KEYS[9], ARGV[12])
end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('SET', KEYS[2], ARGV[7], 'PX', ARGV[8])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[4], ARGV[1])
redis.call('HINCRBY', KEYS[5], 'received_total', 1)
redis.call('HINCRBY', KEYS[5], 'received:' .. ARGV[6], 1)
redis.call('HINCRBY', KEYS[5], 'secret:' .. ARGV[5], 1)
redis.call('HSET', KEYS[5], 'last_received_ms', ARGV[4])
if redis.call('HINCRBY', KEYS[6], 'received', 1) == 1 then
  redis.call('EXPIRE', KEYS[6], ARGV[9])  -- a new minute's key; its TTL need not move after
end
return {'accepted', ARGV[3]}
