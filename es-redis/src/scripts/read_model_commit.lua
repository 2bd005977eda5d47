-- Applies the read-model updates of one or more events and records each event as applied:
-- one atomic step, so an event delivered again (after a crash between this script and XACK,
-- or reclaimed from a slow worker) is recognised and not applied twice.
--
-- KEYS        every key the updates touch, each once: applied-entries sorted sets (member:
--             entry id, score: when it was applied, in milliseconds) and read-model hashes
--             (all under the projection's hash tag)
-- ARGV[1]     how many updates follow; each is:
--               the KEYS index of its applied set, its entry id, how many operations follow,
--               then each operation: an op code, a KEYS index, then
--               'hset' field value | 'hdel' field | 'hincrby' field increment | 'del'
--
-- Replies with one integer per update, in order: 1 if applied, 0 if its entry was applied
-- before (that update writes nothing).
--
-- Why a set of entry ids and not a "last applied position": several consumers of one group
-- process a category's entries out of order, so an older entry may legitimately be applied
-- after a newer one; only a per-entry record tells a repeat from a late first delivery.
--
-- Lua scripts have no rollback: everything that can fail is checked before the first write.
-- The operations are played against a model of the hashes they touch, and only the end
-- state is written: one DEL / HSET / HDEL per hash however many events touched it, and one
-- ZADD per applied set.

local CHUNK = 500 -- arguments per write command (Lua's C stack takes ~8000)

local checked_type = {}
local function check_type(key, wanted, code)
  if checked_type[key] then
    return nil
  end
  local found = redis.call('TYPE', key)['ok']
  if found ~= 'none' and found ~= wanted then
    return code .. ' key ' .. key .. ' holds a ' .. found .. ', not a ' .. wanted
  end
  checked_type[key] = true
  return nil
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

-- Pass 1: parse the updates (kept in parallel arrays: no table per update) and find which
-- were applied before, with one ZMSCORE per applied set.
local n = tonumber(ARGV[1])
local set_of, id_of, first_of, count_of = {}, {}, {}, {}
local ids_in, sets = {}, {}
local at = 2
for u = 1, n do
  local set, id, count = tonumber(ARGV[at]), ARGV[at + 1], tonumber(ARGV[at + 2])
  set_of[u], id_of[u], first_of[u], count_of[u] = set, id, at + 3, count
  local ids = ids_in[set]
  if not ids then
    local why = check_type(KEYS[set], 'zset', 'ESLAYOUT')
    if why then
      return redis.error_reply(why)
    end
    ids = {}
    ids_in[set] = ids
    sets[#sets + 1] = set
  end
  ids[#ids + 1] = id
  at = at + 3
  for _ = 1, count do
    local code = ARGV[at]
    if code == 'hincrby' or code == 'hset' then
      at = at + 4
    elseif code == 'hdel' then
      at = at + 3
    elseif code == 'del' then
      at = at + 2
    else
      return redis.error_reply('ESREADMODEL unknown operation ' .. tostring(code))
    end
  end
end

-- seen[set][entry id]: applied before, or earlier in this call (a repeat).
local seen = {}
for _, set in ipairs(sets) do
  local ids, found = ids_in[set], {}
  seen[set] = found
  for i = 1, #ids, CHUNK do
    local last = math.min(i + CHUNK - 1, #ids)
    local scores = redis.call('ZMSCORE', KEYS[set], unpack(ids, i, last))
    for j = 1, last - i + 1 do
      if scores[j] then
        found[ids[i + j - 1]] = true
      end
    end
  end
end

-- Pass 2: play the operations of the updates to apply against a model of each hash:
-- `deleted` (the update DELs it first) and the fields written (a string, or false: removed).
local hashes, model = {}, {}
local function model_of(key)
  local m = model[key]
  if not m then
    local why = check_type(key, 'hash', 'ESREADMODEL')
    if why then
      return nil, why
    end
    m = { deleted = false, fields = {}, order = {} }
    model[key] = m
    hashes[#hashes + 1] = key
  end
  return m
end
local function write(m, field, value)
  if m.fields[field] == nil then
    m.order[#m.order + 1] = field
  end
  m.fields[field] = value
end

-- A field's value in the model is a string (HSET), a number (HINCRBY: formatted when
-- written) or false (removed).
local reply, recorded = {}, {}
local checked_increments = {} -- increment text -> its number, parsed once
local key_of = {} -- KEYS index text -> key
for u = 1, n do
  local found, id = seen[set_of[u]], id_of[u]
  if found[id] then
    reply[u] = 0
  else
    found[id] = true
    reply[u] = 1
    recorded[#recorded + 1] = u
    at = first_of[u]
    for _ = 1, count_of[u] do
      local code, key = ARGV[at], key_of[ARGV[at + 1]]
      if not key then
        key = KEYS[tonumber(ARGV[at + 1])]
        key_of[ARGV[at + 1]] = key
      end
      local m, why = model[key], nil
      if not m then
        m, why = model_of(key)
        if not m then
          return redis.error_reply(why)
        end
      end
      if code == 'hincrby' then
        local field, by = ARGV[at + 2], ARGV[at + 3]
        local fields = m.fields
        local current = fields[field]
        if current == nil and not m.deleted then
          current = redis.call('HGET', key, field)
        end
        local value, why_value = 0, nil
        if type(current) == 'number' then
          value = current
        elseif current then
          value, why_value = checked_integer(current)
        end
        local increment, why_increment = checked_increments[by], nil
        if not increment then
          increment, why_increment = checked_integer(by)
          checked_increments[by] = increment
        end
        why = why_value or why_increment
        local sum = why == nil and value + increment
        if sum and (sum >= EXACT or sum <= -EXACT) then
          why = 'the sum leaves the range this script checks exactly (|n| < 2^53)'
        end
        if why then
          return redis.error_reply('ESREADMODEL HINCRBY of field ' .. field .. ' of ' .. key ..
            ' by ' .. by .. ' refused: ' .. why)
        end
        if fields[field] == nil then
          m.order[#m.order + 1] = field
        end
        fields[field] = sum
        at = at + 4
      elseif code == 'hset' then
        write(m, ARGV[at + 2], ARGV[at + 3])
        at = at + 4
      elseif code == 'hdel' then
        write(m, ARGV[at + 2], false)
        at = at + 3
      else -- 'del': every field of the hash is gone, whatever was stored or written before
        m.deleted, m.fields, m.order = true, {}, {}
        at = at + 2
      end
    end
  end
end

-- Nothing failed: write the end state of each hash, then the records.
local function flush(command, key, args)
  for i = 1, #args, CHUNK do
    redis.call(command, key, unpack(args, i, math.min(i + CHUNK - 1, #args)))
  end
end
for _, key in ipairs(hashes) do
  local m = model[key]
  if m.deleted then
    redis.call('DEL', key)
  end
  local set, removed = {}, {}
  for _, field in ipairs(m.order) do
    local value = m.fields[field]
    if type(value) == 'number' then
      set[#set + 1] = field
      set[#set + 1] = string.format('%.0f', value)
    elseif value then
      set[#set + 1] = field
      set[#set + 1] = value
    elseif not m.deleted then
      removed[#removed + 1] = field
    end
  end
  flush('HSET', key, set)
  flush('HDEL', key, removed)
end

if #recorded > 0 then
  local now = redis.call('TIME')
  local score = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  local by_set, order = {}, {}
  for _, u in ipairs(recorded) do
    local set = set_of[u]
    local args = by_set[set]
    if not args then
      args = {}
      by_set[set] = args
      order[#order + 1] = set
    end
    args[#args + 1] = score
    args[#args + 1] = id_of[u]
  end
  for _, set in ipairs(order) do
    flush('ZADD', KEYS[set], by_set[set])
  end
end
return reply
