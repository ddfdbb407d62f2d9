-- Read a cache entry, or take the recompute lock when the entry is missing.
-- KEYS[1] the entry, KEYS[2] its recompute lock.
-- ARGV[1] the caller's token, ARGV[2] the lock's TTL in ms,
-- ARGV[3] the SHA-1 of an unusable entry to treat as missing ("" for none).
-- Returns {1, entry} on a hit, {2} when the caller now holds the lock,
-- {0} when another computer holds it.
local entry = redis.call('GET', KEYS[1])
if entry and (ARGV[3] == '' or redis.sha1hex(entry) ~= ARGV[3]) then
  return {1, entry}
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {2}
end
return {0}
