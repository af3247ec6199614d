-- A deployment's bucket drained up to now, its correction decayed up to now, and how old
-- that knowledge is.
-- KEYS[1] bucket hash (one key: the token-event stream is another Cluster slot, so the
-- caller reads the stream lag after this script, from the `applied` id returned).
-- ARGV: 1 drain per second, 2 now in epoch seconds ('' = the server's TIME),
--       3 negative decay s, 4 positive decay s ('' = calibration off), 5 look-ahead s.
-- Returns nil when no feeder ever wrote the bucket, else, as strings: {level, heartbeat age,
-- now, correction, correction age, observed, observation age, floor left, applied}: heartbeat age
-- is -1 without a heartbeat; now is the clock the script used (epoch s); applied is the
-- newest token-event id folded in, or ''; correction and floor left are 0 and
-- the ages and observed are '' when there is none (or calibration is off).
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
local c, c_age, obs, obs_age, floor_left = 0, '', '', '', 0
if ARGV[3] ~= '' then
  local f = redis.call('HMGET', KEYS[1], 'c', 'c_at', 'obs', 'obs_at', 'floor', 'throttled_at', 'v')
  if f[1] then
    local dt = math.max(0, now - tonumber(f[2]))
    c = tonumber(f[1])
    if c < 0 then c = c * math.exp(-dt / tonumber(ARGV[3]))
    else c = c * math.exp(-dt / tonumber(ARGV[4])) end
    -- the trend extrapolates up to 1 s past the newest signal, and a rising one looks ahead
    local v = tonumber(f[7] or '0')
    c = c + v * math.min(dt, 1) + math.max(0, v) * tonumber(ARGV[5])
    -- the correction is as old as the newest signal behind it (observation or 429)
    local newest = tonumber(f[4] or '0')
    if f[6] then newest = math.max(newest, tonumber(f[6])) end
    c_age = tostring(math.max(0, now - newest))
  end
  if f[3] then obs, obs_age = f[3], tostring(math.max(0, now - tonumber(f[4]))) end
  if f[5] then floor_left = math.max(0, tonumber(f[5]) - now) end
end
return {tostring(level), hb_age, tostring(now), tostring(c), c_age, obs, obs_age,
  tostring(floor_left), applied}
