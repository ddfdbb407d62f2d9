-- Shared by lock_acquire and lock_release (included, not run alone).

-- Give the turn to the first queued waiter that is still alive, and wake it by
-- pushing onto its own list. Waiters whose place expired are dropped on the way.
-- Returns the waiter id, or false when nobody live is waiting.
local function grant(queue, turn, waiters, wake_prefix, turn_ms)
  local now = nil
  while true do
    local wid = redis.call('LPOP', queue)
    if not wid then return false end
    if not now then
      local t = redis.call('TIME')
      now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    end
    local expires = redis.call('ZSCORE', waiters, wid)
    redis.call('ZREM', waiters, wid)
    if expires and tonumber(expires) >= now then
      redis.call('SET', turn, wid, 'PX', turn_ms)
      redis.call('RPUSH', wake_prefix .. wid, '1')
      redis.call('PEXPIRE', wake_prefix .. wid, turn_ms)
      return wid
    end
  end
end
