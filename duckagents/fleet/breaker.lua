-- duckagents fleet circuit breaker: the transitions of duckagents.resilience.CircuitBreaker, step for step,
-- shared by every replica (tests/fleet/test_breaker_equivalence.py checks it against the Python class).
--
-- This file defines one function, breaker(key, A, now); the fleet assembles it into scripts (see
-- _fleet.py): alone, with `return breaker(KEYS[1], ARGV, ...)`, and inside request.lua.
--
-- key      the breaker's hash: st = state (closed | open | half_open | forced_open | disabled; absent =
--          closed), f = consecutive failures, oa = opened_at (absent = None), tr = trials in flight,
--          ot = other calls in flight, ta = when the latest trial slot was taken (for the lease).
-- A[1]     op: allow | success | failure | release | force_open | disable | reset | snapshot
-- A[2]     (the clock argument of the standalone script; `now` arrives decoded)
-- A[3]     failure_threshold, A[4] open_timeout, A[5] half_open_trials
-- A[6]     trial lease in seconds, "" = none (see below)
-- A[7]     notice channel, "" = publish nothing;  A[8] provider, A[9] instance (for the notice)
-- A[10]    for failure: "1" when the failure's kind counts (the caller knows the tripping kinds)
--
-- Reply: { result "1"/"0", state, failures, opened_at, trials, forced "1"/"0", now } as strings
-- (forced: the state is forced_open).
--
-- forced_open and disabled are the operator states (resilience4j's): forced_open refuses every call and
-- never moves by itself, disabled admits every call and counts nothing; only force_open, disable and
-- reset leave them.
--
-- The lease is the one addition to the Python machine, off when A[6] is "": a replica that dies (or
-- times out) while holding a half-open trial slot would hold it forever, and the whole fleet would stay
-- half-open with no slot free. With a lease, slots still taken a lease after the latest one was taken
-- are retired (moved to the other calls, as the Python machine does when an episode ends).

local function breaker(key, A, now)
  local op = A[1]
  local threshold = tonumber(A[3])
  local open_timeout = tonumber(A[4])
  local half_open_trials = tonumber(A[5])
  local lease = nil
  if A[6] ~= '' then lease = tonumber(A[6]) end

  local function fmt(x)
    if x == nil then return '' end
    return string.format('%.17g', x)
  end

  local h = redis.call('HMGET', key, 'st', 'f', 'oa', 'tr', 'ot', 'ta')
  local state = h[1] or 'closed'
  local failures = tonumber(h[2] or '0')
  local opened_at = h[3] and tonumber(h[3]) or nil
  local trials = tonumber(h[4] or '0')
  local others = tonumber(h[5] or '0')
  local trial_at = h[6] and tonumber(h[6]) or nil
  local before = { state, opened_at }

  local function retire_trials()
    others = others + trials
    trials = 0
  end

  local function advance()
    if state == 'open' and opened_at ~= nil and now >= opened_at + open_timeout then
      state = 'half_open'
      retire_trials()
    end
    if lease ~= nil and state == 'half_open' and trials > 0 and trial_at ~= nil and now >= trial_at + lease then
      retire_trials()
    end
  end

  local function open()
    state = 'open'
    opened_at = now
    retire_trials()
  end

  local function close()
    state = 'closed'
    failures = 0
    opened_at = nil
    retire_trials()
  end

  local function end_call()
    if others > 0 then
      others = others - 1
    elseif trials > 0 then
      trials = trials - 1
    end
  end

  local result = true
  if op == 'allow' then
    advance()
    if state == 'closed' or state == 'disabled' then
      others = others + 1
    elseif state == 'half_open' and trials < half_open_trials then
      trials = trials + 1
      trial_at = now
    else
      result = false
    end
  elseif op == 'success' then
    advance()
    end_call()
    if state == 'closed' then
      failures = 0
    elseif state == 'half_open' then
      close()
    end
  elseif op == 'failure' then
    advance()
    end_call()
    if state == 'disabled' or A[10] ~= '1' then
      result = false
    elseif state == 'closed' then
      failures = failures + 1
      if failures >= threshold then open() end
    elseif state == 'half_open' then
      failures = failures + 1
      open()
    end
  elseif op == 'release' then
    advance()
    end_call()
  elseif op == 'force_open' then
    open()
    state = 'forced_open'
  elseif op == 'disable' then
    close()
    state = 'disabled'
  elseif op == 'reset' then
    close()
  elseif op == 'snapshot' then
    advance()
  else
    return redis.error_reply('breaker.lua: unknown op ' .. tostring(op))
  end
  -- The reply (and the stored state) is what a query at `now` sees after the op, as if the Python
  -- machine's snapshot(now) followed it: with open_timeout 0 an opening is already half-open. The next op
  -- would make the same lazy transition first, so storing it now changes no later decision.
  advance()

  -- Write back only what differs from a fresh breaker, so that a closed, idle breaker holds no key.
  redis.call('DEL', key)
  if not (state == 'closed' and failures == 0 and trials == 0 and others == 0) then
    local fields = { 'st', state, 'f', tostring(failures), 'tr', tostring(trials), 'ot', tostring(others) }
    if opened_at ~= nil then
      table.insert(fields, 'oa')
      table.insert(fields, fmt(opened_at))
    end
    if trial_at ~= nil and state == 'half_open' then
      table.insert(fields, 'ta')
      table.insert(fields, fmt(trial_at))
    end
    redis.call('HSET', key, unpack(fields))
  end

  local forced = state == 'forced_open'
  if A[7] ~= '' and (state ~= before[1] or opened_at ~= before[2]) then
    -- A notice per change of state or opening time; the shared hash stays the truth.
    redis.call('PUBLISH', A[7], cjson.encode({
      provider = A[8], instance = A[9], state = state, opened_at = fmt(opened_at),
      forced = forced, failures = failures, trials = trials, now = fmt(now),
    }))
  end

  local flag = '0'
  if result then flag = '1' end
  local forced_flag = '0'
  if forced then forced_flag = '1' end
  return { flag, state, tostring(failures), fmt(opened_at), tostring(trials), forced_flag, fmt(now) }
end
