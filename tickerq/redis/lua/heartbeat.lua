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

-- O(1) unless the registry is missing or damaged: a known member only
-- refreshes the TTL; a new member is appended in place while the index (which
-- mirrors the registry) is intact. Garbage that still looks like an array is
-- caught by the scan below, once per interval.
local shaped = registry_type == 'string'
  and redis.call('GETRANGE', KEYS[2], 0, 0) == '['
  and redis.call('GETRANGE', KEYS[2], -1, -1) == ']'
local repaired = 0
if shaped and added == 0 then
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
elseif shaped and redis.call('STRLEN', KEYS[2]) > 2 and redis.call('SCARD', KEYS[3]) > 1 then
  redis.call('SETRANGE', KEYS[2], redis.call('STRLEN', KEYS[2]) - 1, ',' .. cjson.encode(node) .. ']')
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
  elseif #ids ~= redis.call('SCARD', KEYS[3]) then
    -- Rewritten from outside (an operator, another client): members the index
    -- knows are missing. Merge them back, or they would never be seen as dead.
    repaired = 1
    ids = rebuild(KEYS[2], KEYS[3], ids, ARGV[3])
  end
  dead = dead_among(ids, ARGV[5])
end
return {now, added, repaired, scanned, dead}
