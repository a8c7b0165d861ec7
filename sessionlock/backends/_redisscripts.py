"""The Redis backend's keys and Lua scripts: every step that must be atomic, in one place.

One session's keys share a hash tag, so they live in one Redis Cluster slot::

    sessionlock:{<key>}:lease        the holder's ticket (SET PX lease_ttl)
    sessionlock:{<key>}:queue        tickets waiting, oldest first (LIST, PX state_ttl)
    sessionlock:{<key>}:alive:<t>    ticket t still waits (PX lease_ttl, renewed by its process)
    sessionlock:{<key>}:wake:<t>     where t is told it holds the lease (LIST, PX lease_ttl)
    sessionlock:{<key>}:state        fence and mark counters (HASH, PX state_ttl)
    sessionlock:{<key>}:value        a value of :meth:`Backend.set` (PX its ttl)

A release hands the lease to the oldest live ticket *inside the script* and pushes the news
onto that ticket's wake list: the waiter, blocked in ``BLPOP`` on it, wakes holding the lease
(no second round trip, no race with a newcomer), in line order across processes and hosts.

Counters. ``fence`` grows at every grant, ``mark`` at every :meth:`Backend.mark`. A counter
that is absent (a new key, or one whose state expired) starts from the server's clock in
microseconds, so a counter that expired and started again never repeats an earlier value
(it grew by one per grant or mark, each of which took more than a microsecond).

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
    "STORE",
    "WITHDRAW",
    "names",
    "value_name",
]

PREFIX = "sessionlock:"
#: The hashing secret every process shares (see RedisBackend.secret): the one key without a
#: TTL. A single key, never one per session, so nothing piles up.
SECRET_KEY = PREFIX + "secret"


def names(key: str) -> tuple[str, str, str, str]:
    """(lease, queue, state, prefix) of a key; ``prefix`` + ``alive:``/``wake:`` + ticket."""
    prefix = f"{PREFIX}{{{key}}}:"
    return prefix + "lease", prefix + "queue", prefix + "state", prefix


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

-- The lease to ``ticket``: its current().
local function grant(lease, state, prefix, ticket, ttl, state_ttl)
  redis.call('SET', lease, ticket, 'PX', ttl)
  redis.call('DEL', prefix .. 'alive:' .. ticket)
  bump(state, 'fence', state_ttl)
  return current(state)
end

-- The lease (free) to the oldest ticket still alive, told on its wake list: 1; none: 0.
local function hand_on(lease, queue, state, prefix, ttl, state_ttl)
  while true do
    local ticket = redis.call('LPOP', queue)
    if not ticket then return 0 end
    if redis.call('EXISTS', prefix .. 'alive:' .. ticket) == 1 then
      local got = grant(lease, state, prefix, ticket, ttl, state_ttl)
      local wake = prefix .. 'wake:' .. ticket
      redis.call('RPUSH', wake, got[1] .. ' ' .. got[2])
      redis.call('PEXPIRE', wake, ttl)
      return 1
    end
  end
end

"""

# KEYS: lease, queue, state. ARGV: ticket, lease ttl ms, state ttl ms, prefix, wait (0|1).
# Free and nobody alive in line: granted, {fence, mark}. Otherwise nil, and with wait=1 the
# ticket joins the line. A free lease with someone alive in line (its holder expired) is
# handed to them first: a newcomer never jumps the line.
ACQUIRE = (
    _COMMON
    + """
local lease, queue, state = KEYS[1], KEYS[2], KEYS[3]
local ticket, ttl, state_ttl, prefix = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if redis.call('EXISTS', lease) == 0
    and hand_on(lease, queue, state, prefix, ttl, state_ttl) == 0 then
  return grant(lease, state, prefix, ticket, ttl, state_ttl)
end
if ARGV[5] == '1' then
  redis.call('RPUSH', queue, ticket)
  redis.call('PEXPIRE', queue, state_ttl)
  redis.call('SET', prefix .. 'alive:' .. ticket, '1', 'PX', ttl)
end
return false
"""
)

# KEYS: lease, queue, state. ARGV: token, lease ttl ms, state ttl ms, prefix.
# -1: not ours any more (expired, or taken after expiry); 0: now free; 1: handed on.
RELEASE = (
    _COMMON
    + """
local lease, queue, state = KEYS[1], KEYS[2], KEYS[3]
if redis.call('GET', lease) ~= ARGV[1] then return -1 end
redis.call('DEL', lease)
return hand_on(lease, queue, state, ARGV[4], ARGV[2], ARGV[3])
"""
)

# A waiter's safety re-check (its wake-up may be lost: a restart, a failover).
# KEYS: lease, queue, state. ARGV: ticket, lease ttl ms, state ttl ms, prefix.
# Granted: {fence, mark} (its wake message removed); else nil, the ticket back in line and
# alive if it was lost. A free lease goes to the line's oldest live ticket.
CHECK = (
    _COMMON
    + """
local lease, queue, state = KEYS[1], KEYS[2], KEYS[3]
local ticket, ttl, state_ttl, prefix = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local wake = prefix .. 'wake:' .. ticket
if redis.call('EXISTS', lease) == 0 then
  hand_on(lease, queue, state, prefix, ttl, state_ttl)
  if redis.call('EXISTS', lease) == 0 then
    redis.call('DEL', wake)
    return grant(lease, state, prefix, ticket, ttl, state_ttl)
  end
end
if redis.call('GET', lease) == ticket then
  redis.call('DEL', wake)
  return current(state)
end
if not redis.call('LPOS', queue, ticket) then
  redis.call('RPUSH', queue, ticket)
end
redis.call('PEXPIRE', queue, state_ttl)
redis.call('SET', prefix .. 'alive:' .. ticket, '1', 'PX', ttl)
return false
"""
)

# Giving up a wait. KEYS: lease, queue, state. ARGV: ticket, lease ttl ms, state ttl ms,
# prefix, push (0|1: wake a helper blocked on the ticket's list).
# Granted meanwhile: {fence, mark}, the caller holds it; else nil, out of line.
WITHDRAW = (
    _COMMON
    + """
local lease, queue, state = KEYS[1], KEYS[2], KEYS[3]
local ticket, prefix = ARGV[1], ARGV[4]
local wake = prefix .. 'wake:' .. ticket
redis.call('LREM', queue, 0, ticket)
redis.call('DEL', prefix .. 'alive:' .. ticket, wake)
if redis.call('GET', lease) == ticket then return current(state) end
if ARGV[5] == '1' then
  redis.call('RPUSH', wake, 'gone')
  redis.call('PEXPIRE', wake, ARGV[2])
end
return false
"""
)

# KEYS: lease, state. ARGV: token, lease ttl ms, state ttl ms. 1: renewed; 0: not ours.
RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return 1
"""

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
