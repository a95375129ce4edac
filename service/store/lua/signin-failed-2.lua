-- A wrong console token from one client address: count it in a sliding window, and once the
-- window holds `limit` of them, pause sign-in for that address (service/store/sessions.py).
--
-- KEYS[1]  the address's recent failures: a sorted set, member per failure, score its time (ms)
-- KEYS[2]  the address's pause: a string that exists while sign-in is paused for it
-- ARGV[1]  JSON: {"now_ms", "window_ms", "limit", "pause_ms", "member"}
-- Returns 1 when this failure started the pause (so it is logged once), 0 otherwise.
local a = cjson.decode(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', a.now_ms - a.window_ms)
redis.call('ZADD', KEYS[1], a.now_ms, a.member)
redis.call('PEXPIRE', KEYS[1], a.window_ms)
if redis.call('ZCARD', KEYS[1]) < a.limit then
  return 0
end
redis.call('DEL', KEYS[1])
if redis.call('SET', KEYS[2], '1', 'PX', a.pause_ms, 'NX') then
  return 1
end
return 0
