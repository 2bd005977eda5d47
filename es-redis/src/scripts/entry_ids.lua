-- How the index stores entry ids: `<ms>-<seq>` packed into one integer, ms * 1024 + seq,
-- which Redis keeps in 8 bytes instead of a 15-20 byte string (an index holds one per
-- event, so this is most of its size). Ids that do not fit (seq >= 1024, or ms past the
-- year 2248, where the product would pass 2^53 and lose precision in a Lua number) are
-- stored as they are, `<ms>-<seq>`.

local PACKED_SEQS = 1024
local PACKED_MAX_MS = 8796093022208 -- 2^43

-- Formatted here: how Redis writes a Lua number passed to redis.call changed between
-- versions (7.2.0 to 7.2.4 write some integers in exponent form, redis/redis#13113).
local function pack_entry_id(id)
  local dash = string.find(id, '-', 1, true)
  local ms = dash and tonumber(string.sub(id, 1, dash - 1))
  local seq = ms and tonumber(string.sub(id, dash + 1))
  if seq == nil or seq >= PACKED_SEQS or ms >= PACKED_MAX_MS then
    return id
  end
  return string.format('%d', ms * PACKED_SEQS + seq)
end

local function unpack_entry_id(element)
  if string.find(element, '-', 1, true) then
    return element
  end
  local packed = tonumber(element)
  if packed == nil then
    return element
  end
  return string.format('%d-%d', math.floor(packed / PACKED_SEQS), packed % PACKED_SEQS)
end
