-- Shared by the read scripts: one page of an aggregate's events.

-- Reads versions `from`..`to` (`to` nil: up to the current version), at most `page_size`
-- of them, stopping before the first entry stored after `until_ms` (nil: no limit).
-- Replies {current version, done (1 or 0), entries...}; an entry is {id, {field, value...}}
-- as XRANGE gives it, or {id} when the index names an entry the stream no longer holds.
local function read_page(stream, index, from, to, until_ms, page_size)
  local length = redis.call('LLEN', index)
  local version = 0
  if length > 0 then
    version = length - 1
  end
  local last = version
  if to ~= nil and to < last then
    last = to
  end
  local reply = { version, 0 }
  local page_last = from + page_size - 1
  if page_last >= last then
    page_last = last
    reply[2] = 1
  end
  if from > page_last then
    reply[2] = 1
    return reply
  end
  for _, element in ipairs(redis.call('LRANGE', index, from, page_last)) do
    local id = unpack_entry_id(element)
    local millis = tonumber(string.match(id, '^%d+'))
    if until_ms ~= nil and millis ~= nil and millis > until_ms then
      reply[2] = 1
      break
    end
    local found = millis and redis.call('XRANGE', stream, id, id)[1]
    reply[#reply + 1] = found or { id }
  end
  return reply
end
