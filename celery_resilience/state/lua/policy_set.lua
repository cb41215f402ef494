-- policy_set.lua: replace the run-time overrides of one named policy, versioned.
--
-- KEYS[1] the overrides hash (field: policy name, value: JSON {v, values, at})
-- ARGV[1] policy name
-- ARGV[2] the version the caller read (0: none yet); a different current version fails
-- ARGV[3] the new overrides, JSON object (already checked by the caller)
-- Returns: the new version (an integer), or -1 when the current version was not ARGV[2]
--          (someone else changed the policy meanwhile: read again and retry)

--!include lib.lua

local now = now_seconds()
local current = redis.call('HGET', KEYS[1], ARGV[1])
local version = 0
if current then version = cjson.decode(current).v end
if version ~= tonumber(ARGV[2]) then return -1 end
local entry = '{"v":' .. (version + 1) .. ',"at":' .. fmt(now) .. ',"values":' .. ARGV[3] .. '}'
redis.call('HSET', KEYS[1], ARGV[1], entry)
return version + 1
