-- Mark claimed jobs IN_PROGRESS when their fence still holds.
-- ARGV[A] started ms ('' = now), then pairs: id, fence.
-- Returns 1 (run it) or 0 (do not) per job; a job whose cancel was requested is CANCELLED.
-- include: sched_lib
local now = now_ms()
local started = tonumber(ARGV[A]) or now
local result = {}
for i = A + 1, #ARGV, 2 do
  local id, fence = ARGV[i], tonumber(ARGV[i + 1])
  local rec = load(id)
  local ok = 0
  if is_claimed(rec) and rec.e == fence then
    if rec.z then
      unhold(id, rec)
      close(id, rec, 'C', now, RETENTION)
    else
      if rec.s == 'Q' then
        rec.s, rec.a = 'P', started
        save(id, rec)
      end
      ok = 1
    end
  end
  result[#result + 1] = ok
end
return result
