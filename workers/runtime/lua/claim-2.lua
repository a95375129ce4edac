-- Claim many due jobs at once: a job is claimed if nobody holds its in-progress key, it is still in
-- the queue with a score that is due and, when handlers are ordered, one of its handlers may run now.
-- Atomic, so no WATCH is needed and no two workers can both see an earlier event as finished.
-- Returns {id, score, id, score, ...} without an order (ARGV[5] ''), else {id, score, waiting, ...}
-- where `waiting` lists the claimed event's ordered handlers that must not run in this run.
--
-- KEYS[1] queue        oa:queue
-- KEYS[2] held         oa:held, events waiting behind a dead one (score: held since, ms)
--
-- ARGV[1] now, ms
-- ARGV[2] claim ttl, ms (arq's in-progress timeout)
-- ARGV[3] at most this many
-- ARGV[4] in-progress key prefix (arq:in-progress:)
-- ARGV[5] the order, JSON (workers/runtime/order.py), or '' when no handler is ordered:
--   event, job: key prefixes (oa:event:, arq:job:); job_ttl_ms; wait_ms, held_ms: when to look again
--   at an event that waits (a fallback: the earlier event's finish wakes it); handlers: [{n: name,
--   p: [patterns], and for an ordered one: k: key field, i: index key prefix, skip: on_dead=skip}]
-- ARGV[6..] candidate job ids
local now, ttl, limit, prefix = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), ARGV[4]
local claimed = {}
if ARGV[5] == '' then
  for i = 6, #ARGV do
    if #claimed >= 2 * limit then break end
    local id = ARGV[i]
    local score = redis.call('ZSCORE', KEYS[1], id)
    if score and tonumber(score) <= now and redis.call('SET', prefix .. id, '1', 'NX', 'PX', ttl) then
      claimed[#claimed + 1] = id
      claimed[#claimed + 1] = score
    end
  end
  return claimed
end

local order = cjson.decode(ARGV[5])

local function matches(patterns, event_type)
  for _, p in ipairs(patterns) do
    if p == '*' or p == event_type then return true end
    if string.sub(p, -2) == '.*' and string.sub(event_type, 1, #p - 1) == string.sub(p, 1, #p - 1) then
      return true
    end
  end
  return false
end

local function handler_state(raw)
  if not raw then return nil end
  return cjson.decode(raw).state
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
      local p = redis.call('HMGET', order.event .. pid, 'type', 'state', 'h:' .. h.n, 'replay_only')
      if p[1] and p[2] ~= 'purged' and matches(h.p, p[1]) then
        local s = handler_state(p[3])
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

-- An event that no longer waits behind a dead one leaves oa:held and loses its reason.
local function unhold(id, key)
  if redis.call('ZREM', KEYS[2], id) == 1 then redis.call('HDEL', key, 'held_by') end
end

-- Run the event now (true, waiting handler names), or not yet (false, the score to wait until).
local function decide(id)
  local key = order.event .. id
  local e = redis.call('HMGET', key, 'type', 'seq', 'state', 'lead_id', 'invoice_id')
  local event_type, seq, state = e[1], e[2], e[3]
  if not event_type or not seq or state == 'done' or state == 'dead' or state == 'purged' then
    unhold(id, key)
    return true, {}
  end
  local ids = {lead_id = e[4], invoice_id = e[5]}
  local mine, fields, keyed = {}, {}, false
  for _, h in ipairs(order.handlers) do
    if matches(h.p, event_type) then
      mine[#mine + 1] = h
      fields[#fields + 1] = 'h:' .. h.n
      if h.k and ids[h.k] then keyed = true end
    end
  end
  -- A held event whose handlers no longer ask for order (a deploy changed them) is not held.
  if not keyed then
    unhold(id, key)
    return true, {}
  end
  local states = redis.call('HMGET', key, unpack(fields))
  local run, waiting, next_ms, held = false, {}, nil, nil
  for j, h in ipairs(mine) do
    local s = {state = 'pending'}
    if states[j] then s = cjson.decode(states[j]) end
    -- A missing next_ms is 0: a record may leave out fields that hold their defaults.
    local due_ms = tonumber(s.next_ms) or 0
    if s.state == 'pending' then
      local by, holds = nil, false
      if h.k and ids[h.k] then by, holds = blocker(h, ids[h.k], seq) end
      if by then
        waiting[#waiting + 1] = h.n
        -- The earlier event's finish wakes this one (workers/runtime/lua/finish-9.lua).
        redis.call('HSET', order.event .. by, 'w:' .. h.n, id)
        if holds and not held then held = h.n .. ' ' .. by end
      elseif due_ms <= now then
        run = true
      elseif not next_ms or due_ms < next_ms then
        next_ms = due_ms
      end
    end
  end
  if held then
    redis.call('ZADD', KEYS[2], 'NX', now, id)
    redis.call('HSET', key, 'held_by', held)
  else
    unhold(id, key)
  end
  if run or (#waiting == 0 and not next_ms) then return true, waiting end
  if #waiting > 0 then
    local again = now + (held and order.held_ms or order.wait_ms)
    if not next_ms or again < next_ms then next_ms = again end
  end
  return false, next_ms
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
      redis.call('PEXPIRE', order.job .. id, order.job_ttl_ms)
    end
  end
end
return claimed
