-- parked_done.lua: forget entries whose messages were published (or that an operator drops).
--
-- KEYS[1] due zset, KEYS[2] claimed zset, KEYS[3] meta hash, KEYS[4] messages hash,
-- KEYS[5] counts hash, KEYS[6] claims hash (as in parked_add.lua)
-- ARGV[1..n] entry ids
-- Returns: how many of the ids were parked (and are now gone)

local removed = 0
for i = 1, #ARGV do
  local id = ARGV[i]
  local meta = redis.call('HGET', KEYS[3], id)
  redis.call('ZREM', KEYS[1], id)
  redis.call('ZREM', KEYS[2], id)
  redis.call('HDEL', KEYS[4], id)
  redis.call('HDEL', KEYS[6], id)
  if meta then
    redis.call('HDEL', KEYS[3], id)
    local reason = cjson.decode(meta).reason
    if reason and redis.call('HINCRBY', KEYS[5], reason, -1) <= 0 then
      redis.call('HDEL', KEYS[5], reason)
    end
    removed = removed + 1
  end
end
return removed
