-- Read jobs by id: the active record, else the finished one.
-- ARGV[A..] ids. Returns per id: {where, raw} with where 'a' (active), 'f' (finished),
-- '' (unknown) or 'x' (unreadable; raw is the reason).
-- include: sched_lib
-- include: sched_read_lib
local out = {}
for i = A, #ARGV do out[#out + 1] = read(ARGV[i]) end
return out
