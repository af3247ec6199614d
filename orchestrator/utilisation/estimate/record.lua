-- Fold one token event into a deployment's leaky bucket, at most once per (request, phase),
-- then (calibration on) let the deployment's own signal carried by the event correct it.
-- KEYS[1] bucket hash {level, at, hb, applied, r0..r19 (sliding slots), c|ch|cs, v.., e..,
-- c_at, obs, obs_at, nobs, floor, mx0..mx19 (minute peaks), drift, drift_at, drift_minute}; KEYS[2] the
-- request's charge record.
-- ARGV: 1 phase (admit|complete|observe), 2 prompt, 3 cached, 4 max_tokens, 5 completion,
--       6 weight, 7 drain per second, 8 dedupe ttl ms, 9 now in epoch seconds ('' = TIME),
--       10 full level (100 %, in tokens), 11 observed utilisation ('' = none),
--       12 observation age s, 13 retry-after s ('' = not a 429),
--       14..21 tau up, tau down, negative decay s, positive decay s, max observation age s,
--       trend s (0 = no trend), max trend per s, score s (14 = '' : calibration off),
--       22 '1' when the event is the worker's own (low priority), else '', 23 header lag s,
--       24 noise band (errors up to it take the slow gain either way).
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
if ARGV[14] == '' then return 1 end

-- the sliding-window model: the same charges summed over the trailing window, in slots of
-- window / SLOTS (KEEP kept: the oldest leave in proportion to the time gone, and a few
-- seconds of the past stay known); a completion corrects the slot of its admission (it
-- leaves the window with it)
local SLOTS, KEEP = 20, 28
local unpack = unpack or table.unpack
local full = tonumber(ARGV[10])
local slot_s = full / rate / SLOTS
local cur = math.floor(now / slot_s)
-- a slot is 'index:charges:low-priority charges' (the worker's own calls, ARGV[22] = '1')
local low = ARGV[22] == '1'
local function book(slot, amount)
  if amount == 0 or cur - slot >= KEEP then return end
  local field = 'r' .. (slot % KEEP)
  local cell = redis.call('HGET', KEYS[1], field)
  local sum, lp = 0, 0
  if cell then
    local at, value, own = string.match(cell, '^(-?[%d.e+]+):([^:]+):?(.*)$')
    if tonumber(at) == slot then sum, lp = tonumber(value), tonumber(own) or 0 end
  end
  if low then lp = lp + amount end
  redis.call('HSET', KEYS[1], field,
    string.format('%.0f', slot) .. ':' .. tostring(sum + amount) .. ':' .. tostring(lp))
end
-- the model's highest level of each minute (20 kept), which an Azure Monitor minute, the
-- deployment's own maximum of that minute, is compared with (monitor.lua)
local minute = math.floor(now / 60)
local peak_field = 'mx' .. (minute % 20)
local peak_cell = redis.call('HGET', KEYS[1], peak_field)
local peak = level / full
if peak_cell then
  local at, value = string.match(peak_cell, '^(-?[%d.e+]+):(.+)$')
  if tonumber(at) == minute then peak = math.max(peak, tonumber(value)) end
end
redis.call('HSET', KEYS[1], peak_field, string.format('%.0f', minute) .. ':' .. tostring(peak))
if phase == 'admit' then
  redis.call('HSET', KEYS[2], 'slot', string.format('%.0f', cur))
  book(cur, delta)
elseif phase == 'complete' then
  book(tonumber(redis.call('HGET', KEYS[2], 'slot') or cur), delta)
end
-- the corrected bucket, a level of its own (twice: for a header on time and one `lag` s
-- late): filled by our charges and by an unseen inflow u it learns (other applications,
-- less capacity than the table), drained as ours, and set toward what the deployment
-- reports; u fades without news (fast when negative, slowly when positive)
local window = full / rate
local xs = redis.call('HMGET', KEYS[1], 'x', 'ux', 'xl', 'uxl', 'x_at')
local xdt = math.max(0, now - tonumber(xs[5] or now))
local states = {}
for i, k in ipairs({'x', 'xl'}) do
  local lx, ux = tonumber(xs[2 * i - 1] or tostring(level / full)), tonumber(xs[2 * i] or '0')
  lx = math.max(0, lx + (ux - 1 / window) * xdt)
  lx = math.max(0, lx + delta / full)
  if ux < 0 then ux = ux * math.exp(-xdt / tonumber(ARGV[16]))
  else ux = ux * math.exp(-xdt / tonumber(ARGV[17])) end
  states[k] = {lx, ux}
end
redis.call('HSET', KEYS[1], 'x', tostring(states.x[1]), 'ux', tostring(states.x[2]),
  'xl', tostring(states.xl[1]), 'uxl', tostring(states.xl[2]), 'x_at', tostring(now))
if ARGV[11] == '' and ARGV[13] == '' then return 1 end
-- the charges as they were at `t_at` (charges spread evenly in a slot): the sliding sum then,
-- and what was booked after it, both as fractions of 100 %
local function history(t_at)
  local fields = {}
  for i = 0, KEEP - 1 do fields[#fields + 1] = 'r' .. i end
  local cells = redis.call('HMGET', KEYS[1], unpack(fields))
  local inside, after = 0, 0
  for i = 1, KEEP do
    if cells[i] then
      local at, value = string.match(cells[i], '^(-?[%d.e+]+):([^:]+)')
      local j, v = tonumber(at), tonumber(value)
      if cur - j < KEEP then
        local start = j * slot_s
        local before = math.max(0, math.min(1, (t_at - start) / slot_s))
        if j == cur then before = math.max(0, math.min(1, (t_at - start) / math.max(now - start, 1e-9))) end
        local alive = math.max(0, math.min(1, (start + slot_s + window - t_at) / slot_s))
        inside = inside + v * math.min(before, alive)
        after = after + v * (1 - before)
      end
    end
  end
  return math.max(0, inside) / full, after / full
end

-- calibration: each candidate model of what the deployment means by utilisation (our
-- bucket; a bucket half the assumed size, i.e. twice our level; the sliding window) has its
-- own correction c (a fraction of capacity) that moves toward what the deployment reports,
-- with a trend v (per second) for errors that grow steadily (the model's drain or
-- increments are off), learnt over trend_s; between observations c decays toward 0 (fast
-- when negative, slowly when positive). Each candidate also keeps a score, the mean square
-- of the errors it made before learning from them (over score_s), by which the reading
-- chooses among them.
local tau_up, tau_down = tonumber(ARGV[14]), tonumber(ARGV[15])
local decay_neg, decay_pos, max_age = tonumber(ARGV[16]), tonumber(ARGV[17]), tonumber(ARGV[18])
local trend_s, max_trend = tonumber(ARGV[19]), tonumber(ARGV[20])
local score_s, band = tonumber(ARGV[21]), tonumber(ARGV[24])
local bucket = level / full
local lag = tonumber(ARGV[23])
local shared = redis.call('HMGET', KEYS[1], 'c_at', 'obs_at', 'nobs')
local c_at = tonumber(shared[1] or now)
local last = shared[2]
local dt = math.max(0, now - c_at)
local fresh = ARGV[11] ~= '' and tonumber(ARGV[12]) <= max_age
local h, t_obs, since = 0, now, 0
if fresh then
  h, t_obs = tonumber(ARGV[11]), now - tonumber(ARGV[12])
  if last then since = math.max(0, t_obs - tonumber(last)) end
end
-- every meaning twice: the header telling the level now, or `lag` s late (a deployment that
-- reports a delayed value); {suffix, value now, value the observation is compared with}
local slide_now = history(now)
local slide_then, since_then = history(t_obs - lag)
local bucket_then = math.max(0, bucket - since_then + (now - t_obs + lag) / window)
local models = {{'', bucket, bucket}, {'h', 2 * bucket, 2 * bucket}, {'s', slide_now, slide_now},
  {'l', bucket, bucket_then}, {'hl', 2 * bucket, 2 * bucket_then}, {'sl', slide_now, slide_then}}
for _, model in ipairs(models) do
  local k, m, seen = model[1], model[2], model[3]
  local f = redis.call('HMGET', KEYS[1], 'c' .. k, 'v' .. k, 'e' .. k)
  local c, v, e = tonumber(f[1] or '0'), tonumber(f[2] or '0'), tonumber(f[3] or '0')
  if c < 0 then c = c * math.exp(-dt / decay_neg) else c = c * math.exp(-dt / decay_pos) end
  -- the trend extrapolates for at most one second after the newest signal, then stops
  c = c + v * math.min(dt, 1)
  if dt > 1 then v = 0 end
  if fresh then
    local err = h - (seen + c)
    -- fuller than the model by more than the header's noise: the fast gain
    local tau = tau_down
    if err > band then tau = tau_up end
    local gain = 1
    if last then
      gain = 1 - math.exp(-since / tau)
      local w = 1 - math.exp(-since / score_s)
      e = e + w * (err * err - e)
    end
    c = c + gain * err
    if last and trend_s > 0 then
      -- the trend learns from the corrections it failed to predict, over trend_s
      local per_s = (1 - math.exp(-since / trend_s)) / math.max(since, 1e-3)
      v = math.max(-max_trend, math.min(max_trend, v + gain * err * per_s))
    end
  end
  if ARGV[13] ~= '' then
    -- a 429: the deployment is at or above 100 % now, and stays there for retry-after
    c = math.max(c, 1 - m)
    v = math.max(v, 0)
  end
  redis.call('HSET', KEYS[1], 'c' .. k, tostring(c), 'v' .. k, tostring(v), 'e' .. k, tostring(e))
end
for _, k in ipairs({'x', 'xl'}) do
  local lx, ux = states[k][1], states[k][2]
  local e = tonumber(redis.call('HGET', KEYS[1], 'e' .. k) or '0')
  if fresh then
    local seen = lx
    if k == 'xl' then seen = math.max(0, lx - since_then + (now - t_obs + lag) * (1 / window - ux)) end
    local err = h - seen
    local tau = tau_down
    if err > band then tau = tau_up end
    local gain = 1
    if last then
      gain = 1 - math.exp(-since / tau)
      e = e + (1 - math.exp(-since / score_s)) * (err * err - e)
    end
    lx = math.max(0, lx + gain * err)
    if last and trend_s > 0 then
      -- the inflow learns from the level changes it failed to predict, over trend_s; it
      -- never outruns the drain (a deployment cannot fill forever without refusing calls)
      local per_s = (1 - math.exp(-since / trend_s)) / math.max(since, 1e-3)
      ux = math.max(-max_trend, math.min(0.9 / window, ux + gain * err * per_s))
    end
  end
  if ARGV[13] ~= '' then
    lx = math.max(lx, 1)
    ux = math.max(ux, 0)
  end
  redis.call('HSET', KEYS[1], k, tostring(lx), 'u' .. k, tostring(ux), 'e' .. k, tostring(e))
end
-- a bucket or a sliding window of a size we learn: the deployment's level as k x ours + b
-- (a bucket F x ours reads 1/F x our level, a capacity F x the table 1/F x our charges), by
-- recursive least squares forgetting over score_s, on time and `lag` s late; k stays
-- within [0.25, 4]
for _, pair in ipairs({{'k', bucket}, {'kl', bucket_then}, {'q', slide_now}, {'ql', slide_then}}) do
  local k, m = pair[1], pair[2]
  local g = redis.call('HMGET', KEYS[1], k, 'b' .. k, 'p1' .. k, 'p2' .. k, 'p3' .. k, 'e' .. k)
  local gain_k, b = tonumber(g[1] or '1'), tonumber(g[2] or '0')
  local p1, p2, p3 = tonumber(g[3] or '1'), tonumber(g[4] or '0'), tonumber(g[5] or '1')
  local e = tonumber(g[6] or '0')
  if b < 0 then b = b * math.exp(-dt / decay_neg) else b = b * math.exp(-dt / decay_pos) end
  if fresh then
    local err = h - (gain_k * m + b)
    if last then
      e = e + (1 - math.exp(-since / score_s)) * (err * err - e)
      local lambda = math.exp(-since / score_s)
      local q1, q2 = p1 * m + p2, p2 * m + p3
      local denom = lambda + m * q1 + q2
      local g1, g2 = q1 / denom, q2 / denom
      gain_k = math.max(0.25, math.min(4, gain_k + g1 * err))
      b = b + g2 * err
      p1, p2, p3 = (p1 - g1 * q1) / lambda, (p2 - g1 * q2) / lambda, (p3 - g2 * q2) / lambda
      -- bounded, so a long quiet spell cannot make the next observation jump the estimate
      p1, p3 = math.min(p1, 100), math.min(p3, 100)
    else
      b = err + b
    end
  end
  if ARGV[13] ~= '' then b = math.max(b, 1 - gain_k * bucket) end
  redis.call('HSET', KEYS[1], k, tostring(gain_k), 'b' .. k, tostring(b), 'p1' .. k, tostring(p1),
    'p2' .. k, tostring(p2), 'p3' .. k, tostring(p3), 'e' .. k, tostring(e))
end
if fresh then
  if last then redis.call('HINCRBY', KEYS[1], 'nobs', 1) end
  if not last or t_obs >= tonumber(last) then
    redis.call('HSET', KEYS[1], 'obs', tostring(h), 'obs_at', tostring(t_obs))
  end
end
if ARGV[13] ~= '' then
  local floor = tonumber(redis.call('HGET', KEYS[1], 'floor') or '0')
  redis.call('HSET', KEYS[1], 'floor', tostring(math.max(floor, now + tonumber(ARGV[13]))),
    'throttled_at', tostring(now))
end
redis.call('HSET', KEYS[1], 'c_at', tostring(now))
return 1
