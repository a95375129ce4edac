-- Begin a run of an event: mark it processing and count an attempt for each handler that is due.
-- Returns nil (no ledger entry), {state} (already finished), or
-- {'processing', body, received_ms, traceparent ('' for none), <due flag '0'|'1'><handler state json>, ...}
-- in ARGV order;
-- the flag is '-' (and no json follows) for a handler left out of a replay restricted to others
-- (field `replay_only`, a JSON list written by service/store/history.py's replay script).
--
-- KEYS[1] event        oa:event:<id>
--
-- ARGV[1] now, ms
-- ARGV[2..] handler names
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return false end
if state == 'done' or state == 'dead' or state == 'purged' then return {state} end
redis.call('HSET', KEYS[1], 'state', 'processing', 'processing_ms', ARGV[1])
local entry = redis.call('HMGET', KEYS[1], 'body', 'received_ms', 'traceparent')
local out = {'processing', entry[1], entry[2], entry[3] or ''}
local now = tonumber(ARGV[1])
local only = redis.call('HGET', KEYS[1], 'replay_only')
local allowed = nil
if only then
  allowed = {}
  for _, n in ipairs(cjson.decode(only)) do allowed[n] = true end
end
for i = 2, #ARGV do
  local name = 'h:' .. ARGV[i]
  local raw = redis.call('HGET', KEYS[1], name)
  local h
  if raw then h = cjson.decode(raw) else h = {state = 'pending', attempts = 0, next_ms = 0} end
  if allowed and not allowed[ARGV[i]] and not raw then h = nil end
  if h == nil then
    out[#out + 1] = '-'
  else
    local due = '0'
    -- A record leaves out the fields that hold their defaults (workers/runtime/journal.py HandlerState).
    if h.state == 'pending' and (tonumber(h.next_ms) or 0) <= now then
      h.attempts = (tonumber(h.attempts) or 0) + 1
      due = '1'
    end
    raw = cjson.encode(h)
    if due == '1' then redis.call('HSET', KEYS[1], name, raw) end
    out[#out + 1] = due .. raw
  end
end
return out
