-- parked_list.lua: one page of waiting entries, earliest due first (without messages).
--
-- KEYS[1] due zset, KEYS[2] meta hash, KEYS[3] claims hash
-- ARGV[1] first rank (0-based), ARGV[2] how many (>= 1)
-- Returns: a flat array: now seconds, now microseconds, then for each entry:
--   id, due time (the zset's score: an operator's release moves it), meta JSON (false
--   when missing), times claimed

--!include lib.lua

local _, ts = now_seconds()
local start = tonumber(ARGV[1])
local page = redis.call('ZRANGE', KEYS[1], start, start + tonumber(ARGV[2]) - 1, 'WITHSCORES')
local out = {ts[1], ts[2]}
for i = 1, #page, 2 do
  out[#out + 1] = page[i]
  out[#out + 1] = page[i + 1]
  out[#out + 1] = redis.call('HGET', KEYS[2], page[i])
  out[#out + 1] = tonumber(redis.call('HGET', KEYS[3], page[i]) or 0)
end
return out
