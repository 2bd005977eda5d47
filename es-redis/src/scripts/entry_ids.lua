-- How the index stores entry ids: `<ms>-<seq>` packed into one integer, ms * 1024 + seq,
-- which Redis keeps in 8 bytes instead of a 15-20 byte string (an index holds one per
-- event, so this is most of its size). Ids that do not fit (seq >= 1024, or ms past the
-- year 2248, where the product would pass 2^53 and lose precision in a Lua number) are
-- stored as they are, `<ms>-<seq>`.

local PACKED_SEQS = 1024
local PACKED_MAX_MS = 8796093022208 -- 2^43

-- Formatted here: how Redis writes a Lua number passed to redis.call changed between
-- versions (7.2.0 to 7.2.4 write some integers in exponent form, redis/redis#13113).
--
-- Called on each id XADD returns (`<ms>-<seq>`, digits), once per event written, where
-- making strings costs most (each is hashed into Lua's string table): the usual id, 13
-- digits of ms (2001 to 2286), a dash and at most 3 digits of seq, is read as bytes in one
-- call and added up; any other is cut at its dash.
local pack_byte, pack_find, pack_sub, pack_format = string.byte, string.find, string.sub, string.format
local function pack_entry_id(id)
  local a, b, c, d, e, f, g, h, i, j, k, l, m, dash, s1, s2, s3 = pack_byte(id, 1, 17)
  local ms, seq
  if dash == 45 and s1 and #id <= 17 then
    -- Each digit's byte is 48 more than the digit: 48 * 1111111111111 in all.
    ms = ((((((((((((a * 10 + b) * 10 + c) * 10 + d) * 10 + e) * 10 + f) * 10 + g) * 10 + h)
      * 10 + i) * 10 + j) * 10 + k) * 10 + l) * 10 + m) - 53333333333328
    seq = s1 - 48
    if s2 then
      seq = seq * 10 + s2 - 48
      if s3 then
        seq = seq * 10 + s3 - 48
      end
    end
  else
    dash = pack_find(id, '-', 1, true)
    ms = dash and tonumber(pack_sub(id, 1, dash - 1))
    seq = ms and tonumber(pack_sub(id, dash + 1))
    if seq == nil then
      return id
    end
  end
  if seq >= PACKED_SEQS or ms >= PACKED_MAX_MS then
    return id
  end
  return pack_format('%d', ms * PACKED_SEQS + seq)
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
