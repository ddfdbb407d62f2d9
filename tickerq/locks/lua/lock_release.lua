-- Let go of a lock (when ARGV[3] is its token) and/or of a place in its queue
-- (when ARGV[4] is a waiter id); hand a free lock to the next live waiter.
-- KEYS[1] lock, KEYS[2] fence counter, KEYS[3] waiter queue (list),
-- KEYS[4] turn, KEYS[5] waiter deadlines (zset)
-- ARGV[1] wake key prefix, ARGV[2] turn ms (pre-packed, as in lock_acquire), then
-- ARGV[3] token or '', ARGV[4] waiter id or '', ARGV[5] our fence
-- Returns 1 released; 2 already gone and nobody took it since (e.g. a retried
-- call whose first reply was lost); 0 not ours. A holder that finds the lock held
-- back after a data loss (it had not renewed since) raises the counter to its
-- fence, so the next holder's is higher, and gets 0.
-- include: lock_common
-- include: lock_grant
-- include: fence_lib
local result = 0
local token, wid, fence = ARGV[3], ARGV[4], ARGV[5]
local current = redis.call('GET', KEYS[1])
if token ~= '' then
  if current == token then
    redis.call('DEL', KEYS[1])
    current = false
    result = 1
  elseif not current and redis.call('GET', KEYS[2]) == fence then
    result = 2
  elseif current == RECOVERING then
    raise_fence(KEYS[2], tonumber(fence), read_fence(KEYS[2]))
  end
end

if wid ~= '' then
  redis.call('LREM', KEYS[3], 0, wid)
  redis.call('ZREM', KEYS[5], wid)
  redis.call('DEL', ARGV[1] .. wid)
  if redis.call('GET', KEYS[4]) == wid then
    redis.call('DEL', KEYS[4])
  end
end

if not current and redis.call('EXISTS', KEYS[3]) == 1 and redis.call('EXISTS', KEYS[4]) == 0 then
  grant(KEYS[3], KEYS[4], KEYS[5], ARGV[1], ARGV[2])
end
return result
