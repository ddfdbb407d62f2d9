-- Take a lock: SET NX PX plus the fence INCR, in turn order when others wait.
-- KEYS[1] lock, KEYS[2] fence counter, KEYS[3] waiter queue (list),
-- KEYS[4] turn, KEYS[5] waiter deadlines (zset)
-- ARGV[1] wake key prefix, ARGV[2] waiter liveness ms, ARGV[3] turn ms (the same on
-- every call for a lock: the client sends them pre-packed), then ARGV[4] token,
-- ARGV[5] ttl ms, ARGV[6] '1' to queue as a waiter (id: the token) or '',
-- ARGV[7] fence floor, ARGV[8] hold-back ms after a data loss
-- Returns {1, fence} when held by token, {0, pttl of the lock, recovering} otherwise
-- (recovering is 1 while the lock is held back after a data loss).
-- include: lock_common
-- include: lock_grant
-- include: fence_lib
local token = ARGV[4]
local wid = ARGV[6] == '1' and token or ''
local current = redis.call('GET', KEYS[1])
if current == token then
  -- A retried call whose first reply was lost: nobody can INCR while we hold it.
  return {1, tonumber(redis.call('GET', KEYS[2])) or 0}
end

local turn = false
if not current then
  -- Nobody queued and no turn given (one call): the uncontended fast path.
  if redis.call('EXISTS', KEYS[3], KEYS[4]) > 0 then
    turn = redis.call('GET', KEYS[4])
    if not turn then turn = grant(KEYS[3], KEYS[4], KEYS[5], ARGV[1], ARGV[3]) end
  end
  if (not turn) or turn == wid then
    -- INCR before SET: if the counter holds garbage the script fails before writing.
    local fence = redis.call('INCR', KEYS[2])
    local floor = tonumber(ARGV[7])
    if fence > floor then
      redis.call('SET', KEYS[1], token, 'PX', ARGV[5])
      if turn then
        redis.call('DEL', KEYS[4], ARGV[1] .. wid)
      end
      return {1, fence}
    end
    -- The counter is behind a fence the caller was given: Redis lost its data. A holder
    -- from before the loss may still be renewing with a fence up to the lost counter, so
    -- grant nothing yet: raise the counter to the floor and hold the lock back for a
    -- while, during which that holder's renewal re-establishes its lease over it.
    raise_fence(KEYS[2], floor, fence)
    redis.call('SET', KEYS[1], RECOVERING, 'PX', ARGV[8])
    current = RECOVERING
    if turn then
      -- A waiter given the turn keeps its place: the turn ends, it goes back to the front.
      redis.call('DEL', KEYS[4], ARGV[1] .. wid)
    end
  end
end

-- Here turn == wid only for a waiter that had the turn and parked RECOVERING.
if wid ~= '' then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  if not redis.call('ZSCORE', KEYS[5], wid) then
    redis.call(turn == wid and 'LPUSH' or 'RPUSH', KEYS[3], wid)
  end
  redis.call('ZADD', KEYS[5], now + tonumber(ARGV[2]), wid)
  -- The queue outlives its last live waiter by a little, never forever.
  redis.call('PEXPIRE', KEYS[3], 2 * tonumber(ARGV[2]))
  redis.call('PEXPIRE', KEYS[5], 2 * tonumber(ARGV[2]))
end
return {0, redis.call('PTTL', KEYS[1]), current == RECOVERING and 1 or 0}
