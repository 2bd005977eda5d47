-- A consumer group's progress on one category stream, read atomically.
--
-- KEYS[1]  the category stream     ARGV[1]  the group
--
-- Replies {} if the stream or the group does not exist, else
-- {consumers, pending, last-delivered id, entries-read (-1: unknown), lag (-1: unknown),
--  oldest pending id ('' if none)}.

local stream, group = KEYS[1], ARGV[1]
if redis.call('TYPE', stream)['ok'] ~= 'stream' then
  return {}
end
for _, fields in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
  local info = {}
  for i = 1, #fields, 2 do
    info[fields[i]] = fields[i + 1]
  end
  if info['name'] == group then
    local summary = redis.call('XPENDING', stream, group)
    return {
      info['consumers'],
      info['pending'],
      info['last-delivered-id'],
      info['entries-read'] or -1,
      info['lag'] or -1,
      summary[2] or '',
    }
  end
end
return {}
