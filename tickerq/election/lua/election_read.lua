-- Who leads? Reads only.
-- KEYS: 1 lease (hash: node, token, term)
-- Returns {status, node, term, pttl}: 0 = held by node ('' = kept vacant after data loss),
-- 2 = vacant, -1 = the key is not a lease (node = its Redis type).
-- include: fence_lib
-- include: election_lib
local kind, node, _, term = read_lease(KEYS[1])
if kind == 'lease' then
  return {0, node, term, redis.call('PTTL', KEYS[1])}
elseif kind == 'none' then
  return {2, '', 0, -2}
end
return {-1, kind, 0, redis.call('PTTL', KEYS[1])}
