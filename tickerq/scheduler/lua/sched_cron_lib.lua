-- Helpers of the cron scripts (included after sched_lib). A cron is a hash: f function,
-- x expression, z time zone, g signature (its key in the cron index), r request text,
-- n retries, v retry intervals (JSON array), e enabled ('1'/'0'), t next occurrence ms,
-- k occurrences skipped without a record. ARGV[A] is the cron key prefix.
local P_CRON = ARGV[A]

-- Add an IDLE occurrence of a cron (left alone when it exists); returns true when added.
local function add_occurrence(cron_id, cron, id, due, now)
  if exists(id) then return false end
  local rec = new_record(cron.f, due, now)
  rec.y = cron_id
  if cron.r then rec.r = cron.r end
  if cron.n and tonumber(cron.n) > 0 then rec.n = tonumber(cron.n) end
  if cron.v then rec.v = cjson.decode(cron.v) end
  enqueue(id, rec)
  return true
end

-- The cron's fields as a table (nil when it does not exist).
local function load_cron(cron_id)
  local flat = redis.call('HGETALL', P_CRON .. cron_id)
  if #flat == 0 then return nil end
  local cron = {}
  for i = 1, #flat, 2 do cron[flat[i]] = flat[i + 1] end
  return cron, flat
end
