-- A deployment's bucket drained up to now, and how old that knowledge is.
-- KEYS[1] bucket hash (one key: the token-event stream is another Cluster slot, so the
-- caller reads the stream lag after this script).
-- ARGV: drain per second, now in epoch seconds ('' = the server's TIME).
-- Returns nil when no feeder ever wrote the bucket, else {level, heartbeat age, now,
-- applied} as strings: heartbeat age is -1 without a heartbeat; `now` is the clock the
-- script used (epoch s); `applied` is the newest token-event id folded in, or ''.
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
local applied = redis.call('HGET', KEYS[1], 'applied') or ''
return {tostring(level), hb_age, tostring(now), applied}
