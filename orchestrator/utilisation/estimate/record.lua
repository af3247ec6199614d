-- Fold one token event into a deployment's leaky bucket, at most once per (request, phase).
-- KEYS[1] bucket hash {level, at, hb, applied}; KEYS[2] the request's charge record.
-- ARGV: phase, prompt, cached, max_tokens, completion, weight, drain per second,
--       dedupe ttl ms, now in epoch seconds ('' = the server's TIME).
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
local delta
if phase == 'admit' then
  -- an admit arriving after its complete changes nothing: the complete charged it all
  if redis.call('HEXISTS', KEYS[2], 'complete') == 1 then return 0 end
  delta = input + max_tokens * weight
  redis.call('HSET', KEYS[2], 'admit', 1, 'input', input, 'max_tokens', max_tokens)
else
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
end
redis.call('PEXPIRE', KEYS[2], ARGV[8])
local level = tonumber(redis.call('HGET', KEYS[1], 'level') or '0')
local at = tonumber(redis.call('HGET', KEYS[1], 'at') or now)
level = math.max(0, level - rate * math.max(0, now - at))
level = math.max(0, level + delta)
redis.call('HSET', KEYS[1], 'level', tostring(level), 'at', tostring(now))
return 1
