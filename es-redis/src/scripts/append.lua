-- Appends events to one aggregate: one atomic step, one round trip.
--
-- KEYS[1]  the category stream          KEYS[2]  the aggregate's index (a list)
-- ARGV[1]  the aggregate id
-- ARGV[2]  the expected version: '' for any, else the exact version (0: no stream yet)
-- ARGV[3]  '1' if the append carries an id, else '0'
-- ARGV[4]  the append id ('' when it carries none)
-- ARGV[5]  how many append ids to remember per aggregate
-- ARGV[6]  how many events follow; each is: type, number of field pairs, the pairs
--
-- Replies {'ok', version, entry ids...}, {'done', version, entry ids...} for a retry of a
-- remembered append, or {'conflict', actual version}.
--
-- The index's element 0 is a header: the last appends that carried an id, as
-- `<digest>:<last version>:<event count>` records joined by ';' (the digest is the first 12
-- hex digits of the SHA-1 of the append id). Element v (v >= 1) is the entry id of version
-- v, packed by pack_entry_id.
--
-- Lua scripts have no rollback: everything that can fail is checked before the first write.

local stream, index = KEYS[1], KEYS[2]

-- A key of another type is refused before anything is written. Checking it with TYPE on
-- every append costs two calls; instead the first command on each key runs under pcall
-- and only a failure asks TYPE what the key holds.
local function layout_error(key, wanted, failure)
  local found = redis.call('TYPE', key)['ok']
  if found ~= 'none' and found ~= wanted then
    return redis.error_reply('ESLAYOUT key ' .. key .. ' holds a ' .. found .. ', not a ' .. wanted)
  end
  return failure
end

local length = redis.pcall('LLEN', index)
if type(length) == 'table' and length['err'] then
  return layout_error(index, 'list', length)
end
local version, header = 0, ''
if length > 0 then
  version = length - 1
  header = redis.call('LINDEX', index, 0)
end

local digest
if ARGV[3] == '1' then
  digest = string.sub(redis.sha1hex(ARGV[4]), 1, 12)
  -- Records start after a ';' (or at the start): a plain find, no pattern matching.
  local at = string.find(';' .. header, ';' .. digest .. ':', 1, true)
  if at then
    local last, count = string.match(header, '^:(%d+):(%d+)', at + 12)
    last, count = tonumber(last), tonumber(count)
    local reply = { 'done', last }
    for _, element in ipairs(redis.call('LRANGE', index, last - count + 1, last)) do
      reply[#reply + 1] = unpack_entry_id(element)
    end
    return reply
  end
end

if ARGV[2] ~= '' and tonumber(ARGV[2]) ~= version then
  return { 'conflict', version }
end

-- Parse and check every event before writing anything. `unpack` is bounded by Lua's C
-- stack (8000 values), so the client rejects events with too many fields; this re-checks.
local count = tonumber(ARGV[6])
if count == nil or count < 1 then
  return redis.error_reply('ESINVALID an append needs at least one event')
end
local at = 7
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
if at ~= #ARGV + 1 then
  return redis.error_reply('ESINVALID trailing arguments after the last event')
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
  local records, at = 1, string.find(header, ';', 1, true)
  while at do
    records = records + 1
    at = string.find(header, ';', at + 1, true)
  end
  local start = 1
  for _ = 1, records - (tonumber(ARGV[5]) or 0) do
    start = (string.find(header, ';', start, true) or #header) + 1
  end
  header = string.sub(header, start)
end

-- Writes. The first XADD could only fail if the stream's last id were the largest possible
-- one (set by hand); then nothing has been written yet.
-- One argument table for every XADD, refilled per event: building a table per event costs
-- more than the XADD itself.
local args = { stream, '*', 'type', false, 'aggregate_id', ARGV[1], 'version', false }
local used = #args
local reply, elements = { 'ok', new_version }, {}
at = 7
for e = 1, count do
  local fields = 2 * tonumber(ARGV[at + 1])
  args[4] = ARGV[at]
  args[8] = string.format('%d', version + e)
  for i = 1, fields do
    args[8 + i] = ARGV[at + 1 + i]
  end
  for i = 9 + fields, used do
    args[i] = nil
  end
  used = 8 + fields
  local id
  if e == 1 then
    id = redis.pcall('XADD', unpack(args, 1, used))
    if type(id) == 'table' and id['err'] then
      return layout_error(stream, 'stream', id)
    end
  else
    id = redis.call('XADD', unpack(args, 1, used))
  end
  reply[e + 2] = id
  elements[e] = pack_entry_id(id)
  at = at + 2 + fields
end
if length == 0 then
  redis.call('RPUSH', index, header)
elseif digest then
  redis.call('LSET', index, 0, header)
end
for first = 1, #elements, 1000 do
  redis.call('RPUSH', index, unpack(elements, first, math.min(first + 999, #elements)))
end
return reply
