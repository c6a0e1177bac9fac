"""The status page's bounded history (proxy/ops/history.py): no event loop, time passed in."""

from __future__ import annotations

import pytest

from proxy.ops.history import History, Sample, Samples, ScopeSample, WindowCount

WALL = 1_800_000_000.0  # wall = monotonic + WALL


def sample(sent: int = 0, throttled: int = 0, depth: int = 0, lookups: int = 0) -> Sample:
    return Sample((ScopeSample(sent, throttled, depth, depth > 3),), lookups, lookups // 2)


def test_the_first_call_is_a_baseline_and_each_ended_second_one_point() -> None:
    """Nothing is drawn before a second has ended; then the second holds what changed."""
    history = History(["all"])
    history.advance(100.2, WALL, sample())
    history.advance(100.9, WALL, sample(sent=1))
    assert history.since(0) == []
    history.advance(101.1, WALL, sample(sent=3, throttled=1, depth=5, lookups=4))
    (point,) = history.since(0)
    assert (point.seq, point.at) == (1, WALL + 100.0)
    assert (point.sent, point.throttled, point.depth, point.paused) == ((3,), (1,), (5,), (True,))
    assert (point.lookups, point.hits) == (4, 2)


def test_a_quiet_gap_is_zeros_and_what_changed_lands_in_its_newest_second() -> None:
    """Seconds when nobody asked get zeros and the current gauges, not a guess."""
    history = History(["all"])
    history.advance(10.0, WALL, sample())
    history.advance(14.5, WALL, sample(sent=2, depth=1))
    points = history.since(0)
    assert [p.at - WALL for p in points] == [10.0, 11.0, 12.0, 13.0]
    assert [p.sent[0] for p in points] == [0, 0, 0, 2]
    assert [p.depth[0] for p in points] == [1, 1, 1, 1]


@pytest.mark.parametrize(
    ("seconds", "size", "kept"),
    [(5, 10, 5), (10, 10, 10), (2_000, 10, 10), (100_000, 900, 900)],
)
def test_memory_is_fixed_whatever_the_time_or_traffic(seconds: int, size: int, kept: int) -> None:
    """The ring keeps at most `size` points, however long it runs or how far time jumps."""
    history = History(["a", "b"], size=size)
    history.advance(0.0, WALL, Sample((ScopeSample(0, 0, 0, False),) * 2, 0, 0))
    history.advance(float(seconds), WALL, Sample((ScopeSample(9, 0, 0, False),) * 2, 0, 0))
    assert len(history.since(0)) == kept
    assert history.seq == kept


@pytest.mark.parametrize(
    ("since", "expected"),
    [
        (0, [1, 2, 3, 4, 5, 6]),  # the page's first poll: everything
        (4, [5, 6]),  # a later poll: only what it lacks
        (6, []),  # nothing new
        (99, [1, 2, 3, 4, 5, 6]),  # a seq of another (earlier) run: everything
    ],
)
def test_since_returns_only_the_points_a_poller_lacks(since: int, expected: list[int]) -> None:
    """Polls send only new points; an unknown seq gets the whole ring."""
    history = History(["all"])
    for second in range(7):
        history.advance(float(second), WALL, sample(sent=second))
    assert [p.seq for p in history.since(since)] == expected


def test_since_a_point_that_left_the_ring_returns_the_whole_ring() -> None:
    """A page that was away longer than the window starts again from what is kept."""
    history = History(["all"], size=3)
    for second in range(10):
        history.advance(float(second), WALL, sample(sent=second))
    assert [p.seq for p in history.since(2)] == [7, 8, 9]


def test_columns_are_per_scope_lists_with_the_window() -> None:
    """The JSON the page draws from: one list per series, aligned with `t`."""
    history = History(["all", "message"])
    scopes = (ScopeSample(0, 0, 0, False), ScopeSample(0, 0, 0, False))
    history.advance(0.0, WALL, Sample(scopes, 0, 0))
    scopes = (ScopeSample(2, 0, 1, False), ScopeSample(5, 1, 0, True))
    history.advance(1.0, WALL, Sample(scopes, 3, 1))
    columns = history.columns(history.since(0))
    assert columns["seq"] == 1 and columns["first_seq"] == 1
    assert columns["window_s"] == 900 and columns["resolution_s"] == 1
    assert columns["t"] == [WALL] and columns["lookups"] == [3] and columns["hits"] == [1]
    assert columns["scopes"]["all"] == {"sent": [2], "throttled": [0], "depth": [1], "paused": [0]}
    assert columns["scopes"]["message"]["paused"] == [1]


@pytest.mark.parametrize(
    ("events", "now", "expected"),
    [
        ([0.5, 1.5, 30.0], 30.5, 3),
        ([0.5, 1.5, 30.0], 60.9, 2),  # the event in second 0 left the window
        ([0.5, 1.5, 30.0], 200.0, 0),
        ([0.1, 60.1], 60.5, 1),  # the same bucket, reused a minute later
    ],
)
def test_window_count_counts_the_last_minute(
    events: list[float], now: float, expected: int
) -> None:
    """Events in the last 60 one-second buckets are counted, older ones are not."""
    window = WindowCount(60)
    for at in events:
        window.add(at)
    assert window.total(now) == expected


def test_samples_give_nearest_rank_percentiles_of_the_recent_window() -> None:
    """p50/p99 of the observations in the window; none when there were none."""
    samples = Samples(size=512)
    assert samples.percentiles(0.0, 60.0, (0.5, 0.99)) == [None, None]
    samples.add(0.0, 100.0)  # outside the window below
    for n in range(100):
        samples.add(50.0 + n / 100, float(n))
    assert samples.percentiles(100.0, 60.0, (0.5, 0.99)) == [50.0, 99.0]
    assert samples.count(100.0, 60.0) == 100


def test_samples_keep_a_bounded_number_of_observations() -> None:
    """However many requests, only the most recent `size` observations are held."""
    samples = Samples(size=8)
    for n in range(1000):
        samples.add(float(n) / 1000, float(n))
    assert samples.count(1.0, 60.0) == 8
    assert samples.percentiles(1.0, 60.0, (0.0,)) == [992.0]
