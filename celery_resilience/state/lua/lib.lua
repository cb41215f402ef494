-- lib.lua: helpers shared by the operation scripts. Not an operation itself: each
-- operation script names it on an "--!include lib.lua" line, which the loader
-- replaces with this text before registering the script.

-- The server's clock: seconds as a float, and the exact {seconds, microseconds} pair
-- (returned to the caller as "now", so that it computes the very same float).
local function now_seconds()
  local t = redis.call('TIME')
  local sec, usec = tonumber(t[1]), tonumber(t[2])
  return sec + usec / 1000000, {sec, usec}
end

-- The keys of the parts present in an operation's arguments, in the order of KEYS:
-- breaker (state, window, probes), concurrency slots, limiter, attempt lease. A keyed
-- part (its arguments hold "kk", the key) is followed by its name's overflow state
-- (breaker: three keys, else one), its registry of live keys (sorted set: key -> last
-- use) and its use counts (hash: key -> uses, "~overflow" -> uses of the overflow state).
local function part_keys(args)
  local k, p = 1, {}
  local function keyed(part, n)
    if not (part and part.kk) then return nil end
    local over = {}
    for i = 1, n do over[i] = KEYS[k + i - 1] end
    local reg = {over = over, reg = KEYS[k + n], uses = KEYS[k + n + 1], part = part}
    k = k + n + 2
    return reg
  end
  if args.b then
    p.state, p.window, p.probes = KEYS[k], KEYS[k + 1], KEYS[k + 2]; k = k + 3
    p.kb = keyed(args.b, 3)
  end
  if args.c then p.slots = KEYS[k]; k = k + 1; p.kc = keyed(args.c, 1) end
  if args.l then p.limiter = KEYS[k]; k = k + 1; p.kl = keyed(args.l, 1) end
  if args.a then p.attempt = KEYS[k] end
  return p
end

local function fmt(x)
  return string.format('%.6f', x)
end

-- Attempt leases hold "<kind>:<expiry>", or "<kind>@<owner>:<expiry>" when the process
-- holding it is named (an owner has neither "@" nor ":"; a reader that knows no owners
-- still sees a running lease); the key itself lives a second longer, so that the
-- decision is made on the server clock, to the microsecond, like the others.
local function set_lease(key, kind, now, seconds, owner)
  local head = owner and (kind .. '@' .. owner) or kind
  redis.call('SET', key, head .. ':' .. fmt(now + seconds), 'PX',
             math.ceil((seconds + 1) * 1000))
end

-- Returns kind, expiry, owner (nil, 0 when no lease holds).
local function get_lease(key, now)
  local held = redis.call('GET', key)
  if not held then return nil, 0 end
  local sep = string.find(held, ':', 1, true)
  if not sep then return nil, 0 end
  local expiry = tonumber(string.sub(held, sep + 1))
  if not expiry or now >= expiry then return nil, 0 end
  local head = string.sub(held, 1, sep - 1)
  local at = string.find(head, '@', 1, true)
  if not at then return head, expiry, nil end
  return string.sub(head, 1, at - 1), expiry, string.sub(head, at + 1)
end

local function pexpire_seconds(key, seconds)
  redis.call('PEXPIRE', key, math.max(1, math.ceil(seconds * 1000)))
end

-- The lots of grants ahead a rate limit holds (see gate.lua), older first: {calls, end}.
local function limiter_lots(k1, e1, k2, e2)
  return {{tonumber(k1) or 0, tonumber(e1) or 0}, {tonumber(k2) or 0, tonumber(e2) or 0}}
end

-- Settle the lots void at `now`: their calls count as made at their end, so each of the
-- limit's frontiers (tat, atat) moves on by them. True when one was settled.
local function settle_lots(lots, now, T, frontiers)
  local settled = false
  for _, lot in ipairs(lots) do
    if lot[1] > 0 and now >= lot[2] then
      for i, f in ipairs(frontiers) do frontiers[i] = math.max(f, lot[2]) + lot[1] * T end
      lot[1], lot[2] = 0, 0
      settled = true
    end
  end
  return settled
end

-- Like pexpire_seconds, but never shortens a longer time to live (a key shared by
-- holders with different leases must outlive the longest of them).
local function extend_ttl(key, seconds)
  local ms = math.max(1, math.ceil(seconds * 1000))
  if redis.call('PTTL', key) < ms then
    redis.call('PEXPIRE', key, ms)
  end
end

-- Breaker window: a hash of time buckets, fields "<bucket start ms>:s" (successes), ":f"
-- (failures), ":q" and ":x" (calls sent and shed while closed), ":a" and ":r" (first
-- attempts and retries sent while closed, counted with a retry budget).
-- Returns successes, failures within the last b.win seconds, the requests (sent or
-- shed) and successes of its last THROTTLE_BUCKETS buckets (what adaptive throttling
-- judges: an outage after a healthy spell must not be throttled on the successes before
-- it), the first attempts and retries within the window, the throttle's probe, the
-- calls of the last THROTTLE_BUCKETS buckets sent and not accepted, and as many requests
-- as those buckets would hold at the rate of the last one and this one. The probe is
-- {so, ao, se, ae, no, ne}: calls sent (successes and failures) and accepted in the
-- window's finished buckets of odd number, the same of even number, and how many
-- finished buckets of each kind there are since the first that holds a call; while one
-- of them shed, all six count only the buckets that shed or follow one that did. Drops
-- older buckets unless keep is true (a reader whose window may differ from the writers'
-- must not prune).
local THROTTLE_BUCKETS = 3
-- A bucket's number: its start over its width, rounded (the quotient is near a whole
-- number).
local function bucket_number(start, width)
  return math.floor(start / width + 0.5)
end

-- A finished bucket's record for the probe, {sent, accepted, shed}, in buckets (by
-- bucket number), made on first use.
local function bucket_of(buckets, start, width)
  local index = bucket_number(start, width)
  local bk = buckets[index]
  if bk == nil then
    bk = {0, 0, false}
    buckets[index] = bk
  end
  return bk
end

-- The probe from the finished buckets ({sent, accepted, shed} by bucket number) and the
-- count of finished buckets of each kind since the first (celery_resilience.core.
-- tripping.probe_of): once the throttle has shed in the window, a bucket counts when it
-- shed in it or in the bucket before it; while nothing is shed, every bucket counts.
local function probe_of(buckets, counts)
  local probe, any_shed = {0, 0, 0, 0, 0, 0}, false
  for _, bk in pairs(buckets) do
    if bk[3] then any_shed = true end
  end
  for index, bk in pairs(buckets) do
    local before = buckets[index - 1]
    if not any_shed or bk[3] or (before ~= nil and before[3]) then
      local j = index % 2 == 1 and 1 or 2
      probe[2 * j - 1] = probe[2 * j - 1] + bk[1]
      probe[2 * j] = probe[2 * j] + bk[2]
      probe[4 + j] = probe[4 + j] + 1
    end
  end
  if not any_shed then probe[5], probe[6] = counts[1], counts[2] end
  return probe
end

local function window_totals(wkey, b, now, keep)
  local flat = redis.call('HGETALL', wkey)
  local succ, fail, req, recent, firsts, retries, sent, fresh = 0, 0, 0, 0, 0, 0, 0, 0
  local width = b.win * 100
  local horizon = (now - b.win) * 1000
  local recent_from = now * 1000 - THROTTLE_BUCKETS * width
  local current = math.floor(now * 1000 / width) * width
  local first, stale, buckets = current, {}, {}
  for i = 1, #flat, 2 do
    local field = flat[i]
    local sep = string.find(field, ':', 1, true)
    local start = tonumber(string.sub(field, 1, sep - 1))
    local kind = string.sub(field, sep + 1)
    local n = tonumber(flat[i + 1])
    if start + width <= horizon then
      stale[#stale + 1] = field
    elseif kind == 's' or kind == 'f' then
      if kind == 's' then
        succ = succ + n
        if start + width > recent_from then recent = recent + n end
      else
        fail = fail + n
      end
      if start < current then
        first = math.min(first, start)
        local bk = bucket_of(buckets, start, width)
        bk[1] = bk[1] + n
        if kind == 's' then bk[2] = bk[2] + n end
      end
    elseif kind == 'a' then
      firsts = firsts + n
    elseif kind == 'r' then
      retries = retries + n
    else
      if kind == 'x' and start < current and n > 0 then
        bucket_of(buckets, start, width)[3] = true
      end
      if start + width > recent_from then
        req = req + n
        if start >= current - width then fresh = fresh + n end
        if kind == 'q' then sent = sent + n end
      end
    end
  end
  if #stale > 0 and not keep then
    redis.call('HDEL', wkey, unpack(stale))
  end
  local finished = math.floor((current - first) / width + 0.5)
  local half = math.floor(finished / 2)
  local counts = {half, half}
  if finished % 2 == 1 then
    local at = bucket_number(first, width) % 2 == 1 and 1 or 2
    counts[at] = half + 1
  end
  local probe = probe_of(buckets, counts)
  -- the requests of the last bucket and this one, at their rate over the horizon's span
  local elapsed = now * 1000 - current
  local at_rate = fresh * (THROTTLE_BUCKETS * width + elapsed) / (width + elapsed)
  return succ, fail, req, recent, firsts, retries, probe, math.max(0, sent - recent), at_rate
end

-- Whether a closed breaker opens (celery_resilience.core.tripping.trips): at least
-- b.min calls, and only failures, or a failure share whose lower Wilson bound at b.z
-- reaches b.rate.
local function trips(fail, calls, b)
  if calls < b.min or calls <= 0 then return false end
  if fail == calls then return true end
  local share = fail / calls
  local z = b.z or 0
  if z <= 0 then return share >= b.rate end
  local z2 = z * z
  local centre = share + z2 / (2 * calls)
  local spread = z * math.sqrt(share * (1 - share) / calls + z2 / (4 * calls * calls))
  return (centre - spread) / (1 + z2 / calls) >= b.rate
end

-- The share of calls to shed when k calls may be sent per call accepted, given the
-- requests, accepts and calls sent but not accepted of the throttle's horizon
-- (celery_resilience.core.tripping.shed_share).
local QUIET = 0.05
local function shed_share(req, succ, refused, k, b)
  if k <= 0 or succ <= 0 or req < math.max(b.min, 1) then return 0 end
  local share = math.max(0, (req - k * succ) / (req + 1))
  return share * math.min(1, refused / (QUIET * succ))
end

-- Whether to shed a call at this share, given what is owed to shedding and a uniform
-- draw; and what is owed after it (celery_resilience.core.tripping.shed_call).
local function shed_call(share, owed, draw)
  if share <= 0 then return false, 0 end
  owed = math.min(1, math.max(-1, owed)) + share
  if draw < owed then return true, owed - 1 end
  return false, owed
end

-- Adaptive throttling's probe (celery_resilience.core.tripping): how many calls to send
-- per call accepted, b.k while the upstream's accepts grow with the calls sent (it fails
-- at random), down to 1 + (b.k - 1) * CAPACITY_FLOOR while they do not (it is at
-- capacity); buckets of odd number send more than that, even ones less, which is what
-- tells the two apart.
local PROBE_SPREAD, CAPACITY_FLOOR, PROBE_PRIOR = 0.5, 0.3, 6
local AT_CAPACITY, EVIDENCE_BUCKETS, HELD_SHARE = 0.6, 3, 2 / 3

-- The sending ratio's share of b.k's excess; guess: the share assumed without evidence.
local function excess_share(probe, guess)
  local odd, even = probe[5], probe[6]
  if odd <= 0 or even <= 0 or probe[2] + probe[4] <= 0 then return guess end
  local so, ao, se, ae = probe[1] / odd, probe[2] / odd, probe[3] / even, probe[4] / even
  local per = (odd + even) / 2
  local mean = (ao + ae) / (so + se)
  local more, gained = (so - se) * per, (ao - ae) * per
  if more < 0 then more, gained = -more, -gained end
  local marginal = (gained + mean * guess * PROBE_PRIOR) / (more + PROBE_PRIOR)
  return math.min(1, math.max(CAPACITY_FLOOR, marginal / mean))
end

local function sending_ratio(probe, b)
  local k = b.k or 0
  if k <= 1 then return k end
  return 1 + (k - 1) * excess_share(probe, 1)
end

-- Whether a closed breaker that trips on its window's counts is held closed: the
-- throttle is on, the window is mixed (its horizon holds successes), the failure share is
-- below HELD_SHARE, and the probe has not found, over EVIDENCE_BUCKETS buckets of each
-- kind, that accepts grow with the calls sent: an upstream at capacity is the throttle's
-- to pace, not the breaker's to cut off.
local function held_closed(fail, calls, recent, probe, b)
  if (b.k or 0) <= 1 or recent <= 0 or fail >= HELD_SHARE * calls then return false end
  if math.min(probe[5], probe[6]) < EVIDENCE_BUCKETS then return true end
  return excess_share(probe, CAPACITY_FLOOR) < AT_CAPACITY
end

-- The requests the throttle judges (celery_resilience.core.tripping.judged_requests):
-- the horizon's count while accepts grow with the calls sent, what the recent request
-- rate gives at capacity, in proportion between.
local function judged_requests(req, at_rate, ratio, b)
  local k = b.k or 0
  if k <= 1 then return req end
  local weight = (1 - (ratio - 1) / (k - 1)) / (1 - CAPACITY_FLOOR)
  weight = math.min(1, math.max(0, weight))
  return req + (at_rate - req) * weight
end

local function probe_ratio(ratio, odd)
  if ratio <= 1 then return ratio end
  return 1 + (ratio - 1) * (odd and (1 + PROBE_SPREAD) or (1 - PROBE_SPREAD))
end

-- Whether now falls in a bucket of odd number.
local function odd_now(now, b)
  return math.floor(now * 1000 / (b.win * 100)) % 2 == 1
end

-- How many retries a window with this many first attempts allows
-- (celery_resilience.core.tripping.retry_allowance).
local function retry_allowance(firsts, b)
  return math.max(b.rf * b.win, b.rb * firsts)
end

local function window_add(wkey, b, now, kind, count)
  local width_ms = b.win * 100
  local start = math.floor(now * 1000 / width_ms) * width_ms
  redis.call('HINCRBY', wkey, string.format('%d', start) .. ':' .. kind, count or 1)
  extend_ttl(wkey, b.win * 2)
end

-- A breaker in use by a task is kept: drop the expiry an admin command may have given
-- its state hash when no task of the command's app declared it. Only then: a script's
-- first write decides whether a Redis out of memory refuses it (PERSIST would not).
local function claim_breaker(skey)
  if redis.call('PTTL', skey) > 0 then
    redis.call('PERSIST', skey)
  end
end

-- Moves an OPEN breaker whose time is up to HALF_OPEN. Returns state, open_until and
-- the share of calls shed by adaptive throttling as last computed ("tp", 0 if none).
local function breaker_phase(skey, now, transitions)
  local st, ou, tp = unpack(redis.call('HMGET', skey, 'st', 'ou', 'tp'))
  st = st or 'closed'
  ou = tonumber(ou) or 0
  if st == 'open' and now >= ou then
    redis.call('HSET', skey, 'st', 'half_open', 'ch', fmt(now), 'hs', 0)
    transitions[#transitions + 1] = {'open', 'half_open'}
    st = 'half_open'
  end
  return st, ou, tonumber(tp) or 0
end

-- Stores the share of calls to shed when it changed (by more than a point, or to or
-- from 0), so that the gate reads it with the breaker's state and computes it afresh
-- only while calls are being shed. When shedding stops, nothing is owed to it ("so").
local function store_shed(skey, old, new)
  if new == 0 and old ~= 0 then
    redis.call('HSET', skey, 'tp', string.format('%.4f', new), 'so', 0)
  elseif (new == 0) ~= (old == 0) or math.abs(new - old) > 0.01 then
    redis.call('HSET', skey, 'tp', string.format('%.4f', new))
  end
end

-- Per-key state. A key has its own state while it is among the name's live keys, at most
-- part.mk of them; a key that finds no room shares the name's overflow state. A gate
-- (at_gate) registers a new key when there is room and counts the use; a record only
-- looks. Members idle for part.idle seconds leave the registry (at most 100 per call).
-- Returns true when the key has its own state.
local OVERFLOW = '~overflow'
local function own_key(kp, now, at_gate)
  local part = kp.part
  local stale = redis.call('ZRANGEBYSCORE', kp.reg, '-inf', '(' .. fmt(now - part.idle),
                           'LIMIT', 0, 100)
  if #stale > 0 then
    redis.call('ZREM', kp.reg, unpack(stale))
    redis.call('HDEL', kp.uses, unpack(stale))
  end
  local own = redis.call('ZSCORE', kp.reg, part.kk) ~= false
  if at_gate then
    if not own and redis.call('ZCARD', kp.reg) < part.mk then own = true end
    if own then redis.call('ZADD', kp.reg, fmt(now), part.kk) end
    redis.call('HINCRBY', kp.uses, own and part.kk or OVERFLOW, 1)
    pexpire_seconds(kp.reg, part.idle)
    pexpire_seconds(kp.uses, part.idle)
  elseif own then
    redis.call('ZADD', kp.reg, 'XX', fmt(now), part.kk)
    pexpire_seconds(kp.reg, part.idle)
  end
  return own
end

-- Points each keyed part of p at the key's own state or at the overflow state. Returns
-- the parts that use the overflow state: {b = true, c = true, l = true}.
local function pick_keys(p, now, at_gate)
  local over = {}
  if p.kb and not own_key(p.kb, now, at_gate) then
    p.state, p.window, p.probes = p.kb.over[1], p.kb.over[2], p.kb.over[3]
    over.b = true
  end
  if p.kc and not own_key(p.kc, now, at_gate) then
    p.slots = p.kc.over[1]
    over.c = true
  end
  if p.kl and not own_key(p.kl, now, at_gate) then
    p.limiter = p.kl.over[1]
    over.l = true
  end
  return over
end

-- A keyed breaker's state hash lives part.idle seconds after its last use (its window
-- and probes expire on their own).
local function expire_keyed(p)
  if p.kb then pexpire_seconds(p.state, p.kb.part.idle) end
end
