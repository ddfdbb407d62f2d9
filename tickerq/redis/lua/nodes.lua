-- Read-only: the registered nodes and which of them have no heartbeat key.
-- KEYS: 1 registry, 2 node index (set)
-- ARGV: 1 heartbeat key prefix
-- Returns {status, registered ids, dead ids}; status is 'ok', 'missing' or
-- 'corrupt' (then the ids come from the index, which mirrors the registry).
-- include: nodes_lib
local _, bad = check_types({{KEYS[1], 'string'}, {KEYS[2], 'set'}})
if bad then
  return redis.error_reply(bad)
end
local ids, status = read_registry(KEYS[1])
if status == 'corrupt' then
  local seen = {}
  for _, id in ipairs(ids) do
    seen[id] = true
  end
  for _, id in ipairs(redis.call('SMEMBERS', KEYS[2])) do
    if not seen[id] then
      ids[#ids + 1] = id
    end
  end
end
return {status, ids, dead_among(ids, ARGV[1])}
