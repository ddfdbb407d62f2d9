-- One heartbeat: payload, registry membership, TTLs and (maybe) the dead-node scan.
-- KEYS: 1 heartbeat, 2 registry, 3 tickerq nodes (set), 4 scan lease, 5 registry length
--       seen, 6 foreign dead nodes (hash: id -> ms when first seen dead), 7 our nodes the
--       registry lacks (set)
-- ARGV: 1 node id, 2 heartbeat TTL ms, 3 registry sliding ms, 4 registry sliding ticks,
--       5 scan lease ms (0: no scan), 6 heartbeat key prefix, 7 instance token,
--       8 duplicate check ('later', 'first' or 'refuse': a first beat that does not write
--       over another process' live heartbeat), 9 interval ms, 10 foreign dead-node grace ms
-- Returns {now_ms, registered (0/1), repaired (0/1), scanned (0/1), dead tickerq nodes,
-- foreign nodes removed, restored (tickerq nodes put back), duplicate}: duplicate is {} or
-- {other token ('' for none), its heartbeat's age in ms (-1: unknown), refused (0/1)}.
-- include: entry_lib
-- include: registry_lib
local node, token, prefix = ARGV[1], ARGV[7], ARGV[6]
local sliding_ms, sliding_ticks = tonumber(ARGV[3]), ARGV[4]
local sec, usec, now = server_time()

local types, bad = check_types({
  {KEYS[1], 'hash', 'string'}, {KEYS[2], 'hash', 'string'}, {KEYS[3], 'set'}, {KEYS[5], 'string'},
  {KEYS[7], 'set'},
})
if bad then
  return redis.error_reply(bad)
end

-- Another process with our node id? Its heartbeat holds another instance token. At start a
-- heartbeat older than one interval is a stopped process's; later, any other token means a
-- second process overwrote ours. A string is an older tickerq's layout, not a duplicate.
local mine = '"Instance":' .. cjson.encode(token)
local duplicate = {}
if types[1] == 'hash' then
  local data = redis.call('HGET', KEYS[1], 'data')
  if data and not string.find(data, mine, 1, true) then
    local ok, payload = pcall(cjson.decode, data)
    local other, ts = '', nil
    if ok and type(payload) == 'table' then
      other = type(payload.Instance) == 'string' and payload.Instance or ''
      ts = tonumber(payload.Ts or payload.ts)
    end
    local age = ts and math.max(0, now - ts) or -1
    if ARGV[8] == 'later' or age < tonumber(ARGV[9]) then
      duplicate = {other, age, ARGV[8] == 'refuse' and 1 or 0}
      if ARGV[8] == 'refuse' then
        return {now, 0, 0, 0, {}, {}, 0, duplicate}
      end
    end
  end
end
local was_alive = types[1] ~= 'none'
write_entry(
  KEYS[1],
  '{"Ts":' .. now .. ',"Node":' .. cjson.encode(node) .. ',' .. mine .. '}',
  sec, usec, tonumber(ARGV[2]), false, false
)

local added = redis.call('SADD', KEYS[3], node)
redis.call('PEXPIRE', KEYS[3], sliding_ms)

local repaired, restored, ids = 0, 0, nil

-- Read the whole registry, put back our live nodes it lacks, write it if anything changed.
-- O(N): only when someone else wrote the registry, it is missing or damaged, or the scan.
local function verify(kind)
  local status
  ids, status = read_registry(KEYS[2], kind, sec, usec)
  if status == 'corrupt' then
    repaired = 1
  end
  local back, missing = merge_live_members(ids, KEYS[3], prefix)
  if status ~= 'missing' then
    restored = restored + back
  end
  if back > 0 or status ~= 'ok' or kind ~= 'hash' then
    store_registry(KEYS[2], KEYS[5], encode_ids(ids), sec, usec, sliding_ticks, sliding_ms)
  else
    redis.call('SET', KEYS[5], redis.call('HSTRLEN', KEYS[2], 'data'), 'PX', sliding_ms)
  end
  record_unlisted(KEYS[7], missing, sliding_ms)
end

if types[2] ~= 'hash' then
  verify(types[2]) -- missing, or an older tickerq's string: rewritten as a hash
elseif tostring(redis.call('HSTRLEN', KEYS[2], 'data')) ~= redis.call('GET', KEYS[5]) then
  verify('hash')
elseif added == 1 or not was_alive then
  -- A (re)joining node. The registry is as tickerq left it, so it lists every live tickerq
  -- node: append this one unless listed. O(1) commands; the copy is a memcpy.
  local data = read_entry(KEYS[2], sec, usec)
  local item = cjson.encode(node)
  if string.sub(data, 1, 1) ~= '[' or string.sub(data, -1) ~= ']' then
    verify('hash')
  else
    if not string.find(',' .. string.sub(data, 2, -2) .. ',', ',' .. item .. ',', 1, true) then
      data = string.sub(data, 1, -2) .. (#data > 2 and ',' or '') .. item .. ']'
      store_registry(KEYS[2], KEYS[5], data, sec, usec, sliding_ticks, sliding_ms)
    end
    redis.call('SREM', KEYS[7], node)
  end
else
  local h = redis.call('HMGET', KEYS[2], 'absexp', 'sldexp')
  renew(KEYS[2], h[1], h[2], sec, usec)
  redis.call('PEXPIRE', KEYS[5], sliding_ms)
end

local scanned, dead, gone = 0, {}, {}
if tonumber(ARGV[5]) > 0 and redis.call('SET', KEYS[4], node, 'NX', 'PX', ARGV[5]) then
  scanned = 1
  local _, bad6 = check_types({{KEYS[6], 'hash'}})
  if bad6 then
    return redis.error_reply(bad6)
  end
  if not ids then
    local status
    ids, status = read_registry(KEYS[2], 'hash', sec, usec)
    if status == 'corrupt' then
      repaired = 1
    end
  end
  local changed = repaired == 1
  local members = redis.call('SMEMBERS', KEYS[3])
  local missing = {}
  local ours = {}
  for _, id in ipairs(members) do
    ours[id] = true
  end
  local listed, foreign = {}, {}
  for _, id in ipairs(ids) do
    listed[id] = true
    if redis.call('EXISTS', prefix .. id) == 0 then
      if ours[id] then
        dead[#dead + 1] = id
      else
        foreign[#foreign + 1] = id
      end
    end
  end
  -- Our nodes the registry lacks: a live one is put back; a dead one (a .NET node removed it
  -- first) still goes to our handlers.
  for _, id in ipairs(members) do
    if not listed[id] then
      if redis.call('EXISTS', prefix .. id) == 1 then
        ids[#ids + 1] = id
        restored = restored + 1
        changed = true
      else
        dead[#dead + 1] = id
        missing[#missing + 1] = id
      end
    end
  end
  record_unlisted(KEYS[7], missing, sliding_ms)
  -- A dead node that is not ours (a .NET node) is left for the .NET survivors to release and
  -- remove; after the grace period we remove it.
  local grace, pending, expired = tonumber(ARGV[10]), {}, {}
  for _, id in ipairs(foreign) do
    pending[id] = true
    redis.call('HSETNX', KEYS[6], id, now)
    if now - tonumber(redis.call('HGET', KEYS[6], id)) >= grace then
      expired[id] = true
      gone[#gone + 1] = id
    end
  end
  for _, id in ipairs(redis.call('HKEYS', KEYS[6])) do
    if not pending[id] or expired[id] then
      redis.call('HDEL', KEYS[6], id) -- came back, left the registry, or removed now
    end
  end
  if #foreign > #gone then
    redis.call('PEXPIRE', KEYS[6], sliding_ms)
  end
  if #gone > 0 then
    local kept = {}
    for _, id in ipairs(ids) do
      if not expired[id] then
        kept[#kept + 1] = id
      end
    end
    ids = kept
    changed = true
  end
  if changed then
    store_registry(KEYS[2], KEYS[5], encode_ids(ids), sec, usec, sliding_ticks, sliding_ms)
  end
end
return {now, added, repaired, scanned, dead, gone, restored, duplicate}
