-- Shared by the lock and election scripts (included, not run alone): the fence (a lock's) or
-- term (an election's) counter never goes backwards, even after Redis lost it with its data.

-- The counter at key: a number; nil when the key is missing; false when it holds something
-- tickerq did not write (another type, or a string that is not an integer).
local function read_fence(key)
  local raw = redis.pcall('GET', key)
  if type(raw) == 'table' or (raw and not tonumber(raw)) then
    return false
  end
  return raw and tonumber(raw) or nil
end

-- Raise the counter at key to fence when it is below (missing counts as 0; counter: what
-- read_fence returned). A counter holding garbage is left alone.
local function raise_fence(key, fence, counter)
  if counter ~= false and (counter or 0) < fence then
    redis.call('SET', key, fence)
  end
end
