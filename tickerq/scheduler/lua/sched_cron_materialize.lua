-- Advance an enabled cron from the expected next occurrence (compare-and-set), adding
-- the occurrence's job in the same step.
-- ARGV[A] cron prefix, ARGV[A+1] id, ARGV[A+2] expected next ms, ARGV[A+3] occurrence ms
-- ('' = none), ARGV[A+4] new next ms, ARGV[A+5] occurrences skipped.
-- Returns 1 when this call advanced it, 0 when another did first (or unknown, disabled).
-- include: sched_lib
-- include: sched_cron_lib
local id = ARGV[A + 1]
local cron = load_cron(id)
if not cron or cron.e ~= '1' or tonumber(cron.t) ~= tonumber(ARGV[A + 2]) then return 0 end
redis.call('HSET', P_CRON .. id, 't', ARGV[A + 4])
local skipped = tonumber(ARGV[A + 5])
if skipped > 0 then redis.call('HINCRBY', P_CRON .. id, 'k', skipped) end
local occurrence = tonumber(ARGV[A + 3])
if occurrence then
  local occurrence_id = id .. '@' .. ARGV[A + 3]
  if add_occurrence(id, cron, occurrence_id, occurrence, now_ms()) then wake(occurrence) end
end
return 1
