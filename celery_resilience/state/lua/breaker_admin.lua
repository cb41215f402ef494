-- breaker_admin.lua: read or change one breaker by hand.
--
-- KEYS[1] state hash, KEYS[2] window hash, KEYS[3] probes zset
-- ARGV[1]: JSON object
--   op  "status" | "open" | "close" | "reset"
--       status: read (an OPEN breaker whose time is up becomes HALF_OPEN, as at a gate)
--       open:   FORCED_OPEN until reset; close: FORCED_CLOSED until reset;
--       reset:  CLOSED with an empty window and the base open time
--   b   breaker {rate, min, win, of, ofm, hoc, z, k, rb?, rf?}
--   ttl seconds (optional): with open/close/reset, the state hash expires after this long
--       (a name no task declares); a gate or record of the breaker removes the expiry
-- Returns: JSON object
--   now ({seconds, microseconds}), st, ou (open until, 0 unless open), of (current open
--   time), ch (last change) (times as decimal strings),
--   rate, calls, failures, probes (live probe leases), shed (share of calls adaptive
--   throttling sheds now), first_attempts and retries (sent in the window, counted with a
--   retry budget), tr (transitions: list of {old, new})

--!include lib.lua

local args = cjson.decode(ARGV[1])
local b = args.b
local skey, wkey, pkey = KEYS[1], KEYS[2], KEYS[3]
local now, ts = now_seconds()
local res = {now = ts, tr = {}}
local st = breaker_phase(skey, now, res.tr)

local function set_state(new)
  if new ~= st then res.tr[#res.tr + 1] = {st, new} end
  st = new
end

if args.op == 'open' then
  redis.call('HSET', skey, 'st', 'forced_open', 'ch', fmt(now), 'hs', 0)
  redis.call('DEL', pkey)
  set_state('forced_open')
elseif args.op == 'close' then
  redis.call('HSET', skey, 'st', 'forced_closed', 'ch', fmt(now), 'hs', 0)
  redis.call('DEL', pkey)
  set_state('forced_closed')
elseif args.op == 'reset' then
  redis.call('HSET', skey, 'st', 'closed', 'ch', fmt(now), 'of', fmt(b.of), 'hs', 0, 'ou', 0,
             'tp', 0, 'so', 0)
  redis.call('DEL', wkey, pkey)
  set_state('closed')
end

if args.ttl and args.op ~= 'status' then
  pexpire_seconds(skey, args.ttl)
end

local ou, of, ch = unpack(redis.call('HMGET', skey, 'ou', 'of', 'ch'))
local succ, fail, req, recent, firsts, retries, probe, rejected, at_rate =
  window_totals(wkey, b, now, true)
redis.call('ZREMRANGEBYSCORE', pkey, '-inf', fmt(now))
res.st = st
res.ou = (st == 'open') and (ou or 0) or 0
res.of = tonumber(of) or b.of
res.ch = ch or 0
res.calls = succ + fail
res.failures = fail
res.rate = 0
if res.calls > 0 then res.rate = fail / res.calls end
res.probes = redis.call('ZCARD', pkey)
local ratio = sending_ratio(probe, b)
req = judged_requests(req, at_rate, ratio, b)
res.shed = (st == 'closed') and shed_share(req, recent, rejected, ratio, b) or 0
res.first_attempts = firsts
res.retries = retries
res.exists = redis.call('EXISTS', skey) == 1 or res.calls > 0
return cjson.encode(res)
