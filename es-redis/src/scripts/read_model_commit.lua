-- Applies one event's read-model update and records the event as applied: one atomic step,
-- so an event delivered again (after a crash between this script and XACK, or reclaimed
-- from a slow worker) is recognised and not applied twice.
--
-- KEYS[1]     the projection's applied-entries sorted set for the event's category
--             (member: entry id, score: when it was applied, in milliseconds)
-- KEYS[2...]  the read-model hashes the update touches (all under the projection's tag)
-- ARGV[1]     the event's entry id
-- ARGV[2]     how many operations follow; each is an op code, a KEYS index, then:
--             'hset' field value | 'hdel' field | 'hincrby' field increment | 'del'
--
-- Replies 1 if applied, 0 if the entry was applied before (nothing is written).
--
-- Why a set of entry ids and not a "last applied position": several consumers of one group
-- process a category's entries out of order, so an older entry may legitimately be applied
-- after a newer one; only a per-entry record tells a repeat from a late first delivery.
--
-- Lua scripts have no rollback: everything that can fail is checked before the first write.

local applied, entry_id = KEYS[1], ARGV[1]

local found = redis.call('TYPE', applied)['ok']
if found ~= 'none' and found ~= 'zset' then
  return redis.error_reply('ESLAYOUT key ' .. applied .. ' holds a ' .. found .. ', not a zset')
end
if redis.call('ZSCORE', applied, entry_id) then
  return 0
end

for i = 2, #KEYS do
  local kind = redis.call('TYPE', KEYS[i])['ok']
  if kind ~= 'none' and kind ~= 'hash' then
    return redis.error_reply('ESREADMODEL key ' .. KEYS[i] .. ' holds a ' .. kind .. ', not a hash')
  end
end

-- Integers are checked in Lua numbers (doubles), which are exact below 2^53: HINCRBY of
-- larger values is refused rather than risk a failure after earlier writes.
local EXACT = 9007199254740992

-- The integer `text` holds, as Redis's HINCRBY reads it (no sign on zero, no leading zeros,
-- no spaces), or nil and why not.
local function checked_integer(text)
  if text == '0' then
    return 0
  end
  if not string.match(text, '^%-?[1-9]%d*$') then
    return nil, 'holds ' .. text .. ', not an integer'
  end
  local number = tonumber(text)
  if math.abs(number) >= EXACT then
    return nil, text .. ' is beyond the range this script checks exactly (|n| < 2^53)'
  end
  return number
end

-- Parse and check every operation before writing anything. `written` holds what earlier
-- operations of this update leave in a field (false: nothing), so an HINCRBY is checked
-- against the value it will really meet (`deleted`: hashes this update DELs).
local ops, at, written, deleted = {}, 3, {}, {}
for _ = 1, tonumber(ARGV[2]) do
  local code, key = ARGV[at], KEYS[tonumber(ARGV[at + 1])]
  if code == 'hset' then
    ops[#ops + 1] = { 'HSET', key, ARGV[at + 2], ARGV[at + 3] }
    written[key .. '\0' .. ARGV[at + 2]] = ARGV[at + 3]
    at = at + 4
  elseif code == 'hdel' then
    ops[#ops + 1] = { 'HDEL', key, ARGV[at + 2] }
    written[key .. '\0' .. ARGV[at + 2]] = false
    at = at + 3
  elseif code == 'hincrby' then
    local field = ARGV[at + 2]
    local current = written[key .. '\0' .. field]
    if current == nil and not deleted[key] then
      current = redis.call('HGET', key, field)
    end
    local value, why = 0, nil
    if current then
      value, why = checked_integer(current)
    end
    local increment, why_increment = checked_integer(ARGV[at + 3])
    why = why or why_increment
    if why == nil and math.abs(value + increment) >= EXACT then
      why = 'the sum leaves the range this script checks exactly (|n| < 2^53)'
    end
    if why then
      return redis.error_reply('ESREADMODEL HINCRBY of field ' .. field .. ' of ' .. key ..
        ' by ' .. ARGV[at + 3] .. ' refused: ' .. why)
    end
    ops[#ops + 1] = { 'HINCRBY', key, field, ARGV[at + 3] }
    written[key .. '\0' .. field] = string.format('%.0f', value + increment)
    at = at + 4
  elseif code == 'del' then
    ops[#ops + 1] = { 'DEL', key }
    -- Every field of the hash is gone, whatever was stored or written before.
    for name in pairs(written) do
      if string.sub(name, 1, #key + 1) == key .. '\0' then
        written[name] = false
      end
    end
    deleted[key] = true
    at = at + 2
  else
    return redis.error_reply('ESREADMODEL unknown operation ' .. tostring(code))
  end
end

for _, op in ipairs(ops) do
  redis.call(unpack(op))
end
local now = redis.call('TIME')
redis.call('ZADD', applied, tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000), entry_id)
return 1
