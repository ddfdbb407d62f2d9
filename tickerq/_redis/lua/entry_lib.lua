-- Values stored as .NET's RedisCache (Microsoft.Extensions.Caching.StackExchangeRedis) stores
-- them, so TickerQ .NET nodes read what we write and we read what they write: a hash of exactly
-- 'absexp' (absolute expiry, .NET ticks), 'sldexp' (sliding expiration, a tick count) and
-- 'data' (the bytes), -1 for an expiry that is not set; the key's TTL is the smaller of the time
-- left to absexp and sldexp. A reader of an entry with sldexp renews that TTL.
-- Included by name, not run alone.

-- Ticks are 100 ns units since 0001-01-01 UTC: about 6.4e17, above 2^53, so a Lua number
-- (a double) cannot hold one and tostring would print 6.39e+17. They are kept as two exact
-- numbers, high * 10^9 + low, and written as decimal strings.
local BILLION = 1000000000
local EPOCH_HIGH = 621355968 -- ticks at 1970-01-01 UTC: 621355968 * 10^9

-- Server time: seconds, microseconds and unix milliseconds.
local function server_time()
  local t = redis.call('TIME')
  local sec, usec = tonumber(t[1]), tonumber(t[2])
  return sec, usec, sec * 1000 + math.floor(usec / 1000)
end

-- The ticks at (sec, usec) + add_ms, as high, low. Exact for any add_ms below 2^53.
local function ticks_after(sec, usec, add_ms)
  local low = (sec % 100) * 10000000 + usec * 10 + (add_ms % 100000) * 10000
  local high = EPOCH_HIGH + math.floor(sec / 100) + math.floor(add_ms / 100000) + math.floor(low / BILLION)
  return high, low % BILLION
end

local function ticks_text(high, low)
  return string.format('%d%09d', high, low)
end

-- Milliseconds from (sec, usec) until the ticks written in ``text`` (negative when past), or
-- nil when ``text`` is not a tick count.
local function ms_until(text, sec, usec)
  if type(text) ~= 'string' or not string.match(text, '^%d+$') then
    return nil
  end
  local n = #text
  local high = n > 9 and tonumber(string.sub(text, 1, n - 9)) or 0
  local low = tonumber(string.sub(text, math.max(1, n - 8)))
  local now_high, now_low = ticks_after(sec, usec, 0)
  return ((high - now_high) * BILLION + (low - now_low)) / 10000
end

-- RedisCache sets whole seconds (EXPIRE); a TTL with a fraction of a second (sub-second
-- heartbeats in tests) keeps its milliseconds rather than being cut to 0, which would delete it.
local function set_ttl(key, ms)
  if ms % 1000 == 0 then
    redis.call('EXPIRE', key, ms / 1000)
  else
    redis.call('PEXPIRE', key, ms)
  end
end

-- Write ``data`` at ``key`` with an absolute expiry ``abs_ms`` from now and/or a sliding one
-- (``sliding_ticks`` as an exact string, ``sliding_ms`` for the TTL); false for none.
-- A key that held a string (an older tickerq's layout) is replaced.
local function write_entry(key, data, sec, usec, abs_ms, sliding_ticks, sliding_ms)
  local absexp = '-1'
  local ttl = false
  if abs_ms then
    absexp = ticks_text(ticks_after(sec, usec, abs_ms))
    ttl = abs_ms
  end
  if sliding_ms and (not ttl or sliding_ms < ttl) then
    ttl = sliding_ms
  end
  if redis.call('TYPE', key).ok == 'string' then
    redis.call('DEL', key)
  end
  redis.call('HSET', key, 'absexp', absexp, 'sldexp', sliding_ticks or '-1', 'data', data)
  if ttl then
    set_ttl(key, ttl)
  else
    redis.call('PERSIST', key)
  end
end

-- What a RedisCache reader does after HMGET absexp sldexp data: when sldexp is set, the TTL
-- restarts at the smaller of sldexp and the time left to absexp.
local function renew(key, absexp, sldexp, sec, usec)
  if not sldexp or sldexp == '-1' then
    return
  end
  local ms = tonumber(sldexp)
  if not ms or ms <= 0 then
    return
  end
  ms = math.floor(ms / 10000)
  local left = absexp ~= '-1' and ms_until(absexp, sec, usec)
  if left and left < ms then
    ms = math.floor(left)
  end
  if ms > 0 then
    set_ttl(key, ms)
  end
end

-- HMGET absexp sldexp data and renew a sliding entry. Returns data (false when missing).
local function read_entry(key, sec, usec)
  local h = redis.call('HMGET', key, 'absexp', 'sldexp', 'data')
  if h[3] then
    renew(key, h[1], h[2], sec, usec)
  end
  return h[3]
end
