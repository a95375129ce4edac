-- Finish a run of an event: store the handlers that ran, the event's new state, its counters and
-- histogram samples. One script instead of a MULTI of a dozen commands: the same atomicity, far
-- less client CPU.
--
-- KEYS[1] event              oa:event:<id>
-- KEYS[2] job                arq:job:<id>
-- KEYS[3] pending            oa:pending
-- KEYS[4] dead               oa:dead
-- KEYS[5] stats              oa:stats
-- KEYS[6] minute stats       oa:stats:m:<minute>
-- KEYS[7] handler histogram  oa:hist:handler
-- KEYS[8] latency histogram  oa:hist:latency
-- KEYS[9] queue              oa:queue
--
-- ARGV[1] one JSON object (so that a new field cannot shift the others):
--   id, type, outcome ('done' | 'unhandled' | 'retry' | 'waiting' | 'dead'), now_ms, retention_s,
--   queue_expiry_ms, minute_ttl_s: strings;
--   handlers:  {"h:<name>": "<handler state json>", ...}, the handlers that ran;
--   durations: [[bucket field, sum field, seconds], ...], one per handler that ran;
--   latency:   [bucket field, sum field, seconds], receipt to success, or [] when not done;
--   retry_ms:  for 'retry' and 'waiting', when the job is due again (the worker raises arq's
--              Retry without a delay, so this score stands);
--   only for events with ordered handlers (workers/runtime/order.py): ordered: true; wake: the ordered
--   handlers that finished (done or dead) in this run; event, in_progress: key prefixes.
--   'waiting': the handlers still pending all wait for an earlier event; not counted as a retry.
local a = cjson.decode(ARGV[1])
local id, outcome, now, type = a.id, a.outcome, a.now_ms, a.type
for name, state in pairs(a.handlers) do
  redis.call('HSET', KEYS[1], name, state)
end
local woken = false
if a.ordered then
  -- An earlier event finished while this run was going on: run again now, not at the fallback.
  woken = redis.call('HDEL', KEYS[1], 'woken') == 1
  for _, name in ipairs(a.wake) do
    local waiter = redis.call('HGET', KEYS[1], 'w:' .. name)
    if waiter then
      redis.call('HDEL', KEYS[1], 'w:' .. name)
      local key = a.event .. waiter
      local received = redis.call('HGET', key, 'received_ms')
      if received then
        -- Due now, if it is queued and not already due sooner. Not back at its receipt time: the
        -- queue's lag (oldest due entry not running) would then count the wait as backlog.
        redis.call('ZADD', KEYS[9], 'XX', 'LT', now, waiter)
        if redis.call('EXISTS', a.in_progress .. waiter) == 1 then redis.call('HSET', key, 'woken', '1') end
      end
    end
  end
end
for _, d in ipairs(a.durations) do
  redis.call('HINCRBY', KEYS[7], d[1], 1)
  redis.call('HINCRBYFLOAT', KEYS[7], d[2], d[3])
end
if #a.latency == 3 then
  redis.call('HINCRBY', KEYS[8], a.latency[1], 1)
  redis.call('HINCRBYFLOAT', KEYS[8], a.latency[2], a.latency[3])
end
local counter
if outcome ~= 'retry' and outcome ~= 'waiting' then
  -- A replay restricted to some handlers ends with the run that finishes the event.
  redis.call('HDEL', KEYS[1], 'replay_only')
end
if outcome == 'retry' or outcome == 'waiting' then
  -- 'waiting' (for an earlier event of its key) is no failure: the event stays 'queued'.
  redis.call('HSET', KEYS[1], 'state', outcome == 'retry' and 'retrying' or 'queued')
  -- arq never refreshes a job's expiry on retry; we do, so a long schedule cannot expire.
  redis.call('PEXPIRE', KEYS[2], a.queue_expiry_ms)
  redis.call('ZADD', KEYS[9], woken and now or a.retry_ms, id)
  if outcome == 'retry' then counter = 'retried' end
elseif outcome == 'dead' then
  redis.call('HSET', KEYS[1], 'state', 'dead', 'dead_ms', now)
  redis.call('ZREM', KEYS[3], id)
  redis.call('ZADD', KEYS[4], now, id)
  counter = 'failed'
else
  redis.call('HSET', KEYS[1], 'state', 'done', 'done_ms', now)
  redis.call('EXPIRE', KEYS[1], a.retention_s)
  -- `unhandled` marks a done event that no handler matched (`events list --state unhandled`);
  -- the state stays 'done', which is what every script tests for a finished event.
  if outcome == 'unhandled' then
    redis.call('HSET', KEYS[1], 'unhandled', '1')
  else
    redis.call('HDEL', KEYS[1], 'unhandled')
  end
  redis.call('ZREM', KEYS[3], id)
  counter = 'processed'
  if outcome == 'unhandled' then
    redis.call('HINCRBY', KEYS[5], 'unhandled_total', 1)
    redis.call('HINCRBY', KEYS[5], 'unhandled:' .. type, 1)
    redis.call('HINCRBY', KEYS[6], 'unhandled', 1)
  end
end
if counter then
  redis.call('HINCRBY', KEYS[5], counter .. '_total', 1)
  redis.call('HINCRBY', KEYS[5], counter .. ':' .. type, 1)
  redis.call('HINCRBY', KEYS[6], counter, 1)
  redis.call('EXPIRE', KEYS[6], a.minute_ttl_s)
end
