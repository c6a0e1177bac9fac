"""Budget math and the fair queue, with `now` passed in: no clock, no loop."""

from __future__ import annotations

import pytest

from proxy.core import budget
from proxy.core.budget import PLURALKIT_PROFILE, scope_for
from proxy.core.fairqueue import FairQueue
from proxy.core.quota import QuotaBucket


@pytest.mark.parametrize(
    ("method", "template", "scope"),
    [
        ("GET", "/v2/messages/{id}", "message"),
        ("HEAD", "/v2/members/{ref}", "generic_get"),
        ("GET", "/v2/members/{ref}", "generic_get"),
        ("POST", "/v2/members", "generic_update"),
        ("DELETE", "/v2/groups/{ref}", "generic_update"),
    ],
)
def test_pluralkit_profile_scopes(method: str, template: str, scope: str) -> None:
    """The documented profile sorts requests into PluralKit's own buckets."""
    assert scope_for(method, template, PLURALKIT_PROFILE).name == scope


def test_retry_after_is_when_a_refused_request_would_fit() -> None:
    """retry_after is when the request would fit within its own max wait."""
    assert budget.retry_after_for(12.0, 10.0, 0.2) == pytest.approx(2.0)
    assert budget.retry_after_for(1.0, 10.0, 0.2) == pytest.approx(0.2)


def test_fair_queue_interleaves_a_single_request_after_one_slot() -> None:
    """A consumer with one request is served after at most one item of a flooder."""
    queue: FairQueue[str] = FairQueue()
    for n in range(100):
        queue.push("bulk", 1.0, "normal", f"b{n}")
    queue.pop()
    queue.push("light", 1.0, "normal", "l0")
    order = [queue.pop() for _ in range(3)]
    assert ("light", "l0") in order[:2]


def test_fair_queue_weights_split_slots() -> None:
    """Weights 3:1 under saturation split slots 3:1."""
    queue: FairQueue[int] = FairQueue()
    for n in range(400):
        queue.push("a", 3.0, "normal", n)
        queue.push("b", 1.0, "normal", n)
    served = [queue.pop()[0] for _ in range(200)]  # type: ignore[index]
    assert served.count("a") == 150 and served.count("b") == 50


def test_fair_queue_priorities_overtake_but_background_progresses() -> None:
    """Interactive overtakes a background backlog; background still gets 1 in 9."""
    queue: FairQueue[str] = FairQueue()
    for n in range(50):
        queue.push("c", 1.0, "background", f"bg{n}")
    queue.pop()
    queue.push("c", 1.0, "interactive", "hi")
    assert queue.pop() == ("c", "hi")
    for n in range(100):
        queue.push("c", 1.0, "interactive", f"i{n}")
    served = [queue.pop()[1] for _ in range(90)]  # type: ignore[index]
    assert sum(1 for s in served if s.startswith("bg")) >= 9


def test_fair_queue_forgets_idle_consumers() -> None:
    """State for a consumer with nothing queued is dropped: memory stays bounded."""
    queue: FairQueue[int] = FairQueue()
    for n in range(10_000):
        queue.push(f"peer{n}", 1.0, "normal", n)
        queue.pop()
    assert queue.depths() == {} and len(queue) == 0


def test_fair_queue_remove_and_estimate() -> None:
    """Removed items leave no trace; the wait estimate counts what would go first."""
    queue: FairQueue[int] = FairQueue()
    for n in range(5):
        queue.push("a", 1.0, "normal", n)
    assert queue.ahead_of_new("a", 1.0) == 5
    assert queue.ahead_of_new("b", 1.0) == 1
    assert queue.remove("a", "normal", 3)
    assert not queue.remove("a", "normal", 3)
    assert len(queue) == 4


def test_quota_bucket() -> None:
    """A consumer quota of 1/s burst 2: two at once, then one a second; refusals are free."""
    bucket = QuotaBucket(1.0, 2)
    assert bucket.take(100.0).allowed and bucket.take(100.0).allowed
    refused = bucket.take(100.0)
    assert not refused.allowed and refused.retry_after == pytest.approx(1.0)
    assert bucket.take(101.0).allowed
