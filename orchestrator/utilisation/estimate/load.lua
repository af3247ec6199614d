-- Read a deployment's estimate state and the server's clock, and (for a token event) the
-- request's charge record, so the caller can step the filter and commit with commit.lua.
-- KEYS[1] the estimate hash {st (the filter state, JSON), ver, hb, applied}; KEYS[2]
-- (optional) the request's charge record {admit, complete, observe, input, max_tokens, at}.
-- ARGV[1] now in epoch seconds ('' = the server's TIME).
-- Returns {exists (0|1), st, ver, hb, applied, now, admit, complete, observe, input,
-- max_tokens, at}: missing fields are ''.
local now = ARGV[1]
if now == '' then
  local t = redis.call('TIME')
  now = tostring(tonumber(t[1]) + tonumber(t[2]) / 1000000)
end
local f = redis.call('HMGET', KEYS[1], 'st', 'ver', 'hb', 'applied')
local out = {redis.call('EXISTS', KEYS[1]), f[1] or '', f[2] or '0', f[3] or '', f[4] or '', now}
if KEYS[2] then
  local r = redis.call('HMGET', KEYS[2], 'admit', 'complete', 'observe', 'input', 'max_tokens', 'at')
  for i = 1, 6 do out[#out + 1] = r[i] or '' end
end
return out
