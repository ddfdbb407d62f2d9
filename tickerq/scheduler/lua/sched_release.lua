-- Hand back every claim a node holds (it is dead, or restarted under the same id).
-- KEYS[4] the node's claims set. ARGV[A] node.
-- Returns the ids handed back, sorted.
-- include: sched_lib
local node = ARGV[A]
local now = now_ms()
local ids = redis.call('SMEMBERS', KEYS[4])
redis.call('DEL', KEYS[4])
table.sort(ids)
local released = {}
local due_again = false
for _, id in ipairs(ids) do
  local rec = load(id)
  if is_claimed(rec) and rec.o == node then
    if hand_back(id, rec, now) then due_again = true end
    released[#released + 1] = id
  end
end
if due_again then wake(now) end
return released
