-- Appends events to one or more aggregates in one round trip; each append is atomic and
-- independent of the others (the store sends concurrent appends together: see
-- RedisConfig::append_batch).
--
-- KEYS        per append a, K keys: its category stream, its aggregate's index (a list),
--             its recent append ids (a hash), and with tail copies (K = 4) its tail
--             copies (a list); K = 3 without
-- ARGV[1]     how many append ids to remember per aggregate (at least)
-- ARGV[2]     how many appends follow
-- ARGV[3]     how many tail copies to keep per aggregate (0: none, and K = 3)
-- then each append:
--               the aggregate id,
--               the expected version: '' for any, else the exact version (0: no stream yet),
--               '' if the append carries no id, else the id's digest: the first 12 hex
--               digits of its SHA-1 (the client hashes it),
--               how many events follow, then each event: type, number of field pairs, pairs,
--               and with tail copies its copy (see src/copies.rs)
--
-- Replies with one flat array (Redis converts nested Lua tables slowly: each is probed for
-- special fields), holding for each append: a status, a number, a count and that many items:
--   'ok', version, n, entry ids...      written
--   'done', version, n, entry ids...    a retry of a remembered append: its first result
--   'conflict', actual version, 0       refused: another version was expected
--   'error', 0, 1, message              refused: a key has the wrong type
-- A refused append writes nothing.
--
-- The index's element 0 is a placeholder (''; indexes written before the append-id hash
-- hold the old record header there, now unused), so element v (v >= 1) is the entry id of
-- version v, as XADD returned it (older indexes may hold packed ids: see entry_ids.lua).
-- The append-id hash maps each remembered digest to the append's result: its last version,
-- followed by `:<event count>` when that is not 1.
--
-- Tail copies (RedisConfig::tail_copies) are a cache that loads check against the index:
-- each written event's `<index element> <copy>` is pushed onto the tail list, which is cut
-- to its newest half when it grows past the bound. Writing them never fails an append (a
-- copy that could not be written only leaves the list out of step, and loads then read
-- the stream).
--
-- Lua scripts have no rollback: everything that can fail is checked before the first write
-- of each append, and the arguments of every append before the first write of all.
--
-- What an append costs the server, besides its commands (measured on Redis 7.0, 50 appends
-- a call): mostly the strings it makes, each hashed into Lua's string table and later
-- collected (~0.3-0.5 us apiece), then C function calls. So: an append with an id costs
-- one HSETNX, which both checks and remembers it; entry ids go to the index as XADD
-- returned them; counts are looked up rather than parsed; indexes are passed to Redis as
-- constant strings (a Lua number is formatted by Redis with "%.17g", slower); library
-- functions are held in locals; the reply's length is kept in a counter (`#` searches the
-- table); and one pcall runs all the appends (resumed after a failure) instead of one each.

local find, format, match = string.find, string.format, string.match
local tonumber, tostring, type, unpack = tonumber, tostring, type, unpack
local floor = math.floor
local rcall, rpcall = redis.call, redis.pcall

-- Counts as the client writes them (tonumber gives the same numbers, and parses the rest).
local NUMBERS = {
  ['0'] = 0, ['1'] = 1, ['2'] = 2, ['3'] = 3, ['4'] = 4, ['5'] = 5, ['6'] = 6, ['7'] = 7,
  ['8'] = 8, ['9'] = 9, ['10'] = 10, ['11'] = 11, ['12'] = 12, ['13'] = 13, ['14'] = 14,
  ['15'] = 15, ['16'] = 16,
}

-- A key of another type is refused before anything is written. Checking it with TYPE on
-- every append costs two calls; instead the first command on each key runs under pcall
-- and only a failure asks TYPE what the key holds.
local out, n = {}, 0
local function reply(status, number, items)
  out[n + 1] = status
  out[n + 2] = number
  out[n + 3] = #items
  n = n + 3
  for i = 1, #items do
    n = n + 1
    out[n] = items[i]
  end
end

local function refused(key, wanted, failure)
  local found = rcall('TYPE', key)['ok']
  if found ~= 'none' and found ~= wanted then
    return reply('error', 0, { 'ESLAYOUT key ' .. key .. ' holds a ' .. found .. ', not a ' .. wanted })
  end
  return reply('error', 0, { failure['err'] })
end

-- Pass 1: find where each append's arguments start, checking their shape. `unpack` is
-- bounded by Lua's C stack (8000 values), so the client rejects events with too many fields;
-- this re-checks.
local window = tonumber(ARGV[1]) or 0
local appends = tonumber(ARGV[2])
local copies = tonumber(ARGV[3]) or 0
local keys_per_append, copy_args = 3, 0
if copies > 0 then
  keys_per_append, copy_args = 4, 1
end
if appends == nil or appends < 1 or #KEYS ~= keys_per_append * appends then
  return redis.error_reply('ESINVALID malformed arguments: ' .. tostring(ARGV[2]) .. ' appends')
end
local argc = #ARGV
local starts, at = {}, 4
for a = 1, appends do
  starts[a] = at
  local digest = ARGV[at + 2]
  if digest ~= '' and (digest == nil or #digest ~= 12 or find(digest, '[^0-9a-f]')) then
    return redis.error_reply('ESINVALID an append id digest is 12 hex digits')
  end
  local count = ARGV[at + 3]
  count = NUMBERS[count] or tonumber(count)
  if count == nil or count < 1 then
    return redis.error_reply('ESINVALID an append needs at least one event')
  end
  at = at + 4
  for e = 1, count do
    local pairs_count = ARGV[at + 1]
    pairs_count = NUMBERS[pairs_count] or tonumber(pairs_count)
    if ARGV[at] == nil or pairs_count == nil or pairs_count < 0
        or at + 1 + 2 * pairs_count + copy_args > argc then
      return redis.error_reply('ESINVALID malformed arguments for event ' .. e)
    end
    if pairs_count > 3000 then
      return redis.error_reply('ESINVALID event ' .. e .. ' has more than 3000 fields')
    end
    at = at + 2 + 2 * pairs_count + copy_args
  end
end
if at ~= argc + 1 then
  return redis.error_reply('ESINVALID trailing arguments after the last event')
end

-- Keeps the newest `window` records of `ids` (a hash of digest -> `last[:count]`): run
-- whenever an aggregate's version passes a multiple of `window`, so it holds at most about
-- twice that many between cuts.
local function forget_old_ids(ids)
  local all = rpcall('HGETALL', ids)
  if all['err'] then
    return -- another type: records are not kept there (HSETNX refuses such appends)
  end
  local records = #all / 2
  if records <= window then
    return
  end
  local order = {}
  for i = 1, #all, 2 do
    order[#order + 1] = { tonumber(match(all[i + 1], '^%d+')) or 0, all[i] }
  end
  table.sort(order, function(x, y) return x[1] > y[1] end)
  local drop = {}
  for i = window + 1, records do
    drop[#drop + 1] = order[i][2]
  end
  rcall('HDEL', ids, unpack(drop))
end

-- Keeps the newest `copies` copies in `tail`, cutting it to its newest half past that.
local keep_copies = format('%d', -math.max(1, floor(copies / 2)))
local function copied(tail, held)
  if type(held) == 'number' and held > copies then
    rpcall('LTRIM', tail, keep_copies, '-1')
  end
end

-- The append-id record the running append made, dropped if the append then fails.
local recorded_ids, recorded_digest

local function append(stream, index, ids, tail, at)
  local aggregate, expected, digest, count_text = ARGV[at], ARGV[at + 1], ARGV[at + 2], ARGV[at + 3]
  local count = NUMBERS[count_text]
  if count == nil then
    count = tonumber(count_text)
    count_text = tostring(count) -- as `..` writes a number
  end
  local length = rpcall('LLEN', index)
  if type(length) == 'table' then
    return refused(index, 'list', length)
  end
  local version = 0
  if length > 0 then
    version = length - 1
  end
  local new_version = version + count
  local first_version = '1'
  if version > 0 then
    first_version = format('%d', version + 1)
  end

  if digest ~= '' and window > 0 then
    -- One command checks and remembers: a digest already there is a retry.
    local record = first_version
    if count ~= 1 then
      record = format('%d', new_version) .. ':' .. count_text
    end
    local added = rpcall('HSETNX', ids, digest, record)
    if type(added) == 'table' then
      return refused(ids, 'hash', added)
    end
    if added == 0 then
      local found = rcall('HGET', ids, digest)
      local last, events = match(found, '^(%d+):?(%d*)$')
      last, events = tonumber(last), tonumber(events) or 1
      if last == nil then
        error('append id record ' .. digest .. ' of ' .. ids .. ' is malformed: ' .. found)
      end
      local entry_ids = {}
      for i, element in ipairs(rcall('LRANGE', index, format('%d', last - events + 1), format('%d', last))) do
        entry_ids[i] = unpack_entry_id(element)
      end
      return reply('done', last, entry_ids)
    end
    recorded_ids, recorded_digest = ids, digest
  end

  if expected ~= '' and (NUMBERS[expected] or tonumber(expected)) ~= version then
    if recorded_ids then
      rcall('HDEL', ids, digest)
      recorded_ids = nil
    end
    out[n + 1], out[n + 2], out[n + 3] = 'conflict', version, 0
    n = n + 3
    return
  end

  -- Writes. The first XADD could only fail if the stream's last id were the largest
  -- possible one (set by hand) or the key had another type; then nothing is written yet.
  at = at + 4
  local pairs_count = ARGV[at + 1]
  local last_pair = at + 1 + 2 * (NUMBERS[pairs_count] or tonumber(pairs_count))
  local id = rpcall('XADD', stream, '*', 'type', ARGV[at], 'aggregate_id', aggregate,
    'version', first_version, unpack(ARGV, at + 2, last_pair))
  if type(id) == 'table' then
    if recorded_ids then
      rcall('HDEL', ids, digest)
      recorded_ids = nil
    end
    return refused(stream, 'stream', id)
  end
  recorded_ids = nil
  out[n + 1], out[n + 2], out[n + 3], out[n + 4] = 'ok', new_version, count, id
  n = n + 4
  if window > 0 and floor(new_version / window) > floor(version / window) then
    forget_old_ids(ids)
  end

  if count == 1 then -- the usual append: no table of elements
    if length == 0 then
      rcall('RPUSH', index, '', id)
    else
      rcall('RPUSH', index, id)
    end
    if tail then
      copied(tail, rpcall('RPUSH', tail, id .. ' ' .. ARGV[last_pair + 1]))
    end
    return
  end

  local elements, size = {}, 0
  if length == 0 then
    elements[1], size = '', 1
  end
  size = size + 1
  elements[size] = id
  local tail_copies
  if tail then
    tail_copies = { id .. ' ' .. ARGV[last_pair + 1] }
  end
  at = last_pair + 1 + copy_args
  for e = 2, count do
    pairs_count = ARGV[at + 1]
    last_pair = at + 1 + 2 * (NUMBERS[pairs_count] or tonumber(pairs_count))
    id = rcall('XADD', stream, '*', 'type', ARGV[at], 'aggregate_id', aggregate,
      'version', format('%d', version + e), unpack(ARGV, at + 2, last_pair))
    n = n + 1
    out[n] = id
    size = size + 1
    elements[size] = id
    if tail then
      tail_copies[e] = id .. ' ' .. ARGV[last_pair + 1]
    end
    at = last_pair + 1 + copy_args
  end
  for first = 1, size, 1000 do
    rcall('RPUSH', index, unpack(elements, first, math.min(first + 999, size)))
  end
  if tail then
    local held
    for first = 1, count, 1000 do
      held = rpcall('RPUSH', tail, unpack(tail_copies, first, math.min(first + 999, count)))
    end
    copied(tail, held)
  end
end

-- Pass 2: the appends, in order (a later append to the same aggregate sees the earlier).
-- A runtime error in one (say, an append-id record corrupted by hand) fails that append
-- alone: its output so far is dropped for an error, its append-id record (if it made one)
-- is forgotten, and the appends after it run in a new pcall.
local current, mark = 0, 0
local function run(from)
  for a = from, appends do
    current, mark = a, n
    local k, tail = keys_per_append * (a - 1), nil
    if copy_args == 1 then
      tail = KEYS[k + 4]
    end
    append(KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], tail, starts[a])
  end
end
local from = 1
while from <= appends do
  local ok, failure = pcall(run, from)
  if ok then
    break
  end
  for i = n, mark + 1, -1 do
    out[i] = nil
  end
  n = mark
  if recorded_ids then
    rpcall('HDEL', recorded_ids, recorded_digest)
    recorded_ids = nil
  end
  if type(failure) == 'table' then
    failure = failure['err']
  end
  reply('error', 0, { 'ESAPPEND ' .. tostring(failure) })
  from = current + 1
end
return out
