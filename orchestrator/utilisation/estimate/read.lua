-- A deployment's bucket drained up to now, its correction decayed up to now, and how old
-- that knowledge is.
-- KEYS[1] bucket hash (one key: the token-event stream is another Cluster slot, so the
-- caller reads the stream lag after this script, from the `applied` id returned).
-- ARGV: 1 drain per second, 2 now in epoch seconds ('' = the server's TIME),
--       3 negative decay s ('' = calibration off), 4 positive decay s, 5 look-ahead s,
--       6 full level (100 %, in tokens), 7 observations before the candidates are compared,
--       8 how much worse than the best a plausible candidate may score (a ratio),
--       9 max observation age s (older: the header is missing), 10 drift decay s,
--       11 how much the traffic we do not control may grow (factor), 12 over which s its
--       recent rate is measured.
-- Returns nil when no feeder ever wrote the bucket, else, as strings: {level, heartbeat age,
-- now, correction, correction age, observed, observation age, floor left, applied, model,
-- model kind, ahead}: heartbeat age
-- is -1 without a heartbeat; now is the clock the script used (epoch s); applied is the
-- newest token-event id folded in, or ''; correction and floor left are 0 and
-- the ages, observed, model and kind are '' when there is none (or calibration is off);
-- model is the chosen candidate's value (fraction) and kind its name (bucket|bucket/2|sliding);
-- ahead is the highest level a plausible candidate expects while nothing of ours starts.
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
local c, c_age, obs, obs_age, floor_left, model, kind, peak = 0, '', '', '', 0, '', '', ''
if ARGV[3] ~= '' then
  local full, min_obs, ratio = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
  local f = redis.call('HMGET', KEYS[1], 'c_at', 'obs', 'obs_at', 'floor', 'throttled_at', 'nobs')
  if f[1] then
    local dt = math.max(0, now - tonumber(f[1]))
    -- the sliding-window model: charges booked in slots of window / SLOTS, the oldest of
    -- the SLOTS + 1 kept leaving the window in proportion to the time gone
    local SLOTS, KEEP = 20, 28
    local unpack = unpack or table.unpack
    local slot_s = full / tonumber(ARGV[1]) / SLOTS
    local cur = math.floor(now / slot_s)
    local fields = {}
    for i = 0, KEEP - 1 do fields[#fields + 1] = 'r' .. i end
    local cells = redis.call('HMGET', KEYS[1], unpack(fields))
    local factor = tonumber(ARGV[11])
    local recent_slots = math.max(1, math.ceil(tonumber(ARGV[12]) / slot_s))
    local total, recent, longer, by_age = 0, 0, 0, {}
    for age = 0, SLOTS do by_age[age] = 0 end
    for i = 1, KEEP do
      if cells[i] then
        local at, value, own = string.match(cells[i], '^(-?[%d.e+]+):([^:]+):?(.*)$')
        local age = cur - tonumber(at)
        if age >= 0 and age <= SLOTS then
          local inside = math.max(0, math.min(1, ((tonumber(at) + 1 + SLOTS) * slot_s - now) / slot_s))
          total = total + tonumber(value) * inside
          by_age[age] = tonumber(value)
          local theirs = tonumber(value) - (tonumber(own) or 0)
          if age < recent_slots then recent = recent + theirs end
          if age < 3 * recent_slots then longer = longer + theirs end
        end
      end
    end
    -- where the window goes if nothing of ours starts: the traffic we do not control goes on
    -- at `factor` x its recent rate while the oldest charges age out; the highest point is
    -- now or when a slot starts leaving (slot age SLOTS - k at (cur + 1 + k) x slot_s)
    -- the recent rate is the higher of the last rate_s and of three times as long (a lull
    -- in interactive traffic is no promise)
    local part = now - cur * slot_s
    local rate = math.max(0, recent / ((recent_slots - 1) * slot_s + part),
      longer / ((3 * recent_slots - 1) * slot_s + part))
    local ahead, left = total, 0
    for age = 0, SLOTS - 1 do left = left + by_age[age] end
    for k = 0, SLOTS - 1 do
      ahead = math.max(ahead, left + factor * rate * ((cur + 1 + k) * slot_s - now))
      left = left - by_age[SLOTS - 1 - k]
    end
    local bucket = level / full
    local slide, slide_ahead = math.max(0, total) / full, math.max(0, ahead) / full
    local models = {{'', 'bucket', bucket, bucket}, {'h', 'bucket/2', 2 * bucket, 2 * bucket},
      {'s', 'sliding', slide, slide_ahead}, {'l', 'bucket', bucket, bucket},
      {'hl', 'bucket/2', 2 * bucket, 2 * bucket}, {'sl', 'sliding', slide, slide_ahead}}
    -- the corrected bucket (a level of its own, see record.lua) as of now
    local xs = redis.call('HMGET', KEYS[1], 'x', 'ux', 'xl', 'uxl', 'x_at')
    local corrected = {}
    if xs[5] then
      local xdt = math.max(0, now - tonumber(xs[5]))
      for i = 1, 2 do
        local ux = tonumber(xs[2 * i])
        if ux < 0 then ux = ux * math.exp(-xdt / tonumber(ARGV[3]))
        else ux = ux * math.exp(-xdt / tonumber(ARGV[4])) end
        corrected[i] = math.max(0, tonumber(xs[2 * i - 1]) + (ux - tonumber(ARGV[1]) / full) * xdt)
      end
    end
    -- every candidate as calibrated now, and its score (mean square error before learning)
    local values, best = {}, math.huge
    local scored = tonumber(f[6] or '0') >= min_obs
    for i, candidate in ipairs(models) do
      local k = candidate[1]
      local g = redis.call('HMGET', KEYS[1], 'c' .. k, 'v' .. k, 'e' .. k)
      local ci = tonumber(g[1] or '0')
      if ci < 0 then ci = ci * math.exp(-dt / tonumber(ARGV[3]))
      else ci = ci * math.exp(-dt / tonumber(ARGV[4])) end
      -- the trend extrapolates up to 1 s past the newest signal, and a rising one looks ahead
      local v = tonumber(g[2] or '0')
      ci = ci + v * math.min(dt, 1) + math.max(0, v) * tonumber(ARGV[5])
      local e = tonumber(g[3] or '0')
      values[i] = {candidate[2], candidate[3], ci, e, candidate[4] + ci}
      best = math.min(best, e)
    end
    for i, k in ipairs({'x', 'xl'}) do
      if corrected[i] then
        local e = tonumber(redis.call('HGET', KEYS[1], 'e' .. k) or '0')
        values[#values + 1] = {'bucket', bucket, corrected[i] - bucket, e, corrected[i]}
        best = math.min(best, e)
      end
    end
    -- the learnt sizes (record.lua): k x our bucket or window + b; a sliding one looks ahead
    local sized = {{'k', 'bucket', bucket, bucket}, {'kl', 'bucket', bucket, bucket},
      {'q', 'sliding', slide, slide_ahead}, {'ql', 'sliding', slide, slide_ahead}}
    for _, item in ipairs(sized) do
      local k = item[1]
      local g = redis.call('HMGET', KEYS[1], k, 'b' .. k, 'e' .. k)
      if g[1] then
        local size, b = tonumber(g[1]), tonumber(g[2])
        if b < 0 then b = b * math.exp(-dt / tonumber(ARGV[3]))
        else b = b * math.exp(-dt / tonumber(ARGV[4])) end
        local kind = item[2]
        if size > 1.2 or size < 0.8 then kind = kind .. string.format(' x%.1f', size) end
        values[#values + 1] = {kind, size * item[3], b, tonumber(g[3]), size * item[4] + b}
        best = math.min(best, tonumber(g[3]))
      end
    end
    -- the reading is the highest of the plausible candidates: our bucket until enough
    -- observations have been scored, then every candidate scoring within `ratio` of the
    -- best (a close call between two meanings errs toward less low-priority work)
    -- once the header stops, no score is fresh: every candidate is plausible again
    local stopped = scored and (not f[3] or now - tonumber(f[3]) > tonumber(ARGV[9]))
    local chosen, most = nil, 0
    for i, item in ipairs(values) do
      local plausible = i == 1
      if scored then plausible = stopped or item[4] <= ratio * best + 1e-4 end
      if plausible then
        if chosen == nil or item[2] + item[3] > chosen[2] + chosen[3] then chosen = item end
        most = math.max(most, item[5])
      end
    end
    kind, model, c, peak = chosen[1], tostring(chosen[2]), chosen[3], tostring(most)
    -- the correction is as old as the newest signal behind it (observation or 429)
    local newest = tonumber(f[3] or '0')
    if f[5] then newest = math.max(newest, tonumber(f[5])) end
    c_age = tostring(math.max(0, now - newest))
  end
  -- without a fresh header, the newest Azure Monitor minute's drift is the slow signal: the
  -- reading is at least our bucket plus that drift, fading over `drift decay` s
  local d = redis.call('HMGET', KEYS[1], 'drift', 'drift_at')
  local headerless = not f[3] or now - tonumber(f[3]) > tonumber(ARGV[9])
  if d[1] and headerless then
    local bucket = level / full
    local drift = tonumber(d[1]) * math.exp(-math.max(0, now - tonumber(d[2])) / tonumber(ARGV[10]))
    if model == '' then model, kind = tostring(bucket), 'bucket' end
    c = math.max(c, bucket + drift - tonumber(model))
    if c_age == '' then c_age = tostring(math.max(0, now - tonumber(d[2]))) end
  end
  if f[2] then obs, obs_age = f[2], tostring(math.max(0, now - tonumber(f[3]))) end
  if f[4] then floor_left = math.max(0, tonumber(f[4]) - now) end
end
return {tostring(level), hb_age, tostring(now), tostring(c), c_age, obs, obs_age,
  tostring(floor_left), applied, model, kind, peak}
