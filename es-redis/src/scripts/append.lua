-- Appends events to one or more aggregates in one round trip; each append is atomic and
-- independent of the others (the store sends concurrent appends together: see
-- RedisConfig::append_batch).
--
-- KEYS        per append a, K keys: its category stream, its aggregate's index (a list),
--             its recent append ids (a hash), with tail copies its tail copies (a list),
--             the record of its partition's partition count (a string), and last its
--             partition's aggregates (a stream: an append that starts an aggregate adds an
--             entry `id <aggregate id>`); K = 6 with tail copies, K = 5 without
-- ARGV[1]     how many append ids to remember per aggregate (at least)
-- ARGV[2]     how many appends follow
-- ARGV[3]     how many tail copies to keep per aggregate (0: none, and K = 4)
-- then each append:
--               how many arguments of this append follow (so a malformed append is
--               refused alone: the others are found by their lengths),
--               the aggregate id,
--               the expected version: '' for any, else the exact version (0: no stream yet),
--               '' if the append carries no id, else the id's digest: the first 6 bytes
--               of its SHA-1 (the client hashes it; 48 bits, kept as they are to save
--               memory),
--               how many events follow, then each event: type, number of field pairs, pairs,
--               and with tail copies its copy (see src/copies.rs),
--               last, the category's partition count as the client is configured: an
--               append that starts an aggregate records it in the partition's record if
--               none is there, and is refused (ESPARTITIONS) if another count is
--
-- Replies with one flat array (Redis converts nested Lua tables slowly: each is probed for
-- special fields), holding for each append: a status, a number, a count and that many items:
--   'ok', version, n, entry ids...      written
--   'done', version, n, entry ids...    a retry of a remembered append: its first result
--   'conflict', actual version, 0       refused: another version was expected
--   'error', 0, 1, message              refused: malformed arguments (ESINVALID), another
--                                       partition count (ESPARTITIONS), a key of the wrong
--                                       type (ESLAYOUT), or failed (ESAPPEND: a runtime
--                                       error, say a corrupt record)
-- A refused append writes nothing (but for its partition's count record, which an append
-- that starts an aggregate writes first if there is none: the count the client checked).
-- Every append's arguments are checked before anything is written; only arguments whose
-- lengths do not add up fail the whole call.
--
-- The index's element 0 is a placeholder (''; indexes written before the append-id hash
-- hold the old record header there, now unused), so element v (v >= 1) is the entry id of
-- version v, as XADD returned it (older indexes may hold packed ids: see entry_ids.lua).
-- The append-id hash maps each remembered digest to the append's result: its last version,
-- followed by `:<event count>` when that is not 1. It holds the newest `window` (ARGV[1],
-- rounded down; below 1: no ids are remembered) records at least: whenever a written
-- append's versions pass a multiple of `window`, the hash is cut back to its `window`
-- newest records by version (more only if versions tie, as records edited by hand may),
-- so it holds at most 2 * window (+ ties) between cuts.
--
-- Tail copies (RedisConfig::tail_copies) are a cache that loads check against the index:
-- each written event's `<index element> <copy>` is pushed onto the tail list, which is cut
-- to its newest half when it grows past the bound. Writing them never fails an append (a
-- copy that could not be written only leaves the list out of step, and loads then read
-- the stream).
--
-- Lua scripts have no rollback: everything that can fail is checked before the first write
-- of each append, and the arguments of every append before the first write of all.
--
-- What an append costs the server (Redis 7.0, 50 appends a call, against the smallest Lua
-- append: LLEN, XADD, RPUSH): its longer arguments and reply, ~0.2 of that; with an id, the
-- HSETNX (~0.3, a write to the hash's listpack) and the cuts (~0.05); then the Lua: each VM
-- instruction ~5 ns, each C function ~20-150 ns, each new string more. So: an append with
-- an id costs one HSETNX, which both checks and remembers it; a conflict is found before it
-- (then one HGET tells a retry from a conflict, and nothing is written); entry ids go to
-- the index as XADD returned them; counts are looked up rather than parsed; versions go to
-- Redis as strings formatted with '%d' (a Lua number is formatted by Redis with "%.17g",
-- slower, and in exponent form by Redis 7.2.0-7.2.4 when large); the hot loop holds what
-- it uses in locals (an upvalue or a global costs an instruction more per use); the
-- reply's length is kept in a counter (`#` searches the table); a cut sorts plain numbers
-- (no comparison function); and no key's type is checked on the way: the commands that
-- meet each key first run with redis.call, a failure ends the pcall that runs the appends,
-- and only then does TYPE tell which key was wrong (the first XADD runs with redis.pcall,
-- its failure answered on the spot).

local format, match = string.format, string.match
local tonumber, tostring, type, unpack = tonumber, tostring, type, unpack
local floor, min, sort = math.floor, math.min, table.sort
local rcall, rpcall = redis.call, redis.pcall
local KEYS, ARGV = KEYS, ARGV

-- Counts as the client writes them (tonumber gives the same numbers, and parses the rest).
local NUMBERS = {
  ['0'] = 0, ['1'] = 1, ['2'] = 2, ['3'] = 3, ['4'] = 4, ['5'] = 5, ['6'] = 6, ['7'] = 7,
  ['8'] = 8, ['9'] = 9, ['10'] = 10, ['11'] = 11, ['12'] = 12, ['13'] = 13, ['14'] = 14,
  ['15'] = 15, ['16'] = 16,
}

-- Pass 1: find where each append's arguments start, checking their shape. `unpack` is
-- bounded by Lua's C stack (8000 values), so the client rejects events with too many fields;
-- this re-checks.
local window = tonumber(ARGV[1]) or 0
if window >= 1 then
  window = floor(window)
else
  window = 0 -- NaN too
end
local appends = tonumber(ARGV[2])
local copies = tonumber(ARGV[3]) or 0
local keys_per_append, copy_args = 5, 0
if copies > 0 then
  keys_per_append, copy_args = 6, 1
end
if appends == nil or appends < 1 or #KEYS ~= keys_per_append * appends then
  return redis.error_reply('ESINVALID malformed arguments: ' .. tostring(ARGV[2]) .. ' appends')
end
local argc = #ARGV

-- Each append's arguments are checked before anything is written: `invalid[a]` says why
-- append a is malformed (it then fails alone). Written inline, without function calls:
-- this runs for every append.
local starts, ends, invalid, at = {}, {}, {}, 4
for a = 1, appends do
  local span = NUMBERS[ARGV[at]] or tonumber(ARGV[at])
  if span == nil or span < 5 or span ~= floor(span) or at + span > argc then
    return redis.error_reply('ESINVALID malformed arguments: append ' .. a ..
      ' has no valid length')
  end
  local first, last = at + 1, at + span - 1 -- the events end before the partition count
  starts[a], ends[a] = first, last
  local digest, why = ARGV[first + 2], nil
  local partitions = NUMBERS[ARGV[last + 1]] or tonumber(ARGV[last + 1])
  if partitions == nil or partitions < 1 or partitions ~= floor(partitions) then
    why = 'a partition count is a whole number of at least 1'
  elseif digest ~= '' and #digest ~= 6 then
    why = 'an append id digest is 6 bytes'
  else
    local text = ARGV[first + 3]
    local count = NUMBERS[text]
    if count == nil then
      count = tonumber(text)
      if count and count ~= floor(count) then
        count = nil
      end
    end
    if count == nil or count < 1 then
      why = 'an append needs at least one event'
    else
      local e_at = first + 4
      for e = 1, count do
        text = ARGV[e_at + 1]
        local pairs_count = NUMBERS[text]
        if pairs_count == nil then
          pairs_count = tonumber(text)
          if pairs_count and pairs_count ~= floor(pairs_count) then
            pairs_count = nil
          end
        end
        if pairs_count == nil or pairs_count < 0 or e_at + 1 > last then
          why = 'malformed arguments for event ' .. e
          break
        end
        if pairs_count > 3000 then
          why = 'event ' .. e .. ' has more than 3000 fields'
          break
        end
        e_at = e_at + 2 + 2 * pairs_count + copy_args
        if e_at > last + 1 then
          why = 'malformed arguments for event ' .. e
          break
        end
      end
      if why == nil and e_at ~= last + 1 then
        why = 'trailing arguments after event ' .. count
      end
    end
  end
  if why then
    invalid[a] = why
  end
  at = last + 2
end
if at ~= argc + 1 then
  return redis.error_reply('ESINVALID trailing arguments after the last append')
end

-- The reply, flat; `n` is its length (`#` would search the table).
local out, n = {}, 0
local function reply(status, number, items)
  out[n + 1] = status
  out[n + 2] = number
  out[n + 3] = #items
  n = n + 3
  for i = 1, #items do
    n = n + 1
    out[n] = items[i]
  end
end

-- Keeps the `window` newest records (by version) in `ids`, a hash of digest ->
-- `last[:count]`: the versions sort as plain numbers, then every record older than the
-- `window`-th newest goes.
local function forget_old_ids(ids)
  local all = rpcall('HGETALL', ids)
  local size = #all -- 0 for an error: records are not kept in a key of another type
  local records = size / 2
  if records <= window then
    return
  end
  local versions = {}
  for i = 2, size, 2 do
    local last = all[i]
    last = tonumber(last) or tonumber(match(last, '^%d+')) or 0
    all[i] = last
    versions[i / 2] = last
  end
  sort(versions)
  local oldest_kept = versions[records - window + 1]
  local drop, dropped = {}, 0
  for i = 2, size, 2 do
    if all[i] < oldest_kept then
      dropped = dropped + 1
      drop[dropped] = all[i - 1]
    end
  end
  if dropped > 0 then
    rcall('HDEL', ids, unpack(drop, 1, dropped))
  end
end

-- Replies to a retry with the result its record (`last[:count]`) gives.
local function done(ids, digest, index, found)
  local last, events = match(found, '^(%d+):?(%d*)$')
  last, events = tonumber(last), tonumber(events) or 1
  if last == nil then
    local hex = string.gsub(digest, '.', function(c) return format('%02x', string.byte(c)) end)
    error('append id record ' .. hex .. ' of ' .. ids .. ' is malformed: ' .. found)
  end
  local entry_ids = {}
  for i, element in ipairs(rcall('LRANGE', index, format('%d', last - events + 1), format('%d', last))) do
    entry_ids[i] = unpack_entry_id(element)
  end
  reply('done', last, entry_ids)
end

-- Replies to an append whose expected version is not `version`: a retry's first result,
-- else a conflict. Writes nothing.
local function conflict(ids, digest, index, version)
  if digest ~= '' and window > 0 then
    local found = rcall('HGET', ids, digest)
    if found then
      return done(ids, digest, index, found)
    end
  end
  out[n + 1], out[n + 2], out[n + 3] = 'conflict', version, 0
  n = n + 3
end

-- Refuses an append: `key` holds another type than `wanted` (ESLAYOUT), or else a
-- command failed on it with `failure`. Returns whether it did.
local function refused(key, wanted, failure)
  local found = rcall('TYPE', key)['ok']
  if found ~= 'none' and found ~= wanted then
    failure = 'ESLAYOUT key ' .. key .. ' holds a ' .. found .. ', not a ' .. wanted
  elseif failure == nil then
    return false
  end
  reply('error', 0, { failure })
  return true
end

-- Keeps the newest `copies` copies in `tail`, cutting it to its newest half past that.
local keep_copies = format('%d', -math.max(1, floor(copies / 2)))
local function copied(tail, held)
  if type(held) == 'number' and held > copies then
    rpcall('LTRIM', tail, keep_copies, '-1')
  end
end

-- The rest of an append of several events or with tail copies, once its first event is in
-- the stream as `id`: the other events, the index, the tail copies. Its reply starts at
-- `mark` while it runs, so that a failure drops it.
local mark
local function write_rest(stream, index, tail, at, count, version, length, id)
  mark = n
  out[n + 1], out[n + 2], out[n + 3], out[n + 4] = 'ok', version + count, count, id
  n = n + 4
  local aggregate = ARGV[at]
  at = at + 4
  local last_pair = at + 1 + 2 * (NUMBERS[ARGV[at + 1]] or tonumber(ARGV[at + 1]))
  local elements, size = {}, 0
  if length == 0 then
    elements[1], size = '', 1
  end
  size = size + 1
  elements[size] = id
  local tail_copies
  if tail then
    tail_copies = { id .. ' ' .. ARGV[last_pair + 1] }
  end
  at = last_pair + 1 + copy_args
  for e = 2, count do
    local pairs_count = ARGV[at + 1]
    last_pair = at + 1 + 2 * (NUMBERS[pairs_count] or tonumber(pairs_count))
    id = rcall('XADD', stream, '*', 'type', ARGV[at], 'aggregate_id', aggregate,
      'version', format('%d', version + e), unpack(ARGV, at + 2, last_pair))
    n = n + 1
    out[n] = id
    size = size + 1
    elements[size] = id
    if tail then
      tail_copies[e] = id .. ' ' .. ARGV[last_pair + 1]
    end
    at = last_pair + 1 + copy_args
  end
  for first = 1, size, 1000 do
    rcall('RPUSH', index, unpack(elements, first, min(first + 999, size)))
  end
  if tail then
    local held
    for first = 1, count, 1000 do
      held = rpcall('RPUSH', tail, unpack(tail_copies, first, min(first + 999, count)))
    end
    copied(tail, held)
  end
  mark = nil
end

-- Pass 2: the appends, in order (a later append to the same aggregate sees the earlier).
-- The usual append (one event, no tail copies) is written here; the others finish in
-- write_rest. `current` is the running append. The commands that would be the first to
-- meet a key of another type run with redis.call (the index's LLEN, the append ids' HGET
-- or HSETNX): the failure ends the pcall below, which asks TYPE. The first XADD runs with
-- redis.pcall: its failure (another type, or the stream's last id the largest possible,
-- set by hand) is answered here, once the append-id record it made is deleted.
-- Why an append that starts an aggregate is refused for its partition count `wanted`, or
-- nil: the partition's record (`key`) holds another count. The first such append records
-- its count. Checked once per key and call.
local partitions_seen = {}
local function partitions_refused(key, wanted)
  local seen = partitions_seen[key]
  if seen == nil then
    seen = rcall('GET', key) -- a key of another type raises: the append fails alone
    if not seen then
      rcall('SET', key, wanted)
      seen = wanted
    end
    partitions_seen[key] = seen
  end
  if seen ~= wanted then
    return 'ESPARTITIONS ' .. key .. ' records ' .. seen ..
      ' partition(s), but the append was sent for ' .. wanted
  end
  return nil
end

local current = 0
-- The digest whose append-id record the running append made, until the append is written:
-- an append that fails after making it must not answer a later retry as done.
local recorded = nil
local function run(from)
  local ARGV, KEYS, NUMBERS, starts, ends, out = ARGV, KEYS, NUMBERS, starts, ends, out
  local rcall, rpcall, format, tonumber, unpack = rcall, rpcall, format, tonumber, unpack
  local window, copy_args, keys_per_append = window, copy_args, keys_per_append
  local k = keys_per_append * (from - 1)
  for a = from, appends do
    current = a
    if invalid[a] then
      reply('error', 0, { 'ESINVALID ' .. invalid[a] })
    else
      local at, index = starts[a], KEYS[k + 2]
      local length = rcall('LLEN', index)
      local version, first_version = 0, '1'
      if length > 1 then
        version, first_version = length - 1, format('%d', length)
      end
      local expected, digest = ARGV[at + 1], ARGV[at + 2]
      if expected ~= '' and (NUMBERS[expected] or tonumber(expected)) ~= version then
        conflict(KEYS[k + 3], digest, index, version)
      else
        -- An append that starts an aggregate checks its partition's recorded count.
        local why = length == 0
          and partitions_refused(KEYS[k + keys_per_append - 1], ARGV[ends[a] + 1])
        if why then
          reply('error', 0, { why })
        else
          local count_text = ARGV[at + 3]
          local count = NUMBERS[count_text] or tonumber(count_text)
          local ids, added = KEYS[k + 3], nil
          if digest ~= '' and window > 0 then
            -- One command checks and remembers: a digest already there is a retry.
            local record = first_version
            if count ~= 1 then
              if NUMBERS[count_text] == nil then
                count_text = tostring(count) -- as `..` writes a number
              end
              record = format('%d', version + count) .. ':' .. count_text
            end
            added = rcall('HSETNX', ids, digest, record)
            if added == 1 then
              recorded = digest
            end
            if added == 0 then
              done(ids, digest, index, rcall('HGET', ids, digest))
            end
          end
          if added ~= 0 then
            -- A started aggregate joins its partition's aggregates before its first entry
            -- is written (a key of another type fails the append with nothing written),
            -- and leaves them again if that entry is refused.
            local started, joined = nil, nil
            if length == 0 then
              started = KEYS[k + keys_per_append]
              joined = rcall('XADD', started, '*', 'id', ARGV[at])
            end
            local stream = KEYS[k + 1]
            local pairs_end -- of the first event
            if count == 1 then
              pairs_end = ends[a] - copy_args
            else
              pairs_end = at + 5 + 2 * (NUMBERS[ARGV[at + 5]] or tonumber(ARGV[at + 5]))
            end
            local id = rpcall('XADD', stream, '*', 'type', ARGV[at + 4], 'aggregate_id', ARGV[at],
              'version', first_version, unpack(ARGV, at + 6, pairs_end))
            if id.err then -- an entry id is a string: its `err` is string.err, nil
              if added == 1 then
                rcall('HDEL', ids, digest)
                recorded = nil
              end
              if started then
                rcall('XDEL', started, joined)
              end
              refused(stream, 'stream', id.err)
            else
              if count == 1 and copy_args == 0 then
                if length == 0 then
                  rcall('RPUSH', index, '', id)
                else
                  rcall('RPUSH', index, id)
                end
                local m = n
                out[m + 1], out[m + 2], out[m + 3], out[m + 4] = 'ok', version + 1, 1, id
                n = m + 4
              else
                -- Only with tail copies is KEYS[k + 4] a tail list: without, it is the
                -- partition's count record.
                local tail = nil
                if copy_args == 1 then
                  tail = KEYS[k + 4]
                end
                write_rest(stream, index, tail, at, count, version, length, id)
              end
              -- Past a multiple of `window` (exact: whole numbers), the old records go.
              recorded = nil
              if window > 0 and (version + count) % window < count then
                forget_old_ids(ids)
              end
            end
          end
        end
      end
    end
    k = k + keys_per_append
  end
end

-- A failure in one append (a key of another type, or a runtime error, say an append-id
-- record corrupted by hand) fails it alone: its reply so far is dropped for an 'error'
-- (ESLAYOUT naming the key, else ESAPPEND), and the appends after it run in a new pcall.
local from = 1
while from <= appends do
  local ok, failure = pcall(run, from)
  if ok then
    break
  end
  if mark then
    for i = n, mark + 1, -1 do
      out[i] = nil
    end
    n, mark = mark, nil
  end
  if type(failure) == 'table' then
    failure = failure['err']
  end
  local k = keys_per_append * (current - 1)
  if recorded then
    rpcall('HDEL', KEYS[k + 3], recorded)
    recorded = nil
  end
  local digest = ARGV[starts[current] + 2]
  if not refused(KEYS[k + 2], 'list')
      and not (digest ~= '' and window > 0 and refused(KEYS[k + 3], 'hash'))
      and not refused(KEYS[k + keys_per_append], 'stream') then
    reply('error', 0, { 'ESAPPEND ' .. tostring(failure) })
  end
  from = current + 1
end
return out
