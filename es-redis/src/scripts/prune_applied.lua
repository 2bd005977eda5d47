-- Forgets applied entries that can never be delivered again, so the record stays small.
--
-- KEYS[1]  the projection's applied-entries sorted set for one category
-- ARGV[1]  the group's watermark `ms-seq`: every entry up to it is acknowledged (it is at
--          or below the group's last-delivered id and below its oldest pending entry), so
--          XREADGROUP will not deliver it again and XAUTOCLAIM cannot claim it
-- ARGV[2]  the grace period in milliseconds: only entries applied at least this long ago
--          are forgotten, so a stalled worker that still holds an entry another worker
--          reclaimed, applied and acknowledged finds the record if it resumes in time
-- ARGV[3]  how many members to look at, at most
--
-- Replies the number of members removed.

local applied = KEYS[1]
local watermark_ms, watermark_seq = string.match(ARGV[1], '^(%d+)%-(%d+)$')
watermark_ms, watermark_seq = tonumber(watermark_ms), tonumber(watermark_seq)
local now = redis.call('TIME')
local cutoff = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) - tonumber(ARGV[2])

-- Numbers go to Redis as text formatted here: Redis 7.2.0 to 7.2.4 write some Lua numbers
-- in exponent form (redis/redis#13113), which LIMIT refuses.
local candidates = redis.call('ZRANGEBYSCORE', applied, '-inf', string.format('%d', cutoff),
  'LIMIT', '0', ARGV[3])
local removable = {}
for _, id in ipairs(candidates) do
  local ms, seq = string.match(id, '^(%d+)%-(%d+)$')
  ms, seq = tonumber(ms), tonumber(seq)
  if ms and (ms < watermark_ms or (ms == watermark_ms and seq <= watermark_seq)) then
    removable[#removable + 1] = id
  end
end
local removed = 0
for i = 1, #removable, 1000 do
  removed = removed + redis.call('ZREM', applied, unpack(removable, i, math.min(i + 999, #removable)))
end
return removed
