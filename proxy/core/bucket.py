"""A mirror of one upstream GCRA bucket (PluralKit's ratelimit.lua), seen from this side.

PluralKit, per request: emission `e = 1/rate`, `tat' = max(tat, now) + e`,
`remaining = burst - (tat' - now) / e`, truncated to an integer. A request passes only
when remaining >= 1; with 0 <= remaining < 1 it is rejected *and charged* (tat' stored);
below 0 it is rejected and nothing is stored. So a fresh bucket takes `burst - 1` requests
at once (the capacity), then one per `e`, and a request landing early at the boundary makes
the bucket worse. The model grants a request only if it would land with `reserve` tokens
to spare, and it is only ever moved *later* by what upstream's answers prove.
"""

from __future__ import annotations

from dataclasses import dataclass

# Consecutive 429s double our own spacing up to this factor; successes bring it back.
# Chosen in tests/core/test_bucket.py's simulation of a shared seed bucket: 4 and 0.8
# served the backlog fastest while the other program lost fewest calls.
MAX_SLOWDOWN = 4.0
_RECOVERY = 0.8


@dataclass(slots=True)
class BucketModel:
    rate: float  # requests per second
    burst: int  # requests an idle bucket takes at once: PluralKit's burst - 1 (at least 1)
    reserve: float  # tokens left for other programs on the IP (at most half the burst)
    margin: float = 0.0  # timing safety, as a fraction of one emission
    tat: float = float("-inf")  # theoretical arrival time, on the caller's monotonic clock
    paused_until: float = 0.0
    slowdown: float = 1.0  # > 1 while 429s repeat: someone else spends this bucket
    unsent: int = 0  # granted, headers not yet written: they may still leave at any moment

    @property
    def emission(self) -> float:
        return 1.0 / self.rate

    @property
    def capacity(self) -> int:
        """Requests an idle bucket takes at once."""
        return max(1, self.burst)

    @property
    def upstream_burst(self) -> int:
        """PluralKit's own burst parameter (it loses one request to the truncation)."""
        return self.capacity + 1

    @property
    def headroom(self) -> float:
        """How far ahead of now (in emissions) the tat may be when a request is granted:
        the truncation costs one token, the reserve and the margin are kept."""
        spare = self.capacity - 1
        return spare - min(self.reserve, spare / 2) - self.margin

    def wait_for(self, ahead: int, now: float) -> float:
        """Seconds until a request with `ahead` others granted before it may be sent.
        A granted request not sent yet is taken as leaving now, the latest it could, since
        upstream will charge it when it arrives: so a request that is slow to leave (a new
        connection) never lets the next one land too close behind it."""
        tat = max(self.tat, now + self.unsent * self.emission) if self.unsent else self.tat
        allow_at = tat + (ahead * self.slowdown - self.headroom) * self.emission
        return max(0.0, allow_at - now, self.paused_until - now)

    def take(self, now: float, jitter: float = 0.0) -> None:
        """One request is granted now. While 429s repeat, the next one waits longer."""
        self.tat = max(self.tat, now) + self.emission
        self.unsent += 1
        if self.slowdown > 1.0:
            gap = (self.slowdown - 1.0) * self.emission * (1.0 + jitter)
            self.paused_until = max(self.paused_until, now + gap)

    def give_back(self, now: float) -> None:
        """A granted slot was not used (nobody was left to send)."""
        before = self.tat - self.emission
        # at or before now, the bucket was idle before the grant: it is idle again
        self.tat = before if before > now else float("-inf")
        self.unsent = max(0, self.unsent - 1)

    def sent(self, now: float) -> None:
        """The granted request was really written now: upstream charges it now, not at
        the grant, so a late send must not leave the next one arriving early."""
        self.tat = max(self.tat, now + self.emission)
        self.unsent = max(0, self.unsent - 1)

    def pause(self, until: float) -> None:
        self.paused_until = max(self.paused_until, until)

    # -- what upstream's answers prove -------------------------------------------------
    def learn_remaining(self, remaining: int, sent_at: float) -> bool:
        """An accepted answer said `remaining`: upstream's tat is then later than
        `sent_at + (burst - remaining - 1) * e` (sent_at is no later than upstream's now).
        Return whether the model had to move (someone else spends this bucket)."""
        self.slowdown = max(1.0, self.slowdown * _RECOVERY)
        floor = sent_at + (self.upstream_burst - remaining - 1) * self.emission
        if floor <= self.tat + 1e-9:
            return False
        self.tat = floor
        return True

    def learn_rejection(self, retry_after: float, received_at: float, jitter: float) -> None:
        """An upstream 429. With `retry_after > 0` nothing was charged and upstream's tat is
        `now + retry_after + (burst - 1) * e`; with 0 it was charged at the boundary and the
        tat is at most `now + burst * e`. Both are taken at their latest (received_at), plus
        jitter, and repeated 429s slow our own spacing down so that the bucket can drain."""
        if retry_after > 0:
            floor = received_at + retry_after + (self.upstream_burst - 1) * self.emission
        else:
            floor = received_at + self.upstream_burst * self.emission
        self.tat = max(self.tat, floor + jitter * self.emission)
        self.paused_until = max(self.paused_until, self.tat - self.headroom * self.emission)
        self.slowdown = min(MAX_SLOWDOWN, self.slowdown * 2.0)

    def follow_limit(self, limit: int) -> bool:
        """Upstream announced a tighter limit than configured: follow it."""
        if limit >= self.rate:
            return False
        self.rate = float(limit)
        self.burst = min(self.burst, max(1, limit - 1))
        return True
