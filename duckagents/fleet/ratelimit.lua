-- duckagents fleet rate limiter: the transitions of duckagents.resilience.RateLimiter, step for step.
--
-- The Python class is the definition; this script repeats its arithmetic in the same order so that
-- both give bit-identical floats (tests/fleet/test_ratelimit_equivalence.py checks it). Numbers cross
-- the wire as "%.17g" strings, which round-trip doubles exactly.
--
-- This file defines one function, ratelimit(key, A, now, server_clock); the fleet assembles it into
-- scripts (see _fleet.py): alone, with `return ratelimit(KEYS[1], ARGV, ...)`, and inside request.lua.
--
-- key      the limiter's hash: rl/rs = requests bucket level/since, tl/ts = tokens bucket level/since,
--          bu = blocked_until. An absent since is -inf (a fresh, full bucket); absent bu is -inf.
-- A[1]     op: admit | settle | cancel | observe | headroom
-- A[2]     (the clock argument of the standalone script; `now` and `server_clock` arrive decoded)
-- A[3]     requests limit, "" = unlimited;  A[4] its period (s)
-- A[5]     tokens limit, "" = unlimited;  A[6] its period (s) (periods differ only after an adopt)
-- A[7]     max_wait (s): the cap on waits an upstream imposes through observe
-- A[8..]   the op's arguments (see each op below)
--
-- Reply: { code, retry_at, requests, tokens, headroom_retry_at, now } as strings, "" standing for None:
-- code and retry_at answer an admit; the next three are the headroom after the op (what headroom() at
-- `now` returns), so that a caller knows it without another call.
-- The op "headroom" changes nothing and only answers those.

local function ratelimit(key, A, now, server_clock)
  local op = A[1]
  local max_wait = tonumber(A[7])
  local NEG_INF = -math.huge

  local function fmt(x)
    if x == nil then return '' end
    return string.format('%.17g', x)
  end

  local function opt(s)
    if s == nil or s == '' then return nil end
    return tonumber(s)
  end

  -- math.ulp for doubles (Lua 5.1 has frexp/ldexp but no ulp).
  local function ulp(x)
    x = math.abs(x)
    if x == 0 then return math.ldexp(1, -1074) end
    local _, e = math.frexp(x)
    if e - 53 < -1074 then return math.ldexp(1, -1074) end
    return math.ldexp(1, e - 53)
  end

  local stored = redis.call('HMGET', key, 'rl', 'rs', 'tl', 'ts', 'bu')

  local function new_bucket(limit, period, level, since)
    if limit == '' then return nil end
    local capacity = tonumber(limit)
    local b = { capacity = capacity, rate = capacity / tonumber(period), level = capacity, since = NEG_INF }
    if since then
      b.level = tonumber(level)
      b.since = tonumber(since)
    end
    return b
  end

  local requests = new_bucket(A[3], A[4], stored[1], stored[2])
  local tokens = new_bucket(A[5], A[6], stored[3], stored[4])
  local blocked_until = NEG_INF
  if stored[5] then blocked_until = tonumber(stored[5]) end

  -- _Bucket ------------------------------------------------------------------------------------------

  local function available(b, t)
    if t <= b.since then return b.level end
    return math.min(b.capacity, b.level + b.rate * (t - b.since))
  end

  local function ready_at(b, t, need)
    if available(b, t) >= need then return t end
    local start = math.max(t, b.since)
    local when = start + (need - available(b, start)) / b.rate
    local step = ulp(when)
    while available(b, when) < need do
      when = when + step
      step = step * 2
    end
    return when
  end

  local function sync(b, t)
    if t > b.since then
      b.level = available(b, t)
      b.since = t
    end
  end

  local function take(b, t, amount)
    sync(b, t)
    b.level = b.level - amount
  end

  local function give(b, t, amount)
    sync(b, t)
    b.level = math.min(b.capacity, b.level + amount)
  end

  local function lower(b, t, remaining, upstream_limit, reset)
    sync(b, t)
    if remaining >= b.level then return end
    b.level = remaining
    if reset ~= nil and reset > 0 then
      local base = upstream_limit
      if base == nil then base = b.capacity end
      local limit = math.max(base, remaining)
      b.since = math.max(b.since, t + math.max(0.0, reset - (limit - remaining) / b.rate))
    end
  end

  -- RateLimiter --------------------------------------------------------------------------------------

  local function limiter_ready_at(t, need)
    local ready = math.max(t, blocked_until)
    if requests then ready = math.max(ready, ready_at(requests, t, 1)) end
    if tokens then ready = math.max(ready, ready_at(tokens, t, need)) end
    return ready
  end

  -- RateLimiter._wait: a wait from outside, ignored when negative, capped at max_wait. (NaN and infinite
  -- ones are ignored too: the caller sends them as "", which is None already.)
  local function wait(seconds)
    if seconds == nil or seconds < 0 then return nil end
    return math.min(seconds, max_wait)
  end

  local function observe(base)
    -- A[base..base+6]: retry_after, remaining_requests, limit_requests, reset_requests,
    --                     remaining_tokens, limit_tokens, reset_tokens
    local retry_after = wait(opt(A[base]))
    if retry_after ~= nil and retry_after > 0 then
      blocked_until = math.max(blocked_until, now + retry_after)
    end
    local remaining_requests = opt(A[base + 1])
    if requests and remaining_requests ~= nil then
      lower(requests, now, math.max(0, remaining_requests), opt(A[base + 2]), wait(opt(A[base + 3])))
    end
    local remaining_tokens = opt(A[base + 4])
    if tokens and remaining_tokens ~= nil then
      lower(tokens, now, math.max(0, remaining_tokens), opt(A[base + 5]), wait(opt(A[base + 6])))
    end
  end

  local function save()
    local fresh_at = blocked_until
    for _, pair in ipairs({ { requests, 'rl', 'rs' }, { tokens, 'tl', 'ts' } }) do
      local b, lf, sf = pair[1], pair[2], pair[3]
      if b and b.since ~= NEG_INF then
        redis.call('HSET', key, lf, fmt(b.level), sf, fmt(b.since))
        -- From here on the bucket is full and its since is past: indistinguishable from a fresh one.
        fresh_at = math.max(fresh_at, b.since + (b.capacity - b.level) / b.rate)
      end
    end
    if blocked_until ~= NEG_INF then redis.call('HSET', key, 'bu', fmt(blocked_until)) end
    if server_clock then
      -- Idle state expires once it equals a fresh limiter (plus a second of margin). Only on the server's
      -- clock: with an injected clock the expiry would run on a different time line.
      local ttl = math.ceil((fresh_at - now) * 1000) + 1000
      if ttl < 1000 then ttl = 1000 end
      redis.call('PEXPIRE', key, ttl)
    end
  end

  local function reply(code, retry_at)
    local ready = limiter_ready_at(now, 0)
    local r, t, retry = nil, nil, nil
    if requests then r = math.max(0.0, available(requests, now)) end
    if tokens then t = math.max(0.0, available(tokens, now)) end
    if ready > now then retry = ready end
    return { code, fmt(retry_at), fmt(r), fmt(t), fmt(retry), fmt(now) }
  end

  if op == 'admit' then
    -- A[8]: tokens (>= 0, checked by the caller). Reply code: admitted "1"/"0", with retry_at.
    local need = tonumber(A[8])
    if tokens and need > tokens.capacity then return reply('0', nil) end
    local ready = limiter_ready_at(now, need)
    if ready > now then return reply('0', ready) end
    if requests then take(requests, now, 1) end
    if tokens then take(tokens, now, need) end
    save()
    return reply('1', nil)
  elseif op == 'settle' then
    -- A[8]: reserved tokens, A[9]: actual tokens, A[10..16]: an optional observe (all "" =
    -- none), applied after the settle in the same call (settle first, then observe).
    if tokens then
      local difference = tonumber(A[9]) - tonumber(A[8])
      if difference > 0 then
        take(tokens, now, difference)
      elseif difference < 0 then
        give(tokens, now, -difference)
      end
    end
    if A[10] ~= nil then observe(10) end
    save()
    return reply('1', nil)
  elseif op == 'cancel' then
    -- A[8]: reserved tokens.
    if requests then give(requests, now, 1) end
    if tokens then give(tokens, now, tonumber(A[8])) end
    save()
    return reply('1', nil)
  elseif op == 'observe' then
    observe(8)
    save()
    return reply('1', nil)
  elseif op == 'headroom' then
    return reply('1', nil)
  end
  return redis.error_reply('ratelimit.lua: unknown op ' .. tostring(op))
end
