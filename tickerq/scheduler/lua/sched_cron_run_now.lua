-- Add one extra occurrence of a cron, due now. ARGV[A] cron prefix, ARGV[A+1] id.
-- Returns the occurrence's job id, or false for an unknown cron.
-- include: sched_lib
-- include: sched_cron_lib
local id = ARGV[A + 1]
local cron = load_cron(id)
if not cron then return false end
local now = now_ms()
local stamp = string.format('%d', now)
local n = 1
while exists(id .. '@' .. stamp .. '.' .. n) do n = n + 1 end
local job_id = id .. '@' .. stamp .. '.' .. n
add_occurrence(id, cron, job_id, now, now)
wake(now)
return job_id
