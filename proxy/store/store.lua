-- Warden's counters: every limit of one request decided, and reserved, atomically.
-- The same algorithm as MemoryStore in memory.py (tests run one suite against both).
--
-- KEYS[1]: the tenant's base key, PREFIX:{tenant}. Every key below is derived from it
-- and shares its {tenant} hash tag, so all live in KEYS[1]'s Redis Cluster slot (a
-- script may touch undeclared keys of its own slot). Passing one key and one spec
-- string instead of ~50 arguments halves the client's cost of each call.
-- ARGV: mode ("reserve" | "peek" | "settle"), now_ms, request_id, ttl_ms, spec.
-- spec: checks separated by \30, fields by \31:
--   W name limit amount window_ms                              (window: zset + hash)
--   C name limit                                               (slots: zset)
--   S name limit amount ledger entry entry_score cutoff expire (spend: 2 zsets + 2 hashes)
-- A ledger is a zset (entry -> score) plus a hash (entry -> amount, and '~' -> total).
-- In "settle" mode, amount is the actual amount ('' keeps the reserved one).
-- Returns one string, fields separated by \31: granted, denied_index, reason, retry_ms,
-- then used, reserved, reset_ms per check.

local mode = ARGV[1]
local now = tonumber(ARGV[2])
local rid = ARGV[3]
local ttl = tonumber(ARGV[4])
local base = KEYS[1]
local TOTAL = '~'
local BATCH = 500

-- Integer text for HINCRBY. '%.0f' writes a negative zero as '-0', which Redis refuses
-- as "not an integer": settling a zero-amount reservation (an unpriced model under a
-- USD budget) would fail.
local function int(x)
  local s = string.format('%.0f', x)
  if s == '-0' then return '0' end
  return s
end

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

local function split(text, sep)
  local out, start = {}, 1
  while true do
    local i = string.find(text, sep, start, true)
    if not i then out[#out + 1] = string.sub(text, start); return out end
    out[#out + 1] = string.sub(text, start, i - 1)
    start = i + 1
  end
end

-- Parse the checks and derive their keys (the names base.Keys gives them).
local checks = {}
for _, record in ipairs(ARGV[5] == '' and {} or split(ARGV[5], '\30')) do
  local f = split(record, '\31')
  local c = {kind = f[1], name = f[2], limit = tonumber(f[3]), amount = f[4] or ''}
  if c.kind == 'W' then
    c.a = f[5]
    c.z, c.h = base .. ':w:' .. c.name .. ':z', base .. ':w:' .. c.name .. ':h'
  elseif c.kind == 'C' then
    c.z = base .. ':c:' .. c.name
  else
    c.a, c.b, c.c, c.d = f[6], f[7], f[8], f[9]
    local spend, leases = base .. ':b:' .. c.name .. ':' .. f[5], base .. ':r:' .. c.name
    c.z, c.h, c.lz, c.lh = spend .. ':z', spend .. ':h', leases .. ':z', leases .. ':h'
  end
  checks[#checks + 1] = c
end
local n = #checks

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
  return '1'
end

-- Evaluate every check (sweeping what has expired); remember the first refusal.
local denied, reason, retry = 0, '', 0
for i = 1, n do
  local c = checks[i]
  local why, wait = '', 0
  local amount = tonumber(c.amount)
  c.reserved = 0
  if c.kind == 'W' then
    local cutoff = now - tonumber(c.a)
    sweep(c.z, c.h, cutoff)
    local got = redis.call('HMGET', c.h, rid, TOTAL)
    c.held, c.used = got[1] ~= false, tonumber(got[2] or '0')
    if not c.held then
      if amount > c.limit then
        why = 'too_large'
      elseif c.used + amount > c.limit then
        why, wait = 'limit', time_to_free(c.z, c.h, c.used + amount - c.limit, cutoff)
      end
    end
  elseif c.kind == 'C' then
    redis.call('ZREMRANGEBYSCORE', c.z, '-inf', now)
    c.held = redis.call('ZSCORE', c.z, rid) ~= false
    c.used = redis.call('ZCARD', c.z)
    if not c.held and c.used + 1 > c.limit then
      why, wait = 'limit', 1000
    end
  else
    local expired = sweep(c.lz, c.lh, now)
    local expire_at = tonumber(c.d)
    if expired ~= 0 then  -- leases nobody settled: charged in full
      add(c.z, c.h, c.a, expired, c.b)
      if expire_at > 0 then
        redis.call('PEXPIREAT', c.z, expire_at); redis.call('PEXPIREAT', c.h, expire_at)
      end
    end
    local cutoff = tonumber(c.c)
    if cutoff ~= -1 then sweep(c.z, c.h, cutoff) end
    local got = redis.call('HMGET', c.lh, rid, TOTAL)
    c.held, c.reserved = got[1] ~= false, tonumber(got[2] or '0')
    c.used = total(c.h)
    if not c.held then
      if c.used + amount > c.limit then
        why = 'exhausted'
        if cutoff ~= -1 then wait = time_to_free(c.z, c.h, c.used + amount - c.limit, cutoff) end
      elseif c.used + c.reserved + amount > c.limit then
        why, wait = 'held', 1000
      end
    end
  end
  if why ~= '' and denied == 0 then denied, reason, retry = i, why, wait end
end

-- Reserve everything, or nothing.
local committed = denied == 0 and mode == 'reserve'
if committed then
  for i = 1, n do
    local c = checks[i]
    if not c.held then
      local amount = tonumber(c.amount)
      if c.kind == 'W' then
        redis.call('ZADD', c.z, now, rid)
        redis.call('HSET', c.h, rid, int(amount), TOTAL, int(c.used + amount))
        local keep = tonumber(c.a) + 60000
        redis.call('PEXPIRE', c.z, keep); redis.call('PEXPIRE', c.h, keep)
        if c.used == 0 then c.first = now end
        c.used = c.used + amount
      elseif c.kind == 'C' then
        redis.call('ZADD', c.z, now + ttl, rid)
        redis.call('PEXPIRE', c.z, ttl + 60000)
        c.used = c.used + 1
      else
        redis.call('ZADD', c.lz, now + ttl, rid)
        redis.call('HSET', c.lh, rid, int(amount), TOTAL, int(c.reserved + amount))
        redis.call('PEXPIRE', c.lz, ttl + 86400000); redis.call('PEXPIRE', c.lh, ttl + 86400000)
        c.reserved = c.reserved + amount
      end
    end
  end
end

local out = {committed and 1 or (denied == 0 and 1 or 0), denied, reason, int(retry)}
for i = 1, n do
  local c = checks[i]
  local reset = 0
  if c.kind == 'W' then
    local first = c.first or oldest(c.z)
    if first then reset = math.max(0, first + tonumber(c.a) - now) end
  elseif c.kind == 'S' and tonumber(c.c) ~= -1 then
    local first = oldest(c.z)
    if first then reset = math.max(0, first - tonumber(c.c)) end
  end
  out[#out + 1] = int(c.used); out[#out + 1] = int(c.reserved); out[#out + 1] = int(reset)
end
return table.concat(out, '\31')
