-- wake_waiters(waiting, queue, now, event_prefix, in_progress_prefix, forget, count): the oldest
-- `count` events of the sorted set `waiting` (every one when count is 0) are due in `queue` at once
-- (never later than they already were); one that a worker is running now is marked `woken`, so that
-- its finish schedules it at once. With `forget` (a handler name), they also stop waiting for it:
-- out of `waiting`, and their `wait:<name>` field gone. Returns how many were woken.
local function wake_waiters(waiting, queue, now, event_prefix, in_progress_prefix, forget, count)
  local ids = redis.call('ZRANGE', waiting, 0, count - 1)
  for _, id in ipairs(ids) do
    redis.call('ZADD', queue, 'XX', 'LT', now, id)
    if redis.call('EXISTS', in_progress_prefix .. id) == 1 then
      redis.call('HSET', event_prefix .. id, 'woken', '1')
    end
    if forget then
      redis.call('ZREM', waiting, id)
      redis.call('HDEL', event_prefix .. id, 'wait:' .. forget)
    end
  end
  return #ids
end
