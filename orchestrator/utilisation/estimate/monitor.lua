-- Fold one Azure Monitor minute (the deployment's own maximum utilisation of that minute)
-- into a deployment's estimate as a slow drift: how much fuller the deployment was than the
-- model's own peak of the same minute (never negative: a minutes-old signal may only ask
-- for less low-priority work). A minute no newer than the last one folded changes nothing.
-- KEYS[1] bucket hash. ARGV: 1 minute start, epoch s; 2 the minute's value (fraction).
-- Returns the drift stored (a string), or '' when the minute was not newer.
local minute = math.floor(tonumber(ARGV[1]) / 60)
local known = redis.call('HGET', KEYS[1], 'drift_minute')
if known and tonumber(known) >= minute then return '' end
local peak = 0
local cell = redis.call('HGET', KEYS[1], 'mx' .. (minute % 20))
if cell then
  local at, value = string.match(cell, '^(-?[%d.e+]+):(.+)$')
  if tonumber(at) == minute then peak = tonumber(value) end
end
local drift = math.max(0, tonumber(ARGV[2]) - peak)
redis.call('HSET', KEYS[1], 'drift', tostring(drift), 'drift_at', tostring((minute + 1) * 60),
  'drift_minute', string.format('%.0f', minute))
return tostring(drift)
