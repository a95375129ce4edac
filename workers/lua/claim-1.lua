-- Claim many due jobs at once: a job is claimed if nobody holds its in-progress key and it is still
-- in the queue with a score that is due. Atomic, so no WATCH is needed.
-- Returns {id, score, id, score, ...} of the jobs claimed, in the order given (queue order).
--
-- KEYS[1] queue        oa:queue
--
-- ARGV[1] now, ms
-- ARGV[2] claim ttl, ms (arq's in-progress timeout)
-- ARGV[3] at most this many
-- ARGV[4] in-progress key prefix (arq:in-progress:)
-- ARGV[5..] candidate job ids
local now, ttl, limit, prefix = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), ARGV[4]
local claimed = {}
for i = 5, #ARGV do
  if #claimed >= 2 * limit then break end
  local id = ARGV[i]
  local score = redis.call('ZSCORE', KEYS[1], id)
  if score and tonumber(score) <= now and redis.call('SET', prefix .. id, '1', 'NX', 'PX', ttl) then
    claimed[#claimed + 1] = id
    claimed[#claimed + 1] = score
  end
end
return claimed
