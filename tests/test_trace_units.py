"""The trace's pure parts, without a kernel: format files, the program, decoding and
classification, the running summary, the diagnosis rules, and the CLI's fallback."""

from __future__ import annotations

import json
import socket

import pytest
from helpers import Cli

from tcpreuse.diagnose.base import Evidence, diagnose
from tcpreuse.trace import kernel
from tcpreuse.trace.aggregate import Summary
from tcpreuse.trace.events import Control, Decoder, TraceEvent
from tcpreuse.trace.formats import parse_format
from tcpreuse.trace.kernel import KernelInfo
from tcpreuse.trace.program import Filter, build

# A kfree_skb format as an older kernel prints it: other numbers, no TW_PAWS reason.
KFREE = """name: kfree_skb
ID: 1480
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:void * location;\toffset:16;\tsize:8;\tsigned:0;
\tfield:void * rx_sk;\toffset:24;\tsize:8;\tsigned:0;
\tfield:unsigned short protocol;\toffset:32;\tsize:2;\tsigned:0;
\tfield:enum skb_drop_reason reason;\toffset:36;\tsize:4;\tsigned:0;

print fmt: "skbaddr=%p rx_sk=%p protocol=%u location=%pS reason: %s", REC->skbaddr, REC->rx_sk, REC->protocol, \
REC->location, __print_symbolic(REC->reason, { 2, "NOT_SPECIFIED" }, { 3, "NO_SOCKET" }, { 35, "TCP_RFC7323_PAWS" }, \
{ 38, "TCP_LISTEN_OVERFLOW" }, { 40, "TCP_INVALID_SYN" }, { 77, "MAX" })
"""

SET_STATE = """name: inet_sock_set_state
format:
\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:int oldstate;\toffset:16;\tsize:4;\tsigned:1;
\tfield:int newstate;\toffset:20;\tsize:4;\tsigned:1;
\tfield:__u8 saddr[4];\toffset:32;\tsize:4;\tsigned:0;

print fmt: "oldstate=%s newstate=%s", __print_symbolic(REC->oldstate, { 1, "TCP_ESTABLISHED" }, { 2, "TCP_SYN_SENT" }, \
{ 3, "TCP_SYN_RECV" }, { 5, "TCP_FIN_WAIT2" }, { 6, "TCP_TIME_WAIT" }, { 7, "TCP_CLOSE" }, { 11, "TCP_CLOSING" }), \
__print_symbolic(REC->newstate, { 1, "TCP_ESTABLISHED" }, { 2, "TCP_SYN_SENT" }, { 3, "TCP_SYN_RECV" }, \
{ 5, "TCP_FIN_WAIT2" }, { 6, "TCP_TIME_WAIT" }, { 7, "TCP_CLOSE" }, { 11, "TCP_CLOSING" })
"""


def _info(with_tw_paws: bool = False) -> KernelInfo:
    k = parse_format("skb:kfree_skb", KFREE)
    s = parse_format("sock:inet_sock_set_state", SET_STATE)
    info = KernelInfo(release="5.99.0", formats={"skb:kfree_skb": k, "sock:inet_sock_set_state": s})
    info.drop_reasons = {n: v for n, v in k.symbols["reason"].items() if n != "MAX"}
    if with_tw_paws:
        info.drop_reasons["TCP_RFC7323_TW_PAWS"] = 41
    info.rst_reasons = {"NOT_SPECIFIED": 0, "NO_SOCKET": 1}
    info.states = dict(s.symbols["newstate"])
    info.missing = {"tcp:tcp_send_reset": "tracepoint tcp:tcp_send_reset has no field reason on 5.99.0"}
    return info


def test_format_gives_fields_and_the_kernels_own_numbers() -> None:
    f = parse_format("skb:kfree_skb", KFREE)
    assert f.fields["rx_sk"] == "void *" and f.has("reason") and not f.has("common_pid")
    assert f.symbols["reason"]["TCP_LISTEN_OVERFLOW"] == 38
    assert f.symbols["reason"]["NO_SOCKET"] == 3


def test_program_filters_in_the_kernel_with_this_kernels_numbers() -> None:
    plan = build(_info(), Filter(netns=4026532999, ports=(8080,), pid=4242))
    t = plan.text
    assert "args->reason == 38" in t and "args->reason == 35" in t  # this kernel's numbering
    assert "args->reason != 2 || $st == 6" in t  # NOT_SPECIFIED only at a TIME_WAIT
    assert "== 4026532999" in t
    assert f"$t->source == {socket.htons(8080)}" in t  # __be16 compared as the kernel holds it
    assert "args->sport == 8080" in t
    assert "pid == 4242" in t
    assert "tcp:tcp_send_reset" not in plan.probes
    assert any("TCP_RFC7323_TW_PAWS" in s for s in plan.skipped)  # not on this kernel
    assert any("tcp_send_reset" in s for s in plan.skipped)


def _d(reason: int, state: int, flags: int, seq: int = 0) -> str:
    ports = socket.htons(40000), socket.htons(8080)
    return json.dumps({"type": "printf", "data": f"D 100 {reason} 10.0.0.2 10.0.0.1 {ports[0]} {ports[1]} {flags} "
                                                  f"{state} 4026532999 {socket.htonl(seq)}\n"})


def test_decoder_names_the_kernels_verdicts() -> None:
    dec = Decoder(_info(with_tw_paws=True))
    ev = dec.line(_d(2, 6, 0x02, seq=123456))
    assert isinstance(ev, TraceEvent)
    assert (ev.verdict, ev.reason, ev.state, ev.flags) == ("old-ack", "NOT_SPECIFIED", "TIME_WAIT", "S")
    assert ev.tuple == ("10.0.0.2", 40000, "10.0.0.1", 8080) and ev.seq == 123456
    assert dec.line(_d(2, 6, 0x14)).verdict == "tw-rst"  # type: ignore[union-attr]
    assert dec.line(_d(41, 6, 0x02)).verdict == "tw-paws"  # type: ignore[union-attr]
    assert dec.line(_d(38, 10, 0x10)).verdict == "listen-overflow"  # type: ignore[union-attr]
    c = dec.line(json.dumps({"type": "printf", "data": f"C 5 -99 777 1 10.0.0.1 {socket.htons(80)} curl\n"}))
    assert isinstance(c, TraceEvent)
    assert (c.verdict, c.reason, c.pid, c.comm, c.daddr, c.dport) == ("connect-error", "EADDRNOTAVAIL", 777, "curl",
                                                                        "10.0.0.1", 80)
    # a dual-stack socket's IPv4-mapped peer is the IPv4 4-tuple of the packets
    t = dec.line(json.dumps({"type": "printf", "data": "T 9 3 1 ::ffff:10.0.0.1 8080 ::ffff:10.0.0.2 40000 1\n"}))
    assert isinstance(t, TraceEvent) and t.tuple == ("10.0.0.1", 8080, "10.0.0.2", 40000)
    lost = dec.line('{"type": "lost_events", "data": {"events": 17}}')
    assert isinstance(lost, Control) and (lost.kind, lost.value) == ("lost", 17)


def _t(t_s: float, old: int, new: int, local: tuple[str, int], remote: tuple[str, int]) -> TraceEvent:
    dec = Decoder(_info())
    ev = dec.line(json.dumps({"type": "printf", "data": f"T {int(t_s * 1e9)} {old} {new} {local[0]} {local[1]} "
                                                        f"{remote[0]} {remote[1]} 1\n"}))
    assert isinstance(ev, TraceEvent)
    return ev


def test_summary_infers_accept_on_timewait_within_60s_only() -> None:
    srv, cli_ = ("10.0.0.1", 8080), ("10.0.0.2", 40000)
    s = Summary()
    assert s.add(_t(1.0, 5, 7, srv, cli_)) is None  # FIN_WAIT2 -> CLOSE: TIME_WAIT holds the tuple
    shown = s.add(_t(3.5, 3, 1, srv, cli_))  # SYN_RECV -> ESTABLISHED on it 2.5 s later
    assert shown is not None and shown.verdict == "tw-accepted" and shown.reason == "TIME_WAIT 2500 ms old"
    assert s.add(_t(4.0, 3, 1, srv, cli_)) is None  # that TIME_WAIT is gone
    s.add(_t(10.0, 5, 7, srv, cli_))
    assert s.add(_t(71.0, 3, 1, srv, cli_)) is None  # after TCP_TIMEWAIT_LEN: no TIME_WAIT met
    s.add(_t(100.0, 11, 7, cli_, srv))  # a client's own TIME_WAIT (CLOSING -> CLOSE)
    assert s.add(_t(99.0, 2, 1, cli_, srv)) is None  # delivered late, stamped before the close
    shown = s.add(_t(101.0, 2, 1, cli_, srv))
    assert shown is not None and shown.verdict == "tw-reuse"
    doc = s.to_json()
    assert doc["verdicts"] == {"tw-accepted": 1, "tw-reuse": 1}
    # an RST that killed the TIME_WAIT: the next connection on the tuple met none
    s.add(_t(200.0, 5, 7, srv, cli_))
    s.add(TraceEvent(int(200.5e9), "skb:kfree_skb", "tw-rst", "NOT_SPECIFIED", *cli_, *srv, "TIME_WAIT", "R", 1))
    assert s.add(_t(201.0, 3, 1, srv, cli_)) is None


def test_trace_summary_feeds_diagnosis_with_the_same_fixes() -> None:
    dec = Decoder(_info())
    s = Summary(kernel="5.99.0")
    for _ in range(3):
        s.add(dec.line(_d(2, 6, 0x02)))  # type: ignore[arg-type]
    s.add(dec.line(_d(38, 10, 0x10)))  # type: ignore[arg-type]
    findings = diagnose(Evidence(source="trace", trace=s.to_json()))
    by = {f.id: f for f in findings}
    seed = by["trace-syn-hit-timewait"]
    assert seed.severity == "critical" and "3 SYNs" in seed.cause and seed.source == "trace"
    assert {"client-timestamps-linux", "keepalive"} <= {f.id for f in seed.fixes}
    assert "10.0.0.1:8080 (3)" in str([e.value for e in seed.evidence])
    assert {f.id for f in by["trace-listen-overflow"].fixes} == {"backlog", "accept-faster"}
    assert diagnose(Evidence(source="trace", trace=Summary().to_json())) == []


def test_cli_says_why_it_cannot_trace_and_shows_counters(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernel, "problems", lambda: ["bpftrace is not installed (Debian/Ubuntu: apt-get install "
                                                      "bpftrace)"])
    code, out, err = cli(["trace", "--duration", "0.2", "--json"])
    assert code == 0
    assert "cannot trace: bpftrace is not installed" in err
    doc = json.loads(out.strip().splitlines()[-1])
    assert doc["kind"] == "tcpreuse-trace-counters" and "TcpExtTW" in doc["counters"]


def test_cli_rejects_a_bad_port(cli: Cli) -> None:
    code, _, err = cli(["trace", "--port", "http"])
    assert code == 2 and "not a port number" in err


def _ev(t_s: float, verdict: str, reason: str, sa: str, sp: int, da: str, dp: int, flags: str = "",
        probe: str = "skb:kfree_skb") -> TraceEvent:
    return TraceEvent(int(t_s * 1e9), probe, verdict, reason, sa, sp, da, dp, flags=flags)


def test_join_gives_each_attempt_the_kernels_verdict_and_the_agreement() -> None:
    from tcpreuse.result import AttemptTable, RunResult
    from tcpreuse.trace.join import agreement, join

    # attempts (t since run start): 0 and 2 reuse port 40000 toward the server; 3 fails with
    # EADDRNOTAVAIL; 4 is refused; 5 is fine
    vocab = {"outcome": ["ok", "EADDRNOTAVAIL", "ECONNREFUSED"],
             "reason": ["ok", "ok_after_syn_retry", "local_ports_exhausted", "refused"],
             "addr": ["10.0.0.2", "10.0.0.1"]}
    cols = {"t": [0.0, 1.0, 2.0, 3.0, 4.0, 5.0], "outcome": [0, 0, 0, 1, 2, 0], "reason": [0, 0, 1, 2, 3, 0],
            "src": [0] * 6, "sport": [40000, 40001, 40000, 0, 40002, 40003], "dst": [1] * 6, "dport": [80] * 6,
            "srv_src": [0] * 6, "srv_sport": [40000, 40001, 40000, 0, 40002, 40003], "srv_dst": [1] * 6,
            "srv_dport": [80] * 6}
    run = RunResult(source="lab", scenario="t", duration_s=6, attempts=AttemptTable.build(cols, vocab),
                    meta={"t0_unix": 1000.0})
    offset = int(1000e9)  # monotonic 0 = Unix 1000 s
    events = [
        _ev(2.01, "old-ack", "NOT_SPECIFIED", "10.0.0.2", 40000, "10.0.0.1", 80, "S"),  # attempt 2, not 0
        _ev(2.02, "tw-rst", "NOT_SPECIFIED", "10.0.0.2", 40000, "10.0.0.1", 80, "R"),  # no reason of its own
        _ev(3.0005, "connect-error", "EADDRNOTAVAIL", "", 0, "10.0.0.1", 80, probe="syscalls:sys_exit_connect"),
        _ev(4.001, "no-socket", "NO_SOCKET", "10.0.0.2", 40002, "10.0.0.1", 80, "S"),
        _ev(9.0, "old-ack", "NOT_SPECIFIED", "10.9.9.9", 1, "10.0.0.1", 80, "S"),  # no such attempt
    ]
    j = join(run, events, offset)
    assert j.reasons == ["", "", "syn_hit_timewait", "local_ports_exhausted", "refused", ""]
    assert j.unjoined == 1
    ag = agreement(run, j)
    assert (ag["checked"], ag["agree"], ag["rate"]) == (6, 6, 1.0)
    # a lab reason the kernel contradicts is listed
    j.reasons[5] = "local_ports_exhausted"
    ag = agreement(run, j)
    assert ag["agree"] == 5 and ag["first_disagreements"] == [{"index": 5, "t": 5.0, "lab": "ok",
                                                                "kernel": "local_ports_exhausted"}]
    # an ok whose first SYN got the old ACK agrees: the 2-jiffy re-arm hides it from the client
    j.reasons[5] = "syn_hit_timewait"
    assert agreement(run, j)["agree"] == 6


def test_validate_rows_compare_model_and_kernel_attempt_by_attempt() -> None:
    from tcpreuse.result import AttemptTable, RunResult
    from tcpreuse.validate.perattempt import rows

    vocab = {"outcome": ["ok", "EADDRNOTAVAIL"], "reason": ["ok", "local_ports_exhausted", "syn_dropped_path"],
             "host": ["client"], "workload": ["w"]}
    base = {"t": [0.0, 1.0, 2.0], "client": [0, 0, 0], "workload": [0, 0, 0], "outcome": [0, 0, 1]}
    sim = RunResult(source="simulate", scenario="t", duration_s=3,
                    attempts=AttemptTable.build({**base, "reason": [0, 2, 1]}, vocab))
    lab = RunResult(source="lab", scenario="t", duration_s=3,
                    attempts=AttemptTable.build({**base, "reason": [0, 0, 1]}, vocab),
                    meta={"kernel_trace": {"reasons": ["local_ports_exhausted"], "per_attempt": [-1, -1, 0],
                                           "summary": {"lost_events": 0},
                                           "agreement": {"checked": 3, "agree": 3, "first_disagreements": []}}})
    out, notes = rows(sim, lab)
    model = next(r for r in out if r.metric.startswith("model"))
    # the path drop the model saw on attempt 1 is nothing the kernel reports per attempt
    assert (model.sim, model.agree) == ("3/3", True)
    lab.meta["kernel_trace"]["per_attempt"] = [0, -1, 0]
    out, notes = rows(sim, lab)
    model = next(r for r in out if r.metric.startswith("model"))
    assert (model.sim, model.agree) == ("2/3", False)
    assert notes == ["per attempt, model vs kernel: client w #0: model -, kernel local_ports_exhausted"]
    out, _ = rows(sim, lab, chance="ISNs come from keyed hashes")
    assert next(r for r in out if r.metric.startswith("model")).agree is None


def test_summary_view_shows_counts_reasons_and_the_last_events() -> None:
    from rich.console import Console

    from tcpreuse.trace.render import summary_view

    dec = Decoder(_info())
    s = Summary(kernel="5.99.0", lost=3)
    evs = [dec.line(_d(2, 6, 0x02)) for _ in range(2)]
    for e in evs:
        s.add(e)  # type: ignore[arg-type]
    con = Console(record=True, width=160)
    con.print(summary_view(s.to_json(), evs, 0, live=True))  # type: ignore[arg-type]
    text = con.export_text()
    assert "2 events, 3 lost" in text
    assert "old-ack" in text and "NOT_SPECIFIED 2" in text and "answered with an ACK for the old" in text
    assert "10.0.0.2:40000 > 10.0.0.1:8080 at TIME_WAIT [S]" in text
