-- Shared by the node-registry scripts (included by name after entry_lib, not run alone).
--
-- The registry is a RedisCache entry (see entry_lib) whose data is a JSON array of node ids,
-- shared with TickerQ .NET nodes. The set of tickerq (Python) nodes lives beside it, and a
-- small key holds the length of the registry's data as tickerq last wrote or checked it: a
-- beat compares it with HSTRLEN, in O(1), to notice a rewrite by another writer (a .NET node's
-- read-modify-write may have dropped one of ours). While that length matches, a set beside it
-- ("unlisted") holds exactly our nodes the registry lacks (dead ones a .NET node removed), so
-- a reader need not compare our whole set with the registry.

-- Check that each {key, type, other type} entry holds one of those types or nothing.
-- Returns the types found, and an error message (mapped by Python to tickerq.KeyTypeError)
-- for the first key of another type; callers return it with redis.error_reply.
local function check_types(entries)
  local found = {}
  for i, entry in ipairs(entries) do
    local kind = redis.call('TYPE', entry[1]).ok
    found[i] = kind
    if kind ~= 'none' and kind ~= entry[2] and kind ~= entry[3] then
      return found, 'TICKERQ_WRONGTYPE ' .. entry[1] .. ' holds a ' .. kind .. ', expected a ' .. entry[2]
    end
  end
  return found, nil
end

-- The registry's raw JSON: from the hash (renewing its sliding TTL as any reader does), or
-- from a string written by an older tickerq. Returns raw (false when missing).
local function registry_raw(key, kind, sec, usec)
  if kind == 'hash' then
    return read_entry(key, sec, usec)
  elseif kind == 'string' then
    return redis.call('GET', key)
  end
  return false
end

-- Decode the registry. Returns ids (strings, without duplicates), status: 'ok', 'missing'
-- or 'corrupt' (not a JSON array, or items that are not strings, or duplicates).
local function read_registry(key, kind, sec, usec)
  local raw = registry_raw(key, kind, sec, usec)
  if not raw then
    return {}, 'missing'
  end
  local ok, decoded = pcall(cjson.decode, raw)
  if not ok or type(decoded) ~= 'table' or string.sub(raw, 1, 1) ~= '[' then
    return {}, 'corrupt'
  end
  local ids, seen, status = {}, {}, 'ok'
  for _, id in ipairs(decoded) do
    if type(id) == 'string' and not seen[id] then
      seen[id] = true
      ids[#ids + 1] = id
    else
      status = 'corrupt'
    end
  end
  return ids, status
end

-- cjson encodes an empty table as {}: the registry must stay an array.
local function encode_ids(ids)
  if #ids == 0 then
    return '[]'
  end
  return cjson.encode(ids)
end

-- Write the registry's JSON as TickerQ does (sliding expiration, no absolute one) and record
-- its length as ours.
local function store_registry(key, length_key, data, sec, usec, sliding_ticks, sliding_ms)
  write_entry(key, data, sec, usec, false, sliding_ticks, sliding_ms)
  redis.call('SET', length_key, #data, 'PX', sliding_ms)
end

-- Record which of our nodes the registry (as just written or checked) lacks.
local function record_unlisted(unlisted_key, missing, ttl_ms)
  redis.call('DEL', unlisted_key)
  for i = 1, #missing, 1000 do
    redis.call('SADD', unlisted_key, unpack(missing, i, math.min(i + 999, #missing)))
  end
  if #missing > 0 then
    redis.call('PEXPIRE', unlisted_key, ttl_ms)
  end
end

-- Append to ``ids`` every tickerq node with a live heartbeat that it lacks. Returns how many,
-- and the dead ones it lacks.
local function merge_live_members(ids, members_key, hb_prefix)
  local listed = {}
  for _, id in ipairs(ids) do
    listed[id] = true
  end
  local added, missing = 0, {}
  for _, id in ipairs(redis.call('SMEMBERS', members_key)) do
    if not listed[id] then
      if redis.call('EXISTS', hb_prefix .. id) == 1 then
        ids[#ids + 1] = id
        added = added + 1
      else
        missing[#missing + 1] = id
      end
    end
  end
  return added, missing
end
