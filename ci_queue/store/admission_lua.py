"""The scheduler's Lua: holding ready jobs in Redis and admitting them to the Celery queues.

Key names (``P`` = the key prefix; ``Q`` = a Celery queue name, one per tag set and trust class):

- ``P q:Q:held``          sorted set ``<run>|<i>|<attempt>`` -> the time it became ready (held)
- ``P q:Q:held:<repo>``   sorted set, the same members of one repository -> order score
                          ``-priority * 1e10 + held time`` (higher priority first, then oldest)
- ``P q:Q:repos``         set: the repositories with held jobs in Q
- ``P q:Q:active``        hash: repository -> its jobs admitted to Q and not ended (fair share)
- ``P q:Q:sent``          sorted set: admitted attempts whose message waits in the broker -> held time
- ``P q:Q:running``       sorted set: attempts of Q running -> start time
- ``P q:Q:workers``       set: names of the workers that consume Q
- ``P queues``, ``P queues:held``  sets: every queue seen (held in, served), the queues with held jobs
- ``P repo:active``, ``P repo:limit``  hashes: repository -> admitted jobs not ended (all queues) /
                          its ``max_concurrent_jobs`` (0: none)
- ``P workers``           sorted set: worker name -> the deadline of its last heartbeat
- ``P worker:<name>:info``     hash: ``concurrency``, ``queues`` (comma-joined)
- ``P worker:<name>:running``  set: attempts it runs (its busy slots)

Keys are derived from the prefix inside the scripts (as ``P unsent`` already is): fine on one
Redis, not on a cluster.
"""

# Hooks of the job scripts (prepended to ``lua._PRELUDE``'s users; ``run_key``, ``st``, ``get``
# and ``set`` come from there): the scheduler's books follow every start and end of an attempt.
HOOKS = r"""
local sched_p, sched_run = string.match(run_key, '^(.*)run:([^:]+)$')

-- attempt `att` of job i started on `worker`: out of the broker, a busy slot of that worker
local function sched_begin(i, att, worker)
  local m = sched_run .. '|' .. i .. '|' .. att
  local q = get(i, 'queue')
  local t = redis.call('TIME')
  if q then
    redis.call('ZREM', sched_p .. 'q:' .. q .. ':sent', m)
    redis.call('ZADD', sched_p .. 'q:' .. q .. ':running', tonumber(t[1]), m)
  end
  redis.call('SADD', sched_p .. 'worker:' .. worker .. ':running', m)
end

-- attempt `att` of job i left the books (ended, handed back, canceled while held or sent):
-- its slot and its repository's share are free again
local function sched_end(i, att)
  local q = get(i, 'queue')
  local m = sched_run .. '|' .. i .. '|' .. att
  local worker = get(i, 'worker')
  if worker then redis.call('SREM', sched_p .. 'worker:' .. worker .. ':running', m) end
  if not q then return end
  local qk = sched_p .. 'q:' .. q
  local repo = redis.call('HGET', run_key, 'repo') or ''
  if get(i, 'adm') == '1' then
    redis.call('HDEL', st, 'n' .. i .. '.adm')
    for _, counter in ipairs({{qk .. ':active', repo}, {sched_p .. 'repo:active', repo}}) do
      if redis.call('HINCRBY', counter[1], counter[2], -1) <= 0 then redis.call('HDEL', counter[1], counter[2]) end
    end
  end
  redis.call('ZREM', qk .. ':sent', m)
  redis.call('ZREM', qk .. ':running', m)
  redis.call('ZREM', qk .. ':held', m)
  if redis.call('ZREM', qk .. ':held:' .. repo, m) == 1 and redis.call('EXISTS', qk .. ':held:' .. repo) == 0 then
    redis.call('SREM', qk .. ':repos', repo)
  end
end
"""

# ARGV: prefix, the farm's default limit per repository (0: none), then `<run>|<i>` of jobs made
# ready. Holds each one that is pending (its current attempt), then admits held jobs to every
# queue with held jobs, up to the free slots of the live workers that consume it, in the
# fair-share order. Answers {kind, member, queue, timeout} per job to publish now:
#   admit: admitted just now;  again: admitted before, its message is sent again (lost);
#   direct: not held (a delayed job's first attempt, a job planned before holding existed);
#   group: a job of a resource group (it waits in its group's line instead).
HOLD_ADMIT = r"""
local P, default_limit = ARGV[1], tonumber(ARGV[2]) or 0
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local out = {}

local function run_key(run) return P .. 'run:' .. run end
local function field(run, i, prop)
  return redis.call('HGET', P .. 'run:' .. run .. ':state', 'n' .. i .. '.' .. prop)
end
local function split(m) return string.match(m, '^(.*)|(%d+)|(%d+)$') end
local function waiting(run, i, att)
  return field(run, i, 'st') == 'pending' and field(run, i, 'att') == att
     and redis.call('HGET', run_key(run), 'canceling') ~= '1'
end

local function hold(run, i)
  local att = field(run, i, 'att')
  if not att or not waiting(run, i, att) then return end
  local m = run .. '|' .. i .. '|' .. att
  local kind, q, tmo = field(run, i, 'hold'), field(run, i, 'queue'), field(run, i, 'tmo') or ''
  if field(run, i, 'adm') == '1' then table.insert(out, {'again', m, q, tmo}) return end
  if kind == 'rg' then table.insert(out, {'group', m, q or '', tmo}) return end
  if not q or not kind or (kind == 'delay' and att == '1') then
    table.insert(out, {'direct', m, q or '', tmo}) return
  end
  local qk = P .. 'q:' .. q
  if redis.call('ZSCORE', qk .. ':held', m) then return end
  local repo = redis.call('HGET', run_key(run), 'repo') or ''
  local prio = tonumber(field(run, i, 'prio') or redis.call('HGET', run_key(run), 'priority') or '0') or 0
  redis.call('ZADD', qk .. ':held', now, m)
  redis.call('ZADD', qk .. ':held:' .. repo, -prio * 1e10 + now, m)
  redis.call('SADD', qk .. ':repos', repo)
  redis.call('SADD', P .. 'queues:held', q)
  redis.call('SADD', P .. 'queues', q)
  local limit = tonumber(redis.call('HGET', run_key(run), 'max_jobs') or '') or default_limit
  redis.call('HSET', P .. 'repo:limit', repo, limit)
  redis.call('ZREM', P .. 'unsent', m)  -- it waits in Redis now: nothing to send again
end

-- free slots of the live workers that consume q, less the messages already waiting there
local function free_slots(q)
  local qk, free = P .. 'q:' .. q, 0
  for _, w in ipairs(redis.call('SMEMBERS', qk .. ':workers')) do
    local alive = redis.call('ZSCORE', P .. 'workers', w)
    if not alive then
      redis.call('SREM', qk .. ':workers', w)  -- stopped: it unregistered
    elseif tonumber(alive) > now then
      local slots = tonumber(redis.call('HGET', P .. 'worker:' .. w .. ':info', 'concurrency') or '0') or 0
      local busy = redis.call('SCARD', P .. 'worker:' .. w .. ':running')
      if slots > busy then free = free + slots - busy end
    end
  end
  for _, m in ipairs(redis.call('ZRANGE', qk .. ':sent', 0, -1)) do
    local run, i, att = split(m)
    if run and waiting(run, i, att) then free = free - 1 else redis.call('ZREM', qk .. ':sent', m) end
  end
  return free
end

-- the next held job of q: the repository with the fewest admitted jobs on q (under its limit),
-- then the highest priority, then the oldest
local function pick(q)
  local qk = P .. 'q:' .. q
  local best, best_active, best_score
  for _, repo in ipairs(redis.call('SMEMBERS', qk .. ':repos')) do
    local top = redis.call('ZRANGE', qk .. ':held:' .. repo, 0, 0, 'WITHSCORES')
    if #top == 0 then
      redis.call('SREM', qk .. ':repos', repo)
    else
      local limit = tonumber(redis.call('HGET', P .. 'repo:limit', repo) or '0') or 0
      local total = tonumber(redis.call('HGET', P .. 'repo:active', repo) or '0') or 0
      if limit <= 0 or total < limit then
        local active = tonumber(redis.call('HGET', qk .. ':active', repo) or '0') or 0
        local score = tonumber(top[2])
        if best == nil or active < best_active or (active == best_active and score < best_score) then
          best, best_active, best_score = {repo, top[1]}, active, score
        end
      end
    end
  end
  return best
end

local function admit(q)
  local qk = P .. 'q:' .. q
  local free = free_slots(q)
  while free > 0 do
    local chosen = pick(q)
    if chosen == nil then break end
    local repo, m = chosen[1], chosen[2]
    local since = redis.call('ZSCORE', qk .. ':held', m) or now
    redis.call('ZREM', qk .. ':held:' .. repo, m)
    if redis.call('EXISTS', qk .. ':held:' .. repo) == 0 then redis.call('SREM', qk .. ':repos', repo) end
    redis.call('ZREM', qk .. ':held', m)
    local run, i, att = split(m)
    if run and waiting(run, i, att) then
      redis.call('HSET', P .. 'run:' .. run .. ':state', 'n' .. i .. '.adm', '1')
      redis.call('HINCRBY', qk .. ':active', repo, 1)
      redis.call('HINCRBY', P .. 'repo:active', repo, 1)
      redis.call('ZADD', qk .. ':sent', since, m)
      redis.call('ZADD', P .. 'unsent', now, m)  -- until its message is out (the sweeper re-sends)
      table.insert(out, {'admit', m, q, field(run, i, 'tmo') or ''})
      free = free - 1
    end
  end
  if redis.call('ZCARD', qk .. ':held') == 0 then redis.call('SREM', P .. 'queues:held', q) end
end

for k = 3, #ARGV do
  local run, i = string.match(ARGV[k], '^(.*)|(%d+)$')
  if run then hold(run, i) end
end
for _, q in ipairs(redis.call('SMEMBERS', P .. 'queues:held')) do admit(q) end
return out
"""

# ARGV: prefix, worker name, concurrency, heartbeat ttl (s), then the queues it consumes.
# A live worker's slots (renewed by its heartbeat; a queue it no longer consumes forgets it).
REGISTER_WORKER = r"""
local P, name, slots, ttl = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local t = redis.call('TIME')
local info = P .. 'worker:' .. name .. ':info'
local queues = {}
for k = 5, #ARGV do queues[ARGV[k]] = true end
for q in string.gmatch(redis.call('HGET', info, 'queues') or '', '[^,]+') do
  if not queues[q] then redis.call('SREM', P .. 'q:' .. q .. ':workers', name) end
end
for k = 5, #ARGV do
  redis.call('SADD', P .. 'q:' .. ARGV[k] .. ':workers', name)
  redis.call('SADD', P .. 'queues', ARGV[k])
end
redis.call('HSET', info, 'concurrency', slots, 'queues', table.concat({unpack(ARGV, 5)}, ','))
redis.call('EXPIRE', info, 86400)  -- a killed worker's is gone a day later
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZADD', P .. 'workers', now + ttl, name)
redis.call('ZREMRANGEBYSCORE', P .. 'workers', '-inf', now - 86400)  -- workers killed a day ago
return 1
"""

# ARGV: prefix, worker name. A worker that stops takes its slots away at once.
UNREGISTER_WORKER = r"""
local P, name = ARGV[1], ARGV[2]
local info = P .. 'worker:' .. name .. ':info'
for q in string.gmatch(redis.call('HGET', info, 'queues') or '', '[^,]+') do
  redis.call('SREM', P .. 'q:' .. q .. ':workers', name)
end
redis.call('DEL', info)
redis.call('ZREM', P .. 'workers', name)
return 1
"""
