-- Declare a feeder alive for each bucket; optionally advance the bucket's `applied`
-- stream id (the newest token-event entry folded in), never moving it backwards.
-- KEYS: bucket hashes (the caller passes one: each deployment is its own Cluster slot). ARGV: now in epoch seconds ('' = the server's TIME), applied id|''.
local function now_s(arg)
  if arg ~= '' then return tonumber(arg) end
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end

local function newer(a, b)
  local ams, aseq = parse(a)
  local bms, bseq = parse(b)
  return ams > bms or (ams == bms and aseq > bseq)
end

local now = tostring(now_s(ARGV[1]))
local applied = ARGV[2]
for _, key in ipairs(KEYS) do
  redis.call('HSET', key, 'hb', now)
  if applied ~= '' then
    local current = redis.call('HGET', key, 'applied')
    if not current or newer(applied, current) then redis.call('HSET', key, 'applied', applied) end
  end
end
return #KEYS
