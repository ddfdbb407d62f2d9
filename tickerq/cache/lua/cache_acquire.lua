-- Read a cache entry, or take the recompute lock when the entry is missing.
-- KEYS[1] the entry, KEYS[2] its recompute lock.
-- ARGV[1] the caller's token, ARGV[2] the lock's TTL in ms,
-- ARGV[3] the SHA-1 of an unusable entry to treat as missing ("" for none).
-- Returns {1, data} on a hit (a sliding entry's TTL renewed, as a RedisCache reader does),
-- {2} when the caller now holds the lock, {0} when another computer holds it, {-2, type} when
-- the key holds something that is not a cache entry (left untouched). A string is an older
-- tickerq's entry: a miss, replaced by the store.
-- include: entry_lib
local kind = redis.call('TYPE', KEYS[1]).ok
if kind == 'hash' then
  local sec, usec = server_time()
  local data = read_entry(KEYS[1], sec, usec)
  if not data then
    return {-2, 'hash without a data field'}
  end
  if ARGV[3] == '' or redis.sha1hex(data) ~= ARGV[3] then
    return {1, data}
  end
elseif kind ~= 'none' and kind ~= 'string' then
  return {-2, kind}
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {2}
end
return {0}
