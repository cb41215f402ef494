-- parked_release.lua: make waiting entries due now (an operator pushes them on).
--
-- KEYS[1] due zset
-- ARGV[1] "1": count only (a dry run), "0": change
-- ARGV[2..n] entry ids
-- Returns: how many of the ids were waiting and not yet due (and are due now, unless a
--          dry run); claimed entries are being published already and are left alone

--!include lib.lua

local now = now_seconds()
local dry = ARGV[1] == '1'
local count = 0
for i = 2, #ARGV do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if score and tonumber(score) > now then
    if not dry then
      redis.call('ZADD', KEYS[1], 'XX', fmt(now), ARGV[i])
    end
    count = count + 1
  end
end
return count
