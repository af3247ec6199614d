-- Fold one token event into a deployment's leaky bucket, at most once per (request, phase),
-- then (calibration on) let the deployment's own signal carried by the event correct it.
-- KEYS[1] bucket hash {level, at, hb, applied, c, c_at, obs, obs_at, floor}; KEYS[2] the
-- request's charge record.
-- ARGV: 1 phase (admit|complete|observe), 2 prompt, 3 cached, 4 max_tokens, 5 completion,
--       6 weight, 7 drain per second, 8 dedupe ttl ms, 9 now in epoch seconds ('' = TIME),
--       10 full level (100 %, in tokens), 11 observed utilisation ('' = none),
--       12 observation age s, 13 retry-after s ('' = not a 429),
--       14..18 tau up, tau down, negative decay s, positive decay s, max observation age s
--       (14 = '' : calibration off).
-- Returns 1 when applied, 0 for a duplicate.
local function now_s(arg)
  if arg ~= '' then return tonumber(arg) end
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

local now = now_s(ARGV[9])
local phase = ARGV[1]
if redis.call('HEXISTS', KEYS[2], phase) == 1 then return 0 end
local prompt, cached = tonumber(ARGV[2]), tonumber(ARGV[3])
local max_tokens, completion = tonumber(ARGV[4]), tonumber(ARGV[5])
local weight, rate = tonumber(ARGV[6]), tonumber(ARGV[7])
local input = math.max(0, prompt - cached)
local delta = 0
if phase == 'admit' then
  -- an admit arriving after its complete changes nothing: the complete charged it all
  if redis.call('HEXISTS', KEYS[2], 'complete') == 1 then return 0 end
  delta = input + max_tokens * weight
  redis.call('HSET', KEYS[2], 'admit', 1, 'input', input, 'max_tokens', max_tokens)
elseif phase == 'complete' then
  if redis.call('HEXISTS', KEYS[2], 'admit') == 1 then
    local charged_input = tonumber(redis.call('HGET', KEYS[2], 'input'))
    local charged_max = tonumber(redis.call('HGET', KEYS[2], 'max_tokens'))
    delta = (completion - charged_max) * weight
    -- the actual prompt (less cached) replaces the gateway's estimate when it is known
    if prompt > 0 then delta = delta + input - charged_input end
  else
    delta = input + completion * weight
  end
  redis.call('HSET', KEYS[2], 'complete', 1)
else
  redis.call('HSET', KEYS[2], 'observe', 1)
end
redis.call('PEXPIRE', KEYS[2], ARGV[8])
local level = tonumber(redis.call('HGET', KEYS[1], 'level') or '0')
local at = tonumber(redis.call('HGET', KEYS[1], 'at') or now)
level = math.max(0, level - rate * math.max(0, now - at))
level = math.max(0, level + delta)
redis.call('HSET', KEYS[1], 'level', tostring(level), 'at', tostring(now))
if ARGV[14] == '' or (ARGV[11] == '' and ARGV[13] == '') then return 1 end

-- calibration: the correction c (a fraction of capacity) moves toward what the deployment
-- reports; between observations it decays toward 0, fast when negative, slowly when positive
local tau_up, tau_down = tonumber(ARGV[14]), tonumber(ARGV[15])
local decay_neg, decay_pos, max_age = tonumber(ARGV[16]), tonumber(ARGV[17]), tonumber(ARGV[18])
local m = level / tonumber(ARGV[10])
local c = tonumber(redis.call('HGET', KEYS[1], 'c') or '0')
local c_at = tonumber(redis.call('HGET', KEYS[1], 'c_at') or now)
local dt = math.max(0, now - c_at)
if c < 0 then c = c * math.exp(-dt / decay_neg) else c = c * math.exp(-dt / decay_pos) end
if ARGV[11] ~= '' and tonumber(ARGV[12]) <= max_age then
  local h, t_obs = tonumber(ARGV[11]), now - tonumber(ARGV[12])
  local last = redis.call('HGET', KEYS[1], 'obs_at')
  local err = h - (m + c)
  local tau = tau_down
  if err > 0 then tau = tau_up end
  local gain = 1
  if last then gain = 1 - math.exp(-math.max(0, t_obs - tonumber(last)) / tau) end
  c = c + gain * err
  if not last or t_obs >= tonumber(last) then
    redis.call('HSET', KEYS[1], 'obs', tostring(h), 'obs_at', tostring(t_obs))
  end
end
if ARGV[13] ~= '' then
  -- a 429: the deployment is at or above 100 % now, and stays there for retry-after
  c = math.max(c, 1 - m)
  local floor = tonumber(redis.call('HGET', KEYS[1], 'floor') or '0')
  redis.call('HSET', KEYS[1], 'floor', tostring(math.max(floor, now + tonumber(ARGV[13]))),
    'throttled_at', tostring(now))
end
redis.call('HSET', KEYS[1], 'c', tostring(c), 'c_at', tostring(now))
return 1
