-- keys_status.lua: read the live keys of one keyed name, without changing anything.
--
-- KEYS[1] registry zset (key -> last use), KEYS[2] use counts hash (key -> uses,
--         "~overflow" -> uses of the overflow state)
-- ARGV[1]: JSON object
--   idle  seconds a key stays live after its last use
--   top   how many of the busiest keys to return
--   bs    (breakers only) the base of the name's keyed state keys, "<prefix>:breaker:{name}":
--         each live key's state hash "<bs>:key:<key>:state" is read to count the open
--         ones. These keys are not in KEYS: they are not known before the registry is
--         read; they share KEYS[1]'s hash tag, so they live in its Redis Cluster slot.
-- Returns: JSON object
--   now       Redis server time: {seconds, microseconds}
--   live      keys used within the last idle seconds
--   overflow  uses of the overflow state (calls of keys beyond max_keys)
--   top       list of {key, uses, last use (decimal string)}, busiest first
--   open      (breakers) live keys whose breaker is open or forced open
--   ovst      (breakers) the overflow state's breaker state ("" when it has none)

--!include lib.lua

local args = cjson.decode(ARGV[1])
local now, ts = now_seconds()
local live = redis.call('ZRANGEBYSCORE', KEYS[1], fmt(now - args.idle), '+inf', 'WITHSCORES')
local flat = redis.call('HGETALL', KEYS[2])
local uses, overflow = {}, 0
for i = 1, #flat, 2 do
  if flat[i] == OVERFLOW then
    overflow = tonumber(flat[i + 1])
  else
    uses[flat[i]] = tonumber(flat[i + 1])
  end
end
local rows, open = {}, 0
for i = 1, #live, 2 do
  local key = live[i]
  rows[#rows + 1] = {key, uses[key] or 0, live[i + 1]}
  if args.bs then
    local st, ou = unpack(redis.call('HMGET', args.bs .. ':key:' .. key .. ':state', 'st', 'ou'))
    if st == 'forced_open' or (st == 'open' and (tonumber(ou) or 0) > now) then
      open = open + 1
    end
  end
end
table.sort(rows, function(a, b)
  if a[2] ~= b[2] then return a[2] > b[2] end
  return a[1] < b[1]
end)
local top = {}
for i = 1, math.min(args.top, #rows) do top[i] = rows[i] end
local res = {now = ts, live = #rows, overflow = overflow, top = top, open = open, ovst = ''}
if args.bs then
  res.ovst = redis.call('HGET', args.bs .. ':overflow:state', 'st') or ''
end
return cjson.encode(res)
