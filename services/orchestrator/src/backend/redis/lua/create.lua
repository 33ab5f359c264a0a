if ARGV[1] == '1' then
  local existing = redis.call('GET', KEYS[1])
  if existing then return existing end
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
end
local n = tonumber(ARGV[4])
local i = 5
for k = 1, n do
  local tk = KEYS[3 + 2 * k - 1]
  local ek = KEYS[3 + 2 * k]
  local id, data, state, waiting, tenant = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  local nev = tonumber(ARGV[i + 5])
  redis.call('HSET', tk, 'data', data, 'state', state, 'attempt', 0, 'ver', 0, 'seq', nev, 'waiting', waiting, 'tenant', tenant)
  for e = 1, nev do
    redis.call('XADD', ek, '0-' .. e, 'e', ARGV[i + 5 + e])
  end
  redis.call('ZADD', KEYS[2], 0, id)
  if state == 'Queued' then redis.call('HSET', tk, 'entry', redis.call('XADD', KEYS[3], '*', 'id', id)) end
  i = i + 6 + nev
end
return ''
