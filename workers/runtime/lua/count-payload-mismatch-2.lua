-- Count an event whose payload does not fit its type's model: once per event, though a retry or a
-- replay finds the mismatch again. The mark stays in the ledger entry (`dlq show` prints it).
--
-- KEYS[1]  the event's ledger hash
-- KEYS[2]  the stats hash
-- ARGV[1]  the event type
-- Returns 1 when this call counted it, 0 when an earlier run had.
if redis.call('HSETNX', KEYS[1], 'payload_mismatch', '1') == 0 then
  return 0
end
redis.call('HINCRBY', KEYS[2], 'payload_mismatch_total', 1)
redis.call('HINCRBY', KEYS[2], 'payload_mismatch:' .. ARGV[1], 1)
return 1
