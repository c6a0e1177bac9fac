"""The bucket model (core.bucket) against PluralKit's own GCRA (the fake's), in virtual
time: no event loop, no sleeping, every arrival exact."""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import pytest

from proxy.core.bucket import MAX_SLOWDOWN, BucketModel
from tests.fakepk import Gcra


@dataclass
class Outcome:
    served: int
    ours_429: int
    others_sent: int
    others_429: int
    last_at: float


def simulate(
    rate: float,
    reserve: float,
    margin: float,
    backlog: int,
    *,
    others_rate: float = 0.0,
    latency: float = 0.0,
    horizon: float = 120.0,
) -> Outcome:
    """A proxy with `backlog` requests queued, paced by the model, sends them to PluralKit's
    GCRA (burst = rate) while another program on the same IP sends at `others_rate`;
    every answer teaches the model, as the forwarder does."""
    model = BucketModel(rate, int(rate) - 1, reserve, margin)
    gcra = Gcra()
    events: list[tuple[float, int, str]] = [(0.0, 0, "grant")]
    if others_rate:
        events.append((0.013, 1, "other"))
    seq, served, ours_429, others_sent, others_429, left, last = 2, 0, 0, 0, 0, backlog, 0.0
    while events and left:
        now, _, kind = heapq.heappop(events)
        if now > horizon:
            break
        if kind == "other":
            others_sent += 1
            allowed, *_ = gcra.check("ip", rate, now)
            others_429 += not allowed
            heapq.heappush(events, (now + 1.0 / others_rate, seq, "other"))
        elif kind == "grant":
            wait = model.wait_for(0, now)
            if wait > 0:
                heapq.heappush(events, (now + wait, seq, "grant"))
            else:
                model.take(now, 0.5)
                model.sent(now)
                arrive = now + latency
                allowed, remaining, retry, _ = gcra.check("ip", rate, arrive)
                received = arrive + latency
                if allowed:
                    served, left, last = served + 1, left - 1, arrive
                    model.learn_remaining(remaining, now)
                else:
                    ours_429 += 1
                    model.learn_rejection(int(retry * 1000) / 1000, received, 0.5)
                heapq.heappush(events, (now, seq, "grant"))
        seq += 1
    return Outcome(served, ours_429, others_sent, others_429, last)


@pytest.mark.parametrize(
    ("rate", "reserve", "margin", "share"),
    [(2.0, 2.0, 0.02, 0.98), (10.0, 2.0, 0.02, 0.999), (3.0, 2.0, 0.02, 0.999)],
)
def test_alone_the_model_spends_the_whole_rate_without_a_429(
    rate: float, reserve: float, margin: float, share: float
) -> None:
    """Alone on the IP, a saturated scope is never refused and spends >= its share: all of
    it where the burst leaves room for the reserve, 1/(1 + margin) at burst 2."""
    result = simulate(rate, reserve, margin, backlog=int(rate * 60))
    assert result.ours_429 == 0
    steady = (result.served - model_capacity(rate)) / result.last_at
    assert steady >= share * rate


def model_capacity(rate: float) -> int:
    return BucketModel(rate, int(rate) - 1, 0.0).capacity - 2


@pytest.mark.parametrize(
    ("burst", "reserve", "immediate"),
    # burst 10 fits nine at once (truncation); the margin keeps a fraction of the ninth,
    # the reserve 2 more (at most half of what is spare)
    [(10, 0.0, 8), (10, 2.0, 6), (10, 9.0, 4), (3, 2.0, 1), (2, 2.0, 1)],
)
def test_a_burst_into_an_idle_bucket_goes_at_once_up_to_capacity_minus_reserve(
    burst: int, reserve: float, immediate: int
) -> None:
    """An idle bucket takes a burst at once, less the reserve and the margin."""
    model = BucketModel(float(burst), burst - 1, reserve, 0.02)
    sent = 0
    while model.wait_for(0, 0.0) == 0.0:
        model.take(0.0)
        sent += 1
    assert sent == immediate


def test_burst_one_or_two_is_strict_spacing_plus_the_reserve() -> None:
    """The seed's effective behaviour: one request, then one per interval plus margin."""
    for burst in (0, 1):
        model = BucketModel(2.0, burst, 2.0, 0.05)
        assert model.wait_for(0, 0.0) == 0.0
        model.take(0.0)
        assert model.wait_for(0, 0.0) == pytest.approx(0.525)


def test_a_late_send_moves_the_next_one_later() -> None:
    """Sends anchor on when headers are written, not when the slot was granted."""
    model = BucketModel(2.0, 1, 0.0)
    model.take(0.0)
    model.sent(0.2)
    assert model.wait_for(0, 0.2) == pytest.approx(0.5)


def test_an_unused_slot_is_given_back() -> None:
    """A granted slot that nobody used does not count against the bucket."""
    model = BucketModel(2.0, 1, 0.0)
    model.take(1.0)
    model.give_back(1.0)
    assert model.wait_for(0, 1.0) == 0.0


@pytest.mark.parametrize(
    ("remaining", "moved", "wait"),
    # burst 10 at 10/s, sent at t=0, asked at t=0: remaining r proves tat > (10 - r - 1) e
    [(9, False, 0.0), (8, False, 0.0), (5, True, 0.0), (0, True, 0.1)],
)
def test_remaining_moves_the_model_only_later(remaining: int, moved: bool, wait: float) -> None:
    """Less room than expected upstream moves the model; more room never does."""
    model = BucketModel(10.0, 9, 0.0)
    model.take(0.0)
    assert model.learn_remaining(remaining, 0.0) is moved
    assert model.tat >= 0.1
    assert model.wait_for(0, 0.0) == pytest.approx(wait)


def test_a_rejection_waits_retry_after_plus_one_emission() -> None:
    """An uncharged 429 (retry_after > 0): retrying exactly at retry_after is refused again."""
    model = BucketModel(2.0, 1, 0.0)
    model.take(0.0)
    model.learn_rejection(0.3, 0.0, 0.0)
    assert model.wait_for(0, 0.0) == pytest.approx(0.8)
    assert model.paused_until == pytest.approx(0.8)


def test_a_charged_boundary_rejection_waits_two_emissions_with_jitter() -> None:
    """A 429 with retry_after 0 was charged: the next request waits two emissions, plus
    jitter, so that two proxies that collided do not collide again."""
    model = BucketModel(2.0, 1, 0.0)
    model.take(0.0)
    model.learn_rejection(0.0, 0.0, 0.0)
    assert model.wait_for(0, 0.0) == pytest.approx(1.0)
    jittered = BucketModel(2.0, 1, 0.0)
    jittered.learn_rejection(0.0, 0.0, 0.5)
    assert jittered.wait_for(0, 0.0) == pytest.approx(1.25)


def test_repeated_rejections_slow_our_own_spacing_until_successes_recover_it() -> None:
    """Consecutive 429s double our spacing (bounded); accepted answers bring it back."""
    model = BucketModel(2.0, 1, 0.0)
    for _ in range(10):
        model.learn_rejection(0.0, 0.0, 0.0)
    assert model.slowdown == MAX_SLOWDOWN
    for _ in range(30):
        model.learn_remaining(1, 0.0)
    assert model.slowdown == 1.0


def test_a_tighter_upstream_limit_is_followed_a_looser_one_ignored() -> None:
    """X-RateLimit-Limit below the configuration wins; above it changes nothing."""
    model = BucketModel(10.0, 9, 0.0)
    assert model.follow_limit(20) is False
    assert model.follow_limit(2) is True
    assert (model.rate, model.burst) == (2.0, 1)


def test_sharing_the_ip_with_a_program_at_3_per_second_on_the_pluralkit_profile() -> None:
    """Another program spends 3/s of a 10/s bucket: the model reads it from the answers,
    the backlog moves at >= 6/s, and both see at most a handful of 429s."""
    result = simulate(10.0, 2.0, 0.02, backlog=200, others_rate=3.0, latency=0.01)
    assert result.served == 200
    assert result.ours_429 <= 3
    assert result.others_429 <= 3
    assert 200 / result.last_at >= 6.0


def test_sharing_the_seed_bucket_does_not_collapse() -> None:
    """At 2/s with another program at 1/s, charged rejections must not keep the bucket
    full: the backlog is still served and the other program keeps most of its calls.
    (At burst 2 every request of ours that lands blocks the next of theirs: a request
    landing anywhere but exactly between theirs is charged; this is the best trade found.)"""
    result = simulate(2.0, 2.0, 0.02, backlog=40, others_rate=1.0, latency=0.01, horizon=200.0)
    assert result.served == 40
    assert 40 / result.last_at >= 0.3
    assert result.others_429 <= result.others_sent * 0.6


def test_a_granted_request_not_sent_yet_holds_the_next_one() -> None:
    """Burst 1: while a granted request has not left (a slow new connection), the next is
    not granted; once it leaves, the next waits one interval from then."""
    model = BucketModel(2.0, 1, 0.0, 0.0)
    model.take(0.0)
    assert model.wait_for(0, 0.045) == pytest.approx(0.5)  # as if it left now
    model.sent(0.045)
    assert model.wait_for(0, 0.045) == pytest.approx(0.5)
    assert model.wait_for(0, 0.545) == 0.0
