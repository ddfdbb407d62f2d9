-- One heartbeat: payload, registry membership, TTLs and (maybe) the dead-node scan.
-- KEYS: 1 heartbeat key, 2 registry, 3 node index (set), 4 scan lease
-- ARGV: 1 node id, 2 heartbeat TTL ms, 3 registry TTL ms, 4 scan lease ms (0: no scan),
--       5 heartbeat key prefix
-- Returns {now_ms, registered (0/1), repaired (0/1), scanned (0/1), dead ids}.
-- include: nodes_lib
local node = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('SET', KEYS[1], '{"node":' .. cjson.encode(node) .. ',"ts":' .. now .. '}', 'PX', ARGV[2])

local types, bad = check_types({{KEYS[2], 'string'}, {KEYS[3], 'set'}})
if bad then
  return redis.error_reply(bad)
end
local registry_type = types[1]
local added = redis.call('SADD', KEYS[3], node)
redis.call('PEXPIRE', KEYS[3], ARGV[3])

-- Fast path, O(1): already a member and the registry still looks like an array.
-- Garbage that passes this check is caught by the scan below, once per interval.
local intact = added == 0 and registry_type == 'string'
  and redis.call('GETRANGE', KEYS[2], 0, 0) == '['
  and redis.call('GETRANGE', KEYS[2], -1, -1) == ']'
local repaired = 0
if intact then
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
else
  local ids, status = read_registry(KEYS[2])
  if status == 'corrupt' then
    repaired = 1
  end
  rebuild(KEYS[2], KEYS[3], ids, ARGV[3])
end

local scanned, dead = 0, {}
if tonumber(ARGV[4]) > 0 and redis.call('SET', KEYS[4], node, 'NX', 'PX', ARGV[4]) then
  scanned = 1
  local ids, status = read_registry(KEYS[2])
  if status == 'corrupt' then
    repaired = 1
    ids = rebuild(KEYS[2], KEYS[3], {}, ARGV[3])
  end
  dead = dead_among(ids, ARGV[5])
end
return {now, added, repaired, scanned, dead}
