-- parked_claim.lua: claim up to ARGV[1] due entries for publishing, each with a lease.
--
-- First the claims whose lease ran out (their releaser died or hung), then the waiting
-- entries that are due, earliest first. A claimed entry leaves the due set for the claimed
-- set, scored by its lease expiry; parked_done.lua removes it once it was published.
--
-- KEYS[1] due zset, KEYS[2] claimed zset, KEYS[3] meta hash, KEYS[4] messages hash,
-- KEYS[5] counts hash, KEYS[6] claims hash (as in parked_add.lua)
-- ARGV[1] the most entries to claim (>= 1), ARGV[2] lease, seconds
-- Returns: a flat array: now seconds, now microseconds, then for each claimed entry:
--   id, meta JSON, message, times claimed (this claim included)

--!include lib.lua

local now, ts = now_seconds()
local limit = tonumber(ARGV[1])
local lease = tonumber(ARGV[2])
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', fmt(now), 'LIMIT', 0, limit)
if #ids < limit then
  local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', fmt(now), 'LIMIT', 0, limit - #ids)
  for _, id in ipairs(due) do
    redis.call('ZREM', KEYS[1], id)
    ids[#ids + 1] = id
  end
end
local out = {ts[1], ts[2]}
local expiry = fmt(now + lease)
for _, id in ipairs(ids) do
  local meta = redis.call('HGET', KEYS[3], id)
  local message = redis.call('HGET', KEYS[4], id)
  if meta and message then
    redis.call('ZADD', KEYS[2], expiry, id)
    local claims = redis.call('HINCRBY', KEYS[6], id, 1)
    out[#out + 1] = id
    out[#out + 1] = meta
    out[#out + 1] = message
    out[#out + 1] = claims
  else
    -- half an entry (never written so by these scripts): drop what is left of it
    redis.call('ZREM', KEYS[1], id)
    redis.call('ZREM', KEYS[2], id)
    redis.call('HDEL', KEYS[3], id)
    redis.call('HDEL', KEYS[4], id)
    redis.call('HDEL', KEYS[6], id)
    if meta then
      local reason = cjson.decode(meta).reason
      if reason and redis.call('HINCRBY', KEYS[5], reason, -1) <= 0 then
        redis.call('HDEL', KEYS[5], reason)
      end
    end
  end
end
return out
