-- parked_add.lua: park one task message until its due time.
--
-- KEYS[1] due zset (id -> due time), KEYS[2] claimed zset (id -> lease expiry),
-- KEYS[3] meta hash (id -> JSON), KEYS[4] messages hash (id -> message),
-- KEYS[5] counts hash (reason -> entries), KEYS[6] claims hash (id -> times claimed)
-- ARGV[1] entry id (unique; chosen by the caller)
-- ARGV[2] JSON object {task_name, task_id, reason}
-- ARGV[3] the message (JSON text, stored as it is)
-- ARGV[4] delay, seconds: due = server time + max(delay, 0)
-- ARGV[5] the longest message accepted, bytes
-- Returns: JSON object
--   now ({seconds, microseconds}), due (decimal string), err: false, or "exists" (the id
--   is taken) or "too_large" (the message is longer than ARGV[5]); nothing is stored on err

--!include lib.lua

local now, ts = now_seconds()
local id = ARGV[1]
if #ARGV[3] > tonumber(ARGV[5]) then
  return cjson.encode({now = ts, due = 0, err = 'too_large'})
end
if redis.call('HEXISTS', KEYS[3], id) == 1 or redis.call('ZSCORE', KEYS[2], id) then
  return cjson.encode({now = ts, due = 0, err = 'exists'})
end
local meta = cjson.decode(ARGV[2])
local due = now + math.max(tonumber(ARGV[4]), 0)
meta.due = fmt(due)
meta.parked_at = fmt(now)
redis.call('HSET', KEYS[3], id, cjson.encode(meta))
redis.call('HSET', KEYS[4], id, ARGV[3])
redis.call('ZADD', KEYS[1], fmt(due), id)
redis.call('HINCRBY', KEYS[5], meta.reason, 1)
return cjson.encode({now = ts, due = fmt(due), err = false})
