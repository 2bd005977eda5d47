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

for _, key in ipairs({ { stream, 'stream' }, { index, 'list' } }) do
  local found = redis.call('TYPE', key[1])['ok']
  if found ~= 'none' and found ~= key[2] then
    return redis.error_reply('ESLAYOUT key ' .. key[1] .. ' holds a ' .. found .. ', not a ' .. key[2])
  end
end

local length = redis.call('LLEN', index)
local version, header = 0, ''
if length > 0 then
  version = length - 1
  header = redis.call('LINDEX', index, 0)
end

local digest
if ARGV[3] == '1' then
  digest = string.sub(redis.sha1hex(ARGV[4]), 1, 12)
  for record_digest, last, count in string.gmatch(header, '(%x+):(%d+):(%d+)') do
    if record_digest == digest then
      last, count = tonumber(last), tonumber(count)
      local reply = { 'done', last }
      for _, element in ipairs(redis.call('LRANGE', index, last - count + 1, last)) do
        reply[#reply + 1] = unpack_entry_id(element)
      end
      return reply
    end
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
local events, at = {}, 7
for e = 1, count do
  local pairs_count = tonumber(ARGV[at + 1])
  if ARGV[at] == nil or pairs_count == nil or pairs_count < 0 or at + 1 + 2 * pairs_count > #ARGV then
    return redis.error_reply('ESINVALID malformed arguments for event ' .. e)
  end
  if pairs_count > 3000 then
    return redis.error_reply('ESINVALID event ' .. e .. ' has more than 3000 fields')
  end
  local args = { 'type', ARGV[at], 'aggregate_id', ARGV[1], 'version', string.format('%d', version + e) }
  for i = 1, 2 * pairs_count do
    args[6 + i] = ARGV[at + 1 + i]
  end
  events[e] = args
  at = at + 2 + 2 * pairs_count
end
if at ~= #ARGV + 1 then
  return redis.error_reply('ESINVALID trailing arguments after the last event')
end

local new_version = version + count
if digest then
  local records = {}
  for record in string.gmatch(header, '[^;]+') do
    records[#records + 1] = record
  end
  records[#records + 1] = digest .. ':' .. string.format('%d', new_version) .. ':' .. count
  local window = tonumber(ARGV[5]) or 0
  header = table.concat(records, ';', math.max(1, #records - window + 1))
end

-- Writes. The first XADD could only fail if the stream's last id were the largest possible
-- one (set by hand); then nothing has been written yet.
local reply, elements = { 'ok', new_version }, {}
for e = 1, count do
  local id = redis.call('XADD', stream, '*', unpack(events[e]))
  reply[#reply + 1] = id
  elements[#elements + 1] = pack_entry_id(id)
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
