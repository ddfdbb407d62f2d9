-- Enable or disable a cron. ARGV[A] cron prefix, ARGV[A+1] id, ARGV[A+2] '1' or '0'.
-- Returns the cron's flat fields after the change, or an empty array when unknown.
-- include: sched_lib
-- include: sched_cron_lib
local id, enabled = ARGV[A + 1], ARGV[A + 2]
local cron = load_cron(id)
if not cron then return {} end
redis.call('HSET', P_CRON .. id, 'e', enabled)
if enabled == '1' and cron.e ~= '1' then wake(tonumber(cron.t)) end
local _, flat = load_cron(id)
return flat
