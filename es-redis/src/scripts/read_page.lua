-- Shared by the read scripts: one page of an aggregate's events.

-- Reads versions `from`..`to` (`to` nil: up to the current version), at most `page_size`
-- of them, stopping before the first entry stored after `until_ms` (nil: no limit).
-- Replies {current version, done (1 or 0), index elements...}: the entry ids as the index
-- holds them (see entry_ids.lua), not the entries. The client reads the entries itself,
-- straight from the stream: entries never change once written, and passing them through
-- Lua would cost several times what XRANGE does (each is turned into Lua tables and back).
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
    if until_ms ~= nil then
      local millis = tonumber(string.match(element, '^(%d+)%-'))
      if millis == nil then
        local packed = tonumber(element)
        millis = packed and math.floor(packed / PACKED_SEQS)
      end
      if millis ~= nil and millis > until_ms then
        reply[2] = 1
        break
      end
    end
    reply[#reply + 1] = element
  end
  return reply
end
