"""The bucket model with its state in Redis, shared by every replica behind one IP.

The same model as core/bucket.py, written as Lua so that each grant and each lesson from
upstream is one atomic script on Redis's own clock (`TIME`): one clock for all replicas.
Without Redis (lost, or slower than `redis.grant_timeout_ms` for a grant) the replica
paces alone on a `LocalPacer` at a safe share of the rate: the rate divided by the number
of replicas last seen, or `redis.fallback_share` if none was ever seen."""

from __future__ import annotations

import asyncio
import random

from proxy.budget.pacer import LocalPacer, Pacer, PacerFactory
from proxy.clock import Clock
from proxy.core.bucket import BucketModel
from proxy.core.budget import ScopeSpec
from proxy.core.ratesignal import RateSignal
from proxy.shared.link import LUA_NOW, RedisLink

# Shared head of every script: the clock, the stored state, the tighter learned limit.
_HEAD = (
    LUA_NOW
    + """
local rate = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local reserve = tonumber(ARGV[4])
local margin = tonumber(ARGV[5])
local s = redis.call('HMGET', key, 'tat', 'paused', 'slow', 'rate', 'burst')
local tat = tonumber(s[1]) or -1e18
local paused = tonumber(s[2]) or 0
local slow = tonumber(s[3]) or 1
if s[4] then rate = math.min(rate, tonumber(s[4])) end
if s[5] then burst = math.min(burst, tonumber(s[5])) end
local e = 1 / rate
local cap = math.max(1, burst)
local spare = cap - 1
local headroom = spare - math.min(reserve, spare / 2) - margin
local function reply(wait)
  redis.call('HSET', key, 'tat', tostring(tat), 'paused', tostring(paused), 'slow', tostring(slow))
  redis.call('EXPIRE', key, 3600)
  return {tostring(wait), tostring(now), tostring(tat), tostring(paused), tostring(slow),
          tostring(rate), tostring(cap)}
end
"""
)

# ARGV[6]: jitter in [0, 1).
RESERVE = (
    _HEAD
    + """
local wait = math.max(0, tat - headroom * e - now, paused - now)
if wait > 0 then return reply(wait) end
tat = math.max(tat, now) + e
if slow > 1 then paused = math.max(paused, now + (slow - 1) * e * (1 + tonumber(ARGV[6]))) end
return reply(0)
"""
)

# ARGV[6]: what to undo or learn; ARGV[7..]: its values (times on the same clock as now).
LEARN = (
    _HEAD
    + """
local kind = ARGV[6]
if kind == 'give_back' then
  local before = tat - e
  if before > now then tat = before else tat = -1e18 end
elseif kind == 'sent' then
  tat = math.max(tat, now + e)
elseif kind == 'remaining' then
  slow = math.max(1, slow * 0.8)
  local floor = tonumber(ARGV[8]) + (cap + 1 - tonumber(ARGV[7]) - 1) * e
  if floor > tat then tat = floor end
elseif kind == 'rejection' then
  local retry = tonumber(ARGV[7])
  local received = tonumber(ARGV[8])
  local floor
  if retry > 0 then floor = received + retry + cap * e else floor = received + (cap + 1) * e end
  tat = math.max(tat, floor + tonumber(ARGV[9]) * e)
  paused = math.max(paused, tat - headroom * e)
  slow = math.min(4, slow * 2)
elseif kind == 'limit' then
  local limit = tonumber(ARGV[7])
  if limit < rate then
    redis.call('HSET', key, 'rate', tostring(limit), 'burst', tostring(math.max(1, limit - 1)))
  end
end
return reply(0)
"""
)


# A turn lasts this long (a grant late by more waits for the next); between two replicas'
# turns there is one more of it, for the delay between a grant and its send.
_TURN_WINDOW = 0.005
_TURN_SLACK = 0.01


class RedisPacer:
    """A Pacer whose bucket state lives in Redis; estimates come from the last reply."""

    def __init__(
        self,
        spec: ScopeSpec,
        link: RedisLink,
        reserve: float,
        margin: float,
        clock: Clock,
        fallback: LocalPacer,
        redis_time: bool = True,
    ) -> None:
        self.spec = spec
        self._link = link
        self._clock = clock
        self._key = link.key("budget", link.settings.egress, spec.name)
        self._args: list[str | float] = [spec.rate, spec.burst, reserve, margin]
        self._margin = margin
        self._reserve = link.client.register_script(RESERVE)
        self._learn = link.client.register_script(LEARN)
        self._mirror = BucketModel(spec.rate, spec.burst, reserve, margin)
        self._fallback = fallback
        self._redis_time = redis_time
        self._offset = 0.0  # redis time - local monotonic, from the last reply
        self._random = random.Random()
        self._alone = True  # the last grant came from the fallback
        self._was_shared = False  # a grant ever came from Redis
        self._pending: set[asyncio.Task[None]] = set()

    @property
    def interval(self) -> float:
        return self._mirror.emission

    def _now_arg(self) -> str:
        return "" if self._redis_time else repr(self._clock.monotonic())

    def _absorb(self, reply: list[bytes], sent_local: float) -> float:
        wait, now, tat, paused, slow, rate, cap = (float(v) for v in reply)
        local_now = self._clock.monotonic()
        self._offset = now - (sent_local + local_now) / 2 if self._redis_time else 0.0
        mirror = self._mirror
        mirror.tat, mirror.paused_until = tat - self._offset, paused - self._offset
        mirror.slowdown, mirror.rate, mirror.burst = slow, rate, int(cap)
        return wait

    async def reserve(self) -> float:
        await self.settle()  # lessons sent before this grant reach the shared state first
        asked = self._clock.monotonic()
        if self._mirror.unsent and not self._alone:
            # One of ours is granted but not sent yet: it may still leave at any moment.
            pending = self._mirror.wait_for(0, asked)
            if pending > 0.0:
                return pending
        recovering = "1" if self._alone and self._was_shared else ""
        if recovering and self._link.settling():
            return await self._alone_reserve()
        args: list[str | float] = [
            self._now_arg(),
            *self._args,
            self._random.random(),
            recovering,
        ]
        reply = await self._link.call(lambda: self._reserve(keys=[self._key], args=args))
        if reply is None:
            return await self._alone_reserve()
        self._alone, self._was_shared = False, True
        unsent = self._mirror.unsent
        wait = self._absorb(reply, asked)
        self._mirror.unsent = unsent + (1 if wait == 0.0 else 0)
        return wait

    async def _alone_reserve(self) -> float:
        turn = self._turn_in()
        if turn > 0.0:
            return turn
        if not self._alone:
            # Start from what the shared bucket last said (never faster than it allowed),
            # at a random point of one slot, so that the replicas that lost Redis together
            # do not all send at once.
            self._alone = True
            now = self._clock.monotonic()
            self._fallback.adopt(max(self._mirror.tat, now), self._share(), self._random.random())
        return await self._fallback.reserve()

    def _turn_in(self) -> float:
        """At burst 1 without Redis, the replicas last counted take turns by wall clock: of
        every N slots of 1/rate (plus the margin and the grant-to-send delay), replica k
        sends in slot k only, so that two of them never land closer than one interval.
        (With a burst the bucket absorbs their phases: rate / N suffices.) 0: its turn."""
        seen = self._link.replicas_seen
        if self.spec.burst > 1 or not seen or seen < 2:
            return 0.0
        slot = (1.0 / self.spec.rate) * (1.0 + self._margin) + _TURN_SLACK
        cycle = slot * seen
        into = (self._clock.wall() - self._link.replica_index * slot) % cycle
        return 0.0 if into < _TURN_WINDOW else cycle - into

    def _share(self) -> float:
        seen = self._link.replicas_seen
        return 1.0 / seen if seen else self._link.settings.fallback_share

    async def _teach(self, kind: str, *values: float) -> None:
        """One lesson, applied to the shared state atomically."""
        args: list[str | float] = [self._now_arg(), *self._args, kind, *values]
        asked = self._clock.monotonic()
        reply = await self._link.call(lambda: self._learn(keys=[self._key], args=args))
        if reply is not None:
            self._absorb(reply, asked)

    def _lesson(self, kind: str, *values: float) -> None:
        """Send a lesson in the background, for the synchronous seam methods; the next
        `reserve` waits for it."""
        task = asyncio.create_task(self._teach(kind, *values))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def give_back(self) -> None:
        if self._alone:
            self._fallback.give_back()
        else:
            self._mirror.unsent = max(0, self._mirror.unsent - 1)
            self._lesson("give_back")

    def mark_sent(self) -> None:
        self._fallback.mark_sent()
        self._mirror.unsent = max(0, self._mirror.unsent - 1)
        if not self._alone:
            self._lesson("sent")

    async def learn(self, signal: RateSignal, sent_at: float, received_at: float) -> None:
        await self._fallback.learn(signal, sent_at, received_at)  # logs bad headers once
        if signal.own_system or self._alone:
            return
        if signal.limit is not None and signal.limit < self._mirror.rate:
            await self._teach("limit", signal.limit)
        if signal.throttled:
            retry = (signal.retry_after_ms or 0) / 1000.0
            jitter = self._random.random()
            await self._teach("rejection", retry, received_at + self._offset, jitter)
        elif signal.remaining is not None:
            await self._teach("remaining", signal.remaining, sent_at + self._offset)

    def wait_for(self, ahead: int) -> float:
        if self._alone:
            return self._fallback.wait_for(ahead)
        return self._mirror.wait_for(ahead, self._clock.monotonic())

    def paused_for(self) -> float:
        if self._alone:
            return self._fallback.paused_for()
        return max(0.0, self._mirror.paused_until - self._clock.monotonic())

    async def settle(self) -> None:
        """Wait for lessons still on their way to Redis (tests, shutdown)."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)


def redis_pacers(
    link: RedisLink, reserve: float, margin: float, clock: Clock, redis_time: bool = True
) -> PacerFactory:
    def make(spec: ScopeSpec) -> Pacer:
        fallback = LocalPacer(spec, reserve, margin, clock)
        return RedisPacer(spec, link, reserve, margin, clock, fallback, redis_time)

    return make
