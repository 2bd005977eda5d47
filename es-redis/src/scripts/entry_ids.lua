-- How an index holds entry ids: as XADD returned them, `<ms>-<seq>`. Indexes written by
-- earlier versions hold most of them packed into one integer, ms * 1024 + seq (8 bytes
-- instead of 15-20, but packing cost each append about a microsecond of Lua string work);
-- readers accept both.

local PACKED_SEQS = 1024

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
