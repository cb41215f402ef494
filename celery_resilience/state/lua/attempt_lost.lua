-- attempt_lost.lua: give back the lease of an attempt whose process is known to be dead.
--
-- KEYS[1]: the attempt lease string
-- ARGV[1]: JSON object {o = the owner the dead process wrote in its lease}
-- Returns: JSON object
--   dropped  true when the lease was running under that owner and is now gone; false
--            when it is held by another process, marked done or retried, or absent

--!include lib.lua

local args = cjson.decode(ARGV[1])
local now, ts = now_seconds()
local kind, _, owner = get_lease(KEYS[1], now)
local dropped = kind == 'run' and owner == args.o
if dropped then
  redis.call('DEL', KEYS[1])
end
return cjson.encode({now = ts, dropped = dropped})
