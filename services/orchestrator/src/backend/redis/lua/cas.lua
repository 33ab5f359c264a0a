local t = KEYS[1]
local cur = redis.call('HGET', t, 'ver')
if cur ~= ARGV[1] then return -1 end
if ARGV[14] ~= '' then
  local score = redis.call('ZSCORE', KEYS[5], ARGV[13])
  if not score or tonumber(score) ~= tonumber(ARGV[14]) then return -4 end
  redis.call('ZREM', KEYS[5], ARGV[13])
end
local delta = tonumber(ARGV[5])
if delta > 0 then
  local running = tonumber(redis.call('HGET', KEYS[3], ARGV[7]) or '0')
  if running >= tonumber(ARGV[6]) then return -2 end
end
if delta ~= 0 then redis.call('HINCRBY', KEYS[3], ARGV[7], delta) end
local seq = tonumber(redis.call('HGET', t, 'seq') or '0')
local i = 16
local n = tonumber(ARGV[i])
for k = 1, n do
  seq = seq + 1
  redis.call('XADD', KEYS[2], '0-' .. seq, 'e', ARGV[i + k])
end
if n > 0 then redis.call('PUBLISH', KEYS[2], seq) end
i = i + n + 1
redis.call('HSET', t, 'data', ARGV[2], 'state', ARGV[3], 'attempt', ARGV[4], 'ver', tonumber(cur) + 1, 'seq', seq)
if ARGV[9] ~= '' then
  redis.call('XACK', KEYS[4], ARGV[8], ARGV[9])
  redis.call('XDEL', KEYS[4], ARGV[9])
end
if ARGV[10] ~= '' then
  redis.call('HSET', t, 'entry', redis.call('XADD', KEYS[4], '*', 'id', ARGV[10]))
elseif ARGV[15] ~= '' then
  redis.call('HSET', t, 'entry', ARGV[15])
end
if ARGV[12] ~= '0' then redis.call('ZADD', KEYS[5], ARGV[12], ARGV[13]) end
local nd = tonumber(ARGV[i])
for k = 1, nd do
  local dk = KEYS[5 + 2 * k - 1]
  local de = KEYS[5 + 2 * k]
  local id = ARGV[i + 2 * k - 1]
  local blob = ARGV[i + 2 * k]
  local waiting = redis.call('HINCRBY', dk, 'waiting', -1)
  if waiting <= 0 and redis.call('HGET', dk, 'state') == 'Pending' then
    local dseq = tonumber(redis.call('HGET', dk, 'seq') or '0') + 1
    redis.call('XADD', de, '0-' .. dseq, 'e', blob)
    redis.call('PUBLISH', de, dseq)
    redis.call('HSET', dk, 'state', 'Queued', 'seq', dseq)
    redis.call('HINCRBY', dk, 'ver', 1)
    redis.call('HSET', dk, 'entry', redis.call('XADD', KEYS[4], '*', 'id', id))
  end
end
local ttl = tonumber(ARGV[11])
if ttl > 0 then
  redis.call('EXPIRE', t, ttl)
  redis.call('EXPIRE', KEYS[2], ttl)
end
return seq
