-- Shared by the election scripts. The lease is a hash {node, token, term} with a PX TTL.

-- Returns 'lease', node, token, term; or 'none'; or the Redis type of a key tickerq did not
-- write (a hash missing a field reports 'hash').
local function read_lease(key)
  local kind = redis.call('TYPE', key).ok
  if kind == 'hash' then
    local h = redis.call('HMGET', key, 'node', 'token', 'term')
    local term = tonumber(h[3])
    if h[1] and h[2] and term then
      return 'lease', h[1], h[2], term
    end
  end
  return kind
end

-- The key's remaining ms. A key without a TTL gets one lease, so that garbage written from
-- outside cannot block the election forever; a leader that finds it demotes at once.
local function lapse_ms(key, lease_ms)
  local pttl = redis.call('PTTL', key)
  if pttl < 0 then
    redis.call('PEXPIRE', key, lease_ms)
    return tonumber(lease_ms)
  end
  return pttl
end

-- The term counter, or nil when it is missing or not an integer (then overwritten: an election
-- repairs its counter, where a lock refuses to write over garbage).
local function read_counter(key)
  return read_fence(key) or nil
end

-- The reply when the lease key is occupied: {1, ...} when ``token`` holds it (its TTL is
-- refreshed), {0, ...} when another node does, {-1, type, ...} when it is not a lease.
-- Returns nil when the key is free.
local function occupied_reply(key, token, lease_ms)
  local kind, node, held_by, term = read_lease(key)
  if kind == 'lease' then
    if held_by == token then
      redis.call('PEXPIRE', key, lease_ms)
      return {1, node, term, tonumber(lease_ms)}
    end
    return {0, node, term, lapse_ms(key, lease_ms)}
  elseif kind ~= 'none' then
    return {-1, kind, 0, lapse_ms(key, lease_ms)}
  end
  return nil
end
