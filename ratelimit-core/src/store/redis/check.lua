-- One request of one key: every charge, every rate, judged and then charged all or none, in
-- one call. The four algorithms are the in-memory store's (src/algorithm/), ported to
-- microseconds: Lua numbers are doubles, exact for integers below 2^53 (microseconds since
-- 1970 until the year 2255).
--
-- KEYS: one per (charge, rate), in order.
-- ARGV: now (microseconds, or "" for the server's TIME), mode (0 charge, 1 peek, 2 refund,
--       3 debit: charged whatever the limits say, a settled amount the key owes),
--       the number of charges, then per charge: algorithm (1 gcra, 2 fixed window,
--       3 sliding window, 4 moving window), cost, number of rates, then per rate: amount,
--       period, interval, burst, tolerance (microseconds where a time).
--       With a concurrency slot (mode 0 only): one more key, the slots' sorted set, and after
--       the charges: the slot limit, the lease id, the lease in milliseconds.
-- Returns: allowed (0/1; -1 when every slot is held: nothing judged or charged), charge
--          index, rate index, remaining, reset after, retry after (-1: never), all in
--          microseconds where a time.

local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now = tonumber(ARGV[1])
end
local mode = tonumber(ARGV[2])
local floor, max, min = math.floor, math.max, math.min

-- A verdict: allowed, remaining, reset after, retry after (nil: never or allowed).
local function verdict(allowed, remaining, reset, retry)
  return { allowed = allowed, remaining = remaining, reset = reset, retry = retry }
end

-- GCRA. State: the theoretical arrival time and the interval it was written with
-- ("tat interval"; a bare "tat" from before the interval was kept): when a limit was scaled
-- since, the requests outstanding are kept and paid back at the new rate (rescale, as the
-- in-memory store's).
local gcra = {}
function gcra.load(key, r)
  local v = redis.call('GET', key)
  if not v then return 0 end
  local t, i = string.match(v, '^(%d+) (%d+)$')
  if not t then return tonumber(v) or 0 end
  local tat, from = tonumber(t), tonumber(i)
  if tat > now and from > 0 and from ~= r.interval then
    tat = now + floor((tat - now) * r.interval / from)
  end
  return tat
end
function gcra.judge(tat, r, cost)
  local base = max(tat, now)
  local used = base - now
  local spare_now = max(r.tolerance - used, 0)
  if cost > r.burst then
    return verdict(false, floor(spare_now / r.interval), used, nil), tat
  end
  local new_tat = base + cost * r.interval
  local after = new_tat - now
  if after <= r.tolerance then
    return verdict(true, floor((r.tolerance - after) / r.interval), after, nil), new_tat
  end
  return verdict(false, floor(spare_now / r.interval), used, after - r.tolerance), tat
end
function gcra.refund(tat, r, cost) return max(tat - cost * r.interval, 0) end
function gcra.debit(tat, r, cost) return max(tat, now) + cost * r.interval end
function gcra.store(key, tat, r)
  local ttl = tat - now
  if ttl <= 0 then redis.call('DEL', key) else
    redis.call('SET', key, string.format('%.0f %.0f', tat, r.interval), 'PX', floor(ttl / 1000) + 1)
  end
end

-- Fixed window, opened by a key's first request. State: start, count.
local fixed = {}
function fixed.load(key)
  local v = redis.call('GET', key)
  if not v then return { start = 0, count = 0 } end
  local s, c = string.match(v, '^(%d+) (%d+)$')
  return { start = tonumber(s), count = tonumber(c) }
end
function fixed.judge(st, r, cost)
  local s = { start = st.start, count = st.count }
  if s.count == 0 or now >= s.start + r.period then s.start = now; s.count = 0 end
  local window_end = s.start + r.period - now
  local left = max(r.amount - s.count, 0)
  local reset = 0
  if s.count > 0 then reset = window_end end
  if cost > r.amount then return verdict(false, left, reset, nil), st end
  if cost <= left then
    local after = { start = s.start, count = s.count + cost }
    local reset_after = window_end
    if cost == 0 then reset_after = reset end
    return verdict(true, left - cost, reset_after, nil), after
  end
  return verdict(false, left, reset, window_end), st
end
function fixed.refund(s, r, cost)
  if now < s.start + r.period then return { start = s.start, count = max(s.count - cost, 0) } end
  return s
end
function fixed.debit(st, r, cost)
  local s = { start = st.start, count = st.count }
  if s.count == 0 or now >= s.start + r.period then s.start = now; s.count = 0 end
  s.count = s.count + cost
  return s
end
function fixed.store(key, s, r)
  local ttl = s.start + r.period - now
  if s.count == 0 or ttl <= 0 then redis.call('DEL', key) else
    redis.call('SET', key, string.format('%.0f %.0f', s.start, s.count), 'PX', floor(ttl / 1000) + 1)
  end
end

-- Sliding window counter, as Python's limits. State: window index, previous, current.
local sliding = {}
function sliding.load(key)
  local v = redis.call('GET', key)
  if not v then return { index = 0, previous = 0, current = 0 } end
  local i, p, c = string.match(v, '^(%d+) (%d+) (%d+)$')
  return { index = tonumber(i), previous = tonumber(p), current = tonumber(c) }
end
local function rolled(st, index)
  local s = { index = index, previous = st.previous, current = st.current }
  if index == st.index + 1 then s.previous = st.current; s.current = 0
  elseif index ~= st.index then s.previous = 0; s.current = 0 end
  return s
end
local function sliding_reset(s, left, period)
  if s.current > 0 then return left + period end
  if s.previous > 0 then return left end
  return 0
end
-- The longest overlap x for which floor(count * x / period) <= room.
local function threshold(room, period, count)
  return floor(((room + 1) * period - 1) / max(count, 1))
end
function sliding.judge(st, r, cost)
  local period = r.period
  local index = floor(now / period)
  local s = rolled(st, index)
  local left = period - (now - index * period)
  local weighted = floor(s.previous * left / period) + s.current
  local free = max(r.amount - weighted, 0)
  if cost > r.amount then return verdict(false, free, sliding_reset(s, left, period), nil), st end
  if cost <= free then
    local after = { index = s.index, previous = s.previous, current = s.current + cost }
    return verdict(true, free - cost, sliding_reset(after, left, period), nil), after
  end
  local retry
  local room_now = r.amount - cost - s.current
  if room_now >= 0 then
    retry = left - min(left, threshold(room_now, period, s.previous))
  else
    retry = left + period - min(period, threshold(r.amount - cost, period, s.current))
  end
  return verdict(false, free, sliding_reset(s, left, period), retry), st
end
function sliding.refund(st, r, cost)
  local s = rolled(st, floor(now / r.period))
  local from_current = min(cost, s.current)
  s.current = s.current - from_current
  s.previous = max(s.previous - (cost - from_current), 0)
  return s
end
function sliding.debit(st, r, cost)
  local s = rolled(st, floor(now / r.period))
  s.current = s.current + cost
  return s
end
function sliding.store(key, s, r)
  local periods = 0
  if s.current > 0 then periods = 2 elseif s.previous > 0 then periods = 1 end
  local ttl = (s.index + periods) * r.period - now
  if ttl <= 0 then redis.call('DEL', key) else
    redis.call('SET', key, string.format('%.0f %.0f %.0f', s.index, s.previous, s.current),
      'PX', floor(ttl / 1000) + 1)
  end
end

-- Moving window: the log of admitted requests, oldest first. State: a list of at, cost.
local moving = {}
function moving.load(key)
  local flat = redis.call('LRANGE', key, 0, -1)
  local log = {}
  for i = 1, #flat, 2 do log[#log + 1] = { at = tonumber(flat[i]), n = tonumber(flat[i + 1]) } end
  return log
end
local function live(log, period)
  local out, count = {}, 0
  for _, e in ipairs(log) do
    if e.at + period > now then out[#out + 1] = { at = e.at, n = e.n }; count = count + e.n end
  end
  return out, count
end
function moving.judge(st, r, cost)
  local log, count = live(st, r.period)
  local free = max(r.amount - count, 0)
  -- An empty log resets one period from now, as `limits` reports it.
  local reset = r.period
  if #log > 0 then reset = max(log[#log].at + r.period - now, 0) end
  if cost > r.amount then return verdict(false, free, reset, nil), st end
  if cost <= free then
    if cost == 0 then return verdict(true, free, reset, nil), st end
    if #log > 0 and log[#log].at == now then log[#log].n = log[#log].n + cost
    else log[#log + 1] = { at = now, n = cost } end
    return verdict(true, free - cost, r.period, nil), log
  end
  local need, retry = count + cost - r.amount, 0
  for _, e in ipairs(log) do
    retry = max(e.at + r.period - now, 0)
    if e.n >= need then break end
    need = need - e.n
  end
  return verdict(false, free, reset, retry), st
end
function moving.refund(st, r, cost)
  local log = live(st, r.period)
  local left = cost
  while left > 0 and #log > 0 do
    local last = log[#log]
    local take = min(left, last.n)
    last.n = last.n - take
    left = left - take
    if last.n == 0 then log[#log] = nil end
  end
  return log
end
function moving.debit(st, r, cost)
  local log = live(st, r.period)
  if cost == 0 then return log end
  if #log > 0 and log[#log].at == now then log[#log].n = log[#log].n + cost
  else log[#log + 1] = { at = now, n = cost } end
  return log
end
function moving.store(key, log, r)
  redis.call('DEL', key)
  if #log == 0 then return end
  local flat = {}
  for _, e in ipairs(log) do
    flat[#flat + 1] = string.format('%.0f', e.at)
    flat[#flat + 1] = string.format('%.0f', e.n)
  end
  redis.call('RPUSH', key, unpack(flat))
  redis.call('PEXPIRE', key, floor((log[#log].at + r.period - now) / 1000) + 1)
end

local algorithms = { gcra, fixed, sliding, moving }

-- Read every charge and rate.
local charges, at, k = {}, 4, 1
for c = 1, tonumber(ARGV[3]) do
  local charge = { algorithm = algorithms[tonumber(ARGV[at])], cost = tonumber(ARGV[at + 1]), rates = {} }
  local n = tonumber(ARGV[at + 2])
  at = at + 3
  for i = 1, n do
    charge.rates[i] = {
      key = KEYS[k], amount = tonumber(ARGV[at]), period = tonumber(ARGV[at + 1]),
      interval = tonumber(ARGV[at + 2]), burst = tonumber(ARGV[at + 3]),
      tolerance = tonumber(ARGV[at + 4]),
    }
    at = at + 5
    k = k + 1
  end
  charges[c] = charge
end

-- A concurrency slot taken with the charges, as shared.rs's ACQUIRE takes one alone (on
-- Redis's clock, in milliseconds, as its renewal and release): when every slot is held,
-- nothing is judged; the slot is added only when every charge passes.
local slots, slot_now = KEYS[k], nil
if slots then
  local t = redis.call('TIME')
  slot_now = tonumber(t[1]) * 1000 + floor(tonumber(t[2]) / 1000)
  redis.call('ZREMRANGEBYSCORE', slots, '-inf', slot_now)
  if redis.call('ZCARD', slots) >= tonumber(ARGV[at]) then
    return { -1, 0, 0, 0, 0, -1 }
  end
end

-- Whether verdict a binds harder than b: a refusal over an admission, the longest wait among
-- refusals (never the longest), the fewest remaining among admissions.
local function harder(a, b)
  if a.allowed ~= b.allowed then return not a.allowed end
  if not a.allowed then
    if a.retry == nil then return b.retry ~= nil end
    return b.retry ~= nil and a.retry > b.retry
  end
  return a.remaining < b.remaining
end

local binding, bc, br
local function bind(v, c, i)
  if binding == nil or harder(v, binding) then binding, bc, br = v, c, i end
end

if mode == 2 or mode == 3 then
  for c, charge in ipairs(charges) do
    for i, r in ipairs(charge.rates) do
      local a = charge.algorithm
      local change = a.refund
      if mode == 3 then change = a.debit end
      local s = change(a.load(r.key, r), r, charge.cost)
      a.store(r.key, s, r)
      bind((a.judge(s, r, 0)), c, i)
    end
  end
else
  local after, all = {}, true
  for c, charge in ipairs(charges) do
    after[c] = {}
    for i, r in ipairs(charge.rates) do
      local v, s = charge.algorithm.judge(charge.algorithm.load(r.key, r), r, charge.cost)
      after[c][i] = s
      all = all and v.allowed
      bind(v, c, i)
    end
  end
  if mode == 0 and all then
    for c, charge in ipairs(charges) do
      if charge.cost > 0 then
        for i, r in ipairs(charge.rates) do charge.algorithm.store(r.key, after[c][i], r) end
      end
    end
    if slots then
      redis.call('ZADD', slots, slot_now + tonumber(ARGV[at + 2]), ARGV[at + 1])
      redis.call('PEXPIRE', slots, ARGV[at + 2])
    end
  end
end

local retry = -1
if binding.retry ~= nil then retry = binding.retry end
local allowed = 0
if binding.allowed then allowed = 1 end
return { allowed, bc - 1, br - 1, binding.remaining, binding.reset, retry }
