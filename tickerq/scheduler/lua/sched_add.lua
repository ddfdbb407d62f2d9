-- Store new IDLE jobs and wake idle nodes; a job whose id exists is left as it is.
-- ARGV[A..]: per job 4 values: id, record JSON without d and c, due ms ('' = none),
-- delay ms ('' = none; neither = due now).
-- Returns each job's due time (the stored one for an existing id).
-- include: sched_lib
local now = now_ms()
local dues, earliest = {}, nil
for i = A, #ARGV, 4 do
  local id, due = ARGV[i], tonumber(ARGV[i + 2])
  local rec = load(id)
  if rec then
    due = rec.d
  elseif rec == false then
    due = now  -- an undecodable record is left for the claimer to fail
  else
    due = due or (now + (tonumber(ARGV[i + 3]) or 0))
    rec = cjson.decode(ARGV[i + 1])
    rec.d, rec.created = due, now
    enqueue(id, rec)
    if not earliest or due < earliest then earliest = due end
  end
  dues[#dues + 1] = due
end
wake(earliest)
return dues
