-- Record the outcomes of ended attempts (as sched_finish does), then claim due IDLE jobs
-- for a node, earliest first, within its limits: a node's loop needs one round trip.
-- KEYS[4] the node's claims set.
-- ARGV[A] node, ARGV[A+1] limit, ARGV[A+2] '1' to start the claimed jobs at once (IN_PROGRESS,
-- executed at now) or '0' (QUEUED), ARGV[A+3] number of outcomes, ARGV[A+4] their retention
-- ms, then per outcome 7 values (see sched_finish_lib), then per function 4 values: name,
-- free slots, cluster concurrency (-1 = none), skip_if_running ('1' or '0').
-- Returns {now, next due ms (-1 = none), {id, fence, record JSON, ...}, {skipped ids},
-- claims the node holds after this call (its new ones included), {1 or 0 per outcome}}.
-- include: sched_lib
-- include: sched_finish_lib
local node, left, start = ARGV[A], tonumber(ARGV[A + 1]), ARGV[A + 2] == '1'
local outcomes = tonumber(ARGV[A + 3])
local now = now_ms()
-- Read the counter first: one holding garbage fails the script before it writes anything.
local first_fence = tonumber(redis.call('GET', FENCE) or '0')
if not first_fence then
  return redis.error_reply('TICKERQ_WRONGTYPE ' .. FENCE .. ' does not hold the fence counter (an integer)')
end
local fence = first_fence
-- Outcomes first: the slots (and cluster_concurrency room) they free are claimable now.
local finished, earliest = finish_outcomes(A + 5, outcomes, now, tonumber(ARGV[A + 4]))
wake(earliest)
local claimed, skipped, next_due = {}, {}, nil
-- Bounds the entries one call looks at (skipped, stale or undecodable ones included),
-- so a backlog of those never makes one script run long.
local budget = 4 * left + 100

local function occurrence_running(run_key, cron_id)
  return #redis.call('ZRANGEBYLEX', run_key, '[' .. cron_id .. '@', '(' .. cron_id .. 'A', 'LIMIT', 0, 1) > 0
end

for i = A + 5 + 7 * outcomes, #ARGV, 4 do
  local name, free, cap, skip = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2]), ARGV[i + 3] == '1'
  local due_key, run_key = P_DUE .. name, P_RUN .. name
  local room = math.min(free, left)
  if cap >= 0 then room = math.min(room, cap - redis.call('ZCARD', run_key)) end
  local taken = 0
  while room > 0 and budget > 0 do
    local ids = redis.call('ZRANGEBYSCORE', due_key, '-inf', now, 'LIMIT', 0, math.min(room, budget, 500))
    if #ids == 0 then break end
    redis.call('ZREM', due_key, unpack(ids))
    local held = {}
    for _, id in ipairs(ids) do
      budget = budget - 1
      local key = bucket(id)
      local rec, why = load(id, key)
      if rec == false then
        local failed = new_record(name, now, now)
        failed.m = 'the stored job record cannot be decoded: ' .. why
        close(id, failed, 'F', now, RETENTION)
      elseif rec == nil or rec.s or rec.f ~= name then
        -- A stale index entry (the job moved on): nothing to claim.
      elseif skip and rec.y and occurrence_running(run_key, rec.y) then
        close(id, rec, 'S', now, RETENTION)
        skipped[#skipped + 1] = id
      else
        fence = fence + 1
        rec.s, rec.o, rec.e = 'Q', node, fence
        if start then rec.s, rec.a = 'P', now end
        claimed[#claimed + 1] = id
        claimed[#claimed + 1] = fence
        claimed[#claimed + 1] = save(id, rec, key)
        -- At once, not batched: a later occurrence in this batch must see this one running.
        redis.call('ZADD', run_key, 0, id)
        held[#held + 1] = id
        room, left, taken = room - 1, left - 1, taken + 1
      end
    end
    if #held > 0 then redis.call('SADD', KEYS[4], unpack(held)) end
  end
  -- When to look again: only for functions this node still has room for.
  if free > taken and (cap < 0 or redis.call('ZCARD', run_key) < cap) then
    local head = redis.call('ZRANGE', due_key, 0, 0, 'WITHSCORES')
    if head[2] then
      local due = tonumber(head[2])
      if not next_due or due < next_due then next_due = due end
    end
  end
end
if fence > first_fence then redis.call('INCRBY', FENCE, fence - first_fence) end
return {now, next_due or -1, claimed, skipped, redis.call('SCARD', KEYS[4]), finished}
