#!lua name=flowmill
-- flowmill's Redis/Valkey Functions library: every state transition is one FCALL.
--
-- KEYS[1] is the partition prefix (`<store prefix>{fm:N}:`); every key a function touches
-- starts with it, so all of them share one hash slot and a function is atomic on a
-- cluster too. ARGV[1] is a MessagePack map of the operation's parameters; every reply
-- is one MessagePack blob. A missing `now` means the server's clock (TIME), the clock
-- every lease, due time and TTL is judged by.

local VERSION = '__VERSION__'

local TERMINAL = {
  completed = true, failed = true, dead_lettered = true,
  cancelled = true, skipped = true, expired = true,
}
local FINISH_TARGETS = {
  completed = true, failed = true, dead_lettered = true, cancelled = true,
  scheduled = true, ready = true, suspended = true, waiting_children = true, skipped = true,
}
local CANCEL_SOURCES = {
  scheduled = true, blocked = true, ready = true, running = true,
  waiting_children = true, suspended = true,
}
local REPLACEABLE = { scheduled = true, ready = true, blocked = true }
local CHILD_FAILURES = { failed = true, dead_lettered = true, expired = true }
local PRIO = 1099511627776 -- 2^40: ready score = -priority * 2^40 + seq

local TTL_ERROR = '{"type":"Expired","message":"the task was not started before its ttl ' ..
  'ran out","category":"ttl","traceback":null}'
local CANCELLED_ON_RETRY = '{"type":"Cancelled","message":"cancel was requested while the ' ..
  'attempt ran; it ended asking for a retry","category":"cancelled","traceback":null}'
local CANCEL_ON_WAIT = '{"type":"Cancelled","message":"cancel was requested while execute ' ..
  'ran; its children are cancelled","category":"cancelled","traceback":null}'

local function clock(v)
  if v ~= nil then return v end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- cmsgpack is reachable when a function runs, not while the library loads
local function reply(v) return cmsgpack.pack(v) end
local function params(a) return cmsgpack.unpack(a) end

-- keys ----------------------------------------------------------------------------------

local function tkey(K, id) return K .. 't:' .. id end
local function rkey(K, queue, kind) return K .. 'r:' .. #queue .. ':' .. queue .. kind end
local function dfield(kind, key) return #kind .. ':' .. kind .. key end

local function load(K, id)
  local flat = redis.call('HGETALL', tkey(K, id))
  if #flat == 0 then return nil end
  local r = {}
  for i = 1, #flat, 2 do r[flat[i]] = flat[i + 1] end
  return r
end

-- only the fields a hot path reads (an HMGET of them, not the whole hash: HGETALL moves
-- every field, the payload and result included, into Lua); nil when the task is missing
local function load_only(K, id, names)
  local v = redis.call('HMGET', tkey(K, id), unpack(names))
  if not v[1] then return nil end -- names[1] is 'state', which every task has
  local r = {}
  for j = 1, #names do
    if v[j] then r[names[j]] = v[j] end
  end
  return r
end

local function set(K, id, fields)
  -- fields: name -> value, or false to delete the field
  local put, del = {}, {}
  for k, v in pairs(fields) do
    if v == false then del[#del + 1] = k else put[#put + 1] = k; put[#put + 1] = v end
  end
  if #put > 0 then redis.call('HSET', tkey(K, id), unpack(put)) end
  if #del > 0 then redis.call('HDEL', tkey(K, id), unpack(del)) end
end

-- leases: a claim stamps the task with (attempt, epoch, lease id); the lease id is random,
-- minted by the client (Lua has no good randomness): its `lid` and the row's position in
-- the reply (`<lid>:1`, `<lid>:2`...), which the client computes too, so the replies keep
-- the shape older clients read. A worker's write names its lease as
-- { attempt, lease id } beside the epoch and is refused unless all three match: an epoch
-- alone can repeat when a failover loses the write of a claim and the task is claimed
-- again. A write that names no lease (a reference made by hand, not by a claim of this
-- client) and a task claimed without a lease id (by a client of layout 4, during a rolling
-- upgrade) are judged on the epoch.
local function same_lease(lease_id, attempts, lease)
  if not lease or not lease_id then return true end
  return lease_id == lease[2] and tonumber(attempts) == lease[1]
end

-- wake-up markers: a sorted set per queue, `wm:<queue>`, that a waiting worker blocks on
-- with BZPOPMIN (one pop wakes one waiter: no herd). Member `w` (score 0) says the queue
-- has claimable work; member `d` holds the earliest due time of its scheduled tasks that
-- no waiter has taken yet (ZADD LT keeps the earliest), so a waiter blocks no longer than
-- until then. Every move into `ready` goes through `index`, which adds `w`; a waiter that
-- missed one still looks at its fallback poll.
local marked = {}
local kinds_added = {} -- `rqk:<queue>` members this call added (reset with `marked`)
local function mkey(K, queue) return K .. 'wm:' .. queue end
local function mark(K, queue)
  if marked[queue] then return end
  marked[queue] = true
  redis.call('ZADD', mkey(K, queue), 0, 'w')
end
-- every queue that holds ready tasks (a wake-up that names no queue: a budget, an unpause)
local function mark_all(K)
  local flat = redis.call('HGETALL', K .. 'cnt')
  for i = 1, #flat, 2 do
    if string.sub(flat[i], 1, 6) == 'ready|' and tonumber(flat[i + 1]) > 0 then
      mark(K, string.sub(flat[i], 7))
    end
  end
end

-- indexes: what a task's state puts it in --------------------------------------------

-- one command over a long list of arguments, in slices unpack can take (each slice an
-- even number of arguments: score-member pairs stay together)
-- the list of `groups` under `key`, made (and `key` appended to `order`) on first use:
-- entries grouped by key, the keys in the order first seen
local function group_of(groups, order, key)
  local g = groups[key]
  if not g then
    g = {}
    groups[key] = g
    order[#order + 1] = key
  end
  return g
end

local function call_sliced(cmd, key, list)
  for i = 1, #list, 1000 do
    redis.call(cmd, key, unpack(list, i, math.min(i + 999, #list)))
  end
end

-- deferred index writes: while a finish runs, what its tasks' moves add to the counters
-- (`cnt` but its `ready|` fields, which wake-ups read; `run`), take out of the lease set
-- and add to the ended set is gathered and written once at its end (flush_deferred), not
-- once per task; nil outside such a call
local deferred = nil

local function defer_add(K, hash, f, n)
  local d = deferred[hash]
  if d[f] == nil then d.order[#d.order + 1] = f end
  d[f] = (d[f] or 0) + n
end

local function flush_deferred(K)
  local d = deferred
  if not d then return end
  for _, f in ipairs(d.cnt.order) do
    local n = d.cnt[f]
    if n ~= 0 and redis.call('HINCRBY', K .. 'cnt', f, n) <= 0 then
      redis.call('HDEL', K .. 'cnt', f)
    end
  end
  for _, f in ipairs(d.run.order) do
    if d.run[f] ~= 0 then redis.call('HINCRBY', K .. 'run', f, d.run[f]) end
  end
  call_sliced('ZREM', K .. 'ls', d.ls)
  call_sliced('ZADD', K .. 'fin', d.fin)
  deferred = { cnt = { order = {} }, run = { order = {} }, ls = {}, fin = {} }
end

local function unindex(K, id, r)
  local s = r.state
  r.was = s
  if deferred and s == 'running' then
    deferred.ls[#deferred.ls + 1] = id
    defer_add(K, 'run', 'kind|' .. r.kind, -1)
    defer_add(K, 'run', 'queue|' .. r.queue, -1)
    defer_add(K, 'cnt', 'running|' .. r.queue, -1)
    return
  end
  if s == 'ready' then
    redis.call('ZREM', rkey(K, r.queue, r.kind), id)
    if r.budget_id then redis.call('HINCRBY', K .. 'bready', r.budget_id, -1) end
  elseif s == 'scheduled' then
    redis.call('ZREM', K .. 'sch', id)
  elseif s == 'running' then
    redis.call('ZREM', K .. 'ls', id)
    redis.call('HINCRBY', K .. 'run', 'kind|' .. r.kind, -1)
    redis.call('HINCRBY', K .. 'run', 'queue|' .. r.queue, -1)
  end
  local f = s .. '|' .. r.queue
  if redis.call('HINCRBY', K .. 'cnt', f, -1) <= 0 then redis.call('HDEL', K .. 'cnt', f) end
end

local function index(K, id, r)
  local s = r.state
  if s == 'ready' then
    local score = -tonumber(r.priority) * PRIO + tonumber(r.seq)
    redis.call('ZADD', rkey(K, r.queue, r.kind), score, id)
    local qk = #r.queue .. ':' .. r.queue .. r.kind
    if not kinds_added[qk] then -- once per queue and kind a call (the set only grows)
      kinds_added[qk] = true
      redis.call('SADD', K .. 'rqk:' .. r.queue, r.kind)
    end
    if r.budget_id then redis.call('HINCRBY', K .. 'bready', r.budget_id, 1) end
    mark(K, r.queue)
  elseif s == 'scheduled' then
    redis.call('ZADD', K .. 'sch', r.run_at, id)
    redis.call('ZADD', mkey(K, r.queue), 'LT', r.run_at, 'd')
  elseif s == 'running' then
    flush_deferred(K) -- (never in a finish: a task it removed from `ls` comes back)
    redis.call('ZADD', K .. 'ls', r.lease_expires_at, id)
    redis.call('HINCRBY', K .. 'run', 'kind|' .. r.kind, 1)
    redis.call('HINCRBY', K .. 'run', 'queue|' .. r.queue, 1)
  end
  if deferred and s ~= 'running' and (s ~= 'ready' or deferred.ready_too) then
    defer_add(K, 'cnt', s .. '|' .. r.queue, 1)
  else
    redis.call('HINCRBY', K .. 'cnt', s .. '|' .. r.queue, 1)
  end
  if r.was == 'suspended' and s ~= 'suspended' then
    -- left `suspended` by any write (cancel, cascade): its open suspension ends with it
    local sp = K .. 'sp:' .. id
    if redis.call('HGET', sp, 'open') == '1' then
      redis.call('HSET', sp, 'open', '0', 'resolution', s)
    end
    redis.call('ZREM', K .. 'spd', id)
  end
  r.was = nil
end

local function event(K, id, kind, state, at, detail)
  local n = redis.call('INCR', K .. 'evn')
  if detail then
    redis.call('XADD', K .. 'ev', n .. '-1', 't', id, 'k', kind, 's', state, 'a', at, 'd', detail)
  else
    redis.call('XADD', K .. 'ev', n .. '-1', 't', id, 'k', kind, 's', state, 'a', at)
  end
  return n
end

local woke = {}
local function wake(K, which)
  if woke[which] then return end
  woke[which] = true
  redis.call('XADD', K .. which, 'MAXLEN', '~', '64', '*', 'w', '1')
  if which == 'ww' and next(marked) == nil then mark_all(K) end
end

local dag_queue, draining = {}, false
-- finish counts the children that completed into their parents once per parent, at the end
-- of the call (`parents_flush`), not once per child; a failed child still counts at once
local parents_due, parents_order = nil, nil
-- fm_insert_many checks each fence once per call (inserts do not change the fencing task)
local fences_seen = nil
local function reset_wakes()
  woke = {}
  marked = {}
  kinds_added = {}
  deferred = nil
  dag_queue, draining = {}, false
  parents_due, parents_order = nil, nil
  fences_seen = nil
end

-- endings shared by every path to a terminal state ---------------------------------------

local children_ended -- forward
local cancelled_tasks -- forward
local dag_ended -- forward

-- the result row's fields, for a caller that writes them with the task's own (`evl`: the
-- last event of the task, the one its ending just added)
local function result_fields(fields, state, result, err, evl)
  fields.res_state = state
  fields.result = result or false
  fields.res_error = err or false
  fields.evl = evl
  return fields
end

local function ended(K, id, r, state, result, err, now, quiet_parent, written)
  -- the result row, the dedup key freed, the ttl index, the wake-up, the parent counted;
  -- `written`: the caller wrote the result row already (with result_fields)
  if not written then
    set(K, id, result_fields({}, state, result, err, redis.call('GET', K .. 'evn')))
  end
  if deferred then
    deferred.fin[#deferred.fin + 1] = now
    deferred.fin[#deferred.fin + 1] = id
  else
    redis.call('ZADD', K .. 'fin', now, id)
  end
  if r.dedup_key then
    local f = dfield(r.kind, r.dedup_key)
    if redis.call('HGET', K .. 'dd', f) == id then redis.call('HDEL', K .. 'dd', f) end
  end
  if r.expires_at then redis.call('ZREM', K .. 'ttl', id) end -- only a ttl indexes it
  wake(K, 'wf')
  if r.parent_id and not quiet_parent then
    if parents_due and not CHILD_FAILURES[state] then
      local kids = group_of(parents_due, parents_order, r.parent_id)
      kids[#kids + 1] = { id, state }
    else
      children_ended(K, r.parent_id, { { id, state } }, now)
    end
  end
  if r.has_dependents == '1' then dag_ended(K, id, state, now) end
end

local function parents_flush(K, now)
  local due, order = parents_due, parents_order
  parents_due, parents_order = nil, nil
  for _, pid in ipairs(order or {}) do children_ended(K, pid, due[pid], now) end
end

local function hook_due(K, id, r)
  if r.has_on_cancel == '1' then
    set(K, id, { hook = 'on_cancel' })
    redis.call('ZADD', K .. 'hk', r.seq, id)
  end
end

-- a task that is not running ends now (cancel, fail_fast, ttl)
local function end_waiting(K, id, r, state, err, now, detail, quiet_parent)
  unindex(K, id, r)
  r.state = state
  set(K, id, {
    state = state, error = err or false, updated_at = now, finished_at = now,
    lease_owner = false, lease_expires_at = false,
  })
  index(K, id, r)
  event(K, id, r.kind, state, now, detail)
  ended(K, id, r, state, nil, err, now, quiet_parent)
end

-- children ---------------------------------------------------------------------------------

local function error_message(err)
  if not err then return nil end
  local ok, e = pcall(cjson.decode, err)
  if ok and type(e) == 'table' and type(e.message) == 'string' then return e.message end
  return nil
end

local function child_failed_error(cid, state, err)
  local msg = error_message(err)
  local text = 'child ' .. cid .. ' ended ' .. state
  if msg then text = text .. ': ' .. msg end
  return cjson.encode({ type = 'ChildFailed', message = text, category = 'child_failed' })
end

-- the first child to fail (by end time, then spawn order), for a parent that waits late
local function first_failure(K, parent_id)
  local best, best_at, best_seq = nil, nil, nil
  local kids = redis.call('ZRANGE', K .. 'ch:' .. parent_id, 0, -1, 'WITHSCORES')
  for j = 1, #kids, 2 do
    local c = redis.call('HMGET', tkey(K, kids[j]), 'state', 'error', 'finished_at')
    if CHILD_FAILURES[c[1]] then
      local at, seq = tonumber(c[3]) or 0, tonumber(kids[j + 1])
      if not best or at < best_at or (at == best_at and seq < best_seq) then
        best, best_at, best_seq = { kids[j], c[1], c[2] }, at, seq
      end
    end
  end
  if not best then
    return '{"type":"ChildFailed","message":"a child task failed","category":"child_failed"}'
  end
  return child_failed_error(best[1], best[2], best[3])
end

local STOPPABLE = {
  scheduled = true, blocked = true, ready = true, waiting_children = true, suspended = true,
}

-- cancel every task below `roots` that has not ended; running ones are asked to stop
local function cancel_descendants(K, roots, reason, now)
  local err = cjson.encode({ type = 'Cancelled', message = reason, category = 'cancelled' })
  local stack = {}
  for _, id in ipairs(roots) do stack[#stack + 1] = id end
  while #stack > 0 do
    local pid = table.remove(stack)
    local kids = redis.call('ZRANGE', K .. 'ch:' .. pid, 0, -1)
    local stopped = 0
    for _, cid in ipairs(kids) do
      local c = load(K, cid)
      if c then
        if tonumber(c.children_active or 0) > 0 then stack[#stack + 1] = cid end
        if STOPPABLE[c.state] then
          end_waiting(K, cid, c, 'cancelled', err, now, reason, true)
          hook_due(K, cid, c)
          stopped = stopped + 1
        elseif c.state == 'running' then
          set(K, cid, { cancel_requested = '1', updated_at = now })
          wake(K, 'wf')
        end
      end
    end
    if stopped > 0 then redis.call('HINCRBY', tkey(K, pid), 'children_active', -stopped) end
  end
end

cancelled_tasks = function(K, ids, reason, now)
  for _, id in ipairs(ids) do
    local v = redis.call('HMGET', tkey(K, id), 'has_on_cancel', 'seq')
    hook_due(K, id, { has_on_cancel = v[1], seq = v[2] })
  end
  cancel_descendants(K, ids, reason, now)
end

local function fail_parent(K, id, r, err, now)
  end_waiting(K, id, r, 'failed', err, now, 'child_failed')
  hook_due(K, id, r)
  cancel_descendants(K, { id }, 'parent ' .. id .. ' failed', now)
end

local function ready_for_finalize(K, id, r, now)
  -- finalize gets an attempt budget of its own: execute's attempts are spent already
  unindex(K, id, r)
  r.state = 'ready'
  set(K, id, { state = 'ready', phase = 'finalize', attempts = 0, updated_at = now })
  index(K, id, r)
  event(K, id, r.kind, 'ready', now, 'children done: finalize')
  wake(K, 'ww')
end

children_ended = function(K, parent_id, kids, now)
  local failed = {}
  for _, k in ipairs(kids) do if CHILD_FAILURES[k[2]] then failed[#failed + 1] = k end end
  local pk = tkey(K, parent_id)
  if redis.call('EXISTS', pk) == 0 then return end
  redis.call('HINCRBY', pk, 'children_active', -#kids)
  if #failed > 0 then redis.call('HINCRBY', pk, 'children_failed', #failed) end
  redis.call('HSET', pk, 'updated_at', now)
  local p = load(K, parent_id)
  if p.state ~= 'waiting_children' then return end -- still in execute, or ended
  if #failed > 0 and p.fail_fast == '1' then
    local first = failed[1]
    local cerr = redis.call('HGET', tkey(K, first[1]), 'error')
    fail_parent(K, parent_id, p, child_failed_error(first[1], first[2], cerr), now)
  elseif tonumber(p.children_active) <= 0 then
    ready_for_finalize(K, parent_id, p, now)
  end
end

local function wait_children(keys, args)
  reset_wakes()
  local K = keys[1]
  local p = params(args[1])
  local now = clock(p.now)
  local id = p.id
  local r = load(K, id)
  if not r or r.state ~= 'running' or tonumber(r.lease_epoch) ~= p.epoch
    or not same_lease(r.lease_id, r.attempts, p.lease) then
    return reply({ err = 'lease', id = id, epoch = p.epoch })
  end
  set(K, id, {
    memo = args[p.memo], lease_owner = false, lease_expires_at = false,
    last_finish = 'waiting_children', updated_at = now,
  })
  if r.cancel_requested == '1' then
    -- cancelled while execute ran: parking it would lose the request, so the cancel wins
    end_waiting(K, id, r, 'cancelled', CANCEL_ON_WAIT, now, error_message(CANCEL_ON_WAIT))
    hook_due(K, id, r)
    cancel_descendants(K, { id }, error_message(CANCEL_ON_WAIT), now)
    return reply({ state = 'cancelled' })
  end
  if tonumber(r.children_failed) > 0 and r.fail_fast == '1' then
    fail_parent(K, id, r, first_failure(K, id), now)
    return reply({ state = 'failed' })
  end
  local active = tonumber(r.children_active)
  if active <= 0 then
    ready_for_finalize(K, id, r, now)
    return reply({ state = 'ready' })
  end
  unindex(K, id, r)
  r.state = 'waiting_children'
  set(K, id, { state = 'waiting_children', phase = 'finalize' })
  index(K, id, r)
  event(K, id, r.kind, 'waiting_children', now, active .. ' children')
  return reply({ state = 'waiting_children' })
end

local function children_page(keys, args)
  local K = keys[1]
  local p = params(args[1])
  local kinds, states = nil, nil
  if p.kinds then kinds = {}; for _, k in ipairs(p.kinds) do kinds[k] = true end end
  if p.states then states = {}; for _, s in ipairs(p.states) do states[s] = true end end
  local out = {}
  local after = '(' .. p.after
  local chunk = math.max(p.limit, 100)
  while #out < p.limit do
    local page = redis.call('ZRANGEBYSCORE', K .. 'ch:' .. p.parent, after, '+inf',
      'WITHSCORES', 'LIMIT', 0, chunk)
    if #page == 0 then break end
    for j = 1, #page, 2 do
      local v = redis.call('HMGET', tkey(K, page[j]), 'kind', 'state', 'result', 'error',
        'attempts')
      if (not kinds or kinds[v[1]]) and (not states or states[v[2]]) then
        out[#out + 1] = { tonumber(page[j + 1]), page[j], v[1], v[2], v[3], v[4],
          tonumber(v[5]) }
        if #out >= p.limit then break end
      end
      after = '(' .. page[j + 1]
    end
  end
  return out
end

-- one bounded slice of a parent's children (at most `limit`, after the score `after`):
-- the client adds the slices up, so a parent with 200k children never holds the server in
-- one call. Error groups come in the order first seen, their examples in child order.
local function children_summary(keys, args)
  local K = keys[1]
  local p = params(args[1])
  local by_state, groups, order = {}, {}, {}
  local total = 0
  -- a client of layout 5 names no `limit`: it gets every child, and the old reply
  local whole = p.limit == nil
  local limit = whole and 0 or math.min(math.max(tonumber(p.limit), 1), 1000)
  local after = p.after and ('(' .. p.after) or '-inf'
  local kids
  if whole then
    kids = redis.call('ZRANGEBYSCORE', K .. 'ch:' .. p.parent, '-inf', '+inf', 'WITHSCORES')
  else
    kids = redis.call('ZRANGEBYSCORE', K .. 'ch:' .. p.parent, after, '+inf',
      'WITHSCORES', 'LIMIT', 0, limit)
  end
  local last = false
  for j = 1, #kids, 2 do
    local cid = kids[j]
    last = kids[j + 1]
    local v = redis.call('HMGET', tkey(K, cid), 'state', 'error')
    if v[1] then
      total = total + 1
      by_state[v[1]] = (by_state[v[1]] or 0) + 1
      if CHILD_FAILURES[v[1]] and v[2] then
        local m = error_message(v[2]) or ''
        local g = groups[m]
        if not g then
          g = { m, 0, {} }
          groups[m] = g
          order[#order + 1] = g
        end
        g[2] = g[2] + 1
        if #g[3] < p.examples then g[3][#g[3] + 1] = cid end
      end
    end
  end
  if whole then
    table.sort(order, function(a, b)
      if a[2] ~= b[2] then return a[2] > b[2] end
      return a[1] < b[1]
    end)
    local top = {}
    for i = 1, math.min(p.top, #order) do top[i] = order[i] end
    return reply({ total = total, by_state = by_state, top = top })
  end
  local more = #kids >= limit * 2
  return reply({ total = total, by_state = by_state, groups = order,
    after = more and last or false })
end

local function hooks_claim(keys, args)
  local K = keys[1]
  local p = params(args[1])
  local now = clock(p.now)
  local kinds = {}
  for _, k in ipairs(p.kinds) do kinds[k] = true end
  local out = {}
  local ids = redis.call('ZRANGE', K .. 'hk', 0, -1)
  for _, id in ipairs(ids) do
    if #out >= p.limit then break end
    local r = load(K, id)
    if r and r.hook and kinds[r.kind]
      and (not r.lease_expires_at or tonumber(r.lease_expires_at) < now) then
      local epoch = tonumber(r.lease_epoch) + 1
      local attempts = tonumber(r.hook_attempts or 0) + 1
      local lid = p.lid and (p.lid .. ':' .. (#out + 1)) or false
      set(K, id, {
        lease_epoch = epoch, lease_owner = p.worker, lease_expires_at = now + p.ttl,
        hook_attempts = attempts, lease_id = lid,
      })
      out[#out + 1] = { id, r.kind, r.hook, r.payload, r.memo or false, r.state, epoch, attempts }
    end
  end
  return out
end

local function hook_done(keys, args)
  local K = keys[1]
  local p = params(args[1])
  local now = clock(p.now)
  local v = redis.call('HMGET', tkey(K, p.id), 'lease_epoch', 'hook', 'hook_attempts',
    'lease_id')
  if not v[2] or tonumber(v[1]) ~= p.epoch or not same_lease(v[4], v[3], p.lease) then
    return reply({ err = 'lease', id = p.id, epoch = p.epoch })
  end
  local fields = { lease_owner = false, lease_expires_at = false, updated_at = now }
  if p.ok or tonumber(v[3] or 0) >= p.max_attempts then
    fields.hook = false
    redis.call('ZREM', K .. 'hk', p.id)
  end
  set(K, p.id, fields)
  return reply({})
end


-- dependencies (DAG) -----------------------------------------------------------------------
-- Edges: `dno:<up>` holds the dependents whose edge from <up> is still open; `up:<down>`
-- lists <down>'s upstreams in the order given. The operation that ends an upstream
-- resolves its dependents in the same call (push), iteratively: a skip-cascade has no
-- depth limit.

local UPSTREAM_FAILURES = { failed = true, dead_lettered = true, cancelled = true, expired = true }

local function first_bad_upstream(K, id, failures_only)
  for _, up in ipairs(redis.call('LRANGE', K .. 'up:' .. id, 0, -1)) do
    local v = redis.call('HMGET', tkey(K, up), 'state', 'node')
    local bad = v[1] ~= 'completed' and (
      (failures_only and UPSTREAM_FAILURES[v[1]]) or (not failures_only and TERMINAL[v[1]]))
    if bad then
      local name = up
      if v[2] then name = "'" .. v[2] .. "'" end
      if v[1] == 'failed' then return name .. ' failed' end
      return name .. ' ended ' .. v[1]
    end
  end
  return 'did not complete'
end

local function decide(K, id, now)
  local r = load(K, id)
  local failed, skipped = tonumber(r.deps_failed or 0), tonumber(r.deps_skipped or 0)
  if r.upstream_policy == 'run' or (failed == 0 and skipped == 0) then
    unindex(K, id, r)
    r.state = 'ready'
    set(K, id, { state = 'ready', updated_at = now })
    index(K, id, r)
    event(K, id, r.kind, 'ready', now, 'dependencies done')
    wake(K, 'ww')
    return
  end
  local culprit = first_bad_upstream(K, id, failed > 0)
  local target, err
  if failed > 0 and r.upstream_policy == 'fail' then
    target = 'failed'
    err = cjson.encode({ type = 'UpstreamFailed', message = 'upstream ' .. culprit,
      category = 'upstream_failed' })
  else
    target = 'skipped'
    err = cjson.encode({ type = 'Skipped', message = 'skipped: upstream ' .. culprit,
      category = 'upstream_skipped' })
  end
  local category = target == 'failed' and 'upstream_failed' or 'upstream_skipped'
  end_waiting(K, id, r, target, err, now, category)
end

local function resolve(K, up, state, now)
  local open = K .. 'dno:' .. up
  local downs = redis.call('HKEYS', open)
  if #downs == 0 then return 0 end
  redis.call('DEL', open)
  local failed = UPSTREAM_FAILURES[state] and 1 or 0
  local skipped = (state ~= 'completed' and failed == 0) and 1 or 0
  for _, down in ipairs(downs) do
    local dk = tkey(K, down)
    if redis.call('HGET', dk, 'state') == 'blocked' then
      local pending = redis.call('HINCRBY', dk, 'deps_pending', -1)
      if failed > 0 then redis.call('HINCRBY', dk, 'deps_failed', 1) end
      if skipped > 0 then redis.call('HINCRBY', dk, 'deps_skipped', 1) end
      if pending <= 0 then decide(K, down, now) end
    end
  end
  return #downs
end

dag_ended = function(K, id, state, now)
  dag_queue[#dag_queue + 1] = { id, state }
  if draining then return end
  draining = true
  local i = 1
  while i <= #dag_queue do
    resolve(K, dag_queue[i][1], dag_queue[i][2], now)
    i = i + 1
  end
  dag_queue, draining = {}, false
end

-- the edges of freshly inserted tasks; upstreams that ended already resolve at once
local function link(K, rows, remap, now)
  local ended = {}
  for _, row in ipairs(rows) do
    local t = row.t
    if t.deps and #t.deps > 0 then
      local seen, doubled = {}, 0
      for _, up in ipairs(t.deps) do
        up = remap[up] or up
        if seen[up] then
          doubled = doubled + 1
        else
          seen[up] = true
          redis.call('HSET', K .. 'dno:' .. up, row.id, '1')
          redis.call('SADD', K .. 'dn:' .. up, row.id)
          redis.call('RPUSH', K .. 'up:' .. row.id, up)
          local st = redis.call('HGET', tkey(K, up), 'state')
          redis.call('HSET', tkey(K, up), 'has_dependents', '1')
          if TERMINAL[st] and not ended[up] then
            ended[up] = true
            ended[#ended + 1] = { up, st }
          end
        end
      end
      if doubled > 0 then redis.call('HINCRBY', tkey(K, row.id), 'deps_pending', -doubled) end
    end
  end
  for _, e in ipairs(ended) do dag_ended(K, e[1], e[2], now) end
end

local function upstream_get(keys, args)
  local K = keys[1]
  local p = params(args[1])
  local out = {}
  for i, up in ipairs(redis.call('LRANGE', K .. 'up:' .. p.id, 0, -1)) do
    local v = redis.call('HMGET', tkey(K, up), 'kind', 'node', 'state', 'result', 'error')
    out[i] = { up, v[1], v[2], v[3], v[4], v[5] }
  end
  return out
end

local function wf_counts(K, wf)
  local counts = {}
  for _, id in ipairs(redis.call('ZRANGE', K .. 'wfn:' .. wf, 0, -1)) do
    local st = redis.call('HGET', tkey(K, id), 'state')
    if st then counts[#counts + 1] = st end
  end
  return counts
end

local function workflow_get(keys, args)
  local K = keys[1]
  local p = params(args[1])
  local v = redis.call('HMGET', K .. 'wf:' .. p.id, 'name', 'created_at', 'nodes')
  if not v[1] then return {} end
  local nodes = {}
  if p.nodes then
    for i, id in ipairs(redis.call('ZRANGE', K .. 'wfn:' .. p.id, 0, -1)) do
      local t = redis.call('HMGET', tkey(K, id), 'node', 'kind', 'state', 'attempts', 'result',
        'error', 'created_at', 'started_at', 'finished_at')
      local ups = {}
      for j, up in ipairs(redis.call('LRANGE', K .. 'up:' .. id, 0, -1)) do
        ups[j] = redis.call('HGET', tkey(K, up), 'node') or up
      end
      nodes[i] = { id, t[1] or id, t[2], t[3], tonumber(t[4]), ups, t[5], t[6],
        tonumber(t[7]), t[8] and tonumber(t[8]) or false, t[9] and tonumber(t[9]) or false }
    end
  end
  return { { p.id, v[1], tonumber(v[2]), tonumber(v[3]), wf_counts(K, p.id) }, nodes }
end

local function workflows_list(keys, args)
  local K = keys[1]
  local p = params(args[1])
  local out = {}
  local offset, chunk = 0, math.max(p.limit, 50)
  while #out < p.limit do
    local ids = redis.call('ZREVRANGE', K .. 'wfs', offset, offset + chunk - 1)
    if #ids == 0 then break end
    for _, id in ipairs(ids) do
      local v = redis.call('HMGET', K .. 'wf:' .. id, 'name', 'created_at', 'nodes')
      if not p.name or p.name == v[1] then
        out[#out + 1] = { id, v[1], tonumber(v[2]), tonumber(v[3]), wf_counts(K, id) }
        if #out >= p.limit then break end
      end
    end
    offset = offset + chunk
  end
  return out
end

-- insert -------------------------------------------------------------------------------------

local function fence_ok(K, fence)
  if not fence then return true end
  local seen_key = nil
  if fences_seen then
    local lease = fence.lease
    seen_key = fence.id .. ':' .. fence.epoch
    if lease then seen_key = seen_key .. ':' .. lease[1] .. ':' .. lease[2] end
    if fences_seen[seen_key] then return true end
  end
  local r = redis.call('HMGET', tkey(K, fence.id), 'state', 'lease_epoch', 'lease_id',
    'attempts')
  local ok = r[1] == 'running' and tonumber(r[2]) == fence.epoch
    and same_lease(r[3], r[4], fence.lease)
  if ok and seen_key then fences_seen[seen_key] = true end
  return ok
end

-- Insert p.tasks (blobs in args). Returns the outcomes, or nil and an error map; on an
-- error nothing has been written (the whole batch is planned and checked first).
local function insert_tasks(K, p, now, args)
  local mode = p.mode
  if not fence_ok(K, p.fence) then
    return nil, { err = 'lease', id = p.fence.id, epoch = p.fence.epoch }
  end
  local checked = {}
  for _, t in ipairs(p.tasks) do
    if t.parent and not checked[t.parent] then
      checked[t.parent] = true
      local st = redis.call('HGET', tkey(K, t.parent), 'state')
      if not st or TERMINAL[st] then
        return nil, { err = 'parent', id = t.parent, state = st or nil }
      end
    end
  end
  -- plan: nothing is written until the whole batch is known to go in
  local outcomes, rows, replaced = {}, {}, {}
  local batch_keys, child_keys, ids = {}, {}, {}
  for i, t in ipairs(p.tasks) do
    local run_at = t.run_at
    if t.delay then run_at = now + t.delay end
    local state = 'ready'
    if run_at and run_at > now then state = 'scheduled' end
    if t.deps and #t.deps > 0 then state = 'blocked' end
    local expires = nil
    if t.ttl then expires = now + t.ttl end
    local row = { t = t, id = t.id, state = state, run_at = run_at, expires = expires }
    local done = false
    if t.child_key and t.parent then
      local ck = #t.parent .. ':' .. t.parent .. t.child_key
      local holder = child_keys[ck] or redis.call('HGET', K .. 'ck', ck)
      if holder then
        outcomes[i] = { holder, 'skipped' }
        done = true
      else
        child_keys[ck] = t.id
        row.ck = ck
      end
    end
    if not done and t.key then
      local f = dfield(t.kind, t.key)
      local at = batch_keys[f]
      if at then
        local first = rows[at].id
        if mode == 'reject' then return nil, { err = 'dup', key = t.key, id = first } end
        if mode == 'replace' then
          row.id = first
          row.ck = rows[at].ck
          rows[at] = row
          outcomes[i] = { first, 'replaced' }
        else
          outcomes[i] = { first, 'skipped' }
        end
        done = true
      else
        local holder = redis.call('HGET', K .. 'dd', f)
        if holder then
          if mode == 'reject' then return nil, { err = 'dup', key = t.key, id = holder } end
          local hstate = redis.call('HGET', tkey(K, holder), 'state')
          if mode == 'replace' and REPLACEABLE[hstate] then
            replaced[#replaced + 1] = { holder, row }
            outcomes[i] = { holder, 'replaced' }
          else
            outcomes[i] = { holder, 'skipped' }
          end
          done = true
        else
          batch_keys[f] = #rows + 1
          row.dkey = f
        end
      end
    end
    if not done then
      if ids[t.id] or redis.call('EXISTS', tkey(K, t.id)) == 1 then
        return nil, { err = 'exists', id = t.id }
      end
      ids[t.id] = true
      rows[#rows + 1] = row
      outcomes[i] = { t.id, 'inserted' }
    end
  end
  -- every upstream named must exist, in this batch or stored
  local remap = {}
  for i, t in ipairs(p.tasks) do
    if outcomes[i][1] ~= t.id then remap[t.id] = outcomes[i][1] end
  end
  for _, row in ipairs(rows) do
    for _, up in ipairs(row.t.deps or {}) do
      up = remap[up] or up
      if not ids[up] and redis.call('EXISTS', tkey(K, up)) == 0 then
        return nil, { err = 'notfound', id = up }
      end
    end
  end
  -- apply
  local any_ready = false
  local grown = {}
  -- the rows' sequence and event numbers are taken at once (nothing else takes any while
  -- the loop runs), their `all` and `ch:<parent>` entries and counters written after it
  local n_rows = #rows
  local seq_last, ev_last = 0, 0
  if n_rows > 0 then
    seq_last = redis.call('INCRBY', K .. 'seq', n_rows)
    ev_last = redis.call('INCRBY', K .. 'evn', n_rows)
  end
  local all, kids, kids_order = {}, {}, {}
  deferred = { cnt = { order = {} }, run = { order = {} }, ls = {}, fin = {}, ready_too = true }
  for i, row in ipairs(rows) do
    local t, id = row.t, row.id
    local seq = seq_last - n_rows + i
    local r = {
      id = id, seq = seq, kind = t.kind, queue = t.queue, priority = t.priority,
      state = row.state, phase = 'execute', attempts = 0, max_attempts = t.max_attempts,
      payload = args[t.payload], retry_policy = args[t.retry_policy], lease_epoch = 0,
      cancel_requested = '0', created_at = now, updated_at = now,
      fail_fast = t.fail_fast and '1' or '0', has_on_cancel = t.has_on_cancel and '1' or '0',
      children_active = 0, children_failed = 0, children_total = 0,
      run_at = row.run_at or false, expires_at = row.expires or false,
      dedup_key = t.key or false, parent_id = t.parent or false, tags = t.tags or false,
      timeout_ms = t.timeout or false, child_key = t.child_key or false,
      budget_id = t.budget or false,
      deps_pending = t.deps and #t.deps or false,
      upstream_policy = t.policy or false, condition = t.condition or false,
      workflow_id = t.workflow_id or false, node = t.node or false,
    }
    local ev = ev_last - n_rows + i
    redis.call('XADD', K .. 'ev', ev .. '-1', 't', id, 'k', t.kind, 's', row.state, 'a', now)
    r.ev0 = ev
    -- a fresh hash: nothing to delete (the false fields are left out)
    local put = {}
    for k, v in pairs(r) do
      if v == false then
        r[k] = nil
      else
        put[#put + 1] = k
        put[#put + 1] = v
      end
    end
    redis.call('HSET', tkey(K, id), unpack(put))
    if t.workflow_id then redis.call('ZADD', K .. 'wfn:' .. t.workflow_id, seq, id) end
    all[#all + 1] = seq
    all[#all + 1] = id
    index(K, id, r)
    if row.expires then redis.call('ZADD', K .. 'ttl', row.expires, id) end
    if row.dkey then redis.call('HSET', K .. 'dd', row.dkey, id) end
    if row.ck then redis.call('HSET', K .. 'ck', row.ck, id) end
    if t.parent then
      grown[t.parent] = (grown[t.parent] or 0) + 1
      local ch = group_of(kids, kids_order, t.parent)
      ch[#ch + 1] = seq
      ch[#ch + 1] = id
    end
    any_ready = any_ready or row.state == 'ready'
  end
  call_sliced('ZADD', K .. 'all', all)
  for _, pid in ipairs(kids_order) do call_sliced('ZADD', K .. 'ch:' .. pid, kids[pid]) end
  flush_deferred(K)
  deferred = nil
  if p.workflow then
    local n = 0
    for _, row in ipairs(rows) do if row.t.workflow_id == p.workflow.id then n = n + 1 end end
    redis.call('HSET', K .. 'wf:' .. p.workflow.id, 'name', p.workflow.name, 'created_at', now,
      'nodes', n)
    redis.call('ZADD', K .. 'wfs', now, p.workflow.id)
  end
  link(K, rows, remap, now)
  for pid, n in pairs(grown) do
    redis.call('HINCRBY', tkey(K, pid), 'children_active', n)
    redis.call('HINCRBY', tkey(K, pid), 'children_total', n)
    redis.call('HSET', tkey(K, pid), 'updated_at', now)
  end
  for _, rep in ipairs(replaced) do
    local id, row = rep[1], rep[2]
    local t = row.t
    local r = load(K, id)
    unindex(K, id, r)
    local state = row.state
    if r.state == 'blocked' then state = 'blocked' end
    r.queue, r.priority, r.state, r.run_at = t.queue, t.priority, state, row.run_at
    r.budget_id = t.budget
    set(K, id, {
      payload = args[t.payload], queue = t.queue, priority = t.priority, state = state,
      tags = t.tags or false, max_attempts = t.max_attempts, retry_policy = args[t.retry_policy],
      timeout_ms = t.timeout or false, run_at = row.run_at or false,
      expires_at = row.expires or false, budget_id = t.budget or false, updated_at = now,
    })
    index(K, id, r)
    if row.expires then
      redis.call('ZADD', K .. 'ttl', row.expires, id)
    else
      redis.call('ZREM', K .. 'ttl', id)
    end
    event(K, id, t.kind, state, now, 'replaced')
    any_ready = any_ready or state == 'ready'
  end
  if any_ready then wake(K, 'ww') end
  return outcomes
end

local function insert(keys, args)
  reset_wakes()
  local K = keys[1]
  local p = params(args[1])
  local outcomes, err = insert_tasks(K, p, clock(p.now), args)
  if not outcomes then return reply(err) end
  return reply({ out = outcomes })
end

-- Several inserts in one call (the store sends concurrent callers' inserts together):
-- p.groups are fm_insert's maps (their blobs numbered in this call's args), each applied
-- in order as if called alone; the reply has one `{ out = outcomes }` or error map each.
local function insert_many(keys, args)
  reset_wakes()
  local K = keys[1]
  local p = params(args[1])
  local server_now = nil
  local out = {}
  fences_seen = {}
  for i, g in ipairs(p.groups) do
    local now = g.now
    if now == nil then
      server_now = server_now or clock(nil)
      now = server_now
    end
    local outcomes, err = insert_tasks(K, g, now, args)
    if outcomes then out[i] = { out = outcomes } else out[i] = err end
  end
  return reply({ out = out })
end

-- claim, renew, progress ------------------------------------------------------------------

-- concurrency caps and rate limits: running counts per kind/queue, token buckets
local function build_slots(K, limits, now)
  local slots = {}
  for _, l in ipairs(limits or {}) do
    local key = l.scope .. '|' .. l.name
    local s = { limit = l, running = tonumber(redis.call('HGET', K .. 'run', key) or 0) }
    if l.per_second then
      local burst = l.burst or math.max(1, math.ceil(l.per_second))
      local tokens, at = burst, now
      local v = redis.call('HGET', K .. 'tb', key)
      if v then
        local a, b = string.match(v, '^([^:]+):(.+)$')
        tokens, at = tonumber(a), tonumber(b)
      end
      s.tokens = math.min(burst, tokens + math.max(0, now - at) * l.per_second / 1000)
      s.refilled_at = math.max(at, now)
    end
    slots[key] = s
  end
  return slots
end

local function room(s)
  local out = math.huge
  if s.limit.max_running then out = math.min(out, s.limit.max_running - s.running) end
  if s.tokens then out = math.min(out, math.floor(s.tokens + 1e-9)) end
  return out
end

local function slot_take(slots, kind, queue)
  local a, b = slots['kind|' .. kind], slots['queue|' .. queue]
  if (a and room(a) <= 0) or (b and room(b) <= 0) then return false end
  for _, s in ipairs({ a or false, b or false }) do
    if s then
      s.running = s.running + 1
      if s.tokens then s.tokens = s.tokens - 1 end
    end
  end
  return true
end

-- a budget hard-breached in its current window holds its ready tasks back
local function budget_held(K, bid, now, cache)
  local held = cache[bid]
  if held == nil then
    local b = redis.call('HMGET', K .. 'b:' .. bid, 'breached', 'reset_every', 'window_start')
    held = b[1] ~= false and (not b[2] or now < tonumber(b[3]) + tonumber(b[2]))
    cache[bid] = held
  end
  return held
end

local function claimable(K, id, now, cache)
  local v = redis.call('HMGET', tkey(K, id), 'expires_at', 'started_at', 'budget_id')
  if v[1] and tonumber(v[1]) <= now and not v[2] then return false end
  return not (v[3] and budget_held(K, v[3], now, cache))
end

-- what a claim reads of a chosen task (its reply row, and its indexes)
local CLAIM_FIELDS = {
  'state', 'kind', 'queue', 'priority', 'payload', 'phase', 'memo', 'attempts',
  'max_attempts', 'retry_policy', 'timeout_ms', 'lease_epoch', 'parent_id', 'condition',
  'workflow_id', 'expires_at', 'budget_id', 'last_finish', 'lease_id',
}

local function claim(keys, args)
  reset_wakes()
  local K = keys[1]
  local p = params(args[1])
  local now = clock(p.now)
  local limit = p.limit
  local slots = build_slots(K, p.limits, now)
  local cands, held_cache = {}, {}
  local paused = {}
  for _, q in ipairs(p.queues) do
    if redis.call('HGET', K .. 'qp', q) == '1' then paused[q] = true end
  end
  for _, q in ipairs(p.queues) do
    local qs = slots['queue|' .. q]
    for _, k in ipairs(paused[q] and {} or p.kinds) do
      local ks = slots['kind|' .. k]
      local key = rkey(K, q, k)
      local offset, got = 0, 0
      local chunk = math.max(limit, 16)
      if (qs and room(qs) <= 0) or (ks and room(ks) <= 0) then got = limit end
      while got < limit do
        local page = redis.call('ZRANGE', key, offset, offset + chunk - 1, 'WITHSCORES')
        if #page == 0 then break end
        for j = 1, #page, 2 do
          if claimable(K, page[j], now, held_cache) then
            cands[#cands + 1] = { page[j], tonumber(page[j + 1]), q, k }
            got = got + 1
            if got >= limit then break end
          end
        end
        offset = offset + chunk
      end
    end
  end
  table.sort(cands, function(a, b) return a[2] < b[2] end)
  local chosen = {}
  for _, c in ipairs(cands) do
    if #chosen >= limit then break end
    if slot_take(slots, c[4], c[3]) then chosen[#chosen + 1] = c[1] end
  end
  local out = {}
  local expires = now + p.ttl
  -- the indexes of every chosen task move together (what unindex(ready) and
  -- index(running) do one task at a time): one ZREM per ready set, one ZADD of the lease
  -- set, the counters added up per queue and kind, the event numbers taken at once
  local by_set, set_order, per_queue, per_kind, leased = {}, {}, {}, {}, {}
  local ev_last = #chosen > 0 and redis.call('INCRBY', K .. 'evn', #chosen) or 0
  for i, id in ipairs(chosen) do
    local r = load_only(K, id, CLAIM_FIELDS)
    local rk = rkey(K, r.queue, r.kind)
    local ids = group_of(by_set, set_order, rk)
    ids[#ids + 1] = id
    if r.budget_id then redis.call('HINCRBY', K .. 'bready', r.budget_id, -1) end
    per_queue[r.queue] = (per_queue[r.queue] or 0) + 1
    per_kind[r.kind] = (per_kind[r.kind] or 0) + 1
    leased[#leased + 1] = expires
    leased[#leased + 1] = id
    r.state = 'running'
    r.lease_expires_at = expires
    local attempts = tonumber(r.attempts) + 1
    local epoch = tonumber(r.lease_epoch) + 1
    local lid = p.lid and (p.lid .. ':' .. i) or false
    local fields = {
      state = 'running', attempts = attempts, lease_epoch = epoch, lease_owner = p.worker,
      lease_expires_at = expires, cancel_requested = '0', started_at = now, updated_at = now,
      -- a prefetch (start=false) is marked started by a renewal before its handler runs
      lease_started = p.start == false and '0' or '1',
    }
    -- a field the task does not have is not deleted (no HDEL on a first claim)
    if lid then fields.lease_id = lid elseif r.lease_id then fields.lease_id = false end
    if r.last_finish then fields.last_finish = false end
    set(K, id, fields)
    if r.expires_at then redis.call('ZREM', K .. 'ttl', id) end
    local n = ev_last - #chosen + i
    redis.call('XADD', K .. 'ev', n .. '-1', 't', id, 'k', r.kind, 's', 'running', 'a', now,
      'd', p.worker)
    out[#out + 1] = {
      id, r.kind, r.queue, tonumber(r.priority), r.payload, r.phase, r.memo or false,
      attempts, tonumber(r.max_attempts), r.retry_policy,
      r.timeout_ms and tonumber(r.timeout_ms) or false, epoch, expires,
      r.parent_id or false, r.condition or false, r.workflow_id or false,
    }
  end
  for _, rk in ipairs(set_order) do call_sliced('ZREM', rk, by_set[rk]) end
  call_sliced('ZADD', K .. 'ls', leased)
  for q, n in pairs(per_queue) do
    local f = 'ready|' .. q
    if redis.call('HINCRBY', K .. 'cnt', f, -n) <= 0 then redis.call('HDEL', K .. 'cnt', f) end
    redis.call('HINCRBY', K .. 'cnt', 'running|' .. q, n)
    redis.call('HINCRBY', K .. 'run', 'queue|' .. q, n)
  end
  for k, n in pairs(per_kind) do redis.call('HINCRBY', K .. 'run', 'kind|' .. k, n) end
  if limit > 0 then
    -- work left behind: a full claim may have left more, a short one tasks of kinds it does
    -- not serve (the marker that woke it may have been theirs) or held ones; the next
    -- waiter looks too
    for _, q in ipairs(p.queues) do
      if not paused[q] and (tonumber(redis.call('HGET', K .. 'cnt', 'ready|' .. q)) or 0) > 0 then
        mark(K, q)
      end
    end
  end
  local retry_in, held = false, 0
  for key, s in pairs(slots) do
    if s.tokens then
      redis.call('HSET', K .. 'tb', key, string.format('%.17g:%d', s.tokens, s.refilled_at))
    end
    if #out < limit then
      if s.tokens and s.tokens < 1 - 1e-9 then
        local w = math.max(1, math.ceil((1 - s.tokens) * 1000 / s.limit.per_second))
        if not retry_in or w < retry_in then retry_in = w end
      end
      if s.limit.max_running and s.running >= s.limit.max_running then held = 1 end
    end
  end
  return { out, retry_in, held }
end

local function renew(keys, args)
  local K = keys[1]
  local p = params(args[1])
  local now = clock(p.now)
  local expires = now + p.ttl
  local out = {}
  for i, l in ipairs(p.leases) do
    local v = redis.call('HMGET', tkey(K, l[1]), 'state', 'lease_epoch', 'cancel_requested',
      'lease_id', 'attempts')
    if v[1] == 'running' and tonumber(v[2]) == l[2] and same_lease(v[4], v[5], l[3]) then
      -- valid until reclaimed: a lease past its time that the reaper has not taken is kept
      if p.start then
        redis.call('HSET', tkey(K, l[1]), 'lease_expires_at', expires, 'lease_started', '1')
      else
        redis.call('HSET', tkey(K, l[1]), 'lease_expires_at', expires)
      end
      redis.call('ZADD', K .. 'ls', expires, l[1])
      out[i] = { 1, v[3] == '1' and 1 or 0, expires }
    else
      out[i] = { 0, 0, -1 }
    end
  end
  return reply({ out = out })
end

local function progress(keys, args)
  local K = keys[1]
  local p = params(args[1])
  local now = clock(p.now)
  local v = redis.call('HMGET', tkey(K, p.id), 'state', 'lease_epoch', 'kind', 'lease_id',
    'attempts')
  if v[1] ~= 'running' or tonumber(v[2]) ~= p.epoch or not same_lease(v[4], v[5], p.lease) then
    return reply({ err = 'lease', id = p.id, epoch = p.epoch })
  end
  set(K, p.id, { progress_pct = p.pct, progress_message = p.message or false, updated_at = now })
  event(K, p.id, v[3], 'running', now, p.detail)
  return reply({})
end

-- finish -------------------------------------------------------------------------------------

-- what a finish reads of a task: its lease, its indexes, and what its ending touches (the
-- dedup key, the ttl index, the parent, the dependents); never the payload or result
local FINISH_FIELDS = {
  'state', 'lease_epoch', 'lease_id', 'attempts', 'lease_expires_at', 'last_finish',
  'cancel_requested', 'kind', 'queue', 'priority', 'seq', 'budget_id', 'dedup_key',
  'expires_at', 'parent_id', 'has_dependents',
}

local function finish(keys, args)
  reset_wakes()
  local K = keys[1]
  local p = params(args[1])
  local now = clock(p.now)
  for _, f in ipairs(p.items) do
    if not FINISH_TARGETS[f.target] then
      return reply({ err = 'target', target = f.target })
    end
    if f.target == 'scheduled' and not f.delay and not f.run_at then
      return reply({ err = 'when' })
    end
  end
  local out = {}
  parents_due, parents_order = {}, {}
  deferred = { cnt = { order = {} }, run = { order = {} }, ls = {}, fin = {} }
  for i, f in ipairs(p.items) do
    local id = f.id
    local mark = f.target
    if f.expired then mark = mark .. ':reaped' end
    local r = load_only(K, id, FINISH_FIELDS)
    local epoch_ok = r and tonumber(r.lease_epoch) == f.epoch
    local ok = epoch_ok and r.state == 'running' and same_lease(r.lease_id, r.attempts, f.lease)
    if ok and f.expired then ok = tonumber(r.lease_expires_at) < now end
    if not ok then
      -- a repeat of the finish this lease applied (a release gave its attempt back: the
      -- lease id alone says it is the same lease)
      local again = epoch_ok and r.last_finish == mark
        and (not f.lease or not r.lease_id or r.lease_id == f.lease[2])
      if again then
        out[i] = { id, 'already', r.state }
      else
        out[i] = { id, 'lease_lost', r and r.state or nil }
      end
    else
      local target = f.target
      local run_at = nil
      if target == 'scheduled' then
        run_at = f.run_at
        if f.delay then run_at = now + f.delay end
      end
      local err = f.error
      local detail = f.category
      unindex(K, id, r)
      local fields = {
        state = target, last_finish = mark, lease_owner = false, lease_expires_at = false,
        run_at = run_at or false, updated_at = now,
        finished_at = TERMINAL[target] and now or false,
      }
      if target == 'completed' then
        fields.error = false
      elseif err then
        fields.error = err
      end
      if f.release then fields.attempts = tonumber(r.attempts) - 1 end
      if r.cancel_requested == '1' and not TERMINAL[target] then
        target, err, detail = 'cancelled', CANCELLED_ON_RETRY, 'cancel requested'
        fields.state, fields.error, fields.run_at, fields.finished_at = target, err, false, now
      end
      r.state, r.run_at = target, run_at
      -- the event first: an ending writes its number (`evl`) with the task's fields, in one
      -- HSET and one HDEL (the call is atomic: no reader sees the order)
      local n = event(K, id, r.kind, target, now, detail)
      local result = f.result and args[f.result]
      if TERMINAL[target] then result_fields(fields, target, result, err, n) end
      set(K, id, fields)
      index(K, id, r)
      if TERMINAL[target] then
        ended(K, id, r, target, result, err, now, false, true)
        if target == 'cancelled' then cancelled_tasks(K, { id }, 'parent cancelled', now) end
      elseif target == 'ready' then
        wake(K, 'ww')
      end
      out[i] = { id, 'applied', target }
    end
  end
  parents_flush(K, now)
  flush_deferred(K)
  deferred = nil
  return reply({ out = out })
end

-- maintenance --------------------------------------------------------------------------------

local function promote(keys, args)
  reset_wakes()
  local K = keys[1]
  local p = params(args[1])
  local now = clock(p.now)
  local ids = redis.call('ZRANGEBYSCORE', K .. 'sch', '-inf', now, 'LIMIT', 0, p.limit)
  for _, id in ipairs(ids) do
    local r = load(K, id)
    unindex(K, id, r)
    r.state = 'ready'
    set(K, id, { state = 'ready', updated_at = now })
    index(K, id, r)
    event(K, id, r.kind, 'ready', now, 'promoted')
  end
  if #ids > 0 then wake(K, 'ww') end
  return reply({ n = #ids })
end

local function expire(keys, args)
  reset_wakes()
  local K = keys[1]
  local p = params(args[1])
  local now = clock(p.now)
  local due, stale = {}, {}
  local offset, chunk = 0, math.max(p.limit, 64)
  while #due < p.limit do
    local ids = redis.call('ZRANGEBYSCORE', K .. 'ttl', '-inf', now, 'LIMIT', offset, chunk)
    if #ids == 0 then break end
    for _, id in ipairs(ids) do
      local v = redis.call('HMGET', tkey(K, id), 'state', 'started_at')
      if v[1] == 'ready' and not v[2] then
        due[#due + 1] = id
        if #due >= p.limit then break end
      elseif v[1] ~= 'scheduled' and v[1] ~= 'blocked' then
        stale[#stale + 1] = id
      end
    end
    offset = offset + chunk
  end
  for _, id in ipairs(stale) do redis.call('ZREM', K .. 'ttl', id) end
  for _, id in ipairs(due) do
    end_waiting(K, id, load(K, id), 'expired', TTL_ERROR, now, 'ttl')
  end
  return reply({ n = #due })
end

local function leases_expired(keys, args)
  local K = keys[1]
  local p = params(args[1])
  local now = clock(p.now)
  local ids = redis.call('ZRANGEBYSCORE', K .. 'ls', '-inf', '(' .. now, 'LIMIT', 0, p.limit)
  local out = {}
  for _, id in ipairs(ids) do
    local v = redis.call('HMGET', tkey(K, id), 'kind', 'lease_epoch', 'attempts',
      'max_attempts', 'retry_policy', 'lease_owner', 'cancel_requested', 'lease_started')
    out[#out + 1] = { id, v[1], tonumber(v[2]), tonumber(v[3]), tonumber(v[4]), v[5], v[6],
      v[7] == '1' and 1 or 0, v[8] == '0' and 0 or 1 }
  end
  return out
end

-- operator ---------------------------------------------------------------------------------

local function cancel_one(K, id, r, reason, err, now)
  if r.state == 'running' then
    set(K, id, { cancel_requested = '1', updated_at = now })
    wake(K, 'wf')
    return 'running', true
  end
  if not CANCEL_SOURCES[r.state] then return r.state, false end
  end_waiting(K, id, r, 'cancelled', err, now, reason)
  cancelled_tasks(K, { id }, reason, now)
  return 'cancelled', false
end

local function cancel(keys, args)
  reset_wakes()
  local K = keys[1]
  local p = params(args[1])
  local now = clock(p.now)
  local r = load(K, p.id)
  if not r then return reply({ err = 'notfound', id = p.id }) end
  local state, requested = cancel_one(K, p.id, r, p.reason, p.error, now)
  return reply({ state = state, requested = requested })
end

local function workflow_cancel(keys, args)
  reset_wakes()
  local K = keys[1]
  local p = params(args[1])
  local now = clock(p.now)
  local ids = redis.call('ZREVRANGE', K .. 'wfn:' .. p.id, 0, -1)
  local n = 0
  for _, id in ipairs(ids) do
    local r = load(K, id)
    -- a node cancelled above may have skipped this one already
    if r and not TERMINAL[r.state] then
      local state, requested = cancel_one(K, id, r, p.reason, p.error, now)
      if requested or state == 'cancelled' then n = n + 1 end
    end
  end
  return reply({ n = n })
end

local function retry(keys, args)
  reset_wakes()
  local K = keys[1]
  local p = params(args[1])
  local now = clock(p.now)
  local r = load(K, p.id)
  if not r then return reply({ err = 'notfound', id = p.id }) end
  if r.state ~= 'failed' and r.state ~= 'dead_lettered' then
    return reply({ err = 'illegal', from = r.state, to = 'ready' })
  end
  local f = nil
  if r.dedup_key then
    f = dfield(r.kind, r.dedup_key)
    local holder = redis.call('HGET', K .. 'dd', f)
    if holder and holder ~= p.id then
      return reply({ err = 'dup', key = r.dedup_key, id = holder })
    end
  end
  unindex(K, p.id, r)
  r.state = 'ready'
  set(K, p.id, {
    state = 'ready', attempts = 0, error = false, finished_at = false, run_at = false,
    last_finish = false, cancel_requested = '0', progress_pct = false,
    progress_message = false, updated_at = now, res_state = false, result = false,
    res_error = false,
  })
  index(K, p.id, r)
  if f then redis.call('HSET', K .. 'dd', f, p.id) end
  event(K, p.id, r.kind, 'ready', now, 'operator retry')
  wake(K, 'ww')
  return reply({ state = 'ready' })
end


-- waitpoints, signals, suspensions, frames -------------------------------------------------

local function fenced(K, id, epoch, lease)
  local v = redis.call('HMGET', tkey(K, id), 'state', 'lease_epoch', 'kind', 'attempts',
    'cancel_requested', 'lease_id')
  if v[1] ~= 'running' or tonumber(v[2]) ~= epoch then return nil end
  if not same_lease(v[6], v[4], lease) then return nil end
  return v
end

local function waitpoint_create(keys, args)
  local K = keys[1]
  local p = params(args[1])
  local now = clock(p.now)
  if not fenced(K, p.task, p.epoch, p.lease) then
    return reply({ err = 'lease', id = p.task, epoch = p.epoch })
  end
  local f = #p.task .. ':' .. p.task .. p.key
  local id = redis.call('HGET', K .. 'wpk', f)
  if not id then
    id = p.id
    redis.call('HSET', K .. 'wpk', f, id)
    redis.call('HSET', K .. 'wp:' .. id, 'task', p.task, 'key', p.key,
      'expires_at', now + p.expires_in, 'created_at', now)
    redis.call('SADD', K .. 'wpt:' .. p.task, id)
  end
  local v = redis.call('HMGET', K .. 'wp:' .. id, 'task', 'key', 'expires_at', 'created_at')
  return reply({ id = id, task = v[1], key = v[2], expires_at = tonumber(v[3]),
    created_at = tonumber(v[4]) })
end

local function matches(spec, wp, name)
  local w = spec.waitpoint
  return (spec.signal == '*' or spec.signal == name)
    and (w == nil or w == cjson.null or w == wp)
end

local function evaluate(c, seen)
  if c.signal then
    for _, k in ipairs(seen) do if matches(c, k[1], k[2]) then return true end end
    return false
  elseif c.any then
    for _, part in ipairs(c.any) do if evaluate(part, seen) then return true end end
    return false
  elseif c.all then
    for _, part in ipairs(c.all) do if not evaluate(part, seen) then return false end end
    return true
  elseif c.count then
    local n = 0
    for _, k in ipairs(seen) do if matches(c.of, k[1], k[2]) then n = n + 1 end end
    return n >= tonumber(c.count)
  end
  return false
end

-- consume the task's buffered signals for its suspension if they satisfy its condition
local function consume_if_satisfied(K, id, condition)
  local raw = redis.call('LRANGE', K .. 'su:' .. id, 0, -1)
  local seen = {}
  for i, e in ipairs(raw) do
    local sig = cmsgpack.unpack(e)
    seen[i] = { sig[1], sig[2] }
  end
  if #raw == 0 or not evaluate(cjson.decode(condition), seen) then return false end
  redis.call('DEL', K .. 'sc:' .. id)
  redis.call('RPUSH', K .. 'sc:' .. id, unpack(raw))
  redis.call('DEL', K .. 'su:' .. id)
  redis.call('HSET', K .. 'sp:' .. id, 'open', '0', 'resolution', 'satisfied')
  return true
end

-- one-shot waitpoints: a suspension owns the waitpoints its condition names (every open
-- waitpoint of its task when a Signal in it names none) and closes them when it resolves
local function owned(c, found)
  if c.signal then
    local w = c.waitpoint
    if w == nil or w == cjson.null then return false end
    found[w] = true
    return true
  elseif c.count then
    return owned(c.of, found)
  end
  for _, part in ipairs(c.any or c.all or {}) do
    if not owned(part, found) then return false end
  end
  return true
end

-- close the waitpoints a resolved suspension owns (reason: 'resumed' or 'timed out'); their
-- signals that nothing consumed go with it, so none leaks into a later suspension
local function close_waitpoints(K, id, condition, reason)
  local found, ids = {}, {}
  if owned(cjson.decode(condition), found) then
    for w in pairs(found) do ids[#ids + 1] = w end
  else
    ids = redis.call('SMEMBERS', K .. 'wpt:' .. id)
  end
  local closed, any = {}, false
  for _, w in ipairs(ids) do
    local wk = K .. 'wp:' .. w
    local v = redis.call('HMGET', wk, 'task', 'closed')
    if v[1] == id and not v[2] then
      redis.call('HSET', wk, 'closed', reason)
      closed[w], any = true, true
    end
  end
  if not any then return end
  local su = K .. 'su:' .. id
  local keep, dropped = {}, false
  for _, e in ipairs(redis.call('LRANGE', su, 0, -1)) do
    if closed[cmsgpack.unpack(e)[1]] then dropped = true else keep[#keep + 1] = e end
  end
  if dropped then
    redis.call('DEL', su)
    if #keep > 0 then redis.call('RPUSH', su, unpack(keep)) end
  end
end

local function signal_deliver(keys, args)
  reset_wakes()
  local K = keys[1]
  local p = params(args[1])
  local now = clock(p.now)
  local wp = redis.call('HMGET', K .. 'wp:' .. p.wp, 'task', 'expires_at')
  if not wp[1] then return reply({ status = 'rejected', reason = 'unknown waitpoint' }) end
  local id = wp[1]
  -- the idempotency keys of a waitpoint's signals (`sik:<waitpoint>`, deleted with its
  -- task): a repeat is answered as such even after the waitpoint expired or the task ended
  local sik = K .. 'sik:' .. p.wp
  if p.idem then
    if redis.call('HEXISTS', sik, p.idem) == 1
      -- layout 4 kept them all in one hash, moved by the migration to layout 5
      or redis.call('HEXISTS', K .. 'sik', #p.wp .. ':' .. p.wp .. p.idem) == 1 then
      return reply({ status = 'duplicate' })
    end
  end
  if tonumber(wp[2]) <= now then
    return reply({ status = 'rejected', reason = 'waitpoint expired' })
  end
  local r = load(K, id)
  if not r then return reply({ status = 'rejected', reason = 'unknown waitpoint' }) end
  if TERMINAL[r.state] then
    return reply({ status = 'rejected', reason = 'task already ended (' .. r.state .. ')' })
  end
  local closed = redis.call('HGET', K .. 'wp:' .. p.wp, 'closed')
  if closed then
    return reply({ status = 'closed', reason = 'waitpoint closed: its suspension ' .. closed })
  end
  redis.call('RPUSH', K .. 'su:' .. id, cmsgpack.pack({ p.wp, p.name, args[p.payload], now }))
  if p.idem then redis.call('HSET', sik, p.idem, '1') end
  if r.state ~= 'suspended' then return reply({ status = 'accepted' }) end
  local sp = redis.call('HMGET', K .. 'sp:' .. id, 'open', 'condition')
  if sp[1] ~= '1' or not consume_if_satisfied(K, id, sp[2]) then
    return reply({ status = 'accepted' })
  end
  close_waitpoints(K, id, sp[2], 'resumed')
  unindex(K, id, r)
  r.state = 'ready'
  set(K, id, { state = 'ready', updated_at = now })
  index(K, id, r)
  event(K, id, r.kind, 'ready', now, 'resumed')
  wake(K, 'ww')
  return reply({ status = 'accepted', resumed = true })
end

local function task_suspend(keys, args)
  local K = keys[1]
  local p = params(args[1])
  local now = clock(p.now)
  local v = fenced(K, p.id, p.epoch, p.lease)
  if not v then return reply({ err = 'lease', id = p.id, epoch = p.epoch }) end
  if v[5] == '1' then return reply({ status = 'cancel_requested' }) end
  local sp = K .. 'sp:' .. p.id
  redis.call('DEL', sp)
  redis.call('HSET', sp, 'open', '1', 'condition', p.condition, 'on_timeout', p.on_timeout,
    'attempt', v[4], 'created_at', now)
  if consume_if_satisfied(K, p.id, p.condition) then
    close_waitpoints(K, p.id, p.condition, 'resumed')
    return reply({ status = 'already_satisfied' })
  end
  local r = load(K, p.id)
  unindex(K, p.id, r)
  r.state = 'suspended'
  -- the attempt is given back, as by a release: the claim that resumes it counts it again
  set(K, p.id, {
    state = 'suspended', lease_owner = false, lease_expires_at = false,
    attempts = tonumber(r.attempts) - 1, updated_at = now,
  })
  index(K, p.id, r)
  if p.timeout then
    redis.call('HSET', sp, 'timeout_at', now + p.timeout)
    redis.call('ZADD', K .. 'spd', now + p.timeout, p.id)
  end
  event(K, p.id, r.kind, 'suspended', now, p.detail)
  return reply({ status = 'suspended' })
end

local function suspensions_expire(keys, args)
  reset_wakes()
  local K = keys[1]
  local p = params(args[1])
  local now = clock(p.now)
  local ids = redis.call('ZRANGEBYSCORE', K .. 'spd', '-inf', now, 'LIMIT', 0, p.limit)
  local n = 0
  for _, id in ipairs(ids) do
    redis.call('ZREM', K .. 'spd', id)
    local r = load(K, id)
    local sp = K .. 'sp:' .. id
    local how = redis.call('HGET', sp, 'on_timeout')
    if r and r.state == 'suspended' and redis.call('HGET', sp, 'open') == '1' then
      n = n + 1
      redis.call('HSET', sp, 'open', '0', 'resolution', 'timeout')
      close_waitpoints(K, id, redis.call('HGET', sp, 'condition'), 'timed out')
      if how == 'resume' then
        unindex(K, id, r)
        r.state = 'ready'
        set(K, id, { state = 'ready', updated_at = now })
        index(K, id, r)
        event(K, id, r.kind, 'ready', now, 'suspend timeout: resumed')
        wake(K, 'ww')
      elseif how == 'cancel' then
        end_waiting(K, id, r, 'cancelled', p.cancel_error, now, p.cancel_reason)
        cancelled_tasks(K, { id }, p.cancel_reason, now)
      elseif how == 'expire' then
        end_waiting(K, id, r, 'expired', p.expired_error, now, 'suspend_timeout')
      else
        end_waiting(K, id, r, 'failed', p.timeout_error, now, 'suspend_timeout')
      end
    end
  end
  return reply({ n = n })
end

local function resume_signals(keys, args)
  local K = keys[1]
  local id = params(args[1]).id
  if redis.call('HGET', K .. 'sp:' .. id, 'resolution') ~= 'satisfied' then return {} end
  local out = {}
  for i, e in ipairs(redis.call('LRANGE', K .. 'sc:' .. id, 0, -1)) do
    local sig = cmsgpack.unpack(e)
    out[i] = { sig[1], sig[2], sig[3], sig[4] }
  end
  return out
end

local function frames_append(keys, args)
  reset_wakes()
  local K = keys[1]
  local p = params(args[1])
  local now = clock(p.now)
  local v = fenced(K, p.id, p.epoch, p.lease)
  if not v then return reply({ err = 'lease', id = p.id, epoch = p.epoch }) end
  local attempt = tonumber(v[4])
  local fk = K .. 'fr:' .. p.id .. ':' .. attempt
  local seq = redis.call('XLEN', fk) + 1
  if p.metadata then
    redis.call('XADD', fk, seq .. '-1', 't', p.type, 'p', args[p.payload], 'm',
      args[p.metadata], 'a', now)
  else
    redis.call('XADD', fk, seq .. '-1', 't', p.type, 'p', args[p.payload], 'a', now)
  end
  redis.call('HSET', tkey(K, p.id), 'frame_attempt', attempt)
  wake(K, 'wo')
  return reply({ attempt = attempt, seq = seq })
end

local function frames_read(keys, args)
  local K = keys[1]
  local p = params(args[1])
  local v = redis.call('HMGET', tkey(K, p.id), 'state', 'attempts', 'frame_attempt')
  if not v[1] then return { 'missing' } end
  local current = tonumber(v[2])
  local attempt = p.attempt
  if not attempt then
    attempt = tonumber(v[3])
    if not attempt and current > 0 then attempt = current end
  end
  local live = (v[1] == 'running' and attempt ~= nil and attempt == current) and 1 or 0
  if not attempt or p.limit <= 0 then return { 'ok', attempt or false, live, {} } end
  local fk = K .. 'fr:' .. p.id .. ':' .. attempt
  local entries = redis.call('XRANGE', fk, tostring(p.after + 1), '+', 'COUNT', p.limit)
  return { 'ok', attempt, live, entries }
end

-- budgets: the engine's shared rules decide (store/_common/budget_rules.py); this applies
-- the decision as a compare-and-set on the budget's version, with the fence and dedup key

local BUDGET_FIELDS = { 'hard', 'soft', 'usage', 'reset_every', 'window_start', 'breached' }

local function budget_put(keys, args)
  reset_wakes()
  local K = keys[1]
  local p = params(args[1])
  if p.task and not fenced(K, p.task, p.epoch, p.lease) then
    return reply({ err = 'lease', id = p.task, epoch = p.epoch })
  end
  local bk = K .. 'b:' .. p.id
  local ver = redis.call('HGET', bk, 'ver')
  if p.must_exist and not ver then return reply({ err = 'budget', id = p.id }) end
  if p.dedup and redis.call('HEXISTS', K .. 'bdk:' .. p.id, p.dedup) == 1 then
    return reply({ status = 'already', usage = redis.call('HGET', bk, 'usage') })
  end
  if tonumber(ver or -1) ~= p.ver then return reply({ status = 'conflict' }) end
  local fields = {}
  for _, f in ipairs(BUDGET_FIELDS) do
    if p[f] ~= nil then fields[f] = p[f] else fields[f] = false end
  end
  fields.ver = (tonumber(ver) or 0) + 1
  fields.updated_at = p.now
  redis.call('SADD', K .. 'bids', p.id)
  local put, del = {}, {}
  for k, v in pairs(fields) do
    if v == false then del[#del + 1] = k else put[#put + 1] = k; put[#put + 1] = v end
  end
  redis.call('HSET', bk, unpack(put))
  if #del > 0 then redis.call('HDEL', bk, unpack(del)) end
  if p.record_dedup then redis.call('HSET', K .. 'bdk:' .. p.id, p.dedup, '1') end
  if p.wake then wake(K, 'ww') end
  return reply({ status = 'ok' })
end

-- inspection -------------------------------------------------------------------------------

local function list(keys, args)
  local K = keys[1]
  local p = params(args[1])
  local after = '-inf'
  if p.after then
    local s = redis.call('ZSCORE', K .. 'all', p.after)
    if not s then return {} end
    after = '(' .. s
  end
  local states = nil
  if p.states then
    states = {}
    for _, s in ipairs(p.states) do states[s] = true end
  end
  local out = {}
  local chunk = math.max(p.limit, 100)
  while #out < p.limit do
    local page = redis.call('ZRANGEBYSCORE', K .. 'all', after, '+inf', 'WITHSCORES',
      'LIMIT', 0, chunk)
    if #page == 0 then break end
    for j = 1, #page, 2 do
      local id = page[j]
      local v = redis.call('HMGET', tkey(K, id), 'state', 'queue', 'kind')
      if (not states or states[v[1]]) and (not p.queue or p.queue == v[2])
        and (not p.kind or p.kind == v[3]) then
        out[#out + 1] = redis.call('HGETALL', tkey(K, id))
        if #out >= p.limit then break end
      end
      after = '(' .. page[j + 1]
    end
  end
  return out
end

-- schedules ----------------------------------------------------------------------------------
-- One hash per schedule (`sd:<name>`), every name in the set `sdn`. A firing is one call:
-- the compare-and-set on version and next_fire_ms, and the insert of the tick's tasks
-- (on_duplicate "skip"); the insert is planned and checked before anything is written.

local function sckey(K, name) return K .. 'sd:' .. name end
local function flag(v) if v then return '1' end return '0' end

local function hput(key, fields)
  -- fields: name -> value, or false to delete the field
  local put, del = {}, {}
  for k, v in pairs(fields) do
    if v == false then del[#del + 1] = k else put[#put + 1] = k; put[#put + 1] = v end
  end
  if #put > 0 then redis.call('HSET', key, unpack(put)) end
  if #del > 0 then redis.call('HDEL', key, unpack(del)) end
end

local function schedule_rows(K, names)
  local out = {}
  for _, name in ipairs(names) do
    local flat = redis.call('HGETALL', sckey(K, name))
    if #flat > 0 then out[#out + 1] = flat end
  end
  return out
end

local function schedules_upsert(keys, args)
  local K = keys[1]
  local p = params(args[1])
  local now = clock(p.now)
  local declared = {}
  for _, d in ipairs(p.schedules) do
    declared[d.name] = true
    local key = sckey(K, d.name)
    local paused = flag(d.paused)
    local fields = {
      kind = d.kind, trigger = d.trigger, tz = d.tz or false, misfire = d.misfire,
      jitter_ms = d.jitter_ms, payload = args[d.payload], queue = d.queue,
      priority = d.priority, max_attempts = d.max_attempts,
      retry_policy = args[d.retry_policy], timeout_ms = d.timeout_ms or false,
      definition = d.definition, declared_paused = paused, declared_at_ms = now,
      undeclared_since_ms = false, updated_at = now,
    }
    local old = redis.call('HMGET', key, 'version', 'definition', 'trigger', 'tz',
      'declared_paused')
    if not old[1] then
      fields.name = d.name
      fields.version = 1
      fields.paused = paused
      fields.next_fire_ms = d.first_fire_ms
      fields.fired = 0
      fields.created_at = now
      redis.call('SADD', K .. 'sdn', d.name)
    else
      if old[2] ~= d.definition then fields.version = tonumber(old[1]) + 1 end
      local reset = old[3] ~= d.trigger or (old[4] or nil) ~= d.tz
      if old[5] ~= paused then
        fields.paused = paused -- the declared value changed: it applies
        if not d.paused then reset = true end -- unpaused from the first tick after now
      end
      if reset then fields.next_fire_ms = d.first_fire_ms end
    end
    hput(key, fields)
  end
  local names = redis.call('SMEMBERS', K .. 'sdn')
  for _, name in ipairs(names) do
    local key = sckey(K, name)
    if not declared[name] and redis.call('HEXISTS', key, 'undeclared_since_ms') == 0 then
      redis.call('HSET', key, 'undeclared_since_ms', now, 'updated_at', now)
    end
  end
  return schedule_rows(K, names)
end

local function schedules_get(keys, args)
  local K = keys[1]
  local p = params(args[1])
  local names = p.names
  if not names or #names == 0 then names = redis.call('SMEMBERS', K .. 'sdn') end
  return schedule_rows(K, names)
end

-- reply: { status, the schedule's hash after the call (nil when missing), outcomes }
local function schedules_fire(keys, args)
  reset_wakes()
  local K = keys[1]
  local p = params(args[1])
  local now = clock(p.now)
  local key = sckey(K, p.name)
  local cur = redis.call('HMGET', key, 'version', 'next_fire_ms', 'paused')
  if not cur[1] then return { 'missing', false, {} } end
  if cur[3] == '1' then return { 'paused', redis.call('HGETALL', key), {} } end
  if tonumber(cur[1]) ~= p.expected_version or tonumber(cur[2]) ~= p.expected_next_ms then
    return { 'stale', redis.call('HGETALL', key), {} }
  end
  local outcomes = {}
  if #p.tasks > 0 then
    local out, err = insert_tasks(K, { tasks = p.tasks, mode = 'skip' }, now, args)
    if not out then return { 'err', reply(err), {} } end
    outcomes = out
    local inserted = 0
    for _, o in ipairs(out) do if o[2] == 'inserted' then inserted = inserted + 1 end end
    hput(key, { last_tick_ms = p.last_tick_ms or false, last_fired_at_ms = now })
    redis.call('HINCRBY', key, 'fired', inserted)
  end
  redis.call('HSET', key, 'next_fire_ms', p.next_fire_ms, 'updated_at', now)
  return { 'fired', redis.call('HGETALL', key), outcomes }
end

local function schedules_set_paused(keys, args)
  local K = keys[1]
  local p = params(args[1])
  local now = clock(p.now)
  local key = sckey(K, p.name)
  local paused = redis.call('HGET', key, 'paused')
  if not paused then return false end
  if p.paused and paused == '0' then
    redis.call('HSET', key, 'paused', '1', 'updated_at', now)
  elseif not p.paused and paused == '1' then
    hput(key, { paused = '0', updated_at = now, next_fire_ms = p.next_fire_ms or nil })
  end
  return redis.call('HGETALL', key)
end

-- operators: worker registry, queue pause, gauges, retention --------------------------------

local function worker_heartbeat(keys, args)
  local K = keys[1]
  local p = params(args[1])
  local now = clock(p.now)
  local wk = K .. 'wk:' .. p.id
  redis.call('HSET', wk, 'data', p.data, 'last_seen', now)
  if p.stopped then
    redis.call('HSET', wk, 'stopped_at', now)
  else
    redis.call('HDEL', wk, 'stopped_at')
  end
  redis.call('SADD', K .. 'wks', p.id)
  return reply({})
end

-- { now, { { id, data, last_seen, stopped_at or nil }, ... } }
local function workers_list(keys, args)
  local K = keys[1]
  local p = params(args[1])
  local out = {}
  for _, id in ipairs(redis.call('SMEMBERS', K .. 'wks')) do
    local v = redis.call('HMGET', K .. 'wk:' .. id, 'data', 'last_seen', 'stopped_at')
    if v[1] then out[#out + 1] = { id, v[1], v[2], v[3] } end
  end
  return { clock(p.now), out }
end

local function workers_prune(keys, args)
  local K = keys[1]
  local p = params(args[1])
  local cutoff = clock(p.now) - p.older_than
  local n = 0
  for _, id in ipairs(redis.call('SMEMBERS', K .. 'wks')) do
    local seen = redis.call('HGET', K .. 'wk:' .. id, 'last_seen')
    if not seen or tonumber(seen) < cutoff then
      redis.call('DEL', K .. 'wk:' .. id)
      redis.call('SREM', K .. 'wks', id)
      if seen then n = n + 1 end
    end
  end
  return reply({ n = n })
end

local function queue_set_paused(keys, args)
  reset_wakes()
  local K = keys[1]
  local p = params(args[1])
  local before = redis.call('HGET', K .. 'qp', p.queue) == '1'
  redis.call('HSET', K .. 'qp', p.queue, p.paused and '1' or '0')
  if not p.paused then wake(K, 'ww') end -- its ready tasks are claimable again
  return reply({ changed = before ~= p.paused })
end

-- { now, { { queue, state, n }, ... }, { { queue, paused }, ... }, { { queue, oldest }, ... } }
local function queues_list(keys, args)
  local K = keys[1]
  local p = params(args[1])
  local counts, ready = {}, {}
  local flat = redis.call('HGETALL', K .. 'cnt')
  for i = 1, #flat, 2 do
    local n = tonumber(flat[i + 1])
    if n > 0 then
      local bar = string.find(flat[i], '|', 1, true)
      local state, queue = string.sub(flat[i], 1, bar - 1), string.sub(flat[i], bar + 1)
      counts[#counts + 1] = { queue, state, n }
      if state == 'ready' then ready[#ready + 1] = queue end
    end
  end
  local flags = {}
  flat = redis.call('HGETALL', K .. 'qp')
  for i = 1, #flat, 2 do flags[#flags + 1] = { flat[i], flat[i + 1] == '1' and 1 or 0 } end
  -- the oldest ready task of a queue: the one written longest ago, over its kinds
  local oldest = {}
  for _, queue in ipairs(ready) do
    local best = nil
    for _, kind in ipairs(redis.call('SMEMBERS', K .. 'rqk:' .. queue)) do
      for _, id in ipairs(redis.call('ZRANGE', rkey(K, queue, kind), 0, -1)) do
        local at = tonumber(redis.call('HGET', tkey(K, id), 'updated_at'))
        if at and (not best or at < best) then best = at end
      end
    end
    if best then oldest[#oldest + 1] = { queue, best } end
  end
  return { clock(p.now), counts, flags, oldest }
end

local function active(K, id)
  local st = redis.call('HGET', tkey(K, id), 'state')
  return st and not TERMINAL[st]
end

-- a finished task no live tree needs: its parent, workflow run, children and dependents
-- are all finished (or gone)
local function purgeable(K, id, r)
  if r.parent_id and active(K, r.parent_id) then return false end
  if tonumber(r.children_active or 0) > 0 then return false end
  for _, down in ipairs(redis.call('SMEMBERS', K .. 'dn:' .. id)) do
    if active(K, down) then return false end
  end
  if r.workflow_id then
    for _, node in ipairs(redis.call('ZRANGE', K .. 'wfn:' .. r.workflow_id, 0, -1)) do
      if active(K, node) then return false end
    end
  end
  return true
end

local function purge_one(K, id, r)
  unindex(K, id, r)
  r.was = nil
  if r.ev0 then -- its events lie between its first and its last
    local last = r.evl or redis.call('GET', K .. 'evn')
    local gone = {}
    for _, e in ipairs(redis.call('XRANGE', K .. 'ev', r.ev0 .. '-1', last .. '-1')) do
      if e[2][2] == id then gone[#gone + 1] = e[1] end
    end
    for i = 1, #gone, 500 do
      redis.call('XDEL', K .. 'ev', unpack(gone, i, math.min(i + 499, #gone)))
    end
  end
  local top = math.max(tonumber(r.attempts or 0), tonumber(r.frame_attempt or 0)) + 1
  for a = 0, top do redis.call('DEL', K .. 'fr:' .. id .. ':' .. a) end
  for _, w in ipairs(redis.call('SMEMBERS', K .. 'wpt:' .. id)) do
    local key = redis.call('HGET', K .. 'wp:' .. w, 'key')
    if key then redis.call('HDEL', K .. 'wpk', #id .. ':' .. id .. key) end
    redis.call('DEL', K .. 'wp:' .. w, K .. 'sik:' .. w)
  end
  redis.call('DEL', K .. 'wpt:' .. id, K .. 'su:' .. id, K .. 'sc:' .. id, K .. 'sp:' .. id,
    K .. 'ch:' .. id, K .. 'up:' .. id, K .. 'dno:' .. id, K .. 'dn:' .. id, tkey(K, id))
  for _, z in ipairs({ 'spd', 'all', 'ttl', 'hk', 'fin', 'sch', 'ls' }) do
    redis.call('ZREM', K .. z, id)
  end
  if r.dedup_key then
    local f = dfield(r.kind, r.dedup_key)
    if redis.call('HGET', K .. 'dd', f) == id then redis.call('HDEL', K .. 'dd', f) end
  end
  if r.parent_id then
    redis.call('ZREM', K .. 'ch:' .. r.parent_id, id)
    if r.child_key then
      local ck = #r.parent_id .. ':' .. r.parent_id .. r.child_key
      if redis.call('HGET', K .. 'ck', ck) == id then redis.call('HDEL', K .. 'ck', ck) end
    end
  end
  if r.workflow_id then
    local wfn = K .. 'wfn:' .. r.workflow_id
    redis.call('ZREM', wfn, id)
    if redis.call('ZCARD', wfn) == 0 then -- the run goes with its last node
      redis.call('DEL', K .. 'wf:' .. r.workflow_id)
      redis.call('ZREM', K .. 'wfs', r.workflow_id)
    end
  end
end

local function tasks_purge(keys, args)
  local K = keys[1]
  local p = params(args[1])
  local states = {}
  for _, st in ipairs(p.states) do if TERMINAL[st] then states[st] = true end end
  local picked, offset, chunk = {}, 0, math.max(p.limit, 100)
  while #picked < p.limit do
    local page = redis.call('ZRANGEBYSCORE', K .. 'fin', '-inf', '(' .. p.before,
      'LIMIT', offset, chunk)
    if #page == 0 then break end
    for _, id in ipairs(page) do
      local r = load(K, id)
      if r and states[r.state] and purgeable(K, id, r) then
        picked[#picked + 1] = { id, r }
        if #picked >= p.limit then break end
      end
    end
    offset = offset + chunk
  end
  for _, t in ipairs(picked) do purge_one(K, t[1], t[2]) end
  return reply({ n = #picked })
end

-- a migration from a layout before the indexes the operator's operations read: rebuild
-- them for a page of tasks (by insertion order); returns how many tasks the page held
local function reindex(keys, args)
  local K = keys[1]
  local p = params(args[1])
  local ids = redis.call('ZRANGE', K .. 'all', p.offset, p.offset + p.count - 1)
  for _, id in ipairs(ids) do
    local v = redis.call('HMGET', tkey(K, id), 'state', 'queue', 'kind', 'finished_at')
    if v[1] == 'ready' then redis.call('SADD', K .. 'rqk:' .. v[2], v[3]) end
    if v[1] and TERMINAL[v[1]] and v[4] then
      redis.call('ZADD', K .. 'fin', 'NX', v[4], id)
    end
    for _, up in ipairs(redis.call('LRANGE', K .. 'up:' .. id, 0, -1)) do
      redis.call('SADD', K .. 'dn:' .. up, id)
    end
  end
  return #ids
end

local function version() return VERSION end

-- the partition's next due time (or nil) and the server's clock, for a waiter's block
-- (`after`: the first one later than that)
local function next_due(keys, args)
  local p = args[1] and params(args[1]) or {}
  local first
  if p.after then
    first = redis.call('ZRANGEBYSCORE', keys[1] .. 'sch', '(' .. p.after, '+inf',
      'WITHSCORES', 'LIMIT', 0, 1)
  else
    first = redis.call('ZRANGE', keys[1] .. 'sch', 0, 0, 'WITHSCORES')
  end
  local now = clock(nil)
  if #first == 0 then return { false, now } end
  return { tonumber(first[2]), now }
end

-- every call starts with the per-call state cleared (wake-ups and markers sent, the DAG
-- queue), whatever its function does first
local function entry(f)
  return function(keys, args)
    reset_wakes()
    return f(keys, args)
  end
end

redis.register_function('fm_version', entry(version))
redis.register_function{ function_name = 'fm_next_due', callback = entry(next_due),
  flags = { 'no-writes' } }
redis.register_function('fm_insert', entry(insert))
redis.register_function('fm_insert_many', entry(insert_many))
redis.register_function('fm_claim', entry(claim))
redis.register_function('fm_renew', entry(renew))
redis.register_function('fm_progress', entry(progress))
redis.register_function('fm_finish', entry(finish))
redis.register_function('fm_promote', entry(promote))
redis.register_function('fm_expire', entry(expire))
redis.register_function('fm_leases_expired', entry(leases_expired))
redis.register_function('fm_cancel', entry(cancel))
redis.register_function('fm_retry', entry(retry))
redis.register_function('fm_list', entry(list))
redis.register_function('fm_wait_children', entry(wait_children))
redis.register_function('fm_children_page', entry(children_page))
redis.register_function('fm_children_summary', entry(children_summary))
redis.register_function('fm_hooks_claim', entry(hooks_claim))
redis.register_function('fm_hook_done', entry(hook_done))
redis.register_function('fm_waitpoint_create', entry(waitpoint_create))
redis.register_function('fm_signal_deliver', entry(signal_deliver))
redis.register_function('fm_task_suspend', entry(task_suspend))
redis.register_function('fm_suspensions_expire', entry(suspensions_expire))
redis.register_function('fm_resume_signals', entry(resume_signals))
redis.register_function('fm_frames_append', entry(frames_append))
redis.register_function('fm_frames_read', entry(frames_read))
redis.register_function('fm_budget_put', entry(budget_put))
redis.register_function('fm_upstream_get', entry(upstream_get))
redis.register_function('fm_workflow_get', entry(workflow_get))
redis.register_function('fm_workflows_list', entry(workflows_list))
redis.register_function('fm_workflow_cancel', entry(workflow_cancel))
redis.register_function('fm_schedules_upsert', entry(schedules_upsert))
redis.register_function{ function_name = 'fm_schedules_get', callback = entry(schedules_get),
  flags = { 'no-writes' } }
redis.register_function('fm_schedules_fire', entry(schedules_fire))
redis.register_function('fm_schedules_set_paused', entry(schedules_set_paused))
redis.register_function('fm_worker_heartbeat', entry(worker_heartbeat))
redis.register_function{ function_name = 'fm_workers_list', callback = entry(workers_list),
  flags = { 'no-writes' } }
redis.register_function('fm_workers_prune', entry(workers_prune))
redis.register_function('fm_queue_set_paused', entry(queue_set_paused))
redis.register_function{ function_name = 'fm_queues_list', callback = entry(queues_list),
  flags = { 'no-writes' } }
redis.register_function('fm_tasks_purge', entry(tasks_purge))
redis.register_function('fm_reindex', entry(reindex))
