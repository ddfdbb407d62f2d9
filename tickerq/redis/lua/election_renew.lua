-- Renew the leader's lease: extend it while it is ours; re-create it when it vanished (deleted
-- from outside, or Redis lost its data) and nobody took it since.
-- KEYS: 1 lease (hash: node, token, term), 2 term counter
-- ARGV: 1 node id, 2 token, 3 term, 4 lease ms
-- Returns {status, node, term, pttl} as election_acquire does.
-- include: election_lib
local lease_ms = ARGV[4]
local reply = occupied_reply(KEYS[1], ARGV[2], lease_ms)
if reply then
  return reply
end

local term = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], 'node', ARGV[1], 'token', ARGV[2], 'term', term)
redis.call('PEXPIRE', KEYS[1], lease_ms)
-- Terms never go backwards, even when the counter was lost with the rest of the data.
local counter = read_counter(KEYS[2])
if counter == nil or counter < term then
  redis.call('SET', KEYS[2], term)
end
return {1, ARGV[1], term, tonumber(lease_ms)}
