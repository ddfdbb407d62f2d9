-- Renew a batch of leases in one call; extend replaces the TTL.
-- KEYS: lock_1, fence_1, lock_2, fence_2, ...
-- ARGV: token_1, ttl_ms_1, fence_1, token_2, ttl_ms_2, fence_2, ...
-- Returns one code per lease: 1 extended; 2 re-established after Redis lost its
-- data (lock and counter both gone, or the lock held back as RECOVERING by an
-- acquisition that noticed the loss, when the lease's fence is at least the
-- counter); 0 lost (another owner, the key deleted or expired while the counter
-- survived, a stale lease finding RECOVERING, or a key of the wrong type).
-- Whatever the outcome, the counter is raised to at least the lease's fence so
-- fences never go backwards after a data loss.
-- include: lock_common
-- include: fence_lib
local codes = {}
for i = 1, #KEYS / 2 do
  local lock, counter_key = KEYS[2 * i - 1], KEYS[2 * i]
  local token, ttl, fence = ARGV[3 * i - 2], ARGV[3 * i - 1], tonumber(ARGV[3 * i])
  local code = 0
  local counter = read_fence(counter_key)
  local current = redis.pcall('GET', lock)
  if type(current) ~= 'table' then
    if current == token then
      redis.call('PEXPIRE', lock, ttl)
      code = 1
    elseif (not current and counter == nil) or (current == RECOVERING and counter and fence >= counter) then
      -- Held back after a data loss: only the survivor takes it over, the lease with the
      -- highest fence handed out (the acquisition raised the counter to the highest it
      -- knew); a lease with a lower fence is stale, its key expired before the loss.
      redis.call('SET', lock, token, 'PX', ttl)
      code = 2
    end
  end
  raise_fence(counter_key, fence, counter)
  codes[i] = code
end
return codes
