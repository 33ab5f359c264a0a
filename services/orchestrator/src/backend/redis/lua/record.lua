local st = redis.call('HMGET', KEYS[1], 'state', 'attempt', 'seq')
if not st[1] then return -1 end
if st[1] == 'Succeeded' or st[1] == 'Failed' or st[1] == 'Cancelled' or st[1] == 'TimedOut' or st[1] == 'NeedsReview' then return -1 end
if st[2] ~= ARGV[1] then return -1 end
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'worker', ARGV[3]) end
local seq = tonumber(st[3] or '0')
local max = tonumber(ARGV[2])
for i = 4, #ARGV do
  if seq >= max then
    redis.call('HSET', KEYS[1], 'seq', seq)
    if #ARGV > 3 then redis.call('PUBLISH', KEYS[2], seq) end
    return -3
  end
  seq = seq + 1
  redis.call('XADD', KEYS[2], '0-' .. seq, 'e', ARGV[i])
end
redis.call('HSET', KEYS[1], 'seq', seq)
if #ARGV > 3 then redis.call('PUBLISH', KEYS[2], seq) end
return seq
