-- Shared helpers for the node-registry scripts (included by name, not run alone).

-- Check that each {key, expected type} pair holds that type or nothing.
-- Returns the types found, and an error message (mapped by Python to
-- tickerq.KeyTypeError) for the first key of another type; callers return
-- it with redis.error_reply from the main chunk.
local function check_types(pairs_)
  local found = {}
  for i, pair in ipairs(pairs_) do
    found[i] = redis.call('TYPE', pair[1]).ok
    if found[i] ~= 'none' and found[i] ~= pair[2] then
      return found, 'TICKERQ_WRONGTYPE ' .. pair[1] .. ' holds a ' .. found[i] .. ', expected a ' .. pair[2]
    end
  end
  return found, nil
end

-- Read the registry. Returns ids, status: 'ok', 'missing' or 'corrupt'.
-- Only string items count; an array with other items or duplicates is
-- reported as corrupt (the scan then rewrites it).
-- The caller has checked the key's type.
local function read_registry(key)
  if redis.call('EXISTS', key) == 0 then
    return {}, 'missing'
  end
  local raw = redis.call('GET', key)
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

-- SADD in chunks: Lua's unpack() cannot spread thousands of values.
local function sadd_all(key, ids)
  for i = 1, #ids, 1000 do
    redis.call('SADD', key, unpack(ids, i, math.min(i + 999, #ids)))
  end
end

local function dead_among(ids, hb_prefix)
  local dead = {}
  for _, id in ipairs(ids) do
    if redis.call('EXISTS', hb_prefix .. id) == 0 then
      dead[#dead + 1] = id
    end
  end
  return dead
end

-- Merge the registry with the index (a set mirroring it) into one list,
-- registry order first; write both back. Used when membership changed or the
-- registry was lost or corrupted.
local function rebuild(registry_key, index_key, ids, registry_ttl)
  local seen = {}
  for _, id in ipairs(ids) do
    seen[id] = true
  end
  for _, id in ipairs(redis.call('SMEMBERS', index_key)) do
    if not seen[id] then
      seen[id] = true
      ids[#ids + 1] = id
    end
  end
  redis.call('SET', registry_key, encode_ids(ids), 'PX', registry_ttl)
  if #ids > 0 then
    sadd_all(index_key, ids)
    redis.call('PEXPIRE', index_key, registry_ttl)
  end
  return ids
end
