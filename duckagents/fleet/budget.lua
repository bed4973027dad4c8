-- duckagents fleet budgets: duckagents.costs.InMemoryBudgets' reserve and settle, shared by every replica.
--
-- KEYS     two per account, in the order of the accounts: its hash in one calendar window (spent,
--          held, and h:<hold id> = the amount of each hold) and the sorted set of its holds (member: the
--          hold id, score: when the hold expires, ms). One hash tag for every budget key: one call may
--          reserve on several accounts at once, all or none.
-- ARGV[1]  op: reserve | settle | add | spend
-- ARGV[2]  now (ms, the caller's wall clock): holds whose expiry passed are released first
-- ARGV[3]  time to live of the keys (ms), renewed on every write (longer than any window)
-- reserve: ARGV[4] amount, ARGV[5] tolerance, ARGV[6] hold id, ARGV[7] its expiry (ms),
--          ARGV[8..] each account's budget. Reply {"1", "0", spent, held, ...} (after the hold) or
--          {"0", index of the first account that would go over (1-based), spent, held, ...} (unchanged).
-- settle:  ARGV[4] the hold's amount, ARGV[5] the cost, ARGV[6] the hold id: release the hold (if it
--          has not expired) and count the cost. Reply {spent, held, ...}.
-- add:     ARGV[4..] a cost per account, spent while this replica could not reach Redis. Reply as settle.
-- spend:   changes nothing but expired holds. Reply as settle.
-- Numbers are "%.17g" strings (exact doubles, the Python ledger's arithmetic).

local op = ARGV[1]
local now = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
local accounts = #KEYS / 2

local function fmt(x) return string.format('%.17g', x) end

local function number(hash, field)
  local v = redis.call('HGET', hash, field)
  if v then return tonumber(v) end
  return 0.0
end

-- Release the holds whose expiry passed (a replica died, or lost its answer), at most 1000 per call.
local function expire(hash, holds)
  local gone = redis.call('ZRANGEBYSCORE', holds, '-inf', now, 'LIMIT', 0, 1000)
  if #gone == 0 then return end
  local released = 0.0
  for _, id in ipairs(gone) do
    local amount = redis.call('HGET', hash, 'h:' .. id)
    if amount then
      released = released + tonumber(amount)
      redis.call('HDEL', hash, 'h:' .. id)
    end
    redis.call('ZREM', holds, id)
  end
  redis.call('HSET', hash, 'held', fmt(math.max(0.0, number(hash, 'held') - released)))
end

local function touch(hash, holds)
  redis.call('PEXPIRE', hash, ttl)
  if redis.call('EXISTS', holds) == 1 then redis.call('PEXPIRE', holds, ttl) end
end

local function totals(first)
  local out = first or {}
  for i = 1, accounts do
    local hash = KEYS[2 * i - 1]
    out[#out + 1] = fmt(number(hash, 'spent'))
    out[#out + 1] = fmt(number(hash, 'held'))
  end
  return out
end

for i = 1, accounts do expire(KEYS[2 * i - 1], KEYS[2 * i]) end

if op == 'reserve' then
  local amount, tolerance, id, expiry = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6], tonumber(ARGV[7])
  if amount > 0 then
    for i = 1, accounts do
      local hash = KEYS[2 * i - 1]
      if number(hash, 'spent') + number(hash, 'held') + amount > tonumber(ARGV[7 + i]) + tolerance then
        return totals({ '0', tostring(i) })
      end
    end
  end
  for i = 1, accounts do
    local hash, holds = KEYS[2 * i - 1], KEYS[2 * i]
    redis.call('HSET', hash, 'held', fmt(number(hash, 'held') + amount), 'h:' .. id, fmt(amount))
    redis.call('ZADD', holds, expiry, id)
    touch(hash, holds)
  end
  return totals({ '1', '0' })
elseif op == 'settle' then
  local amount, cost, id = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
  for i = 1, accounts do
    local hash, holds = KEYS[2 * i - 1], KEYS[2 * i]
    if redis.call('ZREM', holds, id) == 1 then
      redis.call('HDEL', hash, 'h:' .. id)
      redis.call('HSET', hash, 'held', fmt(math.max(0.0, number(hash, 'held') - amount)))
    end
    redis.call('HSET', hash, 'spent', fmt(number(hash, 'spent') + cost))
    touch(hash, holds)
  end
  return totals()
elseif op == 'add' then
  for i = 1, accounts do
    local hash, holds = KEYS[2 * i - 1], KEYS[2 * i]
    redis.call('HSET', hash, 'spent', fmt(number(hash, 'spent') + tonumber(ARGV[3 + i])))
    touch(hash, holds)
  end
  return totals()
elseif op == 'spend' then
  return totals()
end
return redis.error_reply('budget.lua: unknown op ' .. tostring(op))
