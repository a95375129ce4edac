-- Claim many due jobs at once: a job is claimed if nobody holds its in-progress key, it is still in
-- the queue with a score that is due and, when something can hold a handler back (order, a limit, a
-- pause or a tripped breaker), one of its handlers may run now. Atomic, so no WATCH is needed and no
-- two workers can both take the last slot of a limit or see an earlier event as finished.
-- Returns {id, score, extra, id, score, extra, ...}; `extra` is '' for a job that runs as it is, else
-- JSON: {s: {handler: reason}, the handlers that must sit this run out ('order', 'paused', 'tripped',
-- 'concurrency', 'rate'); a: when the job should look again for them (ms); p: [handlers whose run is
-- a breaker's probe]; w: {handler: [reason, since ms]}, how long a handler that runs now had waited}.
--
-- KEYS[1] queue        oa:queue
-- KEYS[2] held         oa:held, events waiting behind a dead one (score: held since, ms)
-- KEYS[3] paused       oa:paused, handler -> {until_ms} (service/store/handlers.py)
-- KEYS[4] breaker      oa:breaker, handler -> {since_ms, probe_ms} while tripped
--
-- ARGV[1] now, ms
-- ARGV[2] claim ttl, ms (arq's in-progress timeout)
-- ARGV[3] at most this many
-- ARGV[4] in-progress key prefix (arq:in-progress:)
-- ARGV[5] the plan, JSON (workers/runtime/protect.py): guarded: true when a handler is ordered or
--   limited; event, job, slots, starts, waiting: key prefixes; job_ttl_ms; slot_ttl_ms: how long a
--   concurrency slot outlives a killed worker; probe_ms: the breaker's probe interval; wait_ms,
--   held_ms, pause_ms, busy_ms: when to look again at a waiting event (fallbacks: what it waits for
--   wakes it); handlers: [{n: name, p: [patterns], b: breaker on, and when set: k: order key field,
--   i: index key prefix, skip: on_dead=skip, c: concurrency, r: [starts, window ms]}]
-- ARGV[6..] candidate job ids
local now, ttl, limit, prefix = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), ARGV[4]
local plan = cjson.decode(ARGV[5])
local claimed = {}

-- The plain claim: nothing can hold a handler back, so every due job runs.
if not plan.guarded and redis.call('EXISTS', KEYS[3], KEYS[4]) == 0 then
  local held = redis.call('EXISTS', KEYS[2]) == 1
  for i = 6, #ARGV do
    if #claimed >= 3 * limit then break end
    local id = ARGV[i]
    local score = redis.call('ZSCORE', KEYS[1], id)
    if score and tonumber(score) <= now and redis.call('SET', prefix .. id, '1', 'NX', 'PX', ttl) then
      claimed[#claimed + 1] = id
      claimed[#claimed + 1] = score
      claimed[#claimed + 1] = ''
      -- No handler is ordered any more (a deploy removed the last): nothing waits behind a dead one.
      if held and redis.call('ZREM', KEYS[2], id) == 1 then redis.call('HDEL', plan.event .. id, 'held_by') end
    end
  end
  return claimed
end

local function decode_hash(key)
  local out, raw = {}, redis.call('HGETALL', key)
  for i = 1, #raw, 2 do out[raw[i]] = cjson.decode(raw[i + 1]) end
  return out
end
local paused, tripped = decode_hash(KEYS[3]), decode_hash(KEYS[4])

local function matches(patterns, event_type)
  for _, p in ipairs(patterns) do
    if p == '*' or p == event_type then return true end
    if string.sub(p, -2) == '.*' and string.sub(event_type, 1, #p - 1) == string.sub(p, 1, #p - 1) then
      return true
    end
  end
  return false
end

-- Whether a replay restricted to `only` (its `replay_only` field, a JSON list) runs handler n.
local function replays(only, n)
  for _, name in ipairs(cjson.decode(only)) do
    if name == n then return true end
  end
  return false
end

-- The nearest earlier event of this key that handler h has not finished (nil if none), and whether
-- it holds the key: it is dead (and h holds on dead), or it waits behind one that does. The walk
-- stops at the first earlier event that h has done: h ran that one in order, so everything before
-- it was finished then. An earlier event that is gone, purged, done, dead for h with on_dead=skip,
-- dead without h ever running (h did not exist then), or replayed for other handlers only while h
-- has no record on it, is finished.
local function blocker(h, key, seq)
  local index, offset = h.i .. key, 0
  while true do
    local ids = redis.call('ZREVRANGEBYSCORE', index, '(' .. seq, '-inf', 'LIMIT', offset, 16)
    for _, pid in ipairs(ids) do
      local p = redis.call('HMGET', plan.event .. pid, 'type', 'state', 'h:' .. h.n, 'replay_only')
      if p[1] and p[2] ~= 'purged' and matches(h.p, p[1]) then
        local s = p[3] and cjson.decode(p[3]).state
        if s == 'done' then return nil, false end
        -- A replay restricted to other handlers leaves out h without a record (begin-1): h will
        -- not run on it, so it is finished for h, as a done event that h never ran.
        local left_out = not s and p[4] and not replays(p[4], h.n)
        if s == 'dead' then
          if not h.skip then return pid, true end
        elseif s == 'pending' or (not left_out and p[2] ~= 'done' and p[2] ~= 'dead') then
          return pid, redis.call('ZSCORE', KEYS[2], pid) ~= false
        end
      end
    end
    if #ids < 16 then return nil, false end
    offset = offset + 16
  end
end

-- Slots and starts are timed by Redis's own clock, not the worker's: a worker whose clock is behind,
-- or whose call reached Redis late, cannot start a run early. `at(ms)` turns such a time into a
-- queue score (the worker's clock).
local clock = redis.call('TIME')
local redis_now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local function at(redis_ms) return now + math.max(0, redis_ms - redis_now) end

-- Per handler, read once per call: its running slots and its starts within the window.
local slots, starts = {}, {}
local function slot_use(h)
  local use = slots[h.n]
  if not use then
    local key = plan.slots .. h.n
    redis.call('ZREMRANGEBYSCORE', key, '-inf', redis_now)  -- slots of killed workers, past their ttl
    local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    use = {key = key, n = redis.call('ZCARD', key), first = tonumber(first[2])}
    slots[h.n] = use
  end
  return use
end
local function start_use(h)
  local use = starts[h.n]
  if not use then
    local key = plan.starts .. h.n
    redis.call('ZREMRANGEBYSCORE', key, '-inf', redis_now - h.r[2])
    local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    use = {key = key, n = redis.call('ZCARD', key), first = tonumber(first[2]) or redis_now, denied = 0}
    starts[h.n] = use
  end
  return use
end

-- The event that has waited longest for handler h and is still queued (nil if none); entries of
-- events that left the queue are dropped on the way.
local function first_waiter(h)
  local key = plan.waiting .. h.n
  for _ = 1, 16 do
    local head = redis.call('ZRANGE', key, 0, 0)[1]
    if not head or redis.call('ZSCORE', KEYS[1], head) then return head end
    redis.call('ZREM', key, head)
  end
  return nil
end

-- Why handler h cannot start now, and when to look again; nil when it may (and whether as a probe).
local function hold_back(h, id)
  local p = paused[h.n]
  if p and (not p.until_ms or tonumber(p.until_ms) > now) then
    return 'paused', p.until_ms and math.min(tonumber(p.until_ms), now + plan.pause_ms) or now + plan.pause_ms
  end
  local br = h.b and tripped[h.n]
  if br then
    if now < tonumber(br.probe_ms) then return 'tripped', tonumber(br.probe_ms) end
    -- The probe is due. It goes to the event that has waited longest for this handler, so that
    -- probes rotate over the waiting events (a failed probe's event queues up again at the back).
    local head = first_waiter(h)
    if head and head ~= id then
      redis.call('ZADD', KEYS[1], 'XX', 'LT', now, head)
      if redis.call('EXISTS', prefix .. head) == 1 then redis.call('HSET', plan.event .. head, 'woken', '1') end
      return 'tripped', now + plan.probe_ms
    end
  end
  if h.c then
    local use = slot_use(h)
    if use.n >= h.c then return 'concurrency', math.min(now + plan.busy_ms, at(use.first or redis_now + plan.busy_ms)) end
  end
  if h.r then
    local use = start_use(h)
    if use.n >= h.r[1] then
      -- Spread the waiting events over the window instead of waking them all at the same moment.
      use.denied = use.denied + 1
      return 'rate', at(use.first + h.r[2] + math.floor((use.denied - 1) * h.r[2] / h.r[1]))
    end
  end
  return nil, br
end

-- Handler h of event id no longer waits for the handler itself.
local function forget_wait(h, id, key)
  redis.call('ZREM', plan.waiting .. h.n, id)
  redis.call('HDEL', key, 'wait:' .. h.n)
end

-- Take what handler h's run uses: a slot, a start, the breaker's probe; it no longer waits.
local function grant(h, id, key, waited, br)
  if h.c then
    local use = slot_use(h)
    redis.call('ZADD', use.key, redis_now + plan.slot_ttl_ms, id)
    use.n = use.n + 1
  end
  if h.r then
    local use = start_use(h)
    redis.call('ZADD', use.key, redis_now, id .. '@' .. redis_now)
    use.n = use.n + 1
  end
  if br then
    -- This run is the probe; the next may start one interval later, so probes rotate over the events.
    br.probe_ms = now + plan.probe_ms
    redis.call('HSET', KEYS[4], h.n, cjson.encode(br))
  end
  if waited then forget_wait(h, id, key) end
end

-- Handler h of event id waits for `reason` (not for order): listed with the handler, and the event
-- says why (`events show`), since when it first waited.
local function note_wait(h, id, key, waited, reason)
  local since = waited and string.match(waited, ' (%d+)$') or tostring(now)
  redis.call('ZADD', plan.waiting .. h.n, 'NX', since, id)
  if waited ~= reason .. ' ' .. since then redis.call('HSET', key, 'wait:' .. h.n, reason .. ' ' .. since) end
end

-- An event that no longer waits behind a dead one leaves oa:held and loses its reason.
local function unhold(id, key)
  if redis.call('ZREM', KEYS[2], id) == 1 then redis.call('HDEL', key, 'held_by') end
end

-- Run the event now (true, extra), or not yet (false, the score to wait until).
local function decide(id)
  local key = plan.event .. id
  local e = redis.call('HMGET', key, 'type', 'seq', 'state', 'lead_id', 'invoice_id')
  local event_type, seq, state = e[1], e[2], e[3]
  if not event_type or not seq or state == 'done' or state == 'dead' or state == 'purged' then
    unhold(id, key)
    return true, ''
  end
  local ids = {lead_id = e[4], invoice_id = e[5]}
  local mine, fields = {}, {}
  for _, h in ipairs(plan.handlers) do
    if matches(h.p, event_type) then
      mine[#mine + 1] = h
      fields[#fields + 1] = 'h:' .. h.n
      fields[#fields + 1] = 'wait:' .. h.n
    end
  end
  if #mine == 0 then
    unhold(id, key)
    return true, ''
  end
  local stored = redis.call('HMGET', key, unpack(fields))
  local run, skip, again, later, held = false, {}, nil, nil, nil
  local probes, waited = {}, {}
  local waits = false
  for j, h in ipairs(mine) do
    local raw, wait = stored[2 * j - 1], stored[2 * j]
    local s = raw and cjson.decode(raw) or {state = 'pending'}
    if s.state ~= 'pending' and wait then
      forget_wait(h, id, key)  -- it ran by another path (a replay, a deploy that removed a limit)
    elseif s.state == 'pending' then
      -- A missing next_ms is 0: a record may leave out fields that hold their defaults.
      local due_ms = tonumber(s.next_ms) or 0
      local by, holds = nil, false
      if h.k and ids[h.k] then by, holds = blocker(h, ids[h.k], seq) end
      local reason, at, br
      if by then
        -- Order comes first: while it waits for an earlier event it does not wait for the handler.
        if wait then forget_wait(h, id, key) end
        -- The earlier event's finish wakes this one (workers/runtime/lua/finish-12.lua).
        redis.call('HSET', plan.event .. by, 'w:' .. h.n, id)
        if holds and not held then held = h.n .. ' ' .. by end
        reason, at = 'order', now + (holds and plan.held_ms or plan.wait_ms)
      elseif due_ms > now then
        -- Its retry is not due yet: nothing to hold back, the job comes back when it is.
        if not later or due_ms < later then later = due_ms end
      else
        local why, what = hold_back(h, id)
        if why then reason, at = why, what else br = what end
      end
      if reason then
        skip[h.n] = reason
        waits = true
        if not again or at < again then again = at end
        if reason ~= 'order' then note_wait(h, id, key, wait, reason) end
      elseif due_ms <= now and not by then
        run = true
        grant(h, id, key, wait, br)
        if br then probes[#probes + 1] = h.n end
        if wait then
          local why, since = string.match(wait, '^(%S+) (%d+)$')
          if why then waited[h.n] = {why, tonumber(since)} end
        end
      end
    end
  end
  if held then
    redis.call('ZADD', KEYS[2], 'NX', now, id)
    redis.call('HSET', key, 'held_by', held)
  else
    unhold(id, key)
  end
  if not run and not waits and not later then return true, '' end
  if not run then
    if later and (not again or later < again) then again = later end
    return false, again
  end
  if not waits and #probes == 0 and next(waited) == nil then return true, '' end
  local extra = {s = skip, p = probes, w = waited}
  if again then extra.a = again end
  return true, cjson.encode(extra)
end

local count = 0
for i = 6, #ARGV do
  if count >= limit then break end
  local id = ARGV[i]
  local score = redis.call('ZSCORE', KEYS[1], id)
  if score and tonumber(score) <= now and redis.call('EXISTS', prefix .. id) == 0 then
    local run, how = decide(id)
    if run then
      redis.call('SET', prefix .. id, '1', 'PX', ttl)
      count = count + 1
      claimed[#claimed + 1] = id
      claimed[#claimed + 1] = score
      claimed[#claimed + 1] = how
    else
      redis.call('ZADD', KEYS[1], 'XX', string.format('%d', how), id)
      -- A job that waits is not run, so nothing else refreshes its expiry.
      redis.call('PEXPIRE', plan.job .. id, plan.job_ttl_ms)
    end
  end
end
return claimed
