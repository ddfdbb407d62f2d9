-- Campaign: take the election's lease when it is vacant, else report who holds it.
-- KEYS: 1 lease (hash: node, token, term), 2 term counter
-- ARGV: 1 node id, 2 token, 3 lease ms, 4 highest term the caller has seen
-- Returns {status, node, term, pttl}: 1 = ours (new, or a retry whose reply was lost: TTL
-- refreshed, same term), 0 = held by node ('' = kept vacant after data loss), -1 = the key is
-- not a lease (node = its Redis type).
-- include: fence_lib
-- include: election_lib
local lease_ms = ARGV[3]
local reply = occupied_reply(KEYS[1], ARGV[2], lease_ms)
if reply then
  return reply
end

local seen = tonumber(ARGV[4])
local counter = read_counter(KEYS[2])
if counter == nil or counter < seen then
  redis.call('SET', KEYS[2], seen)  -- also over garbage: an election repairs its counter
  if (counter or 0) < seen then
    -- The counter went backwards: Redis lost its data, and the last leader may not know it
    -- yet. Keep the lease vacant for one lease; by then that leader has demoted itself.
    redis.call('HSET', KEYS[1], 'node', '', 'token', '', 'term', seen)
    redis.call('PEXPIRE', KEYS[1], lease_ms)
    return {0, '', seen, tonumber(lease_ms)}
  end
end
local term = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[1], 'node', ARGV[1], 'token', ARGV[2], 'term', term)
redis.call('PEXPIRE', KEYS[1], lease_ms)
return {1, ARGV[1], term, tonumber(lease_ms)}
