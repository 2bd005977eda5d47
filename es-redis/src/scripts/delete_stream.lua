-- Deletes an aggregate hard, in one step: removes its entries from its partition's stream
-- (XDEL), its append ids, snapshot and tail copies, then XADDs the deletion marker as its
-- version 1 and makes the index name only that (a tombstone: the id cannot start a new
-- history unnoticed).
--
-- KEYS[1]  the partition stream   KEYS[2]  the index        KEYS[3]  the append ids
-- KEYS[4]  the snapshot           KEYS[5]  the tail copies (deleted whether or not kept)
-- ARGV[1]  the aggregate id       ARGV[2]  the version the client read (checked)
-- ARGV[3]  the marker's type      ARGV[4]  its number of field pairs, then the pairs
-- Replies {'ok', marker entry id}, or {'conflict', actual version} when the aggregate is
-- not at the version read (nothing is written).

local stream, index = KEYS[1], KEYS[2]
local length = redis.call('LLEN', index)
local version = 0
if length > 1 then
  version = length - 1
end
if string.format('%d', version) ~= ARGV[2] then
  return { 'conflict', string.format('%d', version) }
end
local elements = redis.call('LRANGE', index, 1, -1)
local ids, n = {}, 0
for i = 1, #elements do
  n = n + 1
  ids[n] = unpack_entry_id(elements[i])
  if n == 1000 then
    redis.call('XDEL', stream, unpack(ids, 1, n))
    n = 0
  end
end
if n > 0 then
  redis.call('XDEL', stream, unpack(ids, 1, n))
end
redis.call('DEL', index, KEYS[3], KEYS[4], KEYS[5])
local pairs_count = tonumber(ARGV[4])
local id = redis.call('XADD', stream, '*', 'type', ARGV[3], 'aggregate_id', ARGV[1],
  'version', '1', unpack(ARGV, 5, 4 + 2 * pairs_count))
redis.call('RPUSH', index, '', id)
return { 'ok', id }
