local st = redis.call('HMGET', KEYS[1], 'state', 'attempt')
if st[1] ~= 'Running' or st[2] ~= ARGV[1] then return 0 end
local moved = redis.call('XCLAIM', KEYS[2], ARGV[2], 'released', 0, ARGV[3], 'IDLE', ARGV[4], 'JUSTID')
if #moved == 0 then return 0 end
redis.call('HSET', KEYS[1], 'released', ARGV[1])
return 1
