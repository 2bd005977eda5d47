-- Reads one page of an aggregate's events (see read_page).
--
-- KEYS[1]  the category stream          KEYS[2]  the aggregate's index
-- KEYS[3]  its tail copies (optional: only with RedisConfig::tail_copies)
-- ARGV[1]  first version   ARGV[2]  last version ('' for no limit)
-- ARGV[3]  until this millisecond timestamp ('' for no limit)   ARGV[4]  page size

return read_page(KEYS[1], KEYS[2], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]),
  tonumber(ARGV[4]), KEYS[3])
