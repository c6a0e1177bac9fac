"""What every QuotaStore must do. A new backend adds a fixture to `store`, not tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from proxy.budget.quotas import LocalQuotaStore, QuotaStore
from proxy.budget.redis_quotas import RedisQuotaStore
from tests.clocks import ManualClock
from tests.redis_fixtures import drop_prefix, make_link, shared_redis_or_skip, unique_prefix


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture(params=["local", "redis"])
async def store(request: pytest.FixtureRequest, clock: ManualClock) -> AsyncIterator[QuotaStore]:
    if request.param == "local":
        yield LocalQuotaStore(clock)
        return
    shared_redis_or_skip()
    prefix = unique_prefix()
    link = await make_link(clock, prefix)
    # The script reads the test's clock instead of Redis TIME, so that time is driven.
    yield RedisQuotaStore(link, clock, redis_time=False)
    await link.stop()
    await drop_prefix(prefix)


async def test_a_burst_is_allowed_then_refused_with_an_honest_retry(
    store: QuotaStore, clock: ManualClock
) -> None:
    """rate 2/s burst 3: three at once, the fourth refused until 0.5 s have passed."""
    checks = [await store.take("bot", 2.0, 3) for _ in range(4)]
    assert [c.allowed for c in checks] == [True, True, True, False]
    assert [c.remaining for c in checks[:3]] == [2, 1, 0]
    assert checks[3].retry_after == pytest.approx(0.5)
    await clock.advance(0.5)
    assert (await store.take("bot", 2.0, 3)).allowed


async def test_peek_does_not_charge_and_consumers_are_separate(
    store: QuotaStore, clock: ManualClock
) -> None:
    """Peeking costs nothing; one consumer's quota does not spend another's."""
    assert store.peek("bot", 1.0, 2).remaining == 2
    await store.take("bot", 1.0, 2)
    await store.take("bot", 1.0, 2)
    assert store.peek("bot", 1.0, 2).remaining == 0
    assert store.peek("bot", 1.0, 2).remaining == 0
    assert (await store.take("other", 1.0, 2)).allowed
