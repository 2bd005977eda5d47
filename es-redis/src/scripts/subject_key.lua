-- The current key of a data subject, made if it has none: generation 1 for a new subject,
-- one more than the erased key's after an erasure.
--
-- KEYS[1]  the namespace's keys hash: subject -> `<generation>:<32 key bytes>`, or
--          `<generation>:` once erased
-- ARGV[1]  the subject    ARGV[2]  32 fresh random key bytes (used if a key is made)
-- Replies with the subject's record.

local record = redis.call('HGET', KEYS[1], ARGV[1])
local generation = 0
if record then
  local colon = string.find(record, ':', 1, true)
  if not colon then
    return redis.error_reply('ESLAYOUT ' .. KEYS[1] .. ' holds a malformed key record')
  end
  if #record > colon then
    return record
  end
  generation = tonumber(string.sub(record, 1, colon - 1)) or 0
end
record = string.format('%d', generation + 1) .. ':' .. ARGV[2]
redis.call('HSET', KEYS[1], ARGV[1], record)
return record
