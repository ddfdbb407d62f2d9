-- Release a recompute lock without storing anything, if it is still ours.
-- KEYS[1] the recompute lock. ARGV[1] the computer's token.
-- Returns 1 if the lock (or its invalidation marker) was removed, else 0.
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] or holder == '!' .. ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
