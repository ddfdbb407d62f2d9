-- Shared helpers of the scheduler's scripts (included, never run alone).
-- Every scheduler script takes the same first keys and arguments:
-- KEYS[1] finished index (zset by expiry ms), KEYS[2] fence counter, KEYS[3] cron index;
-- ARGV[1] active-record bucket prefix, ARGV[2] finished-record prefix, ARGV[3] due prefix,
-- ARGV[4] running prefix, ARGV[5] claims prefix, ARGV[6] wake channel, ARGV[7] default
-- retention ms. Script-specific arguments start at ARGV[A].
-- A job is one JSON record, stored in one of two places: a small IDLE record (id and JSON
-- both within a listpack entry) in a hash bucket picked from the id's SHA-1 (here and only
-- here); any other record (claimed, large, finished) in a key of its own, which expires
-- after retention once the job finished. Buckets so hold only listpack-sized entries and
-- stay listpacks (about 75 bytes a job instead of a key's 150).
-- Record fields: f function, s status (absent = IDLE; Q P D F C S), d due ms, c due minus
-- created ms (absent = 0: short, so that more records fit a bucket), r request text, n retries, v retry intervals (s), k failed attempts,
-- o node, e fence, x is_rerun, y cron id, a executed at ms, l elapsed ms, m message,
-- z cancel requested.
local FINISHED, FENCE, CRONS = KEYS[1], KEYS[2], KEYS[3]
local P_BUCKET, P_JOB, P_DUE, P_RUN, P_CLAIMS = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local WAKE, RETENTION = ARGV[6], tonumber(ARGV[7])
local A = 8

local FIELD_TYPES = {
  f = 'string', s = 'string', d = 'number', c = 'number', r = 'string', n = 'number',
  v = 'table', k = 'number', o = 'string', e = 'number', x = 'number', y = 'string',
  a = 'number', l = 'number', m = 'string', z = 'number'
}
local STATUSES = {Q = true, P = true, D = true, F = true, C = true, S = true}
-- Redis' default hash-max-listpack-value: longer entries would turn a bucket into a hashtable.
local SMALL = 64

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- 65,536 buckets: with a million active jobs a bucket holds about 15 (a listpack of a few
-- cache lines, which HGET scans quickly); with a hundred thousand, one or two.
local function bucket(id)
  return P_BUCKET .. string.sub(redis.sha1hex(id), 1, 4)
end

-- Why a decoded record cannot be used, or nil when it can.
local function invalid(rec)
  if type(rec) ~= 'table' then return 'it is not a JSON object' end
  for field, value in pairs(rec) do
    local expected = FIELD_TYPES[field]
    if expected and type(value) ~= expected then
      return 'field ' .. field .. ' holds a ' .. type(value) .. ', expected a ' .. expected
    end
  end
  if not rec.f or not rec.d then return 'the function or the due time is missing' end
  if rec.s and not STATUSES[rec.s] then return 'unknown status ' .. rec.s end
  if rec.v then
    for _, seconds in ipairs(rec.v) do
      if type(seconds) ~= 'number' then return 'a retry interval is not a number' end
    end
  end
  return nil
end

-- In a decoded record, rec.created is the absolute creation time (c is relative to d on
-- the wire), so code may change d freely; encode() writes it back relative to d.
local function decode(raw)
  local ok, rec = pcall(cjson.decode, raw)
  if not ok then return false, 'it is not JSON' end
  local why = invalid(rec)
  if why then return false, why end
  rec.created, rec.c = rec.d - (rec.c or 0), nil
  return rec
end

local function encode(rec)
  local created = rec.created
  rec.created = nil
  if created and created ~= rec.d then rec.c = rec.d - created end
  local raw = cjson.encode(rec)
  rec.created, rec.c = created, nil
  return raw
end

-- The record of id (finished ones included): rec; nil when there is none; false, why when
-- it cannot be read or decoded. key: the id's bucket, when the caller has it already.
local function load(id, key)
  local raw = redis.pcall('HGET', key or bucket(id), id)
  if type(raw) == 'table' and raw.err then return false, raw.err end
  if not raw then
    raw = redis.pcall('GET', P_JOB .. id)
    if type(raw) == 'table' and raw.err then return false, raw.err end
    if not raw then return nil end
  end
  return decode(raw)
end

-- Whether a job with this id exists, active or finished.
local function exists(id)
  local found = redis.pcall('HEXISTS', bucket(id), id)
  if found == 1 or (type(found) == 'table' and found.err) then return true end
  return redis.call('EXISTS', P_JOB .. id) == 1
end

-- Store an unfinished record where it belongs (and nowhere else).
local function save(id, rec, key)
  local raw = encode(rec)
  if not rec.s and #raw <= SMALL and #id <= SMALL then
    redis.call('HSET', key or bucket(id), id, raw)
    redis.call('DEL', P_JOB .. id)
  else
    redis.call('SET', P_JOB .. id, raw)
    redis.pcall('HDEL', key or bucket(id), id)
  end
  return raw
end

-- IDLE again (or for the first time): stored active and indexed by due time.
local function enqueue(id, rec)
  rec.s = nil
  redis.call('ZADD', P_DUE .. rec.f, rec.d, id)
  return save(id, rec)
end

-- No longer held by its node.
local function unhold(id, rec)
  redis.call('ZREM', P_RUN .. rec.f, id)
  if rec.o then redis.call('SREM', P_CLAIMS .. rec.o, id) end
end

-- Finished: the record moves to its own key, deleted retention ms from now.
local function close(id, rec, status, now, retention)
  rec.s = status
  redis.pcall('HDEL', bucket(id), id)
  local raw = encode(rec)
  redis.call('SET', P_JOB .. id, raw, 'PX', retention)
  redis.call('ZADD', FINISHED, now + retention, id)
  return raw
end

-- An attempt that did not finish: CANCELLED when asked to, else IDLE and due now
-- (a re-run when it had started, unless never_ran: its node never got it). Returns true
-- when it is due again.
local function hand_back(id, rec, now, never_ran)
  unhold(id, rec)
  if rec.z then
    close(id, rec, 'C', now, RETENTION)
    return false
  end
  if rec.s == 'P' and not never_ran then rec.x = 1 end
  rec.d = now
  enqueue(id, rec)
  return true
end

local function is_claimed(rec)
  return rec and (rec.s == 'Q' or rec.s == 'P')
end

local function wake(due)
  if due then redis.call('PUBLISH', WAKE, string.format('%d', due)) end
end

-- The record of a new IDLE job.
local function new_record(function_name, due, now)
  return {f = function_name, d = due, created = now}
end
