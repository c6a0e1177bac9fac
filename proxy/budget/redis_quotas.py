"""Per-consumer quotas counted in Redis, so that N replicas do not give N times the quota.
Without Redis each replica counts alone at a share of the quota (as the pacer does)."""

from __future__ import annotations

from proxy.budget.quotas import LocalQuotaStore
from proxy.clock import Clock
from proxy.core.quota import QuotaCheck
from proxy.shared.link import LUA_NOW, RedisLink

# QuotaBucket (core/quota.py) as one atomic script: a refused request is not charged.
TAKE = (
    LUA_NOW
    + """
local rate = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local e = 1 / rate
local tat = math.max(tonumber(redis.call('GET', key)) or 0, now)
local allow_at = tat + e - burst * e
if now < allow_at - 1e-9 then
  return {0, 0, tostring(allow_at - now), tostring(tat - now)}
end
tat = tat + e
redis.call('SET', key, tostring(tat), 'EX', math.ceil(burst * e) + 1)
allow_at = tat + e - burst * e
if now < allow_at - 1e-9 then
  return {1, 0, tostring(allow_at - now), tostring(tat - now)}
end
local remaining = math.min(burst, math.floor((now - allow_at) / e + 1e-9) + 1)
return {1, remaining, '0', tostring(tat - now)}
"""
)


class RedisQuotaStore:
    __slots__ = ("_clock", "_fallback", "_last", "_link", "_redis_time", "_take")

    def __init__(self, link: RedisLink, clock: Clock, redis_time: bool = True) -> None:
        self._link = link
        self._clock = clock
        self._take = link.client.register_script(TAKE)
        self._fallback = LocalQuotaStore(clock)
        self._last: dict[str, tuple[float, QuotaCheck]] = {}
        self._redis_time = redis_time

    async def take(self, name: str, rate: float, burst: int) -> QuotaCheck:
        now = "" if self._redis_time else repr(self._clock.monotonic())
        key = self._link.key("quota", name)
        reply = await self._link.call(lambda: self._take(keys=[key], args=[now, rate, burst]))
        if reply is None:
            seen = self._link.replicas_seen
            share = 1.0 / seen if seen else self._link.settings.fallback_share
            return await self._fallback.take(name, rate * share, burst)
        allowed, remaining, retry, reset = reply
        check = QuotaCheck(bool(int(allowed)), int(remaining), float(retry), float(reset))
        self._last[name] = (self._clock.monotonic(), check)
        return check

    def peek(self, name: str, rate: float, burst: int) -> QuotaCheck:
        """From the last answer about `name`, moved on by the time since (an estimate)."""
        last = self._last.get(name)
        if last is None:
            return QuotaCheck(True, burst, 0.0, 0.0)
        at, check = last
        elapsed = self._clock.monotonic() - at
        if elapsed >= check.reset_after:
            return QuotaCheck(True, burst, 0.0, 0.0)
        regained = int((elapsed + 1e-9) * rate)
        remaining = min(burst, check.remaining + regained)
        retry = 0.0 if remaining else max(0.0, check.retry_after - elapsed)
        return QuotaCheck(remaining > 0, remaining, retry, check.reset_after - elapsed)
