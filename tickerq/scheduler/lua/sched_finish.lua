-- Record how attempts ended, each under its claim's fence.
-- ARGV[A] retention ms, then per outcome 7 values (see sched_finish_lib).
-- Returns 1 (recorded) or 0 (stale fence: ignored) per outcome.
-- include: sched_lib
-- include: sched_finish_lib
local result, earliest = finish_outcomes(A + 1, (#ARGV - A) / 7, now_ms(), tonumber(ARGV[A]))
wake(earliest)
return result
