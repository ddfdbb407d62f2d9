-- Drop finished-index entries past their expiry (the records expire by their own TTL).
-- ARGV[A] limit. Returns how many were dropped.
-- include: sched_lib
local ids = redis.call('ZRANGEBYSCORE', FINISHED, '-inf', now_ms(), 'LIMIT', 0, tonumber(ARGV[A]))
for i = 1, #ids, 500 do
  redis.call('ZREM', FINISHED, unpack(ids, i, math.min(i + 499, #ids)))
end
return #ids
