-- duckagents fleet: one provider's rate limiter and circuit breaker in one call, so that an agent's
-- request costs two round trips (admit, then finish) instead of four. Assembled after clock.lua,
-- ratelimit.lua and breaker.lua; each op composes their ops exactly as AdmissionControl composes the
-- Python machines in one process (tests/fleet/test_request_equivalence.py checks it).
--
-- KEYS[1]      the limiter's hash, KEYS[2] the breaker's hash (one hash tag, so one Cluster slot)
-- ARGV[1]      op: admit | finish | status
-- ARGV[2]      now, or "" for the server's TIME
-- ARGV[3..7]   the limiter's limits (ratelimit.lua's A[3..7])
-- ARGV[8..14]  the breaker's settings (breaker.lua's A[3..9])
-- admit:  ARGV[15] tokens. The limiter admits or refuses; an admitted call then asks the breaker, and
--         one the breaker refuses gives its reservation back (cancel).
-- finish: ARGV[15] reserved tokens, ARGV[16] actual tokens, ARGV[17..23] an optional observe (settle,
--         then observe, as ratelimit.lua's settle); then the breaker's verdict ARGV[24] = success |
--         failure | release, with ARGV[25] = "1" when a failure's kind counts.
-- status: the limiter's headroom and the breaker's snapshot; changes nothing but the breaker's lazy
--         open -> half-open move (as breaker.lua's snapshot).
--
-- Reply: the limiter's six fields, then the breaker's seven (the replies of ratelimit.lua and
-- breaker.lua); the breaker's are all "" after an admit the limiter refused (the breaker was not asked).
-- After an admit the breaker refused, the limiter's code and retry_at are the admit's and its headroom
-- is the one after the cancel.

local now = clock(ARGV[2])
local server_clock = ARGV[2] == ''

local function limiter_args(op, first, last)
  local a = { op, ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7] }
  if first then
    for i = first, last do a[#a + 1] = ARGV[i] end
  end
  return a
end

local function breaker_args(op, counted)
  return { op, ARGV[2], ARGV[8], ARGV[9], ARGV[10], ARGV[11], ARGV[12], ARGV[13], ARGV[14], counted or '' }
end

local function joined(limited, judged)
  if limited.err then return limited end
  if judged and judged.err then return judged end
  local out = {}
  for i = 1, 6 do out[i] = limited[i] end
  for i = 1, 7 do
    if judged then out[6 + i] = judged[i] else out[6 + i] = '' end
  end
  return out
end

local op = ARGV[1]
if op == 'admit' then
  local admitted = ratelimit(KEYS[1], limiter_args('admit', 15, 15), now, server_clock)
  if admitted.err or admitted[1] ~= '1' then return joined(admitted, nil) end
  local allowed = breaker(KEYS[2], breaker_args('allow'), now)
  if allowed.err or allowed[1] == '1' then return joined(admitted, allowed) end
  local cancelled = ratelimit(KEYS[1], limiter_args('cancel', 15, 15), now, server_clock)
  if not cancelled.err then
    cancelled[1], cancelled[2] = admitted[1], admitted[2]
  end
  return joined(cancelled, allowed)
elseif op == 'finish' then
  local settled = ratelimit(KEYS[1], limiter_args('settle', 15, 23), now, server_clock)
  local judged = breaker(KEYS[2], breaker_args(ARGV[24], ARGV[25]), now)
  return joined(settled, judged)
elseif op == 'status' then
  local limited = ratelimit(KEYS[1], limiter_args('headroom'), now, server_clock)
  return joined(limited, breaker(KEYS[2], breaker_args('snapshot'), now))
end
return redis.error_reply('request.lua: unknown op ' .. tostring(op))
