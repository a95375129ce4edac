-- Purge one dead event: drop its body and errors, keep a tombstone (id, body hash, type, receive
-- time, secret) for dedup until it expires. One script, so a replay cannot slip in between the
-- check that the event is dead and the purge (it would end as a queued event marked purged).
--
-- KEYS[1]  the event's ledger hash
-- KEYS[2]  the dead-letter sorted set
-- ARGV[1]  the event id
-- ARGV[2]  seconds the tombstone is kept
-- ARGV[3..] the fields the tombstone keeps
-- Returns 1 when purged, 0 when the event is not (or no longer) dead.
if redis.call('HGET', KEYS[1], 'state') ~= 'dead' then
  return 0
end
local keep = {}
for i = 3, #ARGV do
  keep[ARGV[i]] = true
end
local drop = {}
for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
  if not keep[field] then
    drop[#drop + 1] = field
  end
end
if #drop > 0 then
  redis.call('HDEL', KEYS[1], unpack(drop))
end
redis.call('HSET', KEYS[1], 'state', 'purged')
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
