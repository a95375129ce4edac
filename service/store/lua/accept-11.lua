-- Accept a batch of verified events, in order: for each, dedup, ledger entry, history indexes, arq job
-- and queue; then the batch's counters. All in one atomic step, one EVALSHA per accept batch
-- (service/store/batching.py, JoinedScriptBatcher): the script's own cost and the counters' commands
-- are paid once per batch instead of once per event.
-- Returns two entries per event, in the events' order: 'accepted' | 'duplicate' | 'conflict', and
-- the sha256 of the body the ledger holds for that id.
--
-- The events' keys and args follow one another: event i (from 0) has KEYS[11*i + 1 .. 11*i + 11]
-- and ARGV[13*i + 1 .. 13*i + 13]. Below, the first event's:
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
local NKEYS, NARGS = 11, 13
-- Each redis.call costs about 1.5 us of Lua and argument handling besides the command itself, as
-- much as the commands: so one HSET for every field of an event, and the counters added up here and
-- written once per batch (key -> field -> increment; minute key -> {increment, ttl}).
local counts, minutes, last_received = {}, {}, {}
local function count(key, field)
  local fields = counts[key]
  if not fields then
    fields = {}
    counts[key] = fields
  end
  fields[field] = (fields[field] or 0) + 1
end

-- Stream IDs must grow. <received ms>-<seq> does unless another API process's clock is behind;
-- then the stream's last ms is used: the order stays the acceptance order (seq) either way.
-- No trimming here: an entry dropped unread would leave its event in its lead and invoice sets
-- for good. The reconciler reads each expired entry, then trims exactly (service/store/trim.py).
local function index(key, received, seq, ...)
  local added = redis.pcall('XADD', key, received .. '-' .. seq, ...)
  if type(added) == 'table' and added.err then
    local info = redis.call('XINFO', 'STREAM', key)
    local last = received
    for i = 1, #info, 2 do
      if info[i] == 'last-generated-id' then last = string.match(info[i + 1], '^(%d+)') end
    end
    redis.call('XADD', key, last .. '-' .. seq, ...)
  end
end

local function accept(k, a)
  local id, sha256, received = ARGV[a + 1], ARGV[a + 3], ARGV[a + 4]
  local first = redis.call('HGET', KEYS[k + 1], 'sha256')
  if first then
    if first == sha256 then
      count(KEYS[k + 5], 'duplicate_total')
      return 'duplicate', first
    end
    count(KEYS[k + 5], 'conflict_total')
    return 'conflict', first
  end
  local seq = redis.call('INCR', KEYS[k + 7])
  local lead, invoice = ARGV[a + 10], ARGV[a + 11]
  -- The time index keeps the lead and invoice ids too, so that trimming finds their index entries
  -- after the event itself has expired (the same fields in every entry cost only their values).
  index(KEYS[k + 10], received, seq, 'i', id, 'l', lead, 'n', invoice)
  index(KEYS[k + 11], received, seq, 'i', id)
  local fields = {'body', ARGV[a + 2], 'sha256', sha256, 'received_ms', received, 'secret', ARGV[a + 5],
                  'type', ARGV[a + 6], 'state', 'queued', 'seq', seq}
  if ARGV[a + 13] ~= '' then
    fields[#fields + 1] = 'traceparent'
    fields[#fields + 1] = ARGV[a + 13]
  end
  if lead ~= '' then
    fields[#fields + 1] = 'lead_id'
    fields[#fields + 1] = lead
    redis.call('ZADD', KEYS[k + 8], seq, id)
    redis.call('EXPIRE', KEYS[k + 8], ARGV[a + 12])
  end
  if invoice ~= '' then
    fields[#fields + 1] = 'invoice_id'
    fields[#fields + 1] = invoice
    redis.call('ZADD', KEYS[k + 9], seq, id)
    redis.call('EXPIRE', KEYS[k + 9], ARGV[a + 12])
  end
  redis.call('HSET', KEYS[k + 1], unpack(fields))
  redis.call('SET', KEYS[k + 2], ARGV[a + 7], 'PX', ARGV[a + 8])
  redis.call('ZADD', KEYS[k + 3], received, id)
  redis.call('ZADD', KEYS[k + 4], received, id)
  local stats = KEYS[k + 5]
  count(stats, 'received_total')
  count(stats, 'received:' .. ARGV[a + 6])
  count(stats, 'secret:' .. ARGV[a + 5])
  last_received[stats] = received
  local minute = minutes[KEYS[k + 6]]
  if minute then
    minute[1] = minute[1] + 1
  else
    minutes[KEYS[k + 6]] = {1, ARGV[a + 9]}
  end
  return 'accepted', sha256
end

local replies = {}
for i = 0, #KEYS / NKEYS - 1 do
  local outcome, sha256 = accept(i * NKEYS, i * NARGS)
  replies[#replies + 1] = outcome
  replies[#replies + 1] = sha256
end
for key, fields in pairs(counts) do
  for field, increment in pairs(fields) do
    redis.call('HINCRBY', key, field, increment)
  end
end
for key, received in pairs(last_received) do
  redis.call('HSET', key, 'last_received_ms', received)
end
for key, minute in pairs(minutes) do
  if redis.call('HINCRBY', key, 'received', minute[1]) == minute[1] then
    redis.call('EXPIRE', key, minute[2])  -- a new minute's key; its TTL need not move after
  end
end
return replies
