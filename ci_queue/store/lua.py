"""The store's Lua scripts: every state transition of a job is one atomic script.

All scripts work on two hashes of a run: the run record (KEYS[1]) and the run's state
(KEYS[2]: one field per node property, ``n<i>.<prop>``). Fencing: a write names the attempt it
belongs to and is refused ("stale") when the job has moved on to another attempt or already
reached a terminal state, so a redelivered or late message never records twice.

The barrier (``release`` / ``evaluate``) walks the graph of ``ci_queue.graph`` with a work list:
when a node finishes, each dependent's counter of unfinished predecessors drops; at zero the
dependent is decided at once (run, skip, wait for a manual play) and skipped nodes cascade in
the same call. The jobs that became ready are returned exactly once, to the one caller whose
write finished their last predecessor.
"""

from ci_queue.store.admission_lua import HOOKS

# KEYS: run, the four run indexes (all, repo, ref, status queued), then [once] when ARGV[4] is not
# '', [stream] when ARGV[6] is not '', then the hash of each counter of ARGV[8]. ARGV: run id,
# (unused), index TTL, once value, once TTL, a stream entry (JSON [field, value, ...]: the request's
# audit record) or '', the stream's MAXLEN (approximate), the counters (JSON [[field, amount], ...]:
# the request's metrics), the run record (a JSON object of strings: one argument for redis-py to
# pack instead of 34, which were a twentieth of a webhook's time). Records a new run and indexes
# it by Redis's clock (the sweeper's "nobody planned it for two minutes" is on it too), and with a
# `once` key, only if that key is absent, writing it in the same step; the stream entry is written
# with the run (first: if it cannot be, nothing is), the counters are added whatever the outcome,
# with `pcall` (the request is answered either way; a metric never fails it). Returns {1, once
# value, entry id} when the run is recorded (entry id '' when it already was: the same write sent
# again after a lost reply), {0, the key's value, ''} when the key existed (a repeated request:
# nothing but the counters is written).
CREATE_RUN = r"""
local k = 6
local once, stream
if ARGV[4] ~= '' then once = KEYS[k]; k = k + 1 end
if ARGV[6] ~= '' then stream = KEYS[k]; k = k + 1 end
local function count()
  for i, c in ipairs(cjson.decode(ARGV[8])) do redis.pcall('HINCRBY', KEYS[k + i - 1], c[1], c[2]) end
end
if once then
  local first = redis.call('GET', once)
  if first then count(); return {0, first, ''} end
end
if redis.call('EXISTS', KEYS[1]) == 1 then count(); return {1, ARGV[4], ''} end
local entry = ''
if stream then entry = redis.call('XADD', stream, 'MAXLEN', '~', ARGV[7], '*', unpack(cjson.decode(ARGV[6]))) end
local fields = {}
for name, value in pairs(cjson.decode(ARGV[9])) do
  fields[#fields + 1] = name
  fields[#fields + 1] = value
end
redis.call('HSET', KEYS[1], unpack(fields))
local t = redis.call('TIME')
local score = tonumber(t[1]) + tonumber(t[2]) / 1000000
for n = 2, 5 do
  redis.call('ZADD', KEYS[n], score, ARGV[1])
  redis.call('EXPIRE', KEYS[n], ARGV[3])
end
if once then redis.call('SET', once, ARGV[4], 'EX', ARGV[5]) end
count()
return {1, ARGV[4], entry}
"""

# A fork's run waiting for approval becomes queued, with who approved it and when (`approved`);
# any other run answers its status (or `missing`) and changes nothing. KEYS: run, status:waiting_approval,
# status:queued, the runs index. ARGV: who, when, the index keys' TTL.
APPROVE_RUN = r"""
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'missing' end
if status ~= 'waiting_approval' then return status end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
-- plan_sent: the sweeper counts the wait for a planner from the approval, not from the creation
redis.call('HSET', KEYS[1], 'status', 'queued', 'approved_by', ARGV[1], 'approved_at', ARGV[2],
           'plan_sent', tostring(now))
local id = redis.call('HGET', KEYS[1], 'id')
local score = redis.call('ZSCORE', KEYS[4], id) or now
redis.call('ZREM', KEYS[2], id)
redis.call('ZADD', KEYS[3], score, id)
redis.call('EXPIRE', KEYS[3], ARGV[3])
return 'approved'
"""

# Shared functions, prepended to the scripts that move the graph forward (with the scheduler's
# hooks, ``admission_lua.HOOKS``, after them).
_PRELUDE = r"""
local run_key, st = KEYS[1], KEYS[2]
local TERMINAL = {success=true, failed=true, canceled=true, skipped=true}

local function get(i, prop) return redis.call('HGET', st, 'n' .. i .. '.' .. prop) end
local function set(i, prop, value) redis.call('HSET', st, 'n' .. i .. '.' .. prop, value) end
local function num(i, prop) return tonumber(get(i, prop) or '0') end
local function counter(name, delta) return redis.call('HINCRBY', st, 'c.' .. name, delta) end
""" + HOOKS + r"""

-- Append an attempt record (JSON text) to the job's list as text: decoding and re-encoding the
-- list with Redis' cjson would turn every empty list in it into {} and round numbers to 14 digits.
local function record_attempt(i, record)
  if record == nil or record == '' then return end
  local attempts = get(i, 'attempts') or '[]'
  if attempts == '[]' or attempts == '{}' then
    set(i, 'attempts', '[' .. record .. ']')
  else
    set(i, 'attempts', string.sub(attempts, 1, -2) .. ',' .. record .. ']')
  end
end

-- Queue node i's dependents after it ended with `result` (success | failed | skipped |
-- canceled); `stage_only` releases only the stage boundary (an optional manual job, which
-- holds back the jobs that need it but not the next stage).
local function release(first, first_result, first_stage_only, ready)
  local work = {{first, first_result, first_stage_only}}
  while #work > 0 do
    local item = table.remove(work)
    local node, result, stage_only = item[1], item[2], item[3]
    local deps = get(node, 'deps') or ''
    for dep in string.gmatch(deps, '[^,]+') do
      local needs_edge = get(dep, 'needs') == '1'
      if not (stage_only and needs_edge) then
        local rem = redis.call('HINCRBY', st, 'n' .. dep .. '.rem', -1)
        if result == 'failed' then redis.call('HINCRBY', st, 'n' .. dep .. '.fp', 1) end
        if result == 'failed' or result == 'canceled' or (result == 'skipped' and needs_edge) then
          redis.call('HINCRBY', st, 'n' .. dep .. '.np', 1)
        end
        if rem == 0 then
          local kind = get(dep, 'kind')
          if get(dep, 'st') == 'canceled' then
            -- canceled before it was ready (an interruptible job of a superseded run)
            table.insert(work, {dep, 'canceled', false})
          elseif kind == 'stage' then
            set(dep, 'st', 'done')
            local stage_result = 'success'
            if num(dep, 'fp') > 0 then stage_result = 'failed'
            elseif num(dep, 'np') > 0 then stage_result = 'canceled' end
            table.insert(work, {dep, stage_result, false})
          elseif redis.call('HGET', run_key, 'canceling') == '1' then
            set(dep, 'st', 'canceled')
            table.insert(work, {dep, 'canceled', false})
          else
            local when, fp, np = get(dep, 'when'), num(dep, 'fp'), num(dep, 'np')
            local run_it
            if when == 'always' then run_it = true
            elseif when == 'on_failure' then run_it = fp > 0
            else run_it = np == 0 end
            if when == 'manual' and run_it then
              set(dep, 'st', 'manual')
              if get(dep, 'om') == '1' then
                set(dep, 'rel', 'stage')
                table.insert(work, {dep, 'skipped', true})
              else
                counter('blocked', 1)
              end
            elseif run_it then
              set(dep, 'st', 'pending')
              counter('active', 1)
              table.insert(ready, tonumber(dep))
            else
              set(dep, 'st', 'skipped')
              table.insert(work, {dep, 'skipped', false})
            end
          end
        end
      end
    end
  end
end

-- Recompute the run's status once nothing is pending or running; returns it.
local function settle(now)
  local status = redis.call('HGET', run_key, 'status')
  if TERMINAL[status] or status == 'error' then return status end
  if tonumber(redis.call('HGET', st, 'c.active') or '0') > 0 then return status end
  local canceling = redis.call('HGET', run_key, 'canceling') == '1'
  if tonumber(redis.call('HGET', st, 'c.blocked') or '0') > 0 and not canceling then return status end
  local final = 'success'
  if canceling or tonumber(redis.call('HGET', st, 'c.canceled') or '0') > 0 then final = 'canceled'
  elseif tonumber(redis.call('HGET', st, 'c.failed') or '0') > 0 then final = 'failed' end
  redis.call('HSET', run_key, 'status', final, 'finished_at', now)
  return final
end

-- Jobs made pending are noted in `P unsent` until their Celery message is published, so a
-- process that dies between this script and the publish loses nothing: the sweeper re-sends.
-- (The key is derived from the run key; fine on one Redis, not on a cluster.)
local function mark_unsent(ready)
  if #ready == 0 then return end
  local prefix, run_id = string.match(run_key, '^(.*)run:([^:]+)$')
  local t = redis.call('TIME')
  local score = tonumber(t[1]) + tonumber(t[2]) / 1000000
  for _, i in ipairs(ready) do
    redis.call('ZADD', prefix .. 'unsent', score, run_id .. '|' .. i .. '|' .. get(i, 'att'))
  end
end

local function result_list(ready, status)
  mark_unsent(ready)
  local out = {status}
  for _, i in ipairs(ready) do table.insert(out, i) end
  return out
end
"""

# KEYS: run, state. ARGV: now. Decide every node without predecessors: the first wave.
START_RUN = _PRELUDE + r"""
local now = ARGV[1]
local ready = {}
local count = tonumber(redis.call('HGET', run_key, 'node_count'))
redis.call('HSET', run_key, 'status', 'running', 'started_at', now)
-- a virtual finished predecessor for every root, so roots are decided like everything else
for i = 0, count - 1 do
  if num(i, 'rem') == 0 and get(i, 'st') == 'created' then
    redis.call('HSET', st, 'n-1.deps', i)
    redis.call('HSET', st, 'n' .. i .. '.rem', 1)
    release(-1, 'success', false, ready)
  end
end
redis.call('HDEL', st, 'n-1.deps')
return result_list(ready, settle(now))
"""

# Now by Redis's clock, in seconds: every lease and queue deadline uses this one clock, so a
# host whose clock is off neither loses its leases nor keeps dead ones alive.
_CLOCK = r"""
local function redis_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
"""

# KEYS: run, state, leases, queued. ARGV: i, attempt, worker, now, lease seconds, token. The
# worker starts attempt `attempt` of job i and takes its lease (deadline by Redis's clock). The
# token makes a repeated call (its answer was lost with the connection) answer `ok` again.
BEGIN_JOB = _PRELUDE + _CLOCK + r"""
local i, attempt, worker, now, lease, token = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5]), ARGV[6]
local run_id = string.match(run_key, 'run:([^:]+)$')
local member = run_id .. '|' .. i .. '|' .. attempt
if get(i, 'att') == attempt and get(i, 'st') == 'running' and get(i, 'token') == token then return {'ok'} end
if get(i, 'att') ~= attempt or get(i, 'st') ~= 'pending' then return {'stale'} end
redis.call('ZREM', KEYS[4], member)
if redis.call('HGET', run_key, 'canceling') == '1' then
  sched_end(i, attempt)
  set(i, 'st', 'canceled')
  set(i, 'finished', now)
  counter('active', -1)
  local ready = {}
  release(i, 'canceled', false, ready)
  return {'canceled', settle(now)}
end
set(i, 'st', 'running')
set(i, 'worker', worker)
set(i, 'started', now)
set(i, 'token', token)
sched_begin(i, attempt, worker)
redis.call('ZADD', KEYS[3], redis_now() + lease, member)
return {'ok'}
"""

# KEYS: leases. ARGV: member, lease seconds. Extend a running attempt's lease; 0 when the attempt
# no longer holds one (it finished, or the sweeper took it away).
RENEW_LEASE = _CLOCK + r"""
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], redis_now() + tonumber(ARGV[2]), ARGV[1])
return 1
"""

# KEYS: leases. ARGV: lease seconds. After an outage of Redis (a restart, a failover, or every
# sweeper cut off), no lease is judged lapsed before its worker had a full lease period to renew.
EXTEND_LEASES = _CLOCK + r"""
local floor = redis_now() + tonumber(ARGV[1])
local stale = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. floor)
for _, member in ipairs(stale) do redis.call('ZADD', KEYS[1], floor, member) end
return #stale
"""

# KEYS: queued, unsent. ARGV: queue timeout, members... Messages were published for these
# attempts: they wait in their queues until a deadline (Redis's clock) and are no longer unsent.
MARK_QUEUED = _CLOCK + r"""
local deadline = redis_now() + tonumber(ARGV[1])
for k = 2, #ARGV do
  redis.call('ZADD', KEYS[1], deadline, ARGV[k])
  redis.call('ZREM', KEYS[2], ARGV[k])
end
return #ARGV - 1
"""

# KEYS: run, state. ARGV: i, attempt, status, allowed (1: a failure that may happen), fields
# (JSON object of extra job fields), attempt record (JSON), now.
FINISH_JOB = _PRELUDE + r"""
local i, attempt, status, allowed, fields, record, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local current = get(i, 'st')
if get(i, 'att') ~= attempt or TERMINAL[current] then return {'stale'} end
sched_end(i, attempt)
set(i, 'st', status)
set(i, 'finished', now)
for key, value in pairs(cjson.decode(fields)) do set(i, key, tostring(value)) end
record_attempt(i, record)
if current == 'running' or current == 'pending' then counter('active', -1) end
local result = status
if status == 'failed' and allowed == '1' then
  result = 'success'
  set(i, 'allowed', '1')
elseif status == 'failed' then
  counter('failed', 1)
elseif status == 'canceled' then
  counter('canceled', 1)
end
local ready = {}
if get(i, 'rel') == 'stage' then
  -- an optional manual job, played: the next stage went on without it; release its needers
  local deps = get(i, 'deps') or ''
  local needers = {}
  for dep in string.gmatch(deps, '[^,]+') do
    if get(dep, 'needs') == '1' then table.insert(needers, dep) end
  end
  set(i, 'deps', table.concat(needers, ','))
  set(i, 'rel', 'all')
end
release(i, result, false, ready)
return result_list(ready, settle(now))
"""

# KEYS: run, state. ARGV: i, attempt, attempt record (JSON), now. A failed attempt that is
# retried (YAML `retry:` or a lost worker): same job, next attempt, pending again.
REQUEUE_JOB = _PRELUDE + r"""
local i, attempt, record, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local current = get(i, 'st')
if get(i, 'att') ~= attempt or (current ~= 'running' and current ~= 'pending') then return {'stale'} end
if redis.call('HGET', run_key, 'canceling') == '1' then return {'canceled'} end
sched_end(i, attempt)
record_attempt(i, record)
local next_attempt = tonumber(attempt) + 1
set(i, 'att', next_attempt)
set(i, 'st', 'pending')
mark_unsent({i})
redis.call('HDEL', st, 'n' .. i .. '.worker', 'n' .. i .. '.started', 'n' .. i .. '.exit', 'n' .. i .. '.reason')
return {'ok', next_attempt}
"""

# KEYS: run, state. ARGV: i, now. Play a manual job.
PLAY_JOB = _PRELUDE + r"""
local i, now = ARGV[1], ARGV[2]
if get(i, 'st') ~= 'manual' then return {'not_manual', get(i, 'st') or ''} end
if redis.call('HGET', run_key, 'canceling') == '1' then return {'canceled'} end
if get(i, 'om') ~= '1' then counter('blocked', -1) end
set(i, 'st', 'pending')
counter('active', 1)
mark_unsent({i})
local status = redis.call('HGET', run_key, 'status')
if TERMINAL[status] then redis.call('HSET', run_key, 'status', 'running', 'finished_at', '') end
return {'ok', get(i, 'att')}
"""

# KEYS: run, state. ARGV: now, job count. Cancel: nothing not started will start; running jobs
# are stopped by their workers, which poll the flag. Returns the running jobs' indexes.
CANCEL_RUN = _PRELUDE + r"""
local now, jobs = ARGV[1], tonumber(ARGV[2])
local status = redis.call('HGET', run_key, 'status')
if TERMINAL[status] or status == 'error' then return {status} end
redis.call('HSET', run_key, 'canceling', '1')
local running = {}
for i = 0, jobs - 1 do
  local s = get(i, 'st')
  if s == 'pending' then
    sched_end(i, get(i, 'att'))
    set(i, 'st', 'canceled'); set(i, 'finished', now); counter('active', -1)
  elseif s == 'created' or s == 'manual' then
    if s == 'manual' and get(i, 'om') ~= '1' then counter('blocked', -1) end
    set(i, 'st', 'canceled')
  elseif s == 'running' then
    table.insert(running, i)
  end
end
local out = {settle(now)}
for _, i in ipairs(running) do table.insert(out, i) end
return out
"""

# KEYS: run, state, names, then the log stream of every job. ARGV: now, the graph as JSON
# ({"preds": [[...], ...], "deps": [[...], ...]}, one entry per node, from ``ci_queue.graph``: the
# stored ``deps`` of a played optional manual job are trimmed, so they cannot be trusted here).
# Retry a run as GitLab's "retry failed jobs" does: every failed or canceled job gets a new
# attempt; it and every node downstream of it that has not run (created, skipped, manual, stage
# nodes) go back to `created` with their barrier counters recomputed from their predecessors'
# current states, then are decided by the barrier like a new run's roots. Jobs that succeeded,
# and jobs still pending or running, keep their state. Answers {old status, new status, number
# of retried jobs, retried indexes..., ready indexes...}, or {error} (missing, queued,
# canceling, nothing, graph).
RETRY_RUN = _PRELUDE + r"""
local now, graph = ARGV[1], cjson.decode(ARGV[2])
local preds, alldeps = graph['preds'], graph['deps']
local old = redis.call('HGET', run_key, 'status')
if not old then return {'missing'} end
local count = tonumber(redis.call('HGET', run_key, 'node_count') or '')
local jobs = tonumber(redis.call('HGET', run_key, 'job_count') or '')
if old == 'queued' or count == nil or jobs == nil then return {'queued'} end
if count ~= #preds or count ~= #alldeps then return {'graph'} end
local canceling = redis.call('HGET', run_key, 'canceling') == '1'

-- the jobs to retry, and everything downstream of them
local retry, seen, work = {}, {}, {}
for i = 0, jobs - 1 do
  local s = get(i, 'st')
  -- a job still stopping after a cancel would race its own retry: wait until it stopped
  if s == 'running' and (canceling or get(i, 'cancel') == '1') then return {'canceling'} end
  if s == 'failed' or s == 'canceled' then
    table.insert(retry, i)
    seen[i] = true
    table.insert(work, i)
  end
end
if #retry == 0 then return {'nothing'} end
while #work > 0 do
  local node = table.remove(work)
  for _, dep in ipairs(alldeps[node + 1]) do
    if not seen[dep] then
      seen[dep] = true
      table.insert(work, dep)
    end
  end
end

-- reset: retried jobs get their next attempt; downstream nodes that have not run start over
local resets, retried = {}, {}
for _, i in ipairs(retry) do retried[i] = true end
for i = 0, count - 1 do
  local s = get(i, 'st')
  local reset = retried[i] or (seen[i] and (get(i, 'kind') == 'stage' or s == 'created' or s == 'skipped'
                                           or s == 'manual'))
  if reset then
    table.insert(resets, i)
    if retried[i] then
      -- keep the record of the attempt that ended (a job canceled before it ran has none yet)
      local att = num(i, 'att')
      local text = get(i, 'attempts') or '[]'
      local attempts = cjson.decode(text)
      local last = attempts[#attempts]
      if last == nil or tonumber(last['attempt']) ~= att then
        local record = {attempt = att, status = s, retried = 'manual'}
        for key, prop in pairs({failure_reason = 'reason', worker = 'worker', started_at = 'started',
                                finished_at = 'finished'}) do
          record[key] = get(i, prop) or nil
        end
        text = (text == '[]') and ('[' .. cjson.encode(record) .. ']')
               or (string.sub(text, 1, -2) .. ',' .. cjson.encode(record) .. ']')
      elseif last['retried'] == nil and string.sub(text, -2) == '}]' and string.sub(text, -3, -3) ~= '{' then
        -- mark it without decoding and re-encoding the list (cjson turns [] into {})
        text = string.sub(text, 1, -3) .. ', "retried": "manual"}]'
      end
      set(i, 'attempts', text)
      set(i, 'att', att + 1)
    end
    redis.call('HDEL', st, 'n' .. i .. '.worker', 'n' .. i .. '.started', 'n' .. i .. '.finished',
               'n' .. i .. '.exit', 'n' .. i .. '.reason', 'n' .. i .. '.allowed', 'n' .. i .. '.rel',
               'n' .. i .. '.cancel')
    local deps = alldeps[i + 1]
    set(i, 'deps', (#deps > 0) and table.concat(deps, ',') or '')
    set(i, 'st', 'created')
  end
end

-- What predecessor p released to node n, as `release` would have (nil: not yet).
local function released(p, n)
  local s = get(p, 'st')
  if get(p, 'kind') == 'stage' then
    if s == 'done' then
      if num(p, 'fp') > 0 then return 'failed' elseif num(p, 'np') > 0 then return 'canceled' end
      return 'success'
    end
    return nil
  end
  local rel = get(p, 'rel')
  -- an optional manual job released the stage boundary as `skipped` when it became manual
  if (rel == 'stage' or rel == 'all') and get(n, 'needs') ~= '1' then return 'skipped' end
  if s == 'success' then return 'success' end
  if s == 'failed' then return (get(p, 'allowed') == '1') and 'success' or 'failed' end
  if s == 'skipped' or s == 'canceled' then return s end
  return nil
end

for _, i in ipairs(resets) do
  local rem, fp, np = 0, 0, 0
  local needs_edge = get(i, 'needs') == '1'
  for _, p in ipairs(preds[i + 1]) do
    local result = released(p, i)
    if result == nil then
      rem = rem + 1
    else
      if result == 'failed' then fp = fp + 1 end
      if result == 'failed' or result == 'canceled' or (result == 'skipped' and needs_edge) then np = np + 1 end
    end
  end
  set(i, 'rem', rem)
  set(i, 'fp', fp)
  set(i, 'np', np)
end

-- the run's counters, from the jobs' states
local active, failed, blocked, canceled = 0, 0, 0, 0
for i = 0, jobs - 1 do
  local s = get(i, 'st')
  if s == 'pending' or s == 'running' then active = active + 1
  elseif s == 'failed' and get(i, 'allowed') ~= '1' then failed = failed + 1
  elseif s == 'manual' and get(i, 'om') ~= '1' then blocked = blocked + 1
  elseif s == 'canceled' then canceled = canceled + 1 end
end
redis.call('HSET', st, 'c.active', active, 'c.failed', failed, 'c.blocked', blocked, 'c.canceled', canceled)
redis.call('HSET', run_key, 'status', 'running')
redis.call('HDEL', run_key, 'finished_at', 'canceling')
for k = 1, #KEYS do redis.call('PERSIST', KEYS[k]) end

-- decide the reset nodes whose predecessors are all done, as START_RUN decides roots
local ready = {}
for _, i in ipairs(resets) do
  if num(i, 'rem') == 0 and get(i, 'st') == 'created' then
    redis.call('HSET', st, 'n-1.deps', i)
    set(i, 'rem', 1)
    release(-1, 'success', false, ready)
  end
end
redis.call('HDEL', st, 'n-1.deps')
local pending = {}
for _, i in ipairs(ready) do table.insert(pending, i) end
for _, i in ipairs(retry) do if get(i, 'st') == 'pending' then table.insert(pending, i) end end
mark_unsent(pending)
local out = {old, settle(now), #retry}
for _, i in ipairs(retry) do table.insert(out, i) end
for _, i in ipairs(ready) do table.insert(out, i) end
return out
"""


# KEYS: run, state. ARGV: now, job indexes... Cancel some jobs of a run (the interruptible jobs of
# a run superseded by a newer one on the same ref): waiting ones are canceled at once, running
# ones get a cancel flag their worker polls. Returns the run status and the running indexes.
CANCEL_JOBS = _PRELUDE + r"""
local now = ARGV[1]
local running = {}
local ready = {}
for k = 2, #ARGV do
  local i = ARGV[k]
  local s = get(i, 'st')
  if s == 'running' then
    set(i, 'cancel', '1')
    table.insert(running, tonumber(i))
  elseif s == 'pending' or s == 'created' or s == 'manual' then
    if s == 'manual' and get(i, 'om') ~= '1' then counter('blocked', -1) end
    if s == 'pending' then sched_end(i, get(i, 'att')) end
    set(i, 'st', 'canceled')
    set(i, 'finished', now)
    counter('canceled', 1)
    if s == 'pending' then
      counter('active', -1)
      release(i, 'canceled', false, ready)
    end
  end
end
mark_unsent(ready)
local out = {settle(now)}
for _, i in ipairs(running) do table.insert(out, i) end
return out
"""

# KEYS: a key held by one owner at a time (a planning claim, the sweeper's lock, a worker's
# name). ARGV: owner, ttl in milliseconds. Take it if free, or renew it if this owner holds it
# (a planner's retry keeps its claim, nobody else gets it meanwhile). Answers the holder.
HOLD = r"""
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return ARGV[1]
end
return holder
"""

# KEYS: a held key. ARGV: owner. Drop it only if this owner holds it.
RELEASE = r"""
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# KEYS: state. ARGV: i, attempt, token, then field/value pairs. Writes job fields only for the
# attempt that runs now and holds ``token`` (the job token a worker got with BEGIN_JOB): an upload
# of an attempt that was taken over, or that finished, records nothing. 1 when written.
SET_IF_CURRENT = r"""
local p = 'n' .. ARGV[1] .. '.'
if redis.call('HGET', KEYS[1], p .. 'att') ~= ARGV[2] or redis.call('HGET', KEYS[1], p .. 'st') ~= 'running'
   or redis.call('HGET', KEYS[1], p .. 'token') ~= ARGV[3] then return 0 end
for k = 4, #ARGV, 2 do redis.call('HSET', KEYS[1], p .. ARGV[k], ARGV[k + 1]) end
return 1
"""
