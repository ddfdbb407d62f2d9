-- {where, raw} for one id, as sched_read describes (included after sched_lib).
local function read(id)
  local raw = redis.pcall('HGET', bucket(id), id)
  local unreadable = nil
  if type(raw) == 'table' and raw.err then
    -- A bucket of the wrong type: the job may still have a finished record.
    unreadable, raw = raw.err, false
  end
  if raw then return {'a', raw} end
  raw = redis.pcall('GET', P_JOB .. id)
  if type(raw) == 'table' and raw.err then return {'x', raw.err} end
  if raw then return {'f', raw} end
  if unreadable then return {'x', unreadable} end
  return {'', ''}
end
