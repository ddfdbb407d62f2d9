-- Remove a cache entry, and mark a computation in flight as stale so that
-- its result is not stored (the marker keeps the lock's TTL, so a crashed
-- computer's lock still expires on time).
-- KEYS[1] the entry, KEYS[2] its recompute lock.
-- Returns 1 if an entry was removed, else 0.
local removed = redis.call('DEL', KEYS[1])
local holder = redis.call('GET', KEYS[2])
if holder and string.sub(holder, 1, 1) ~= '!' then
  redis.call('SET', KEYS[2], '!' .. holder, 'KEEPTTL')
end
return removed
