-- Moves an entry a projection cannot process to its dead-letter stream and acknowledges it,
-- in one step, so one poison entry never stalls the projection and is never lost.
--
-- KEYS[1]  the category stream     KEYS[2]  the projection's dead-letter stream
-- KEYS[3]  the projection's failures hash (entry id -> last handler error)
-- ARGV[1]  the group (the projection's name)    ARGV[2]  the entry id
-- ARGV[3]  the error                            ARGV[4]  how often it was delivered
-- ARGV[5]  the consumer                         ARGV[6]  the stream's bound ('' for none):
--          about this many dead letters are kept (`XADD MAXLEN ~`), the oldest trimmed
--
-- The dead letter holds `_entry_id`, `_error`, `_deliveries`, `_consumer`, `_last_failure`
-- (the last handler error, if one was recorded), then the original entry's field pairs.
-- Replies 1, or 0 if the entry is no longer pending for this consumer (another consumer
-- reclaimed it, or it was acknowledged): then nothing is written.

local stream, dead, failures = KEYS[1], KEYS[2], KEYS[3]
local group, entry_id = ARGV[1], ARGV[2]

local pending = redis.call('XPENDING', stream, group, entry_id, entry_id, 1)
if #pending == 0 or pending[1][2] ~= ARGV[5] then
  return 0
end

-- Everything that can fail is checked before the first write (Lua has no rollback).
local kind = redis.call('TYPE', dead)['ok']
if kind ~= 'none' and kind ~= 'stream' then
  return redis.error_reply('ESLAYOUT key ' .. dead .. ' holds a ' .. kind .. ', not a stream')
end

local letter = { '_entry_id', entry_id, '_error', ARGV[3], '_deliveries', ARGV[4], '_consumer', ARGV[5] }
local last = redis.call('HGET', failures, entry_id)
if last then
  letter[#letter + 1] = '_last_failure'
  letter[#letter + 1] = last
end
local entry = redis.call('XRANGE', stream, entry_id, entry_id)
if entry[1] then
  local pairs_of_entry = entry[1][2]
  -- Lua's unpack takes a bounded number of values: a foreign entry with thousands of
  -- fields keeps its first ones and says so.
  local room = 7000 - #letter
  if #pairs_of_entry > room then
    room = room - 2
    room = room - room % 2
    letter[#letter + 1] = '_truncated'
    letter[#letter + 1] = string.format('%d fields, the first %d kept', #pairs_of_entry / 2, room / 2)
  end
  for i = 1, math.min(#pairs_of_entry, room) do
    letter[#letter + 1] = pairs_of_entry[i]
  end
end
if ARGV[6] ~= '' then
  redis.call('XADD', dead, 'MAXLEN', '~', ARGV[6], '*', unpack(letter))
else
  redis.call('XADD', dead, '*', unpack(letter))
end
if last then
  redis.call('HDEL', failures, entry_id)
end
redis.call('XACK', stream, group, entry_id)
return 1
