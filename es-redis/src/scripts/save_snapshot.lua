-- Saves an aggregate's snapshot unless the stored one has a higher version.
--
-- KEYS[1]  the snapshot hash
-- KEYS[2], KEYS[3]  the aggregate's index and tail copies (optional: only with
--                   RedisConfig::tail_copies): the copies the snapshot covers are dropped
-- ARGV[1]  _version   ARGV[2]  _position   ARGV[3]  _schema
-- ARGV[4]  _fields (the field names, in order)   ARGV[5...]  the field pairs
--
-- Replies 1 if saved, 0 if a newer snapshot is kept.

local key = KEYS[1]
local found = redis.call('TYPE', key)['ok']
if found ~= 'none' and found ~= 'hash' then
  return redis.error_reply('ESLAYOUT key ' .. key .. ' holds a ' .. found .. ', not a hash')
end

-- Versions are compared as decimal text, exactly (Lua numbers lose precision past 2^53).
local function canonical(text)
  if not text or not string.match(text, '^%d+$') then
    return nil
  end
  return (string.gsub(text, '^0+(%d)', '%1'))
end
local stored, offered = canonical(redis.call('HGET', key, '_version')), canonical(ARGV[1])
if offered == nil then
  return redis.error_reply('ESINVALID snapshot version ' .. ARGV[1] .. ' is not a number')
end
-- A stored `_version` that is not a number is corrupt: the new snapshot replaces it.
if stored ~= nil and (#stored > #offered or (#stored == #offered and stored > offered)) then
  return 0
end

redis.call('DEL', key)
redis.call('HSET', key, '_version', ARGV[1], '_position', ARGV[2], '_schema', ARGV[3], '_fields', ARGV[4])
for first = 5, #ARGV, 1000 do
  redis.call('HSET', key, unpack(ARGV, first, math.min(first + 999, #ARGV)))
end
if KEYS[3] then
  -- Copies are a cache (loads check them against the index): a failure here, say a key of
  -- another type, must not fail the saved snapshot.
  local length = redis.pcall('LLEN', KEYS[2])
  if type(length) == 'number' and length > 0 then
    local keep = (length - 1) - tonumber(offered)
    if keep <= 0 then
      redis.pcall('DEL', KEYS[3])
    else
      redis.pcall('LTRIM', KEYS[3], string.format('%d', -keep), -1)
    end
  end
end
return 1
