-- The nodes the cluster knows (the registry, plus tickerq nodes it lacks: dropped by a .NET
-- node's rewrite, or dead and not yet handled) and which of them have no heartbeat key.
-- Reads only, apart from renewing the registry's sliding TTL as any RedisCache reader does.
-- KEYS: 1 registry, 2 tickerq nodes (set), 3 registry length seen, 4 our nodes the registry
--       lacks (set: exact while the length matches)
-- ARGV: 1 heartbeat key prefix, 2 what to return: 'dead', 'registered' or 'health' (both)
-- Returns {status, registered ids, dead ids}; a list not asked for is empty. status is 'ok',
-- 'missing' or 'corrupt'. The ids may repeat when the registry repeats them.
-- include: entry_lib
-- include: registry_lib
local types, bad = check_types({{KEYS[1], 'hash', 'string'}, {KEYS[2], 'set'}})
if bad then
  return redis.error_reply(bad)
end
local want_registered, want_dead = ARGV[2] ~= 'dead', ARGV[2] ~= 'registered'
local prefix = ARGV[1]
local sec, usec = 0, 0
if types[1] == 'hash' then
  sec, usec = server_time()
end
local raw = registry_raw(KEYS[1], types[1], sec, usec)
local status, list = 'missing', {}
if raw then
  local ok, decoded = pcall(cjson.decode, raw)
  if ok and type(decoded) == 'table' and string.sub(raw, 1, 1) == '[' then
    status, list = 'ok', decoded
  else
    status = 'corrupt'
  end
end

-- Our nodes the registry lacks: recorded by the last tickerq write or check when the registry is
-- still as it left it (O(1)); else compare our whole set with the registry.
local members, unlisted = nil, nil
if status == 'ok' and types[1] == 'hash'
  and tostring(redis.call('HSTRLEN', KEYS[1], 'data')) == redis.call('GET', KEYS[3]) then
  members = redis.call('SMEMBERS', KEYS[4])
else
  members, unlisted = redis.call('SMEMBERS', KEYS[2]), {}
  for _, id in ipairs(members) do
    unlisted[id] = true
  end
end
local registered, dead = {}, {}
local function report(id)
  if want_registered then
    registered[#registered + 1] = id
  end
  if want_dead and redis.call('EXISTS', prefix .. id) == 0 then
    dead[#dead + 1] = id
  end
end
for _, id in ipairs(list) do
  if type(id) == 'string' then
    if unlisted then
      unlisted[id] = nil
    end
    report(id)
  else
    status = 'corrupt'
  end
end
for _, id in ipairs(members) do
  if not unlisted or unlisted[id] then
    report(id)
  end
end
return {status, registered, dead}
