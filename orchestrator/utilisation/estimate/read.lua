-- A deployment's bucket drained up to now, and how old that knowledge is.
-- KEYS[1] bucket hash; KEYS[2] the token-event stream.
-- ARGV: drain per second, now in epoch seconds ('' = the server's TIME).
-- Returns nil when no feeder ever wrote the bucket, else {level, heartbeat age, lag age}
-- as strings: heartbeat age is -1 without a heartbeat; lag age is how long the oldest
-- stream entry not yet folded in (after the bucket's `applied` id) has waited, else 0.
local function now_s(arg)
  if arg ~= '' then return tonumber(arg) end
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

if redis.call('EXISTS', KEYS[1]) == 0 then return nil end
local now = now_s(ARGV[2])
local level = tonumber(redis.call('HGET', KEYS[1], 'level') or '0')
local at = tonumber(redis.call('HGET', KEYS[1], 'at') or now)
level = math.max(0, level - tonumber(ARGV[1]) * math.max(0, now - at))
local hb = redis.call('HGET', KEYS[1], 'hb')
local hb_age = '-1'
if hb then hb_age = tostring(math.max(0, now - tonumber(hb))) end
local applied = redis.call('HGET', KEYS[1], 'applied')
local first
if applied then
  first = redis.call('XRANGE', KEYS[2], '(' .. applied, '+', 'COUNT', 1)
else
  first = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
end
local lag_age = 0
if #first > 0 then
  local ms = tonumber(string.match(first[1][1], '^(%d+)'))
  lag_age = math.max(0, now - ms / 1000)
end
return {tostring(level), hb_age, tostring(lag_age)}
