-- Erases a data subject: its key goes, its generation stays (a subject written again gets
-- the next one).
--
-- KEYS[1]  the namespace's keys hash    ARGV[1]  the subject
-- Replies 1 if the subject had a key, else 0.

local record = redis.call('HGET', KEYS[1], ARGV[1])
if not record then
  return 0
end
local colon = string.find(record, ':', 1, true)
if not colon or #record == colon then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], string.sub(record, 1, colon))
return 1
