-- parked_postpone.lua: put claimed entries back in the due set, due again later.
--
-- The releaser claimed them but found they should not go yet (their breaker is still
-- open): they wait again, without having been published.
--
-- KEYS[1] due zset, KEYS[2] claimed zset, KEYS[3] meta hash, KEYS[4] messages hash,
-- KEYS[5] counts hash, KEYS[6] claims hash (as in parked_add.lua)
-- ARGV[1..n] pairs: entry id, seconds from now
-- Returns: how many entries were put back (an entry no longer claimed is left alone)

--!include lib.lua

local now = now_seconds()
local moved = 0
for i = 1, #ARGV, 2 do
  local id, delay = ARGV[i], tonumber(ARGV[i + 1])
  if delay and redis.call('ZREM', KEYS[2], id) == 1 then
    redis.call('ZADD', KEYS[1], fmt(now + math.max(delay, 0)), id)
    -- not published: this claim does not count as one that ran out
    if redis.call('HINCRBY', KEYS[6], id, -1) <= 0 then
      redis.call('HDEL', KEYS[6], id)
    end
    moved = moved + 1
  end
end
return moved
