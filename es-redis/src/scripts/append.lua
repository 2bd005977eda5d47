-- Appends events to one or more aggregates in one round trip; each append is atomic and
-- independent of the others (the store sends concurrent appends together: see
-- RedisConfig::append_batch).
--
-- KEYS[2a-1]  the category stream of append a     KEYS[2a]  its aggregate's index (a list)
-- ARGV[1]     how many append ids to remember per aggregate
-- ARGV[2]     how many appends follow; each is:
--               the aggregate id,
--               the expected version: '' for any, else the exact version (0: no stream yet),
--               '' if the append carries no id, else '=' followed by the id,
--               how many events follow, then each event: type, number of field pairs, pairs
--
-- Replies with one flat array (Redis converts nested Lua tables slowly: each is probed for
-- special fields), holding for each append: a status, a number, a count and that many items:
--   'ok', version, n, entry ids...      written
--   'done', version, n, entry ids...    a retry of a remembered append: its first result
--   'conflict', actual version, 0       refused: another version was expected
--   'error', 0, 1, message              refused: a key has the wrong type
-- A refused append writes nothing.
--
-- The index's element 0 is a header: the last appends that carried an id, as
-- `<digest>:<last version>:<event count>` records joined by ';' (the digest is the first 12
-- hex digits of the SHA-1 of the append id). Element v (v >= 1) is the entry id of version
-- v, packed by pack_entry_id.
--
-- Lua scripts have no rollback: everything that can fail is checked before the first write
-- of each append, and the arguments of every append before the first write of all.

-- A key of another type is refused before anything is written. Checking it with TYPE on
-- every append costs two calls; instead the first command on each key runs under pcall
-- and only a failure asks TYPE what the key holds.
local out = {}
local function reply(status, number, items)
  out[#out + 1] = status
  out[#out + 1] = number
  out[#out + 1] = #items
  for _, item in ipairs(items) do
    out[#out + 1] = item
  end
end

local function refused(key, wanted, failure)
  local found = redis.call('TYPE', key)['ok']
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
if appends == nil or appends < 1 or #KEYS ~= 2 * appends then
  return redis.error_reply('ESINVALID malformed arguments: ' .. tostring(ARGV[2]) .. ' appends')
end
local starts, at = {}, 3
for a = 1, appends do
  starts[a] = at
  local count = tonumber(ARGV[at + 3])
  if count == nil or count < 1 then
    return redis.error_reply('ESINVALID an append needs at least one event')
  end
  at = at + 4
  for e = 1, count do
    local pairs_count = tonumber(ARGV[at + 1])
    if ARGV[at] == nil or pairs_count == nil or pairs_count < 0 or at + 1 + 2 * pairs_count > #ARGV then
      return redis.error_reply('ESINVALID malformed arguments for event ' .. e)
    end
    if pairs_count > 3000 then
      return redis.error_reply('ESINVALID event ' .. e .. ' has more than 3000 fields')
    end
    at = at + 2 + 2 * pairs_count
  end
end
if at ~= #ARGV + 1 then
  return redis.error_reply('ESINVALID trailing arguments after the last event')
end

local function append(stream, index, at)
  local length = redis.pcall('LLEN', index)
  if type(length) == 'table' then
    return refused(index, 'list', length)
  end
  local version = 0
  if length > 0 then
    version = length - 1
  end
  local aggregate, expected, append_id, count = ARGV[at], ARGV[at + 1], ARGV[at + 2], tonumber(ARGV[at + 3])

  local digest, header = nil, ''
  if append_id ~= '' then
    digest = string.sub(redis.sha1hex(string.sub(append_id, 2)), 1, 12)
    if length > 0 then
      header = redis.call('LINDEX', index, 0)
    end
    -- Records start after a ';' (or at the start): a plain find, no pattern matching.
    local found = string.find(';' .. header, ';' .. digest .. ':', 1, true)
    if found then
      local last, events = string.match(header, '^:(%d+):(%d+)', found + 12)
      last, events = tonumber(last), tonumber(events)
      local ids = {}
      for _, element in ipairs(redis.call('LRANGE', index, last - events + 1, last)) do
        ids[#ids + 1] = unpack_entry_id(element)
      end
      return reply('done', last, ids)
    end
  end

  if expected ~= '' and tonumber(expected) ~= version then
    return reply('conflict', version, {})
  end

  local new_version = version + count
  if digest then
    -- Add this append's record and keep the newest `window` ones, dropping from the front.
    local record = digest .. ':' .. string.format('%d', new_version) .. ':' .. count
    if header == '' then
      header = record
    else
      header = header .. ';' .. record
    end
    local records, semicolon = 1, string.find(header, ';', 1, true)
    while semicolon do
      records = records + 1
      semicolon = string.find(header, ';', semicolon + 1, true)
    end
    local start = 1
    for _ = 1, records - window do
      start = (string.find(header, ';', start, true) or #header) + 1
    end
    header = string.sub(header, start)
  end

  -- Writes. The first XADD could only fail if the stream's last id were the largest
  -- possible one (set by hand) or the key had another type; then nothing is written yet.
  out[#out + 1] = 'ok'
  out[#out + 1] = new_version
  out[#out + 1] = count
  local elements = {}
  if length == 0 then
    elements[1] = header
  end
  at = at + 4
  for e = 1, count do
    local fields = 2 * tonumber(ARGV[at + 1])
    local first_pair, last_pair = at + 2, at + 1 + fields
    local id
    if e == 1 then
      id = redis.pcall('XADD', stream, '*', 'type', ARGV[at], 'aggregate_id', aggregate,
        'version', string.format('%d', version + e), unpack(ARGV, first_pair, last_pair))
      if type(id) == 'table' then
        for _ = 1, 3 do
          out[#out] = nil -- the 'ok' header: nothing is written
        end
        return refused(stream, 'stream', id)
      end
    else
      id = redis.call('XADD', stream, '*', 'type', ARGV[at], 'aggregate_id', aggregate,
        'version', string.format('%d', version + e), unpack(ARGV, first_pair, last_pair))
    end
    out[#out + 1] = id
    elements[#elements + 1] = pack_entry_id(id)
    at = at + 2 + fields
  end
  if length > 0 and digest then
    redis.call('LSET', index, 0, header)
  end
  for first = 1, #elements, 1000 do
    redis.call('RPUSH', index, unpack(elements, first, math.min(first + 999, #elements)))
  end
end

-- Pass 2: the appends, in order (a later append to the same aggregate sees the earlier).
-- A runtime error in one (say, a header corrupted by hand) fails that append alone.
for a = 1, appends do
  local mark = #out
  local ok, failure = pcall(append, KEYS[2 * a - 1], KEYS[2 * a], starts[a])
  if not ok then
    for i = #out, mark + 1, -1 do
      out[i] = nil
    end
    if type(failure) == 'table' then
      failure = failure['err']
    end
    reply('error', 0, { 'ESAPPEND ' .. tostring(failure) })
  end
end
return out
