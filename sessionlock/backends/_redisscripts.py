"""The Redis backend's keys and Lua scripts: every step that must be atomic, in one place.

One session's keys share a hash tag, so they live in one Redis Cluster slot::

    sessionlock:{<key>}:lease        the exclusive holder's ticket (SET PX lease_ttl)
    sessionlock:{<key>}:readers      the shared holders' tickets (ZSET scored by their expiry,
                                     ms on the server's clock; PEXPIREAT the latest score)
    sessionlock:{<key>}:queue        tickets waiting, oldest first (LIST, PX state_ttl)
    sessionlock:{<key>}:alive:<t>    ticket t still waits: its process's lease ttl in ms (PX
                                     that ttl, renewed by its process)
    sessionlock:{<key>}:wake:<t>     where t is told it holds the lease (LIST, PX lease_ttl)
    sessionlock:{<key>}:state        fence and mark counters (HASH, PX state_ttl)
    sessionlock:{<key>}:value        a value of :meth:`Backend.set` (PX its ttl)

A ticket carries its kind: a shared (reader's) ticket starts with ``s``, an exclusive one is
hex. So the line is one list of both kinds, in arrival order, and every script below serves
both.

Grant rules, first come first served. A newcomer gets in at once if nobody alive waits and
the lease is free: for an exclusive ticket, no exclusive holder and no live reader; for a
shared one, no exclusive holder (readers may hold). Otherwise it joins the line. Whenever the
exclusive lease is free (a release, a withdrawal, a re-check, an acquire), the head of the
line is served *inside the script*: an exclusive ticket once no live reader is left; a shared
one together with every shared ticket right behind it (up to the next exclusive one). Each
ticket served is told on its own wake list, where its waiter blocks in ``BLPOP``: it wakes
holding the lease (no second round trip, no race with a newcomer), in line order across
processes and hosts.

Readers expire as the exclusive lease does: a reader's score is its expiry on the server's
clock (``TIME``), pushed forward by its process's watchdog; a score in the past is a dead
reader, removed by the next script that counts readers, so it blocks a writer for at most
``lease_ttl`` plus the writer's re-check.

Counters. ``fence`` grows at every grant (shared ones too), ``mark`` at every
:meth:`Backend.mark`. A counter that is absent (a new key, or one whose state expired) starts
from the server's clock in microseconds, so a counter that expired and started again never
repeats an earlier value (it grew by one per grant or mark, each of which took more than a
microsecond).

Each script names its KEYS and ARGV in a comment. Per-ticket keys (``alive:``, ``wake:``) are
built inside the scripts from the key's prefix: they share the hash tag, hence the slot.
"""

from __future__ import annotations

__all__ = [
    "ACQUIRE",
    "CHECK",
    "DELETE_HELD",
    "KEEP_WAITING",
    "MARK",
    "RELEASE",
    "RENEW",
    "SECRET_KEY",
    "SET_HELD",
    "SHARED",
    "STORE",
    "WITHDRAW",
    "names",
    "value_name",
]

PREFIX = "sessionlock:"
#: The hashing secret every process shares (see RedisBackend.secret): the one key without a
#: TTL. A single key, never one per session, so nothing piles up.
SECRET_KEY = PREFIX + "secret"
#: The first character of a shared ticket (an exclusive one is hex).
SHARED = "s"


def names(key: str) -> tuple[str, str, str, str, str]:
    """(lease, queue, state, readers, prefix) of a key; ``prefix`` + ``alive:``/``wake:`` +
    ticket."""
    prefix = f"{PREFIX}{{{key}}}:"
    return prefix + "lease", prefix + "queue", prefix + "state", prefix + "readers", prefix


def value_name(key: str) -> str:
    return f"{PREFIX}{{{key}}}:value"


# Shared by the scripts below. Lua numbers are doubles: a counter started from the clock in
# microseconds (1.7e15) stays exact below 2^53 (9e15), i.e. until the year 2255.
_COMMON = """
local function bump(state, field, state_ttl)
  if redis.call('HEXISTS', state, field) == 0 then
    local now = redis.call('TIME')
    redis.call('HSET', state, field, now[1] .. string.format('%06d', tonumber(now[2])))
  end
  local n = redis.call('HINCRBY', state, field, 1)
  redis.call('PEXPIRE', state, state_ttl)
  return n
end

-- {fence, mark or '-'} as strings (a number concatenated would read 1.7e+15).
local function current(state)
  return {redis.call('HGET', state, 'fence'), redis.call('HGET', state, 'mark') or '-'}
end

local function is_shared(ticket)
  return string.sub(ticket, 1, 1) == 's'
end

-- The server's clock in ms (the readers' scores).
local function now_ms()
  local now = redis.call('TIME')
  return tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
end

-- Live readers: the expired ones removed first. No readers key: 0, without reading the clock.
local function readers_live(readers)
  if redis.call('EXISTS', readers) == 0 then return 0 end
  redis.call('ZREMRANGEBYSCORE', readers, '-inf', string.format('%d', now_ms()))
  return redis.call('ZCARD', readers)
end

-- The readers key lives as long as its longest-lived reader (processes may differ in ttl).
local function expire_readers(readers)
  local last = redis.call('ZRANGE', readers, -1, -1, 'WITHSCORES')
  if last[2] then
    redis.call('PEXPIREAT', readers, string.format('%d', tonumber(last[2])))
  end
end

-- The exclusive lease to ``ticket``: its current().
local function grant(lease, state, prefix, ticket, ttl, state_ttl)
  redis.call('SET', lease, ticket, 'PX', ttl)
  redis.call('DEL', prefix .. 'alive:' .. ticket)
  bump(state, 'fence', state_ttl)
  return current(state)
end

-- A shared lease to ``ticket`` (a reader until now + ttl): its current().
local function grant_shared(readers, state, prefix, ticket, ttl, state_ttl)
  redis.call('ZADD', readers, string.format('%d', now_ms() + tonumber(ttl)), ticket)
  expire_readers(readers)
  redis.call('DEL', prefix .. 'alive:' .. ticket)
  bump(state, 'fence', state_ttl)
  return current(state)
end

-- Whether ``ticket`` holds the lease of its kind now.
local function holds(lease, readers, ticket)
  if is_shared(ticket) then return redis.call('ZSCORE', readers, ticket) ~= false end
  return redis.call('GET', lease) == ticket
end

-- What ``ticket`` was told at its grant ({fence, mark}), taken off its wake list; else
-- current() (a grant whose message is gone).
local function taken(state, prefix, ticket)
  local wake = prefix .. 'wake:' .. ticket
  local told = redis.call('LRANGE', wake, 0, -1)
  redis.call('DEL', wake)
  for _, message in ipairs(told) do
    local fence, mark = string.match(message, '^(%d+) (%S+)$')
    if fence then return {fence, mark} end
  end
  return current(state)
end

local function tell(prefix, ticket, got, ttl)
  local wake = prefix .. 'wake:' .. ticket
  redis.call('RPUSH', wake, got[1] .. ' ' .. got[2])
  redis.call('PEXPIRE', wake, ttl)
end

-- With the exclusive lease free: the head of the line served, each ticket told on its wake
-- list (dead tickets dropped). An exclusive head once no reader is live, then stop; a shared
-- head with every shared ticket right behind it. The number of tickets served. A ticket is
-- granted for its own process's ttl (its alive value; an older version's '1': ``ttl``), not
-- the caller's: processes may differ in lease_ttl, and its watchdog renews at its own pace.
local function hand_on(lease, queue, state, readers, prefix, ttl, state_ttl)
  local served = 0
  while true do
    local ticket = redis.call('LINDEX', queue, 0)
    if not ticket then return served end
    local its = redis.call('GET', prefix .. 'alive:' .. ticket)
    if its and (tonumber(its) or 0) < 100 then its = ttl end
    if not its then
      redis.call('LPOP', queue)
    elseif is_shared(ticket) then
      redis.call('LPOP', queue)
      tell(prefix, ticket, grant_shared(readers, state, prefix, ticket, its, state_ttl), its)
      served = served + 1
    else
      if served > 0 or readers_live(readers) > 0 then return served end
      redis.call('LPOP', queue)
      tell(prefix, ticket, grant(lease, state, prefix, ticket, its, state_ttl), its)
      return 1
    end
  end
end

-- With the exclusive lease free and nobody alive in line: ``ticket`` granted if its kind
-- may hold now ({fence, mark}); else false.
local function admit(lease, readers, state, prefix, ticket, ttl, state_ttl)
  if is_shared(ticket) then
    return grant_shared(readers, state, prefix, ticket, ttl, state_ttl)
  end
  if readers_live(readers) == 0 then
    return grant(lease, state, prefix, ticket, ttl, state_ttl)
  end
  return false
end

"""

# KEYS: lease, queue, state, readers. ARGV: ticket, lease ttl ms, state ttl ms, prefix,
# wait (0|1). Free for the ticket's kind and nobody alive in line: granted, {fence, mark}.
# Otherwise nil, and with wait=1 the ticket joins the line. A free lease with someone alive
# in line (its holder expired or a reader left) serves the line first: a newcomer never
# jumps it.
ACQUIRE = (
    _COMMON
    + """
local lease, queue, state, readers = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local ticket, ttl, state_ttl, prefix = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if redis.call('EXISTS', lease) == 0 then
  hand_on(lease, queue, state, readers, prefix, ttl, state_ttl)
  if redis.call('EXISTS', lease) == 0 and redis.call('LLEN', queue) == 0 then
    local got = admit(lease, readers, state, prefix, ticket, ttl, state_ttl)
    if got then return got end
  end
end
if ARGV[5] == '1' then
  redis.call('RPUSH', queue, ticket)
  redis.call('PEXPIRE', queue, state_ttl)
  redis.call('SET', prefix .. 'alive:' .. ticket, ttl, 'PX', ttl)
end
return false
"""
)

# KEYS: lease, queue, state, readers. ARGV: token, lease ttl ms, state ttl ms, prefix.
# -1: not ours any more (expired, or taken after expiry); 0: released, nobody served;
# n > 0: the line's head served (n tickets).
RELEASE = (
    _COMMON
    + """
local lease, queue, state, readers = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local ticket, ttl, state_ttl, prefix = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if is_shared(ticket) then
  local ours = redis.call('ZREM', readers, ticket) == 1
  local served = 0
  if redis.call('EXISTS', lease) == 0 then
    served = hand_on(lease, queue, state, readers, prefix, ttl, state_ttl)
  end
  if not ours then return -1 end
  return served
end
if redis.call('GET', lease) ~= ticket then return -1 end
redis.call('DEL', lease)
return hand_on(lease, queue, state, readers, prefix, ttl, state_ttl)
"""
)

# A waiter's safety re-check (its wake-up may be lost: a restart, a failover; a holder may
# have expired). KEYS: lease, queue, state, readers. ARGV: ticket, lease ttl ms, state ttl
# ms, prefix. Granted: {fence, mark} (its wake message removed); else nil, the ticket back
# in line and alive if it was lost. A free lease serves the line first.
CHECK = (
    _COMMON
    + """
local lease, queue, state, readers = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local ticket, ttl, state_ttl, prefix = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if redis.call('EXISTS', lease) == 0 then
  hand_on(lease, queue, state, readers, prefix, ttl, state_ttl)
end
if holds(lease, readers, ticket) then
  return taken(state, prefix, ticket)
end
if redis.call('EXISTS', lease) == 0 and redis.call('LLEN', queue) == 0 then
  local got = admit(lease, readers, state, prefix, ticket, ttl, state_ttl)
  if got then
    redis.call('DEL', prefix .. 'wake:' .. ticket)
    return got
  end
end
if not redis.call('LPOS', queue, ticket) then
  redis.call('RPUSH', queue, ticket)
end
redis.call('PEXPIRE', queue, state_ttl)
redis.call('SET', prefix .. 'alive:' .. ticket, ttl, 'PX', ttl)
return false
"""
)

# Giving up a wait. KEYS: lease, queue, state, readers. ARGV: ticket, lease ttl ms, state
# ttl ms, prefix, push (0|1: wake a helper blocked on the ticket's list).
# Granted meanwhile: {fence, mark}, the caller holds it; else nil, out of line (and with the
# lease free, the line's head served: a writer leaving may let the readers behind it in).
WITHDRAW = (
    _COMMON
    + """
local lease, queue, state, readers = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local ticket, ttl, state_ttl, prefix = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local wake = prefix .. 'wake:' .. ticket
redis.call('LREM', queue, 0, ticket)
redis.call('DEL', prefix .. 'alive:' .. ticket)
if holds(lease, readers, ticket) then return taken(state, prefix, ticket) end
redis.call('DEL', wake)
if redis.call('EXISTS', lease) == 0 then
  hand_on(lease, queue, state, readers, prefix, ttl, state_ttl)
end
if ARGV[5] == '1' then
  redis.call('RPUSH', wake, 'gone')
  redis.call('PEXPIRE', wake, ttl)
end
return false
"""
)

# KEYS: lease, state, readers. ARGV: token, lease ttl ms, state ttl ms. 1: renewed; 0: not
# ours (a reader whose expiry passed is removed: it may have been served to a writer).
RENEW = (
    _COMMON
    + """
local ticket, ttl = ARGV[1], ARGV[2]
if is_shared(ticket) then
  local score = redis.call('ZSCORE', KEYS[3], ticket)
  local now = now_ms()
  if not score or tonumber(score) <= now then
    redis.call('ZREM', KEYS[3], ticket)
    return 0
  end
  redis.call('ZADD', KEYS[3], 'XX', string.format('%d', now + tonumber(ttl)), ticket)
  expire_readers(KEYS[3])
elseif redis.call('GET', KEYS[1]) ~= ticket then
  return 0
else
  redis.call('PEXPIRE', KEYS[1], ttl)
end
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return 1
"""
)

# KEYS: queue, alive. ARGV: lease ttl ms, state ttl ms. 1: still waiting; 0: the ticket is
# out of line (granted, or lost: its waiter's next check tells which).
KEEP_WAITING = """
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
redis.call('PEXPIRE', KEYS[2], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

# KEYS: lease, state. ARGV: token, state ttl ms. The new mark; -1: the lease is lost.
MARK = (
    _COMMON
    + """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
return bump(KEYS[2], 'mark', ARGV[2])
"""
)

# A value written under a lease, refused if the lease is lost (the fence at the write).
# KEYS: lease, value. ARGV: token, value, ttl ms. 1: written; 0: refused.
SET_HELD = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
return 1
"""

# A held key's own record replaced (or deleted: no text) and its mark bumped, in one step.
# KEYS: lease, state, value. ARGV: token, state ttl ms, text or '', ttl ms. The new mark;
# -1: the lease is lost, nothing changed.
STORE = (
    _COMMON
    + """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
local stamp = bump(KEYS[2], 'mark', ARGV[2])
if ARGV[3] == '' then
  redis.call('DEL', KEYS[3])
else
  redis.call('SET', KEYS[3], ARGV[3], 'PX', ARGV[4])
end
return stamp
"""
)

# KEYS: lease, value. ARGV: token. 1: deleted (or absent); 0: refused.
DELETE_HELD = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[2])
return 1
"""
