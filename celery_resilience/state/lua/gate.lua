-- gate.lua: ask every gate of one attempt, atomically and in one round trip.
--
-- Order: attempt lease (not running or done elsewhere), breaker, concurrency limit,
-- rate limit. A later gate that says "wait" undoes what the earlier ones granted.
--
-- KEYS, only those of the gates present in ARGV[1], in this order:
--   breaker present:      state hash, window hash, probes zset
--   concurrency present:  slots zset
--   limiter present:      limiter hash (fields tat: bookings, atat: grants, pu: paused until)
--   attempt present:      attempt lease string
-- ARGV[1]: JSON object
--   h  holder: unique id of this attempt (task id and attempt number)
--   b  breaker {rate, min, win, of, ofm, hoc, lease, z, k, rb?, rf?}: rb, rf = the retry
--      budget (retries per first attempt) and its floor (retries a second)   (optional)
--   u  a number drawn uniformly from [0, 1): the call is shed when it falls below the
--      share adaptive throttling sheds plus what earlier calls owe to shedding
--      (optional: without it nothing is shed)
--   r  true when the attempt is a retry (it follows a failure)  (optional)
--   c  concurrency {limit, lease, poll}                       (optional)
--   l  limiter {T, tau, early, slack, slot?, max?, book?}: max = the longest wait worth
--      booking (the task's deadline); beyond it no slot is booked; book = reserve a
--      slot without granting it, even when there is room now (a message on arrival;
--      its attempt is granted the slot later)                 (optional)
--   a  attempt lease {lease, o?}: o names the process holding it (optional)
--   x  grants wanted ahead: how many more the caller's process may hand out itself
--      within AHEAD_FOR seconds (optional; see "Grants ahead" below)
--   b, c and l of a keyed limit also hold kk (the key, escaped), mk (max_keys) and idle
--   (seconds a key's state outlives its last use); see own_key in lib.lua
-- Returns: JSON object
--   ok     true when the attempt may run
--   now    Redis server time: {seconds, microseconds}
--   wait   seconds to wait before asking again (when not ok)
--   why    "breaker_open" | "breaker_half_open" | "throttled" | "retry_budget"
--          | "concurrency_full"
--          | "rate_limited"
--          | "running" | "done" | "retried" (when not ok; "retried": this attempt failed
--          and its retry was being published when its worker stopped)
--   st     breaker state after the call ("" without a breaker)
--   ou     breaker open-until time, as a decimal string (0 unless open)
--   probe  true when this attempt holds a half-open probe slot
--   shed   the share of calls adaptive throttling sheds (why = "throttled")
--   retries  {retries sent in the window, retries it allows} (why = "retry_budget")
--   slot   booked rate-limit slot, Redis time as a decimal string (why = "rate_limited")
--   tr     breaker transitions made by this call: list of {old, new}
--   ov     the keyed parts that used their name's overflow state: {b?, c?, l?} = true
--   ah     grants ahead (when ok and x was given): for each, the Redis time from which it
--          may be used, as a decimal string; empty when none is granted
--   au     the Redis time, as a decimal string, after which the grants ahead are void

--!include lib.lua

local args = cjson.decode(ARGV[1])
local now, ts = now_seconds()
local holder = args.h
local p = part_keys(args)
local res = {ok = false, now = ts, wait = 0, why = '', st = '', ou = 0, probe = false,
             slot = false, tr = {}}
local function answer()
  expire_keyed(p)
  return cjson.encode(res)
end

-- Keyed parts: the key's own state, or the overflow state (counted as a use either way).
res.ov = pick_keys(p, now, true)
local skey, wkey, pkey = p.state, p.window, p.probes
local ckey, lkey, akey = p.slots, p.limiter, p.attempt

-- Grants ahead: an attempt granted by a closed breaker that sheds nothing, and by a rate
-- limit of at least 1 / AHEAD_INTERVAL calls a second that nobody has booked ahead on,
-- may take up to x more grants for its process to hand out within AHEAD_FOR seconds.
-- A breaker alone gives them freely. A rate limit gives them out of its burst only, and
-- keeps them as lots (k1/e1, k2/e2 in its hash: calls, and when they are void): while a
-- lot is held the burst left to everyone else is smaller by its calls, and once void its
-- calls count as made at its end, the latest any of them can have been made. So however
-- late a process uses what it holds, no window of the limit holds more calls than its
-- rate and burst allow. Nothing with a lease of its own (probe, concurrency slot,
-- attempt lease), a retry budget or a key gets any.
local AHEAD_FOR, AHEAD_INTERVAL = 0.1, 0.01
local ahead_ok = (args.x or 0) > 0 and not akey and not ckey and not p.kb and not p.kl

-- 1. Attempt lease: the same attempt never runs twice at once, nor again once done.
if akey then
  local held, expiry = get_lease(akey, now)
  if held == 'done' or held == 'retried' then
    res.why = held
    return answer()
  elseif held then
    res.why = 'running'
    res.wait = expiry - now
    return answer()
  end
end

-- 2. Breaker (its adaptive throttling and its retry budget).
local asked, budgeted = false, false
if skey then
  local b = args.b
  if not p.kb then claim_breaker(skey) end
  local st, ou, tp = breaker_phase(skey, now, res.tr)
  res.st = st
  if st ~= 'closed' then ahead_ok = false end
  if st == 'open' then
    res.ou = fmt(ou)
    res.why = 'breaker_open'
    res.wait = ou - now
    return answer()
  elseif st == 'forced_open' then
    res.why = 'breaker_open'
    res.wait = b.of
    return answer()
  elseif st == 'half_open' then
    redis.call('ZREMRANGEBYSCORE', pkey, '-inf', fmt(now))
    if redis.call('ZCARD', pkey) < b.hoc then
      redis.call('ZADD', pkey, fmt(now + b.lease), holder)
      extend_ttl(pkey, b.lease * 2)
      res.probe = true
    else
      local first = redis.call('ZRANGE', pkey, 0, 0, 'WITHSCORES')
      res.why = 'breaker_half_open'
      res.wait = math.max(tonumber(first[2]) - now, 0)
      return answer()
    end
  elseif st == 'closed' then
    ahead_ok = ahead_ok and tp <= 0 and not ((b.rb or 0) > 0)
    -- adaptive throttling: count the call; while some are shed, work out afresh how many.
    -- The retry budget: count first attempts and retries; refuse a retry beyond it.
    asked = (b.k or 0) > 0
    budgeted = (b.rb or 0) > 0
    local judged = budgeted and args.r
    local _, _, req, recent, firsts, retries, probe, rejected, at_rate
    if judged or (asked and tp > 0) then
      _, _, req, recent, firsts, retries, probe, rejected, at_rate = window_totals(wkey, b, now)
    end
    if judged then
      local allowed = retry_allowance(firsts, b)
      if retries >= allowed then
        res.why = 'retry_budget'
        res.retries = {retries, allowed}
        res.wait = b.win / 10
        return answer()
      end
    end
    if asked and tp > 0 then
      local ratio = sending_ratio(probe, b)
      req = judged_requests(req, at_rate, ratio, b)
      store_shed(skey, tp, shed_share(req + 1, recent, rejected, probe_ratio(ratio, false), b))
      local share = shed_share(req + 1, recent, rejected, probe_ratio(ratio, odd_now(now, b)), b)
      if args.u then
        -- shed evenly: what the calls before this one owe to shedding is kept as "so"
        local owed = tonumber(redis.call('HGET', skey, 'so')) or 0
        local shed, left = shed_call(share, owed, args.u)
        if left ~= owed then redis.call('HSET', skey, 'so', string.format('%.17g', left)) end
        if shed then
          window_add(wkey, b, now, 'x')
          res.why = 'throttled'
          res.shed = share
          res.wait = b.win / 10
          return answer()
        end
      end
    end
  end
end

local function undo_breaker()
  if res.probe then
    redis.call('ZREM', pkey, holder)
    res.probe = false
  end
end

-- 3. Concurrency: a slot is a lease in a sorted set scored by its expiry.
local took_slot = false
if ckey then
  local c = args.c
  redis.call('ZREMRANGEBYSCORE', ckey, '-inf', fmt(now))
  if redis.call('ZSCORE', ckey, holder) or redis.call('ZCARD', ckey) < c.limit then
    redis.call('ZADD', ckey, fmt(now + c.lease), holder)
    extend_ttl(ckey, c.lease * 2)
    took_slot = true
  else
    local first = redis.call('ZRANGE', ckey, 0, 0, 'WITHSCORES')
    undo_breaker()
    res.why = 'concurrency_full'
    res.wait = math.min(math.max(tonumber(first[2]) - now, 0), c.poll)
    return answer()
  end
end

-- 4. Rate limit: GCRA, twice. "tat" books slots: no room means the next free slot is
--    booked for this attempt and returned, so that the woken attempt goes without queueing
--    again. "atat" spaces the calls actually granted: a booked attempt that wakes late
--    (a busy worker) keeps its place and goes as soon as that spacing allows, instead of
--    queueing at the back; so no slot is lost, and no window of one interval ever holds
--    more than burst + 1 grants.
if lkey then
  local l = args.l
  local tat, atat, pu, k1, e1, k2, e2 = unpack(redis.call(
    'HMGET', lkey, 'tat', 'atat', 'pu', 'k1', 'e1', 'k2', 'e2'))
  tat = tonumber(tat) or 0
  atat = tonumber(atat) or 0
  pu = tonumber(pu) or 0
  local lots, frontiers = limiter_lots(k1, e1, k2, e2), {tat, atat}
  local lots_changed = settle_lots(lots, now, l.T, frontiers)
  tat, atat = frontiers[1], frontiers[2]
  -- the burst tolerance left to everyone while lots are held
  local tau = l.tau - (lots[1][1] + lots[2][1]) * l.T
  -- the earliest moment the next grant may happen: GCRA over grants, with a slack below
  -- one interval for arrival jitter (no window of length L ever holds more than
  -- floor((L + tau + slack) / T) + 1 grants: rate x L + burst)
  local spaced_at = atat - tau - l.slack
  local granted = false
  local slot = tonumber(l.slot)
  if slot and now >= pu then  -- a pause (429) voids the bookings made before it
    if now < slot - l.early then
      res.slot = fmt(slot)
      res.wait = slot - now
    elseif now >= spaced_at then
      granted = true
    else
      res.slot = fmt(slot)
      res.wait = spaced_at - now
    end
  end
  local ahead = {}
  if not granted and not res.slot then
    local idle = tat <= now and atat <= now and now >= pu
    local t = math.max(tat, now)
    local allow_at = math.max(t - tau, spaced_at)
    if now >= allow_at then
      if l.book then  -- a reservation: the slot is now, granted when the attempt comes
        res.slot = fmt(now)
      else
        granted = true
      end
      tat = t + l.T
      if ahead_ok and idle and l.T <= AHEAD_INTERVAL and not l.book then
        -- out of the burst this attempt leaves: a lot, usable at once until its end
        local n = math.min(args.x, math.floor(tau / l.T + 1e-9))
        if n > 0 then
          local older, newer = lots[1], lots[2]
          local until_ = now + AHEAD_FOR
          if newer[1] > 0 and newer[2] - now >= AHEAD_FOR / 2 then
            newer[1] = newer[1] + n  -- a young lot: the grants join it and end with it
            until_ = newer[2]
          else
            if newer[1] > 0 then  -- the held lots become one, void at the later end
              older[1], older[2] = older[1] + newer[1], newer[2]
            end
            newer[1], newer[2] = n, until_
          end
          lots_changed = true
          for i = 1, n do ahead[i] = fmt(now) end
          res.au = fmt(until_)
        end
      end
    elseif l.max and allow_at - now > l.max then
      res.wait = allow_at - now  -- the task cannot wait that long: nothing is booked
    else
      res.slot = fmt(allow_at)
      res.wait = allow_at - now
      tat = math.max(t, allow_at + tau) + l.T
    end
    redis.call('HSET', lkey, 'tat', fmt(tat))
  end
  if granted then
    atat = math.max(atat, now) + l.T
    redis.call('HSET', lkey, 'atat', fmt(atat))
  end
  if lots_changed then
    redis.call('HSET', lkey, 'tat', fmt(tat), 'atat', fmt(atat),
               'k1', lots[1][1], 'e1', fmt(lots[1][2]), 'k2', lots[2][1], 'e2', fmt(lots[2][2]))
  end
  if #ahead > 0 then
    res.ah = ahead
  end
  local held_until = math.max(lots[1][2], lots[2][2]) + (lots[1][1] + lots[2][1]) * l.T
  pexpire_seconds(lkey, math.max(tat, atat, pu, held_until) - now + l.T + 1)
  if not granted then
    undo_breaker()
    if took_slot then redis.call('ZREM', ckey, holder) end
    res.why = 'rate_limited'
    return answer()
  end
end

-- 5. Granted: hold the attempt lease; count the call for adaptive throttling and for the
--    retry budget.
if akey then
  set_lease(akey, 'run', now, args.a.lease, args.a.o)
end
if asked then
  window_add(wkey, args.b, now, 'q')
end
if budgeted then
  window_add(wkey, args.b, now, args.r and 'r' or 'a')
end
if ahead_ok and not lkey then  -- a breaker alone: the grants ahead may be used at once
  res.ah, res.au = {}, fmt(now + AHEAD_FOR)
  for i = 1, args.x do res.ah[i] = fmt(now) end
end
res.ok = true
return answer()
