-- Recording how attempts ended, shared by sched_finish and sched_claim (included after
-- sched_lib, never run alone).
-- finish_outcomes(first, count, now, retention) reads count outcomes from ARGV[first], 7
-- values each: id, fence, kind (D done, F failed, C cancelled, H handed back, S skipped: a
-- missed cron occurrence not run, X undecodable: failed for good), executed at ms ('' =
-- keep), elapsed ms ('' = keep), '1' when a message follows ('0' = keep), message. Each is
-- recorded only under its claim's fence.
-- Returns {1 (recorded) or 0 (stale fence: ignored) per outcome}, and the earliest due time
-- of a job it made due again (nil when none): the caller wakes the nodes with it.

local function retry_delay_ms(intervals, attempt)
  if not intervals or #intervals == 0 then return 0 end
  return intervals[math.min(attempt, #intervals)] * 1000
end

local function finish_outcomes(first, count, now, retention)
  local result, earliest = {}, nil
  for i = first, first + 7 * (count - 1), 7 do
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
          rec.a = nil  -- never ran (a claim that started it set executed at)
          close(id, rec, 'S', now, retention)
        elseif kind == 'C' or (kind == 'F' and rec.z) then
          close(id, rec, 'C', now, retention)
        elseif kind == 'F' then
          local attempt = (rec.k or 0) + 1
          rec.k = attempt
          if attempt <= (rec.n or 0) then
            rec.d = now + retry_delay_ms(rec.v, attempt)
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
  return result, earliest
end
