-- Drop nodes from the registry, but only those still without a heartbeat now.
-- KEYS: 1 registry, 2 node index (set), 3.. the nodes' heartbeat keys
-- ARGV: 1 registry TTL ms, 2.. node ids (in the order of their heartbeat keys)
-- Returns the ids removed.
-- include: nodes_lib
local _, bad = check_types({{KEYS[1], 'string'}, {KEYS[2], 'set'}})
if bad then
  return redis.error_reply(bad)
end
local remove = {}
local removed = {}
for i = 2, #ARGV do
  local id = ARGV[i]
  if not remove[id] and redis.call('EXISTS', KEYS[i + 1]) == 0 then
    remove[id] = true
    removed[#removed + 1] = id
    redis.call('SREM', KEYS[2], id)
  end
end
if #removed == 0 then
  return removed
end
local ids, status = read_registry(KEYS[1])
if status == 'missing' then
  return removed
end
if status == 'corrupt' then
  ids = redis.call('SMEMBERS', KEYS[2])
end
local kept = {}
for _, id in ipairs(ids) do
  if not remove[id] then
    kept[#kept + 1] = id
  end
end
local ttl = redis.call('PTTL', KEYS[1])
if ttl <= 0 then
  ttl = ARGV[1]
end
redis.call('SET', KEYS[1], encode_ids(kept), 'PX', ttl)
return removed
