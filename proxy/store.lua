-- Warden's counters: every limit of one request decided, and reserved, atomically.
-- The same algorithm as MemoryStore in store.py (tests run one suite against both).
--
-- ARGV: mode ("reserve" | "peek" | "settle"), now_ms, request_id, ttl_ms, n, then 7
-- values per check: kind, limit, amount, a, b, c, d
--   W (window):  a = window_ms
--   C (slots):   -
--   S (spend):   a = entry, b = entry_score_ms, c = cutoff_ms (-1: never), d = expire_at_ms
-- KEYS per check: W -> log zset, amounts hash; C -> lease zset;
--                 S -> spend zset, spend hash, lease zset, lease hash.
-- A ledger is a zset (entry -> score) plus a hash (entry -> amount, and '~' -> total).
-- In "settle" mode, amount is the actual amount ('' keeps the reserved one).
-- Returns {granted, denied_index, reason, retry_ms, then used, reserved, reset_ms per check}.

local mode = ARGV[1]
local now = tonumber(ARGV[2])
local rid = ARGV[3]
local ttl = tonumber(ARGV[4])
local n = tonumber(ARGV[5])
local TOTAL = '~'
local BATCH = 500

local function int(x) return string.format('%.0f', x) end

local function total(h) return tonumber(redis.call('HGET', h, TOTAL) or '0') end

-- Drop entries scored at or below cutoff; return their total.
local function sweep(z, h, cutoff)
  local dropped = 0
  while true do
    local old = redis.call('ZRANGEBYSCORE', z, '-inf', cutoff, 'LIMIT', 0, BATCH)
    if #old == 0 then break end
    local amounts = redis.call('HMGET', h, unpack(old))
    for i = 1, #old do dropped = dropped + (tonumber(amounts[i]) or 0) end
    redis.call('ZREM', z, unpack(old))
    redis.call('HDEL', h, unpack(old))
    if #old < BATCH then break end
  end
  if dropped ~= 0 then redis.call('HINCRBY', h, TOTAL, int(-dropped)) end
  return dropped
end

local function add(z, h, entry, amount, score)
  redis.call('ZADD', z, score, entry)
  redis.call('HINCRBY', h, entry, int(amount))
  redis.call('HINCRBY', h, TOTAL, int(amount))
end

-- ms until entries worth `need` have left (an entry leaves when cutoff reaches its score).
local function time_to_free(z, h, need, cutoff)
  local freed, start = 0, 0
  while true do
    local page = redis.call('ZRANGE', z, start, start + BATCH - 1, 'WITHSCORES')
    if #page == 0 then return -1 end
    local names = {}
    for i = 1, #page, 2 do names[#names + 1] = page[i] end
    local amounts = redis.call('HMGET', h, unpack(names))
    for i = 1, #names do
      freed = freed + (tonumber(amounts[i]) or 0)
      if freed >= need then return tonumber(page[2 * i]) - cutoff end
    end
    start = start + BATCH
  end
end

local function oldest(z)
  local first = redis.call('ZRANGE', z, 0, 0, 'WITHSCORES')
  if #first == 0 then return nil end
  return tonumber(first[2])
end

-- Parse the checks and bind their keys.
local checks = {}
local k = 1
for i = 1, n do
  local b = 6 + (i - 1) * 7
  local c = {kind = ARGV[b], limit = tonumber(ARGV[b + 1]), amount = ARGV[b + 2],
             a = ARGV[b + 3], b = ARGV[b + 4], c = ARGV[b + 5], d = ARGV[b + 6]}
  if c.kind == 'W' then
    c.z, c.h = KEYS[k], KEYS[k + 1]; k = k + 2
  elseif c.kind == 'C' then
    c.z = KEYS[k]; k = k + 1
  else
    c.z, c.h, c.lz, c.lh = KEYS[k], KEYS[k + 1], KEYS[k + 2], KEYS[k + 3]; k = k + 4
  end
  checks[i] = c
end

if mode == 'settle' then
  for i = 1, n do
    local c = checks[i]
    if c.kind == 'W' then
      local old = redis.call('HGET', c.h, rid)
      if old and c.amount ~= '' then
        redis.call('HSET', c.h, rid, c.amount)
        redis.call('HINCRBY', c.h, TOTAL, int(tonumber(c.amount) - tonumber(old)))
      end
    elseif c.kind == 'C' then
      redis.call('ZREM', c.z, rid)
    else
      local old = redis.call('HGET', c.lh, rid)
      if old then  -- else: already charged in full when its lease ran out
        redis.call('ZREM', c.lz, rid)
        redis.call('HDEL', c.lh, rid)
        redis.call('HINCRBY', c.lh, TOTAL, int(-tonumber(old)))
        local charge = old
        if c.amount ~= '' then charge = c.amount end
        add(c.z, c.h, c.a, tonumber(charge), c.b)
        local expire_at = tonumber(c.d)
        if expire_at > 0 then
          redis.call('PEXPIREAT', c.z, expire_at); redis.call('PEXPIREAT', c.h, expire_at)
        end
      end
    end
  end
  return {1, 0, '', 0}
end

-- Evaluate every check (sweeping what has expired); remember the first refusal.
local denied, reason, retry = 0, '', 0
for i = 1, n do
  local c = checks[i]
  local why, wait = '', 0
  local amount = tonumber(c.amount)
  if c.kind == 'W' then
    local cutoff = now - tonumber(c.a)
    sweep(c.z, c.h, cutoff)
    c.held = redis.call('HEXISTS', c.h, rid) == 1
    local used = total(c.h)
    if not c.held then
      if amount > c.limit then
        why = 'too_large'
      elseif used + amount > c.limit then
        why, wait = 'limit', time_to_free(c.z, c.h, used + amount - c.limit, cutoff)
      end
    end
  elseif c.kind == 'C' then
    redis.call('ZREMRANGEBYSCORE', c.z, '-inf', now)
    c.held = redis.call('ZSCORE', c.z, rid) ~= false
    if not c.held and redis.call('ZCARD', c.z) + 1 > c.limit then
      why, wait = 'limit', 1000
    end
  else
    local expired = sweep(c.lz, c.lh, now)
    if expired ~= 0 then add(c.z, c.h, c.a, expired, c.b) end  -- leases nobody settled
    local expire_at = tonumber(c.d)
    if expire_at > 0 then
      redis.call('PEXPIREAT', c.z, expire_at); redis.call('PEXPIREAT', c.h, expire_at)
    end
    local cutoff = tonumber(c.c)
    if cutoff ~= -1 then sweep(c.z, c.h, cutoff) end
    c.held = redis.call('HEXISTS', c.lh, rid) == 1
    local spent = total(c.h)
    if not c.held then
      if spent + amount > c.limit then
        why = 'exhausted'
        if cutoff ~= -1 then wait = time_to_free(c.z, c.h, spent + amount - c.limit, cutoff) end
      elseif spent + total(c.lh) + amount > c.limit then
        why, wait = 'held', 1000
      end
    end
  end
  if why ~= '' and denied == 0 then denied, reason, retry = i, why, wait end
end

-- Reserve everything, or nothing.
if denied == 0 and mode == 'reserve' then
  for i = 1, n do
    local c = checks[i]
    if not c.held then
      if c.kind == 'W' then
        add(c.z, c.h, rid, tonumber(c.amount), now)
        local keep = tonumber(c.a) + 60000
        redis.call('PEXPIRE', c.z, keep); redis.call('PEXPIRE', c.h, keep)
      elseif c.kind == 'C' then
        redis.call('ZADD', c.z, now + ttl, rid)
        redis.call('PEXPIRE', c.z, ttl + 60000)
      else
        add(c.lz, c.lh, rid, tonumber(c.amount), now + ttl)
        redis.call('PEXPIRE', c.lz, ttl + 86400000); redis.call('PEXPIRE', c.lh, ttl + 86400000)
      end
    end
  end
end

local out = {denied == 0 and 1 or 0, denied, reason, retry}
for i = 1, n do
  local c = checks[i]
  local used, reserved, reset = 0, 0, 0
  if c.kind == 'W' then
    used = total(c.h)
    local first = oldest(c.z)
    if first then reset = math.max(0, first + tonumber(c.a) - now) end
  elseif c.kind == 'C' then
    used = redis.call('ZCARD', c.z)
  else
    used, reserved = total(c.h), total(c.lh)
    local cutoff = tonumber(c.c)
    if cutoff ~= -1 then
      local first = oldest(c.z)
      if first then reset = math.max(0, first - cutoff) end
    end
  end
  out[#out + 1] = used; out[#out + 1] = reserved; out[#out + 1] = reset
end
return out
