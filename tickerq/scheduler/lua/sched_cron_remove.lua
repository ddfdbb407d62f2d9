-- Delete a cron and its index entry. ARGV[A] cron prefix, ARGV[A+1] id.
-- Returns 1 when it existed.
-- include: sched_lib
-- include: sched_cron_lib
local id = ARGV[A + 1]
local cron = load_cron(id)
if not cron then return 0 end
if cron.g and redis.call('HGET', CRONS, cron.g) == id then redis.call('HDEL', CRONS, cron.g) end
redis.call('DEL', P_CRON .. id)
return 1
