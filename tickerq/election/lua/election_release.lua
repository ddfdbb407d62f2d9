-- Resign: delete the election's lease if it is still ours.
-- KEYS: 1 lease (hash: node, token, term)
-- ARGV: 1 token
-- Returns 1 when the lease was ours and is gone, else 0.
-- include: fence_lib
-- include: election_lib
local kind, _, token = read_lease(KEYS[1])
if kind == 'lease' and token == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
