local function after(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  if not am or not bm then return false end
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am > bm or (am == bm and as > bs)
end
local st = redis.call('HMGET', KEYS[1], 'state', 'entry')
local state = st[1]
if not state or state == 'Succeeded' or state == 'Failed' or state == 'Cancelled' or state == 'TimedOut' or state == 'NeedsReview' then return 'held' end
if redis.call('ZSCORE', KEYS[3], ARGV[1]) then return 'held' end
local e = st[2]
if e then
  if #redis.call('XPENDING', KEYS[2], ARGV[2], e, e, 1) > 0 then return 'held' end
  if #redis.call('XRANGE', KEYS[2], e, e) > 0 then
    local last = nil
    for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[2])) do
      local f = {}
      for k = 1, #g, 2 do f[g[k]] = g[k + 1] end
      if f['name'] == ARGV[2] then last = f['last-delivered-id'] end
    end
    if not last or after(e, last) then return 'held' end
  end
elseif state == 'Running' then
  return 'unknown'
end
if state == 'Queued' then
  redis.call('HSET', KEYS[1], 'entry', redis.call('XADD', KEYS[2], '*', 'id', ARGV[1]))
  return 'requeued'
end
return 'stranded'
