"""Identity at an event's time, without an API server: the pasts the sources keep."""

from __future__ import annotations

from podsight.identity.history import ChangeFeed, Timeline, boot_ns

X, Y = "10.251.0.7", "10.251.0.8"


# --- the past of one kind of key ----------------------------------------------------------


def test_timeline_answers_at_a_time_and_stays_bounded() -> None:
    feed = ChangeFeed()
    tl: Timeline[str, str] = Timeline(feed, "ip", keep_ns=1000, per_key=3)
    start = feed.position
    assert tl.held(X, "a", 5) == (0, "a")  # no change seen: the current holder, always
    tl.changed(X, "a", None, stamp=100)
    tl.changed(X, None, "b", stamp=200)
    assert [tl.held(X, "b", t) for t in (0, 99, 100, 199, 200, 10**12)] == [
        (0, "a"), (0, "a"), (100, None), (100, None), (200, "b"), (200, "b")]
    assert tl.since(X) == 200 and tl.since(Y) == 0
    tl.changed(X, "b", "b2", same=True)  # the same holder, new details: no new interval
    assert tl.held(X, "b2", 300) == (200, "b2") and tl.held(X, "b2", 150) == (100, None)
    tl.changed(X, "b2", "c", stamp=150)  # a stamp out of order is moved after the last
    assert tl.held(X, "c", 200) == (200, "c")
    # at most per_key (3) holders: "a" is dropped, the oldest kept one answers for older
    assert tl.held(X, "c", 199) == (0, None) and tl.held(X, "c", 50) == (0, None)
    # forgotten keep_ns after its last change: the current holder answers again
    tl.changed(Y, None, "y", stamp=5000)
    assert len(tl) == 1 and tl.held(X, "c", 150) == (0, "c")
    _, end, tokens = feed.read(start)
    assert tokens == [("ip", X)] * 4 + [("ip", Y)] and end == start + 5
    assert feed.read(end)[2] == []


def test_change_feed_readers_that_fall_behind_start_over() -> None:
    feed = ChangeFeed(window=4)
    for i in range(20):
        feed.note(("ip", str(i)))
    now, end, tokens = feed.read(0)
    assert tokens is None and end == 20 and abs(now - boot_ns()) < 10**10
    assert feed.read(17)[2] == [("ip", "17"), ("ip", "18"), ("ip", "19")]
