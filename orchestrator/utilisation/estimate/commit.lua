-- Store a stepped estimate state if nobody stored another since it was read (compare-and-set
-- on the version), and mark the token event applied, at most once per (request, phase).
-- KEYS[1] the estimate hash; KEYS[2] the request's charge record.
-- ARGV: 1 the version read, 2 the new state (JSON), 3 phase (admit|complete|observe|monitor),
--       4 input tokens charged, 5 max_tokens charged, 6 the record's time to live, ms,
--       7 the time of the step (epoch s; an admit's, for the sliding window's refund).
-- Returns 1 when stored, 0 when the event was applied already (nothing stored), -1 when the
-- state changed since it was read (nothing stored: read again and retry).
if (redis.call('HGET', KEYS[1], 'ver') or '0') ~= ARGV[1] then return -1 end
local phase = ARGV[3]
if phase ~= 'monitor' then
  if redis.call('HEXISTS', KEYS[2], phase) == 1 then return 0 end
  -- an admit arriving after its complete changes nothing: the complete charged it all
  if phase == 'admit' and redis.call('HEXISTS', KEYS[2], 'complete') == 1 then return 0 end
  if phase == 'admit' then
    redis.call('HSET', KEYS[2], 'admit', 1, 'input', ARGV[4], 'max_tokens', ARGV[5], 'at', ARGV[7])
  else
    redis.call('HSET', KEYS[2], phase, 1)
  end
  redis.call('PEXPIRE', KEYS[2], ARGV[6])
end
redis.call('HSET', KEYS[1], 'st', ARGV[2])
redis.call('HINCRBY', KEYS[1], 'ver', 1)
return 1
