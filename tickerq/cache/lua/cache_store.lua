-- Store a computed cache entry as .NET's RedisCache does, and release the recompute lock if
-- it is ours.
-- KEYS[1] the entry, KEYS[2] its recompute lock.
-- ARGV[1] the computer's token, ARGV[2] the JSON payload, ARGV[3] the absolute expiration in
-- ms ("0" for none), ARGV[4] "1" to store although another computer holds the lock (a waiter
-- that gave up on it).
-- Returns 1 stored; 0 not stored, the entry was invalidated during the computation; -1 not
-- stored, another computer holds the lock; -2 not stored, the key holds another Redis type
-- (left untouched).
-- include: entry_lib
local holder = redis.call('GET', KEYS[2])
if holder == '!' .. ARGV[1] then
  redis.call('DEL', KEYS[2])
  return 0
end
local ours = holder == ARGV[1]
if holder and not ours and ARGV[4] ~= '1' then
  return -1
end
local kind = redis.call('TYPE', KEYS[1]).ok
if (kind ~= 'none' and kind ~= 'hash' and kind ~= 'string')
  or (kind == 'hash' and redis.call('HEXISTS', KEYS[1], 'data') == 0) then
  if ours then redis.call('DEL', KEYS[2]) end
  return -2
end
local sec, usec = server_time()
local ttl = tonumber(ARGV[3])
write_entry(KEYS[1], ARGV[2], sec, usec, ttl > 0 and ttl, false, false)
if ours then redis.call('DEL', KEYS[2]) end
return 1
