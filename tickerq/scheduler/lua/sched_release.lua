-- Hand back a node's claims (it is dead, or restarted under the same id, or it is alive and
-- hands back the claims it does not know it holds). KEYS[4] the node's claims set.
-- ARGV[A] node, ARGV[A+1] at most this many claims per call (without keep), ARGV[A+2] '1' for
-- a live node (keep mode) or '0', then pairs of (id, fence) to keep: claims the live node
-- knows it holds. The live node never ran the others (it does not know them: a lost claim
-- reply), so they are not re-runs, even when claimed started.
-- Without keep, a call takes at most the limit off the set (SPOP), so that handing back a
-- dead node's thousands of claims never blocks the server for long; the caller repeats.
-- Returns {ids handed back, claims left in the set}.
-- include: sched_lib
local node, limit, live = ARGV[A], tonumber(ARGV[A + 1]), ARGV[A + 2] == '1'
local now = now_ms()
local keep = {}
for i = A + 3, #ARGV, 2 do keep[ARGV[i]] = tonumber(ARGV[i + 1]) end
local ids
if not live then
  ids = redis.call('SPOP', KEYS[4], limit)
else
  ids = redis.call('SMEMBERS', KEYS[4])
end
local released = {}
local due_again = false
for _, id in ipairs(ids) do
  local rec = load(id)
  local mine = is_claimed(rec) and rec.o == node
  if mine and keep[id] ~= nil and keep[id] == rec.e then
    -- known to the node: stays held
  else
    if mine then
      if hand_back(id, rec, now, live) then due_again = true end
      released[#released + 1] = id
    end
    redis.call('SREM', KEYS[4], id)
  end
end
if due_again then wake(now) end
return {released, redis.call('SCARD', KEYS[4])}
