local st = redis.call('HMGET', KEYS[1], 'state', 'attempt', 'released')
if not st[1] then return 0 end
if st[1] == 'Succeeded' or st[1] == 'Failed' or st[1] == 'Cancelled' or st[1] == 'TimedOut' or st[1] == 'NeedsReview' then return 2 end
if st[2] ~= ARGV[1] or st[3] == ARGV[1] then return 0 end
redis.call('XCLAIM', KEYS[2], ARGV[2], ARGV[3], 0, ARGV[4], 'JUSTID')
return 1
