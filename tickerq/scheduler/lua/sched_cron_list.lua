-- Every cron definition. ARGV[A] cron prefix.
-- Returns {id, flat fields, id, flat fields, ...}.
-- include: sched_lib
-- include: sched_cron_lib
local out = {}
for _, id in ipairs(redis.call('HVALS', CRONS)) do
  local _, flat = load_cron(id)
  if flat then
    out[#out + 1] = id
    out[#out + 1] = flat
  end
end
return out
