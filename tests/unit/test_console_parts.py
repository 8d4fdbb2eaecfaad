"""The console's parts that need no server: signed sessions and tokens, chart and graph geometry,
a job run's progress and the sampler's ring buffer."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest

from app.console.samples import OutboxSampler
from app.console.session import Expired, Signer
from app.console.svg import entity_graph, line_chart
from app.errors import StoreUnavailable
from app.graph.base import EntityRow, Neighbourhood, RelationRow
from app.jobs import Claim, _Run
from app.outbox import OutboxStats

SECRET = b"s" * 32


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_session_round_trips_and_expires() -> None:
    clock = Clock()
    signer = Signer(SECRET, 60, clock)
    cookie, session = signer.issue("settings:admin:1", "abcd")
    assert "admin" not in cookie.split(".")[1]  # the MAC part
    assert signer.session(cookie) == session
    clock.now += 59
    assert signer.session(cookie) == session
    clock.now += 1
    with pytest.raises(Expired):
        signer.session(cookie)


@pytest.mark.parametrize("forge", [
    lambda c: c[:-2] + ("AA" if not c.endswith("AA") else "BB"),  # another MAC
    lambda c: "e30" + c[3:],  # another payload under the old MAC
    lambda c: c.replace(".", ""),
    lambda c: "",
    lambda c: "x" * 5000,
])
def test_a_forged_or_garbled_session_is_no_session(forge: object) -> None:
    signer = Signer(SECRET, 60, Clock())
    cookie, _ = signer.issue("settings:admin:1", "abcd")
    assert callable(forge)
    assert signer.session(forge(cookie)) is None
    assert Signer(b"t" * 32, 60, Clock()).session(cookie) is None  # another secret


def test_tokens_are_bound_to_their_purpose_and_session() -> None:
    clock = Clock()
    signer = Signer(SECRET, 60, clock)
    cookie, session = signer.issue("settings:admin:1", "abcd")
    _, other = signer.issue("settings:admin:1", "abcd")
    token = signer.csrf(session)
    assert signer.csrf_ok(session, token)
    assert not signer.csrf_ok(other, token)  # another session's token
    assert not signer.csrf_ok(session, None) and not signer.csrf_ok(session, token + "x")
    login_cookie, login_token = signer.login_cookie()
    assert signer.login_ok(login_cookie, login_token)
    assert not signer.login_ok(login_cookie, token)
    assert not signer.login_ok(cookie, login_token)  # a session cookie is no login cookie
    assert signer.session(login_cookie) is None  # nor the other way round
    clock.now += 3601
    assert not signer.login_ok(login_cookie, login_token)  # the login form went stale


def test_a_short_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        Signer(b"short", 60)


def test_a_line_chart_spans_the_window_and_a_round_top() -> None:
    now = 10_000.0
    chart = line_chart("Lag", "s", [(now - 7200, 99.0), (now - 3600, 0.0), (now - 1800, 3.2),
                                    (now, 1.0)], now)
    assert chart.top == 5.0 and chart.last == 1.0 and not chart.empty
    points = [tuple(map(float, p.split(","))) for p in chart.points.split()]
    assert points == [(0.0, 120.0), (180.0, 120 - 3.2 / 5 * 120), (360.0, 96.0)]
    assert [label for _, label in chart.ticks] == ["-60 min", "-45 min", "-30 min", "-15 min",
                                                   "now"]
    short = line_chart("Lag", "s", [(now - 10, 1.0)], now, window=300)
    assert [label for _, label in short.ticks] == ["-5 min", "-3:45", "-2:30", "-1:15", "now"]
    empty = line_chart("Lag", "s", [], now)
    assert empty.empty and empty.points == "" and empty.last is None and empty.top == 1.0


def test_the_entity_graph_puts_the_memory_in_the_middle_and_neighbours_outside() -> None:
    john, acme = EntityRow("k|john", "John", "person"), EntityRow("k|acme", "Acme", "org")
    berlin, ulm = EntityRow("k|berlin", "Berlin", "place"), EntityRow("k|ulm", "Ulm", "place")
    around = Neighbourhood("m1", (acme, john), (berlin, ulm), (
        RelationRow(acme.key, berlin.key, "in"), RelationRow(ulm.key, acme.key, "near"),
        RelationRow(john.key, acme.key, "works_at")))
    picture = entity_graph(around, "a memory about John at Acme")
    centre = (picture.width / 2, picture.height / 2)
    nodes = {n.key: n for n in picture.nodes}
    assert (nodes["memory"].x, nodes["memory"].y) == centre

    def distance(key: str) -> float:
        return math.hypot(nodes[key].x - centre[0], nodes[key].y - centre[1])

    assert distance(john.key) == pytest.approx(distance(acme.key))
    assert min(distance(berlin.key), distance(ulm.key)) > distance(acme.key) * 1.3
    # both neighbours hang from Acme: they sit nearer Acme than John
    for key in (berlin.key, ulm.key):
        near_acme = math.hypot(nodes[key].x - nodes[acme.key].x, nodes[key].y - nodes[acme.key].y)
        near_john = math.hypot(nodes[key].x - nodes[john.key].x, nodes[key].y - nodes[john.key].y)
        assert near_acme < near_john
    kinds = [(e.kind, e.label) for e in picture.edges]
    assert kinds.count(("mentions", "")) == 2
    assert {label for kind, label in kinds if kind == "related"} == {"in", "near", "works_at"}
    works = next(e for e in picture.edges if e.label == "works_at")
    # the edge between the two mentioned entities bows around the memory
    assert math.hypot(works.lx - centre[0], works.ly - centre[1]) > 30  # memory: r=26
    assert all(0 <= n.x <= picture.width and 0 <= n.y <= picture.height for n in picture.nodes)
    lonely = entity_graph(Neighbourhood("m2"), "nothing found")
    assert [n.kind for n in lonely.nodes] == ["memory"] and lonely.edges == []


def test_a_runs_progress_adds_up_per_phase() -> None:
    """The console's jobs are app.jobs' jobs now (tests/integration/test_jobs.py); what the
    runner accumulates from the progress callback is checked here."""
    run = _Run(Claim(None, "token", "runner"))  # type: ignore[arg-type]
    run.advance("memories", 2, 4)
    run.advance("memories", 2, 4)
    run.advance("graph", 7, None)
    assert [(p.name, p.done, p.total, p.percent) for p in run.phases] == [
        ("memories", 4, 4, 100), ("graph", 7, None, None)]


class FakeOutbox:
    def __init__(self) -> None:
        self.down = False
        self.calls = 0

    def stats(self) -> OutboxStats:
        self.calls += 1
        if self.down:
            raise StoreUnavailable("down")
        return OutboxStats(3, 2, 10, 1, 0, 4.5)

    def done_within(self, seconds: float) -> int:
        return 30


def test_the_sampler_keeps_an_hour_and_outlives_an_outage() -> None:
    clock = Clock(datetime(2026, 1, 1, tzinfo=UTC).timestamp())
    outbox = FakeOutbox()
    sampler = OutboxSampler(outbox, 600, clock)  # type: ignore[arg-type]
    taken = sampler.sample()
    assert taken is not None
    assert (taken.backlog, taken.dead, taken.lag_seconds, taken.done_per_second) == (5, 1, 4.5,
                                                                                      0.5)
    outbox.down = True
    assert sampler.sample() is None
    outbox.down = False
    for _ in range(10):
        clock.now += 600
        sampler.sample()
    kept = sampler.samples()
    assert len(kept) == 7 and kept[0].at == clock.now - 3600  # one hour, oldest first
    sampler.start()
    sampler.stop()
