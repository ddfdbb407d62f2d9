-- Store a cron, idempotent per signature (function, expression, time zone) and per id.
-- ARGV[A] cron prefix, ARGV[A+1] id, ARGV[A+2] signature, ARGV[A+3] first occurrence ms,
-- then field/value pairs of the definition.
-- Returns {id, flat fields} of the cron now stored (the existing one, if any).
-- include: sched_lib
-- include: sched_cron_lib
local id, signature = ARGV[A + 1], ARGV[A + 2]
local existing = redis.call('HGET', CRONS, signature)
if existing then
  local _, flat = load_cron(existing)
  if flat then return {existing, flat} end
end
local _, flat = load_cron(id)
if flat then return {id, flat} end
local fields = {'g', signature, 'e', '1', 't', ARGV[A + 3], 'k', '0'}
for i = A + 4, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', P_CRON .. id, unpack(fields))
redis.call('HSET', CRONS, signature, id)
wake(tonumber(ARGV[A + 3]))
_, flat = load_cron(id)
return {id, flat}
