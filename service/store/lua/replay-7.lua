-- Replay a finished event: reset the handlers to run, record the replay, and queue a new arq job
-- through the same queue (and so the same retries and dead letters) as a live event.
-- Returns {'missing'}, {'not-final', state}, {'finishing', state}, or {'replayed' | 'dry-run',
-- handler name, ...}: the handlers reset; none for a done event that no handler has run yet (its
-- type's handlers run).
--
-- KEYS[1] event        oa:event:<id>
-- KEYS[2] job          arq:job:<id>
-- KEYS[3] queue        oa:queue
-- KEYS[4] pending      oa:pending
-- KEYS[5] dead         oa:dead
-- KEYS[6] retry        arq:retry:<id>, arq's try counter, which would carry on from the last run
-- KEYS[7] in-progress  arq:in-progress:<id>, a worker's claim on the event's job
--
-- ARGV[1] one JSON object: id, now_ms, job (arq job bytes as a string), queue_expiry_ms: strings;
--   handlers: [names] to run only those, or [] for the default (a dead event's dead handlers,
--   a done one's every handler); dead_only: true to refuse anything but a dead event (`dlq`);
--   dry_run: true to say what would run and change nothing.
local a = cjson.decode(ARGV[1])
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {'missing'} end
if not (state == 'dead' or (state == 'done' and not a.dead_only)) then return {'not-final', state} end
-- The finish script marks the event done or dead before arq's finish_job deletes the job key and
-- takes the id off the queue; a job queued in between would be deleted with it. So while the
-- claim lasts, the run is not over: 'finishing' (for milliseconds; after a worker was killed in
-- that gap, until its claim expires, arq's job timeout + 10 s).
if redis.call('EXISTS', KEYS[7]) == 1 then return {'finishing', state} end
local names = {}
local only = #a.handlers > 0
if only then
  for _, n in ipairs(a.handlers) do names[#names + 1] = n end
else
  local fields = redis.call('HGETALL', KEYS[1])
  for i = 1, #fields, 2 do
    if string.sub(fields[i], 1, 2) == 'h:' then
      if state ~= 'dead' or cjson.decode(fields[i + 1]).state == 'dead' then
        names[#names + 1] = string.sub(fields[i], 3)
      end
    end
  end
end
local out = {a.dry_run and 'dry-run' or 'replayed'}
for _, n in ipairs(names) do out[#out + 1] = n end
if a.dry_run then return out end
for _, n in ipairs(names) do
  local raw = redis.call('HGET', KEYS[1], 'h:' .. n)
  -- A handler without a record (added after the event ran) gets one when the worker runs it.
  if raw then
    local h = cjson.decode(raw)
    h.state, h.attempts, h.next_ms, h.finished_ms = 'pending', 0, 0, cjson.null
    h.replays = (tonumber(h.replays) or 0) + 1
    redis.call('HSET', KEYS[1], 'h:' .. n, cjson.encode(h))
  end
end
local replays = {}
local stored = redis.call('HGET', KEYS[1], 'replays')
if stored then replays = cjson.decode(stored) end
local entry = {at = tonumber(a.now_ms)}
if only then entry.handlers = a.handlers else entry.handlers = names; entry.default = true end
table.insert(replays, entry)
-- The last 20 replays are kept; each handler's own `replays` counts them all.
while #replays > 20 do table.remove(replays, 1) end
redis.call('HSET', KEYS[1], 'replays', cjson.encode(replays), 'state', 'queued', 'queued_ms', a.now_ms)
if only then
  redis.call('HSET', KEYS[1], 'replay_only', cjson.encode(a.handlers))
else
  redis.call('HDEL', KEYS[1], 'replay_only')
end
redis.call('HDEL', KEYS[1], 'dead_ms', 'done_ms')
-- A done event expires with the retention; a replayed one lives until it is done again.
redis.call('PERSIST', KEYS[1])
redis.call('ZREM', KEYS[5], a.id)
redis.call('ZADD', KEYS[4], a.now_ms, a.id)
redis.call('DEL', KEYS[6])
redis.call('SET', KEYS[2], a.job, 'PX', a.queue_expiry_ms)
redis.call('ZADD', KEYS[3], a.now_ms, a.id)
return out
