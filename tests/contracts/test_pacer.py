"""What every Pacer must do. A new backend adds a fixture to `make`, not tests.

Time is a ManualClock: nothing sleeps, every grant time is exact."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable

import pytest

from proxy.budget.pacer import LocalPacer, Pacer
from proxy.budget.redis_pacer import redis_pacers
from proxy.core.budget import ScopeSpec
from proxy.core.ratesignal import RateSignal
from tests.clocks import ManualClock
from tests.redis_fixtures import drop_prefix, make_link, shared_redis_or_skip, unique_prefix

MakePacer = Callable[[ScopeSpec], Pacer]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture(params=["local", "redis"])
async def make(request: pytest.FixtureRequest, clock: ManualClock) -> AsyncIterator[MakePacer]:
    if request.param == "local":

        def local(spec: ScopeSpec) -> Pacer:
            return LocalPacer(spec, 2.0, 0.02, clock)

        yield local
        return
    shared_redis_or_skip()
    prefix = unique_prefix()
    link = await make_link(clock, prefix)
    # The scripts read the test's clock instead of Redis TIME, so that time is driven.
    yield redis_pacers(link, 2.0, 0.02, clock, redis_time=False)
    await link.stop()
    await drop_prefix(prefix)


async def grants_within(pacer: Pacer, clock: ManualClock, seconds: float) -> list[float]:
    """Ask for slots as a saturated scheduler would, for `seconds` of manual time."""
    times: list[float] = []
    end = clock.now + seconds
    while clock.now < end:
        wait = await pacer.reserve()
        if wait > 0:
            await clock.advance(wait)
            continue
        pacer.mark_sent()
        times.append(clock.now)
    return times


async def test_strict_spacing_at_burst_one(make: MakePacer, clock: ManualClock) -> None:
    """Burst 1 at 2/s: one at once, then one per 0.5 s plus the 2 % margin."""
    times = await grants_within(make(ScopeSpec("all", 2.0, 1)), clock, 5.0)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert times[0] == pytest.approx(1000.0)
    assert all(gap == pytest.approx(0.51) for gap in gaps)


async def test_a_burst_goes_at_once_then_the_whole_rate(
    make: MakePacer, clock: ManualClock
) -> None:
    """Burst 9 at 10/s: six at once (reserve 2, margin), then exactly 10/s."""
    times = await grants_within(make(ScopeSpec("generic_get", 10.0, 9)), clock, 10.0)
    start = times[0]
    assert sum(1 for t in times if t == start) == 6
    steady = [t for t in times if t >= start + 1.0]
    assert (len(steady) - 1) / (steady[-1] - steady[0]) == pytest.approx(10.0, rel=1e-6)


async def test_an_unused_slot_is_given_back(make: MakePacer, clock: ManualClock) -> None:
    """A reserved slot that nobody used leaves the next request free to go at once."""
    pacer = make(ScopeSpec("all", 2.0, 1))
    assert await pacer.reserve() == 0.0
    pacer.give_back()
    assert await pacer.reserve() == 0.0


async def test_an_upstream_429_pauses_and_is_reported(make: MakePacer, clock: ManualClock) -> None:
    """After a charged 429 nothing is granted for two emissions (plus jitter < one, and the
    margin)."""
    pacer = make(ScopeSpec("all", 2.0, 1))
    await pacer.reserve()
    await pacer.learn(RateSignal(429, 2, 0, "generic", 0), clock.now, clock.now)
    assert 1.0 <= pacer.paused_for() <= 1.5 + 0.02 * 0.5  # jitter < one emission, + margin
    assert await pacer.reserve() == pytest.approx(pacer.paused_for())


async def test_answers_showing_less_room_slow_the_pacer(
    make: MakePacer, clock: ManualClock
) -> None:
    """Remaining 0 on an answer means someone else spends the bucket: wait for a slot."""
    pacer = make(ScopeSpec("generic_get", 10.0, 9))
    assert await pacer.reserve() == 0.0
    await pacer.learn(RateSignal(200, 10, 0, "generic_get"), clock.now, clock.now)
    assert pacer.wait_for(0) == pytest.approx(0.9 - 0.598)  # tat 0.9 ahead, headroom 5.98


async def test_garbage_rate_headers_change_nothing(make: MakePacer, clock: ManualClock) -> None:
    """Signals with unreadable values (already dropped by read_signal) leave pacing alone."""
    pacer = make(ScopeSpec("generic_get", 10.0, 9))
    before = pacer.wait_for(3)
    await pacer.learn(
        RateSignal(200, None, None, None, None, ("x-ratelimit-remaining:negative",)),
        clock.now,
        clock.now,
    )
    assert pacer.wait_for(3) == before


async def test_own_system_answers_do_not_touch_the_ip_bucket(
    make: MakePacer, clock: ManualClock
) -> None:
    """An answer from the token's own bucket says nothing about the IP's."""
    pacer = make(ScopeSpec("generic_get", 10.0, 9))
    before = pacer.wait_for(0)
    await pacer.learn(RateSignal(200, 10, 0, "own_system_get"), clock.now, clock.now)
    await pacer.learn(RateSignal(429, 10, 0, "own_system_get", 500), clock.now, clock.now)
    assert pacer.wait_for(0) == before
