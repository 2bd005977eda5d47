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
    local current = written[key .. '\0' .. ARGV[at + 2]]
    if current == nil and not deleted[key] then
      current = redis.call('HGET', key, ARGV[at + 2])
    end
    if current and not string.match(current, '^%-?%d+$') then
      return redis.error_reply('ESREADMODEL field ' .. ARGV[at + 2] .. ' of ' .. key ..
        ' holds ' .. current .. ', not an integer')
    end
    ops[#ops + 1] = { 'HINCRBY', key, ARGV[at + 2], ARGV[at + 3] }
    -- Still an integer afterwards (its exact value does not matter for the checks).
    written[key .. '\0' .. ARGV[at + 2]] = '0'
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
