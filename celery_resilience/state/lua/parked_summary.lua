-- parked_summary.lua: how many entries are parked, by reason, and the earliest due time.
--
-- KEYS[1] due zset, KEYS[2] claimed zset, KEYS[3] counts hash
-- Returns: JSON object
--   now ({seconds, microseconds}), waiting (entries in the due set), claimed (entries a
--   releaser holds), expired (claims whose lease ran out: due again), counts (flat list:
--   reason, entries, ...), oldest (the earliest due time of a waiting entry, as a decimal
--   string, or false)

--!include lib.lua

local now, ts = now_seconds()
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return cjson.encode({
  now = ts,
  waiting = redis.call('ZCARD', KEYS[1]),
  claimed = redis.call('ZCARD', KEYS[2]),
  expired = redis.call('ZCOUNT', KEYS[2], '-inf', fmt(now)),
  counts = redis.call('HGETALL', KEYS[3]),
  oldest = first[2] or false,
})
