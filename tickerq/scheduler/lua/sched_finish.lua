-- Record how attempts ended, each under its claim's fence.
-- ARGV[A] retention ms, then per outcome 7 values: id, fence, kind (D done, F failed,
-- C cancelled, H handed back, S skipped, X undecodable: failed for good), executed at ms ('' = keep),
-- elapsed ms ('' = keep), '1' when a message follows ('0' = keep), message.
-- Returns 1 (recorded) or 0 (stale fence: ignored) per outcome.
-- include: sched_lib
local now = now_ms()
local retention = tonumber(ARGV[A])
local result, earliest = {}, nil

local function delay_ms(intervals, attempt)
  if not intervals or #intervals == 0 then return 0 end
  return intervals[math.min(attempt, #intervals)] * 1000
end

for i = A + 1, #ARGV, 7 do
  local id, fence, kind = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]
  local rec = load(id)
  if is_claimed(rec) and rec.e == fence then
    rec.a = tonumber(ARGV[i + 3]) or rec.a
    rec.l = tonumber(ARGV[i + 4]) or rec.l
    if ARGV[i + 5] == '1' then rec.m = ARGV[i + 6] end
    if kind == 'H' then
      if hand_back(id, rec, now) then earliest = now end
    else
      unhold(id, rec)
      if kind == 'D' then
        close(id, rec, 'D', now, retention)
      elseif kind == 'S' then
        close(id, rec, 'S', now, retention)
      elseif kind == 'C' or (kind == 'F' and rec.z) then
        close(id, rec, 'C', now, retention)
      elseif kind == 'F' then
        local attempt = (rec.k or 0) + 1
        rec.k = attempt
        if attempt <= (rec.n or 0) then
          rec.d = now + delay_ms(rec.v, attempt)
          enqueue(id, rec)
          if not earliest or rec.d < earliest then earliest = rec.d end
        else
          close(id, rec, 'F', now, retention)
        end
      else
        close(id, rec, 'F', now, retention)
      end
    end
    result[#result + 1] = 1
  else
    result[#result + 1] = 0
  end
end
wake(earliest)
return result
