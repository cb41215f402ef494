-- record.lua: report the outcome of one attempt, atomically and in one round trip.
--
-- KEYS, only those of the parts present in ARGV[1], in this order:
--   breaker present:      state hash, window hash, probes zset
--   concurrency present:  slots zset (this attempt's slot is released)
--   limiter present:      limiter hash (paused when "pause" is given)
--   attempt present:      attempt lease string (marked done)
-- ARGV[1]: JSON object
--   h  holder: the id the attempt used at the gate
--   b  breaker {rate, min, win, of, ofm, hoc, z, k, outcome = "success"|"failure"|"neutral",
--      probe = true|false, n = successes of earlier attempts of the caller's process,
--      reported late, counted before the outcome (optional, default 0), q = calls this
--      process sent on grants ahead (gate.lua), counted as sent while the breaker is
--      closed (optional, default 0)}   (optional)
--   c  concurrency {}                                               (optional)
--   l  limiter {T, tau, pause = seconds}                            (optional)
--   a  attempt {ttl, mark}: mark = "done" (finished), "retried" (failed; its retry is
--      being published), or "released" (drop the lease: the same attempt comes back)
-- Returns: JSON object
--   now  Redis server time: {seconds, microseconds}
--   st   breaker state after the call ("" without a breaker)
--   ou   breaker open-until time, as a decimal string (0 unless open)
--   rate failure ratio in the window, calls: outcomes in the window
--   tr   breaker transitions made by this call: list of {old, new}
--   ov   the keyed parts that used their name's overflow state: {b?, c?, l?} = true
-- Keyed parts carry kk, mk and idle as in gate.lua, followed by the same extra KEYS.

--!include lib.lua

local args = cjson.decode(ARGV[1])
local now, ts = now_seconds()
local holder = args.h
local p = part_keys(args)
local res = {now = ts, st = '', ou = 0, rate = 0, calls = 0, tr = {}}
-- keyed parts: the state the gate gave the key (its own while it is live, else overflow)
res.ov = pick_keys(p, now, false)
local skey, wkey, pkey = p.state, p.window, p.probes
local ckey, lkey, akey = p.slots, p.limiter, p.attempt

local function open_breaker(old, open_for)
  local ou = fmt(now + open_for)
  redis.call('HSET', skey, 'st', 'open', 'ou', ou, 'of', fmt(open_for), 'ch', fmt(now), 'hs', 0,
             'tp', 0, 'so', 0)
  redis.call('DEL', pkey)
  res.tr[#res.tr + 1] = {old, 'open'}
  res.st = 'open'
  res.ou = ou
end

if skey then
  local b = args.b
  if not p.kb then claim_breaker(skey) end
  local st, _, tp = breaker_phase(skey, now, res.tr)
  res.st = st
  if st == 'closed' or st == 'forced_open' or st == 'forced_closed' then
    if b.n and b.n > 0 then
      window_add(wkey, b, now, 's', b.n)
    end
    if b.q and b.q > 0 and st == 'closed' and (b.k or 0) > 0 then
      window_add(wkey, b, now, 'q', b.q)
    end
    if b.outcome == 'success' then
      window_add(wkey, b, now, 's')
    elseif b.outcome == 'failure' then
      window_add(wkey, b, now, 'f')
    end
    local succ, fail, req, recent, _, _, probe, rejected, at_rate = window_totals(wkey, b, now)
    res.calls = succ + fail
    if res.calls > 0 then res.rate = fail / res.calls end
    if st == 'closed' and b.outcome == 'failure' and trips(fail, res.calls, b)
        and not held_closed(fail, res.calls, recent, probe, b) then
      open_breaker('closed', b.of)
    elseif st == 'closed' then
      local ratio = sending_ratio(probe, b)
      req = judged_requests(req, at_rate, ratio, b)
      store_shed(skey, tp, shed_share(req, recent, rejected, probe_ratio(ratio, false), b))
    end
  elseif st == 'half_open' and b.probe and redis.call('ZREM', pkey, holder) == 1 then
    -- only a live probe decides (a stale or foreign report does not)
    if b.outcome == 'failure' then
      local last = tonumber(redis.call('HGET', skey, 'of')) or b.of
      open_breaker('half_open', math.min(math.max(last * 2, b.of), b.ofm))
    elseif b.outcome == 'success' then
      local hs = redis.call('HINCRBY', skey, 'hs', 1)
      if hs >= b.hoc then
        redis.call('HSET', skey, 'st', 'closed', 'ch', fmt(now), 'of', fmt(b.of), 'hs', 0,
                   'tp', 0, 'so', 0)
        redis.call('DEL', wkey, pkey)
        res.tr[#res.tr + 1] = {'half_open', 'closed'}
        res.st = 'closed'
      end
    end
  elseif st == 'open' then
    res.ou = redis.call('HGET', skey, 'ou') or 0
  end
end

if ckey then
  redis.call('ZREM', ckey, holder)
end

if lkey and args.l.pause then
  local l = args.l
  local until_ = now + args.l.pause
  local tat, atat, pu = unpack(redis.call('HMGET', lkey, 'tat', 'atat', 'pu'))
  tat = math.max(tonumber(tat) or 0, until_ + l.tau)
  atat = math.max(tonumber(atat) or 0, until_ + l.tau)
  pu = math.max(tonumber(pu) or 0, until_)
  redis.call('HSET', lkey, 'tat', fmt(tat), 'atat', fmt(atat), 'pu', fmt(pu))
  pexpire_seconds(lkey, math.max(tat, atat, pu) - now + l.T + 1)
end

if akey and args.a.mark == 'released' then
  redis.call('DEL', akey)
elseif akey then
  set_lease(akey, args.a.mark, now, args.a.ttl)
end

expire_keyed(p)
return cjson.encode(res)
