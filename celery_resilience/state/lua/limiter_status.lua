-- limiter_status.lua: read a rate limiter and a concurrency limiter without changing them.
--
-- KEYS[1] limiter hash (fields tat, pu, and the lots of grants ahead k1/e1, k2/e2: see
-- gate.lua), KEYS[2] concurrency slots zset
-- ARGV[1]: JSON object {tau, T}: the limiter's burst tolerance and interval, seconds
-- Returns: JSON object
--   now ({seconds, microseconds}), wait (seconds before a new ask would be granted), paused_until (0: not paused),
--   in_use (live concurrency slots), exists

--!include lib.lua

local args = cjson.decode(ARGV[1])
local now, ts = now_seconds()
local tat, pu, k1, e1, k2, e2 = unpack(redis.call('HMGET', KEYS[1], 'tat', 'pu', 'k1', 'e1', 'k2', 'e2'))
tat = tonumber(tat) or 0
pu = tonumber(pu) or 0
-- grants ahead still held take their calls out of the burst (void ones count as made)
local lots, frontiers = limiter_lots(k1, e1, k2, e2), {tat}
settle_lots(lots, now, args.T, frontiers)
tat = frontiers[1]
local held = lots[1][1] + lots[2][1]
local in_use = redis.call('ZCOUNT', KEYS[2], '(' .. fmt(now), '+inf')
return cjson.encode({
  now = ts,
  wait = math.max(tat - args.tau + held * args.T - now, 0),
  paused_until = (pu > now) and fmt(pu) or 0,
  in_use = in_use,
  exists = redis.call('EXISTS', KEYS[1]) == 1 or in_use > 0,
})
