local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) ~= tonumber(ARGV[2]) then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
if redis.call('HGET', KEYS[3], 'state') == 'Queued' then
  redis.call('HSET', KEYS[3], 'entry', redis.call('XADD', KEYS[2], '*', 'id', ARGV[1]))
  return 1
end
return 0
