-- Renew the leader's lease: extend it while it is ours; re-create it when it vanished (deleted
-- from outside, or Redis lost its data) and no later term began since.
-- KEYS: 1 lease (hash: node, token, term), 2 term counter
-- ARGV: 1 node id, 2 token, 3 term, 4 lease ms
-- Returns {status, node, term, pttl} as election_acquire does, and 2 = lost: the lease vanished
-- after a later term began (term = the counter).
-- include: fence_lib
-- include: election_lib
local lease_ms = ARGV[4]
local term = tonumber(ARGV[3])
local counter = read_counter(KEYS[2])
-- Terms never go backwards, even when the counter was lost with the rest of the data.
raise_fence(KEYS[2], term, counter)

local reply = occupied_reply(KEYS[1], ARGV[2], lease_ms)
if reply then
  if reply[1] == 0 and reply[2] ~= '' and reply[3] < term then
    -- Another node leads a lower term: Redis lost its data and elected it since. Its term is
    -- below fences already handed out, so end it too: keep the lease vacant for one lease
    -- (both leaders demote meanwhile); the next term is above ours.
    redis.call('HSET', KEYS[1], 'node', '', 'token', '', 'term', term)
    redis.call('PEXPIRE', KEYS[1], lease_ms)
    return {0, '', term, tonumber(lease_ms)}
  end
  return reply
end

if counter ~= nil and counter > term then
  -- A later term began while the lease was gone (its leader may have resigned since): ours is over.
  return {2, '', counter, -2}
end
redis.call('HSET', KEYS[1], 'node', ARGV[1], 'token', ARGV[2], 'term', term)
redis.call('PEXPIRE', KEYS[1], lease_ms)
return {1, ARGV[1], term, tonumber(lease_ms)}
