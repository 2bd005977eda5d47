-- Loads an aggregate's snapshot, if of the wanted layout, and the first page of the events
-- after it: one round trip for the common load.
--
-- KEYS[1]  the category stream   KEYS[2]  the aggregate's index   KEYS[3]  its snapshot
-- KEYS[4]  its tail copies (optional: only with RedisConfig::tail_copies)
-- ARGV[1]  the wanted snapshot layout (`_schema`)   ARGV[2]  page size
--
-- Replies {snapshot field pairs (empty if none or of another layout), first version read,
-- page} where page is read_page's reply.

local snapshot = redis.call('HGETALL', KEYS[3])
local schema, version
for i = 1, #snapshot, 2 do
  if snapshot[i] == '_schema' then
    schema = snapshot[i + 1]
  elseif snapshot[i] == '_version' then
    version = snapshot[i + 1]
  end
end
local from = 1
if schema == ARGV[1] then
  -- A `_version` that is not a number is reported by the client when it reads the snapshot.
  from = (tonumber(version) or 0) + 1
else
  snapshot = {}
end
return { snapshot, from, read_page(KEYS[1], KEYS[2], from, nil, nil, tonumber(ARGV[2]), KEYS[4]) }
