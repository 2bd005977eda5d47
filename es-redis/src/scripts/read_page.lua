-- Shared by the read scripts: one page of an aggregate's events.

-- Reads versions `from`..`to` (`to` nil: up to the current version), at most `page_size`
-- of them, stopping before the first entry stored after `until_ms` (nil: no limit).
-- Replies {current version, done (1 or 0), copies (1 or 0), elements...}.
--
-- With copies 0 the elements are the entry ids as the index holds them (see
-- entry_ids.lua), not the entries: the client reads the entries itself, straight from the
-- stream (entries never change once written, and passing them through Lua would cost
-- several times what XRANGE does). With copies 1 they are the aggregate's tail copies
-- (`tail`, see RedisConfig::tail_copies), `<index element> <copy>` each: used when the
-- tail list holds every wanted version and is in step with the index.
local function read_page(stream, index, from, to, until_ms, page_size, tail)
  local length = redis.call('LLEN', index)
  local version = 0
  if length > 0 then
    version = length - 1
  end
  local last = version
  if to ~= nil and to < last then
    last = to
  end
  local reply = { version, 0, 0 }
  local page_last = from + page_size - 1
  if page_last >= last then
    page_last = last
    reply[2] = 1
  end
  if from > page_last then
    reply[2] = 1
    return reply
  end
  local elements
  -- Copies are a cache: a tail key of another type is read past, never an error.
  local held = tail and redis.pcall('LLEN', tail)
  if type(held) == 'number' then
    -- The list copies the newest versions: its first element is version `first`.
    local first = version - held + 1
    if first <= from then
      local copies = redis.call('LRANGE', tail, from - first, page_last - first)
      -- In step with the index, unless a process without copies appended in between
      -- (then the elements before its append are shifted, the first one included).
      local head = redis.call('LINDEX', index, from)
      if #copies == page_last - from + 1 and head
          and string.sub(copies[1], 1, #head + 1) == head .. ' ' then
        elements = copies
        reply[3] = 1
      end
    end
  end
  if elements == nil then
    elements = redis.call('LRANGE', index, from, page_last)
  end
  for _, element in ipairs(elements) do
    if until_ms ~= nil then
      local id = element
      if reply[3] == 1 then
        id = string.match(element, '^[^ ]*')
      end
      local millis = tonumber(string.match(id, '^(%d+)%-'))
      if millis == nil then
        local packed = tonumber(id)
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
