-- Resume a paused handler: its pause ends, and every event that waits for it is due at once.
-- Returns how many events were woken.
--
-- KEYS[1] paused       oa:paused
-- KEYS[2] waiting      oa:waiting:<name>
-- KEYS[3] queue        oa:queue
--
-- ARGV[1] one JSON object: name, now_ms, event and in_progress (key prefixes)
-- #include wake-waiters
local a = cjson.decode(ARGV[1])
redis.call('HDEL', KEYS[1], a.name)
return wake_waiters(KEYS[2], KEYS[3], a.now_ms, a.event, a.in_progress, a.name, 0)
