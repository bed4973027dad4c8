-- duckagents fleet: the clock of every script. An empty argument means the server's TIME (production:
-- every replica shares one clock); otherwise the caller's number (tests drive the Python machines and
-- the scripts with one injected clock).
local function clock(arg)
  if arg == '' then
    local t = redis.call('TIME')
    return tonumber(t[1]) + tonumber(t[2]) / 1000000
  end
  return tonumber(arg)
end
