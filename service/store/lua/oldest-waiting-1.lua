-- The oldest event that is due and waiting for a worker: the lag that operators page on.
--
-- Running jobs stay in the queue with the score at which they became due (arq removes them when
-- they finish), so under saturation the oldest due entries are the running ones. This walks the
-- due range oldest first, in pages, and skips every entry whose in-progress key exists. It stops
-- at the first waiting entry, so it reads at most (running jobs + 1) entries: running jobs are at
-- most the fleet's concurrency. `most` bounds the walk should that ever be exceeded.
--
-- KEYS[1]  the queue (sorted set of job ids, scored by due time in ms)
-- ARGV[1]  now, in ms: entries scored up to it are due
-- ARGV[2]  the in-progress key prefix (arq's `arq:in-progress:`)
-- ARGV[3]  page size
-- ARGV[4]  most entries to walk; past it, the next due entry counts as waiting
-- Returns {score of the oldest waiting entry, or '' when none is due; running entries walked}
local now, prefix = ARGV[1], ARGV[2]
local page, most = tonumber(ARGV[3]), tonumber(ARGV[4])
local walked = 0
while true do
  local entries = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', walked, page)
  if #entries == 0 then
    return {'', walked}
  end
  for i = 1, #entries, 2 do
    if walked >= most or redis.call('EXISTS', prefix .. entries[i]) == 0 then
      return {entries[i + 1], walked}
    end
    walked = walked + 1
  end
end
