-- Finish a run of an event: store the handlers that ran, the event's new state, its counters and
-- histogram samples; release the concurrency slots the run held, and trip or close the breakers of
-- the handlers that ran. One script instead of a MULTI of a dozen commands: the same atomicity, far
-- less client CPU. Returns the breaker changes, each 'tripped <handler>' or 'closed <handler>': the
-- one worker that makes a change logs it.
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
-- KEYS[10] held              oa:held
-- KEYS[11] breaker           oa:breaker (service/store/handlers.py)
-- KEYS[12] fails             oa:breaker:fails
--
-- ARGV[1] one JSON object (so that a new field cannot shift the others):
--   id, type, outcome ('done' | 'unhandled' | 'retry' | 'waiting' | 'dead'), now_ms, retention_s,
--   queue_expiry_ms, minute_ttl_s: strings;
--   handlers:  {"h:<name>": "<handler state json>", ...}, the handlers that ran;
--   durations: [[bucket field, sum field, seconds], ...], one per handler that ran;
--   latency:   [bucket field, sum field, seconds], receipt to success, or [] when not done;
--   retry_ms:  for 'retry' and 'waiting', when the job is due again (the worker raises arq's
--              Retry without a delay, so this score stands);
--   ran: {name: {f: 1 (a failure that counts for the breaker) | 0 (a success), absent for neither;
--        c: true when it held a concurrency slot; b: true when its breaker is on}}, the handlers that
--        ran; breaker_failures: how many failures in a row trip a breaker; probe_ms: the probe
--        interval; event, in_progress, slots, waiting: key prefixes;
--   only for events with ordered handlers (workers/runtime/order.py): ordered: true; wake: the ordered
--   handlers that finished (done or dead) in this run.
--   'waiting': the handlers still pending all wait (for an earlier event, a limit, a pause or a
--   breaker); not counted as a retry.
-- #include wake-waiters
local a = cjson.decode(ARGV[1])
local id, outcome, now, type = a.id, a.outcome, a.now_ms, a.type
for name, state in pairs(a.handlers) do
  redis.call('HSET', KEYS[1], name, state)
end
-- What this event waited for (an earlier event, a slot, a pause, a breaker) ended while this run was
-- going on: run again now, not at the fallback.
local woken = redis.call('HDEL', KEYS[1], 'woken') == 1
local changes = {}
for name, r in pairs(a.ran) do
  if r.c then
    redis.call('ZREM', a.slots .. name, id)
    -- The slot is free: the event that has waited longest for this handler may take it.
    wake_waiters(a.waiting .. name, KEYS[9], now, a.event, a.in_progress, nil, 1)
  end
  if r.f == 0 then
    redis.call('HDEL', KEYS[12], name)
    if redis.call('HDEL', KEYS[11], name) == 1 then
      wake_waiters(a.waiting .. name, KEYS[9], now, a.event, a.in_progress, name, 0)
      changes[#changes + 1] = 'closed ' .. name
    end
  elseif r.f == 1 then
    local failures = redis.call('HINCRBY', KEYS[12], name, 1)
    if r.b and failures >= a.breaker_failures and redis.call('HEXISTS', KEYS[11], name) == 0 then
      local since = tonumber(now)
      redis.call('HSET', KEYS[11], name, cjson.encode({since_ms = since, probe_ms = since + a.probe_ms}))
      changes[#changes + 1] = 'tripped ' .. name
    end
  end
end
if a.ordered then
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
if outcome == 'retry' or outcome == 'waiting' then
  -- 'waiting' (for an earlier event of its key, a limit, a pause, a breaker) is no failure: the
  -- event stays 'queued'.
  redis.call('HSET', KEYS[1], 'state', outcome == 'retry' and 'retrying' or 'queued')
  -- arq never refreshes a job's expiry on retry; we do, so a long schedule cannot expire.
  redis.call('PEXPIRE', KEYS[2], a.queue_expiry_ms)
  redis.call('ZADD', KEYS[9], woken and now or a.retry_ms, id)
  if outcome == 'retry' then counter = 'retried' end
else
  -- A replay restricted to some handlers ends with the run that finishes the event.
  redis.call('HDEL', KEYS[1], 'replay_only')
  -- Finished, whatever the path: it waits behind nothing (a deploy may have removed every ordered
  -- handler since it was held).
  if redis.call('ZREM', KEYS[10], id) == 1 then redis.call('HDEL', KEYS[1], 'held_by') end
  redis.call('ZREM', KEYS[3], id)
  if outcome == 'dead' then
    redis.call('HSET', KEYS[1], 'state', 'dead', 'dead_ms', now)
    redis.call('ZADD', KEYS[4], now, id)
    counter = 'failed'
  else
    redis.call('HSET', KEYS[1], 'state', 'done', 'done_ms', now)
    redis.call('EXPIRE', KEYS[1], a.retention_s)
    -- `unhandled` marks a done event that no handler matched (`events list --state unhandled`);
    -- the state stays 'done', which is what every script tests for a finished event.
    if outcome == 'unhandled' then
      redis.call('HSET', KEYS[1], 'unhandled', '1')
      redis.call('HINCRBY', KEYS[5], 'unhandled_total', 1)
      redis.call('HINCRBY', KEYS[5], 'unhandled:' .. type, 1)
      redis.call('HINCRBY', KEYS[6], 'unhandled', 1)
    else
      redis.call('HDEL', KEYS[1], 'unhandled')
    end
    counter = 'processed'
  end
end
if counter then
  redis.call('HINCRBY', KEYS[5], counter .. '_total', 1)
  redis.call('HINCRBY', KEYS[5], counter .. ':' .. type, 1)
  redis.call('HINCRBY', KEYS[6], counter, 1)
  redis.call('EXPIRE', KEYS[6], a.minute_ttl_s)
end
return changes
