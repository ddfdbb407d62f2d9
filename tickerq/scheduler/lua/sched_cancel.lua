-- Cancel a job: IDLE becomes CANCELLED at once, a claimed one gets cancel requested.
-- ARGV[A] id. Returns {where, record JSON} as sched_read does, after the change.
-- include: sched_lib
-- include: sched_read_lib
local id = ARGV[A]
local rec = load(id)
if not rec or not (rec.s == nil or is_claimed(rec)) then return read(id) end
if not rec.s then
  redis.call('ZREM', P_DUE .. rec.f, id)
  return {'f', close(id, rec, 'C', now_ms(), RETENTION)}
end
rec.z = 1
return {'a', save(id, rec)}
