"""The live view's key bindings, one by one, driven by textual's Pilot.

The view is fed exactly as a run feeds it (:class:`podsight.outputs.live.LiveFeed`,
the gadgets' real schemas, records named by identity as the pipeline names
them); only the kernel is left out, so these run as any user in a second or
two. The real command under tmux is in test_tui_e2e.py.

Each test waits for conditions (``pilot.pause()`` until the screen says so),
never for a time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from podsight.gadgets.flows.dns import DnsAnswer
from podsight.gadgets.flows.records import Drops, FlowRecord, Rtt
from podsight.gadgets.flows.schema import schema as flows_schema
from podsight.gadgets.tcpconnect.schema import Connect
from podsight.gadgets.tcpconnect.schema import schema as connect_schema
from podsight.identity.endpoint import Endpoint, PodInfo
from podsight.outputs.live import LiveFeed
from podsight.pipeline import Loss, Tally
from podsight.runtime import StopFlag
from podsight.schema import Field, Schema, Sides, endpoint, number, string
from podsight.timefmt import Clock
from podsight.tui.app import FilterInput, LiveApp
from podsight.tui.table import LiteTable

CLOCK = Clock()
NOW = CLOCK.boot_now_ns()

FRONTEND = PodInfo("shop", "frontend", ("10.244.0.4",), node="node-a",
                   workload_kind="Deployment", workload_name="frontend",
                   containers=("web",))
BACKEND = PodInfo("shop", "backend", ("10.244.0.5",), node="node-b",
                  workload_kind="StatefulSet", workload_name="backend")


def flow(i: int, *, src: PodInfo = FRONTEND, dst: PodInfo = BACKEND, nbytes: int = 1000,
         proto: int = 17, dns: bool = False, drops: bool = False) -> FlowRecord:
    r = FlowRecord(ip=4, saddr=src.ips[0], daddr=dst.ips[0], sport=40000 + i, dport=7000,
                   proto=proto, bytes=nbytes, packets=nbytes // 100 or 1,
                   first_ns=NOW + i, last_ns=NOW + i, tcp_flags=0x12 if proto == 6 else 0,
                   dscp=0, icmp_type=None, icmp_code=None, interfaces=[("vethA", "ingress")])
    if dns:
        r.dns = [DnsAnswer(7, f"name{i}.example", "A", "NOERROR", 150_000, NOW, 0)]
    if drops:
        r.drops = Drops(3, 300, "NETFILTER_DROP", 0, "vethA")
    r.rtt = Rtt(100, 300, 200, 200)
    r.src = Endpoint.for_pod(src.ips[0], src)
    r.dst = Endpoint.for_pod(dst.ips[0], dst)
    return r


def flows_feed(records: list[FlowRecord]) -> LiveFeed:
    feed = LiveFeed("podsight flows", "flow records")
    sch = flows_schema(CLOCK)
    feed.open(sch, sch.columns(None), [("/tmp/out.json", lambda: 2048)])
    feed.write(records)
    feed.tick(len(records))
    return feed


def run_app(feed: LiveFeed, test: Callable[[LiveApp, Any], Awaitable[None]],
            size: tuple[int, int] = (200, 50), stop: StopFlag | None = None) -> LiveApp:
    # The clock's redraws are left to the test: refresh far apart, so what a test sees
    # is what its key did.
    app = LiveApp(feed, stop or StopFlag(), refresh=3600)

    async def main() -> None:
        async with app.run_test(size=size) as pilot:
            await pilot.pause()
            await test(app, pilot)

    asyncio.run(main())
    return app


def table_of(app: LiveApp) -> LiteTable:
    return app.query_one("#table", LiteTable)


def screen_text(app: LiveApp) -> str:
    """What the terminal shows, as text."""
    return "\n".join(line.text for line in app.screen._compositor.render_strips())


async def until(pilot: Any, cond: Callable[[], bool], what: str, tries: int = 200) -> None:
    for _ in range(tries):
        if cond():
            return
        await pilot.pause()
    raise AssertionError(f"never happened: {what}")


# -- up / down ---------------------------------------------------------------------------

def test_up_and_down_change_how_many_rows_are_shown() -> None:
    feed = flows_feed([flow(i) for i in range(300)])

    async def test(app: LiveApp, pilot: Any) -> None:
        assert table_of(app).row_count == 50
        await pilot.press("up")
        assert app.count == 75 and table_of(app).row_count == 75
        await pilot.press("down", "down")
        assert app.count == 30 and table_of(app).row_count == 30
        # newest first: the last record written is the first row
        assert "p/shop/frontend:40299" in table_of(app).lines[0]
        assert "p/shop/frontend:40299" in screen_text(app).splitlines()[2]

    run_app(feed, test)


# -- left / right ----------------------------------------------------------------------

def test_left_and_right_cycle_the_views_that_the_schema_has() -> None:
    feed = flows_feed([flow(1, dns=True, drops=True)])

    async def test(app: LiveApp, pilot: Any) -> None:
        assert app.view == "standard"
        assert "DNS" not in app.headers and "DROPS" not in app.headers
        seen = {}
        for _ in range(6):
            await pilot.press("right")
            seen[app.view] = list(app.headers)
            if app.view == "dns":
                assert "A name1.example NOERROR 150.0us" in screen_text(app)
        # flows has a TLS group (--tls), so its view is there too
        assert list(seen) == ["drops", "dns", "rtt", "tls", "all", "standard"]
        assert "DROPS" in seen["drops"] and "DNS" not in seen["drops"]
        assert "DNS" in seen["dns"]
        assert "RTT" in seen["rtt"]
        assert "TLS" in seen["tls"] and "DNS" not in seen["tls"]
        assert {"DNS", "DROPS", "RTT", "DSCP", "TLS"} <= set(seen["all"])
        await pilot.press("left")
        assert app.view == "all"

    run_app(feed, test)


def test_a_schema_without_drops_or_dns_has_standard_and_all_only() -> None:
    feed = connect_feed([connect(1)])

    async def test(app: LiveApp, pilot: Any) -> None:
        assert app.layout is not None and app.layout.views == ["standard", "all"]
        await pilot.press("right")
        assert app.view == "all" and "SYN_RETRIES" not in app.headers
        assert "RETRIES" in app.headers

    run_app(feed, test)


# -- page up / page down -------------------------------------------------------------------

def test_page_up_and_down_cycle_the_identity_columns() -> None:
    feed = flows_feed([flow(1)])

    async def test(app: LiveApp, pilot: Any) -> None:
        assert app.identity == "pod" and {"SRC", "DST"} <= set(app.headers)
        sets = {}
        for _ in range(6):
            await pilot.press("pagedown")
            sets[app.identity] = list(app.headers)
        assert list(sets) == ["workload", "node", "all", "none", "ip", "pod"]
        assert "SRC.WORKLOAD" in sets["workload"] and "SRC" not in sets["workload"]
        assert {"SRC.NODE", "DST.NODE"} <= set(sets["node"])
        assert {"SADDR", "SPORT", "DADDR", "DPORT"} <= set(sets["ip"])
        assert not {"SRC", "DST", "SADDR", "SRC.NODE"} & set(sets["none"])
        assert {"SADDR", "SRC", "SRC.WORKLOAD", "SRC.NODE", "SRC.CONTAINER"} <= set(sets["all"])
        await pilot.press("pageup")
        assert app.identity == "ip"
        await pilot.press("pageup", "pageup")
        assert app.identity == "all"

    run_app(feed, test)


def test_identity_cells_say_workload_and_node() -> None:
    feed = flows_feed([flow(1)])

    async def test(app: LiveApp, pilot: Any) -> None:
        await pilot.press("pagedown")
        cells = dict(zip(app.headers, app.cells[0], strict=True))
        assert cells["SRC.WORKLOAD"] == "shop/Deployment/frontend"
        assert cells["DST.WORKLOAD"] == "shop/StatefulSet/backend"
        await pilot.press("pagedown")
        cells = dict(zip(app.headers, app.cells[0], strict=True))
        assert (cells["SRC.NODE"], cells["DST.NODE"]) == ("node-a", "node-b")

    run_app(feed, test)


# -- filters -------------------------------------------------------------------------------

OTHER = PodInfo("web", "nginx", ("10.244.0.9",), node="node-a")


def mixed() -> list[FlowRecord]:
    return [flow(i, dst=BACKEND if i % 2 else OTHER, proto=6 if i % 3 == 0 else 17)
            for i in range(30)]


async def type_filter(pilot: Any, text: str) -> None:
    await pilot.press(*[{" ": "space", "!": "exclamation_mark"}.get(c, c) for c in text])
    await pilot.press("enter")


def test_typed_filters_keyword_field_value_negation_and_regex() -> None:
    feed = flows_feed(mixed())

    async def test(app: LiveApp, pilot: Any) -> None:
        assert app.matching == 30
        await type_filter(pilot, "nginx")
        assert app.matching == 15 and all("nginx" in c[app.headers.index("DST")]
                                          for c in app.cells)
        assert "filters: [nginx]" in screen_text(app)
        await pilot.press("backspace")  # empty line: removes it
        assert app.filters == [] and app.matching == 30
        await type_filter(pilot, "proto:tcp")
        assert app.matching == 10
        await type_filter(pilot, "!dst:backend")  # and not to backend
        assert app.matching == 5
        assert all(c[app.headers.index("PROTO")] == "tcp" for c in app.cells)
        await pilot.press("backspace", "backspace")
        assert app.filters == []
        await type_filter(pilot, "sport:4000[0-4]$")  # a regex on one field
        assert app.matching == 5
        await pilot.press("backspace")
        await type_filter(pilot, "proto:udp")
        await type_filter(pilot, "dport:7000")
        assert app.matching == 20 and len(app.filters) == 2

    run_app(feed, test)


def test_backspace_with_text_only_edits_the_text() -> None:
    feed = flows_feed(mixed())

    async def test(app: LiveApp, pilot: Any) -> None:
        await type_filter(pilot, "nginx")
        await pilot.press("t", "c", "p", "backspace")
        assert app.query_one("#filter", FilterInput).value == "tc"
        assert len(app.filters) == 1

    run_app(feed, test)


def test_the_filter_hides_from_the_screen_only() -> None:
    feed = flows_feed(mixed())

    async def test(app: LiveApp, pilot: Any) -> None:
        await type_filter(pilot, "nothing-matches-this")
        assert app.matching == 0 and table_of(app).row_count == 0
        feed.write([flow(100)])
        assert len(feed.snapshot()) == 31  # the feed (and the files before it) keep all

    run_app(feed, test)


def test_selecting_a_cell_adds_its_field_value() -> None:
    feed = flows_feed(mixed())

    async def test(app: LiveApp, pilot: Any) -> None:
        await pilot.press("tab")
        assert app.focused is table_of(app)
        col = app.headers.index("DST")
        for _ in range(col):
            await pilot.press("right")
        assert app.view == "standard"  # left/right move the cursor in the table
        await pilot.press("enter")
        assert len(app.filters) == 1 and app.filters[0].col is not None
        assert app.filters[0].col.name == "dst"
        wanted = app.filters[0].text.split(":", 1)[1]
        assert all(c[col] == wanted for c in app.cells) and app.matching == 15
        await pilot.press("escape")
        assert app.focused is app.query_one("#filter")

    run_app(feed, test)


# -- pause -----------------------------------------------------------------------------------

def test_pause_freezes_the_screen_and_resume_catches_up() -> None:
    feed = flows_feed([flow(i) for i in range(5)])

    async def test(app: LiveApp, pilot: Any) -> None:
        await pilot.press("ctrl+p")
        assert app.paused and "PAUSED" in screen_text(app)
        feed.write([flow(i) for i in range(5, 10)])
        app._tick()
        await pilot.pause()
        assert table_of(app).row_count == 5
        await pilot.press("ctrl+p")
        assert not app.paused and table_of(app).row_count == 10

    run_app(feed, test)


# -- sort -----------------------------------------------------------------------------------

def test_sort_by_each_column_and_reverse() -> None:
    records = [flow(i, nbytes=(i * 7919) % 5000 + 100) for i in range(20)]
    feed = flows_feed(records)

    async def test(app: LiveApp, pilot: Any) -> None:
        nbytes = app.headers.index("BYTES")
        for _ in range(nbytes + 1):
            await pilot.press("ctrl+s")
        assert app.sort_col == nbytes and "sort: BYTES" in screen_text(app)
        values = [r.record.bytes for r in app.shown_rows]
        assert values == sorted(values, reverse=True)  # numbers: biggest first
        await pilot.press("ctrl+r")
        assert [r.record.bytes for r in app.shown_rows] == sorted(values)
        for _ in range(len(app.headers) - nbytes):
            await pilot.press("ctrl+s")
        assert app.sort_col is None  # past the last column: newest first again

    run_app(feed, test)


def test_clicking_a_header_sorts_by_it() -> None:
    feed = flows_feed([flow(i, nbytes=1000 + (i % 7) * 10) for i in range(20)])

    async def test(app: LiveApp, pilot: Any) -> None:
        table = table_of(app)
        col = app.headers.index("BYTES")
        start, _ = table.bounds[col]
        await pilot.click("#table", offset=(start + 1, 0))
        await until(pilot, lambda: app.sort_col == col, "sort by the clicked header")
        values = [r.record.bytes for r in app.shown_rows]
        assert values == sorted(values, reverse=True)

    run_app(feed, test)


# -- rate mode -----------------------------------------------------------------------------

def test_rate_mode_sums_per_pod_pair_and_ctrl_k_changes_the_key() -> None:
    records = [flow(i, dst=BACKEND if i % 4 else OTHER, nbytes=1000) for i in range(40)]
    feed = flows_feed(records)

    async def test(app: LiveApp, pilot: Any) -> None:
        await pilot.press("ctrl+t")
        assert app.rate_mode and app.headers[:2] == ["SRC", "DST"]
        assert "RECORDS/S" in app.headers and "BYTES/S" in app.headers
        pairs = {tuple(c[:2]) for c in app.cells}
        assert pairs == {("p/shop/frontend", "p/shop/backend"), ("p/shop/frontend", "p/web/nginx")}
        sums, _ = feed.rates()
        per_pair = {k[1].name: v for k, v in sums.items()}
        assert per_pair["backend"][0] == 30 and per_pair["backend"][1] == 30_000
        assert app.cells[0][1] == "p/shop/backend"  # most bytes first
        await pilot.press("ctrl+k")
        assert app.headers[:2] == ["SRC.WORKLOAD", "DST.WORKLOAD"]
        await pilot.press("ctrl+k", "ctrl+k")
        assert app.headers[0] == "SRC" and len(app.rate_key.headers) == 1  # type: ignore[union-attr]
        await pilot.press("ctrl+t")
        assert not app.rate_mode and "SRC" in app.headers

    run_app(feed, test)


def test_sampled_raw_records_are_weighted_in_rates() -> None:
    import numpy as np

    feed = flows_feed([])
    raw = np.arange(6400, dtype=np.int64)
    feed.offer(raw, lambda sample: [flow(int(i)) for i in sample])
    sums, _ = feed.rates()
    assert round(sum(v[0] for v in sums.values())) == 6400 + 0
    assert feed.decoded == 64 and feed.sampling == 100


# -- detail ---------------------------------------------------------------------------------

def test_ctrl_d_shows_every_field_and_both_ends() -> None:
    feed = connect_feed([connect(1)])

    async def test(app: LiveApp, pilot: Any) -> None:
        await pilot.press("ctrl+d")
        assert app.detail_shown
        text = str(app.query_one("#detail-text").render())
        for want in ("comm", "curl", "latency", "src: p/shop/frontend:51000",
                     "container  web", "workload   shop/Deployment/frontend",
                     "dst: p/shop/backend:80", "node       node-b"):
            assert want in text, (want, text)
        await pilot.press("ctrl+d")
        assert not app.detail_shown

    run_app(feed, test)


@dataclass(slots=True)
class Pkt:
    """A packet-like record of a gadget this view has never heard of."""

    ts_ns: int
    saddr: str
    sport: int
    daddr: str
    dport: int
    length: int
    data: bytes
    src: Endpoint | None = None
    dst: Endpoint | None = None


def packet_schema() -> Schema[Pkt]:
    return Schema(fields=[
        number("length", "LEN", 5, lambda r: r.length, "bytes", default=True, total=True),
        string("saddr", "SADDR", 15, lambda r: r.saddr, "source address"),
        number("sport", "SPORT", 5, lambda r: r.sport, "source port"),
        string("daddr", "DADDR", 15, lambda r: r.daddr, "destination address"),
        number("dport", "DPORT", 5, lambda r: r.dport, "destination port"),
        endpoint("src", "SRC", "saddr", "sport", "source"),
        endpoint("dst", "DST", "daddr", "dport", "destination"),
        Field("info", "INFO", 20, lambda r: f"{len(r.data)} bytes", None, (), doc="info"),
    ], sides=Sides(time="ts_ns"))


TCP_SYN = bytes.fromhex(
    "0200000000010200000000020800"  # Ethernet
    "45000028000140004006" "0000" "0af40004" "0af40005"  # IPv4, TCP
    "9c400050" "00000001" "00000000" "5002faf0" "00000000")


def test_a_record_with_bytes_shows_hex_and_decoded_headers() -> None:
    feed = LiveFeed("podsight packets", "packets")
    sch = packet_schema()
    feed.open(sch, sch.columns(None), [])
    p = Pkt(NOW, "10.244.0.4", 40000, "10.244.0.5", 80, len(TCP_SYN), TCP_SYN)
    p.src = Endpoint.for_pod(p.saddr, FRONTEND)
    feed.write([p])

    async def test(app: LiveApp, pilot: Any) -> None:
        assert app.layout is not None and app.layout.identity_sets[2] == "pod"
        await pilot.press("ctrl+d")
        text = str(app.query_one("#detail-text").render())
        assert "Ethernet 02:00:00:00:00:02 > 02:00:00:00:00:01 type 0x0800" in text
        assert "IPv4 10.244.0.4 > 10.244.0.5 tcp len 40" in text
        assert "TCP 40000 > 80 [SYN] seq 1 ack 0" in text
        assert "0000  02 00 00 00 00 01 02 00" in text
        await pilot.press("ctrl+t")  # rate mode from the same schema: LEN/S summed
        assert "LEN/S" in app.headers

    run_app(feed, test)


# -- width ------------------------------------------------------------------------------------

def test_columns_fit_a_narrow_terminal() -> None:
    long = PodInfo("a-rather-long-namespace-name", "a-pod-with-a-very-long-generated-name-x7k2p",
                   ("10.244.0.7",))
    feed = flows_feed([flow(i, src=long) for i in range(10)])

    async def test(app: LiveApp, pilot: Any) -> None:
        for line in screen_text(app).splitlines():
            assert len(line) <= 80
        table = table_of(app)
        assert table.bounds[-1][1] <= 80
        assert "…" in table.lines[0]
        await pilot.press("pagedown", "pagedown", "pagedown")  # all identity columns
        assert app.hidden_columns > 0
        assert f"+{app.hidden_columns} columns" in screen_text(app)
        for line in screen_text(app).splitlines():
            assert len(line) <= 80

    run_app(feed, test, size=(80, 30))


# -- status ------------------------------------------------------------------------------------

def test_status_bar_says_rate_losses_counts_and_files() -> None:
    feed = flows_feed(mixed())
    feed.tally = Tally(losses={"ring": Loss(12, "ring buffer full (a larger --ring-size helps)"),
                               "map": Loss(0, "flow table full")})

    async def test(app: LiveApp, pilot: Any) -> None:
        await type_filter(pilot, "nginx")
        status = str(app.query_one("#status").render())
        assert "lost 12 (ring buffer full 12)" in status
        assert "shown 15 of 15, 15 filtered out" in status
        assert "/tmp/out.json 2.0KiB" in status
        assert "flow records/s" in status

    run_app(feed, test)


# -- quitting ----------------------------------------------------------------------------------

def test_ctrl_c_stops_the_run_and_the_view_closes_when_it_has_ended() -> None:
    feed = flows_feed([flow(1)])
    stop = StopFlag()

    async def test(app: LiveApp, pilot: Any) -> None:
        await pilot.press("ctrl+c")
        assert stop.is_set() and app.stopping
        assert "stopping: finishing the files" in str(app.query_one("#status").render())
        assert app.is_running  # still open while the run writes its last batch
        feed.finish(1, None)
        await until(pilot, lambda: not app.is_running, "the view to close")

    run_app(feed, test, stop=stop)


def test_a_second_ctrl_c_closes_the_view_at_once() -> None:
    feed = flows_feed([flow(1)])

    async def test(app: LiveApp, pilot: Any) -> None:
        await pilot.press("ctrl+c", "ctrl+c")
        await until(pilot, lambda: not app.is_running, "the view to close")

    run_app(feed, test)


def test_ctrl_q_stops_too() -> None:
    feed = flows_feed([flow(1)])
    stop = StopFlag()

    async def test(app: LiveApp, pilot: Any) -> None:
        await pilot.press("ctrl+q")
        assert stop.is_set()

    run_app(feed, test, stop=stop)


# -- connects ------------------------------------------------------------------------------------

def connect(i: int) -> Connect:
    c = Connect(ts_ns=NOW + i, pid=100 + i, tid=100 + i, comm="curl", uid=0, netns=4026531840,
                cgroup_id=1, ip=4, saddr="10.244.0.4", sport=51000 + i - 1, daddr="10.244.0.5",
                dport=80, result="ok", errno=0, latency_ns=95_000, syn_retries=0)
    c.src = Endpoint.for_pod(c.saddr, FRONTEND)
    c.dst = Endpoint.for_pod(c.daddr, BACKEND)
    return c


def connect_feed(records: list[Connect]) -> LiveFeed:
    feed = LiveFeed("podsight tcpconnect", "events")
    sch = connect_schema(CLOCK)
    feed.open(sch, sch.columns(None), [])
    feed.write(records)
    return feed


def test_connects_get_the_same_view_with_no_code_of_their_own() -> None:
    feed = connect_feed([connect(i) for i in range(1, 6)])

    async def test(app: LiveApp, pilot: Any) -> None:
        assert {"PID", "COMM", "SRC", "DST", "LATENCY", "RESULT"} <= set(app.headers)
        await pilot.press("ctrl+t")
        assert app.cells[0][:2] == ["p/shop/frontend", "p/shop/backend"]
        assert app.headers[2] == "EVENTS/S"

    run_app(feed, test)


def test_clicking_a_cell_twice_adds_its_field_value_and_arrows_move_the_cursor() -> None:
    feed = flows_feed(mixed())

    async def test(app: LiveApp, pilot: Any) -> None:
        table = table_of(app)
        col = app.headers.index("PROTO")
        start, _ = table.bounds[col]
        await pilot.click("#table", offset=(start, 3))  # the third row
        assert (table.cursor_row, table.cursor_column) == (2, col)
        await pilot.click("#table", offset=(start, 3))
        assert [f.text for f in app.filters] == [f"proto:{app.cells[0][col]}"]
        assert app.focused is table  # a click focuses the table
        await pilot.press("escape", "tab", "down", "down", "up")
        assert app.focused is table and table.cursor_row == 3 and app.count == 50

    run_app(feed, test)
