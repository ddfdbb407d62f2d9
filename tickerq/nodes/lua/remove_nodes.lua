-- Drop nodes from the registry and from tickerq's nodes, but only those still without a
-- heartbeat now. Like every tickerq write of the registry, it also puts back any live tickerq
-- node the registry lacks.
-- KEYS: 1 registry, 2 tickerq nodes (set), 3 registry length seen, 4 foreign dead nodes,
--       5 our nodes the registry lacks (set), 6.. the nodes' heartbeat keys
-- ARGV: 1 registry sliding ms, 2 registry sliding ticks, 3 heartbeat key prefix,
--       4.. node ids (in the order of their heartbeat keys)
-- Returns the ids removed.
-- include: entry_lib
-- include: registry_lib
local types, bad = check_types({
  {KEYS[1], 'hash', 'string'}, {KEYS[2], 'set'}, {KEYS[4], 'hash'}, {KEYS[5], 'set'},
})
if bad then
  return redis.error_reply(bad)
end
local remove = {}
local removed = {}
for i = 4, #ARGV do
  local id = ARGV[i]
  if not remove[id] and redis.call('EXISTS', KEYS[i + 2]) == 0 then
    remove[id] = true
    removed[#removed + 1] = id
    redis.call('SREM', KEYS[2], id)
    redis.call('SREM', KEYS[5], id)
    redis.call('HDEL', KEYS[4], id)
  end
end
if #removed == 0 then
  return removed
end
local sec, usec = server_time()
local ids, status = read_registry(KEYS[1], types[1], sec, usec)
if status == 'missing' then
  return removed
end
local kept = {}
for _, id in ipairs(ids) do
  if not remove[id] then
    kept[#kept + 1] = id
  end
end
local _, missing = merge_live_members(kept, KEYS[2], ARGV[3])
store_registry(KEYS[1], KEYS[3], encode_ids(kept), sec, usec, ARGV[2], tonumber(ARGV[1]))
record_unlisted(KEYS[5], missing, tonumber(ARGV[1]))
return removed
