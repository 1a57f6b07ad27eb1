"""Attempts from crafted captures: Zeek states and histories, the SYN's answer, reuse and
TIME_WAIT verdicts, tw_recycle drops, per-client clocks and ports, findings — for the
traffic a modern kernel will not produce on demand (Windows clients without timestamps
and with random ISNs; several timestamp clocks behind one NAT address)."""

from __future__ import annotations

import random
import re
from typing import Any

import numpy as np
import pytest
from helpers.captures import nat_two_clocks, windows_reuse

from tcpreuse.capture import backend, reuse, zeek
from tcpreuse.capture.analysis import CaptureAnalysis, analyze_packets
from tcpreuse.capture.decode import decode
from tcpreuse.capture.flows import Attempts
from tcpreuse.capture.formats import parse_frames
from tcpreuse.capture.spill import ColumnStore
from tcpreuse.capture.synth import Seg, frames_of, handshake, pcap_bytes
from tcpreuse.diagnose.base import Evidence, diagnose

T0 = 1_700_000_000.0
C, S = "10.0.0.5", "10.0.0.1"


def analyse(segs: list[Seg]) -> CaptureAnalysis:
    segs = sorted(segs, key=lambda s: s.t)
    fr = parse_frames(pcap_bytes(frames_of(segs)), "crafted")
    return analyze_packets(decode(fr), [fr.report], ["crafted.pcap"])


def one(an: CaptureAnalysis, col: str) -> Any:
    cols = an.export_columns()
    assert len(cols[col]) == 1, cols[col]
    return cols[col][0]


def S_(t: float, fl: str, seq: int, ack: int = 0, rev: bool = False, port: int = 40000, **kw: Any) -> Seg:
    return Seg(t, S, 80, C, port, fl, seq, ack, **kw) if rev else Seg(t, C, port, S, 80, fl, seq, ack, **kw)


@pytest.mark.parametrize("segs,state,history", [
    (handshake(T0, C, 40000, S, 80, 100, 900), "SF", "ShADdfFa"),
    (handshake(T0, C, 40000, S, 80, 100, 900, server_closes=False), "SF", "ShADdFf"),
    ([S_(T0, "S", 100), S_(T0 + 1, "S", 100), S_(T0 + 3, "S", 100)], "S0", "S"),
    ([S_(T0, "S", 100), S_(T0 + 0.001, "RA", 0, 101, rev=True)], "REJ", "Sr"),
    ([S_(T0, "S", 100), S_(T0 + 0.5, "R", 101)], "RSTOS0", "SR"),
    ([S_(T0, "S", 100), S_(T0 + 0.5, "FA", 101)], "SH", "SF"),
    (handshake(T0, C, 40000, S, 80, 100, 900)[:5], "S1", "ShADd"),
    ([*handshake(T0, C, 40000, S, 80, 100, 900)[:5], S_(T0 + 1, "RA", 111, 921)], "RSTO", "ShADdR"),
    ([*handshake(T0, C, 40000, S, 80, 100, 900)[:5], S_(T0 + 1, "RA", 921, 111, rev=True)], "RSTR", "ShADdr"),
    ([S_(T0, "PA", 500, 600, payload=10), S_(T0 + 0.1, "A", 600, 510, rev=True)], "OTH", "Da"),
    ([S_(T0, "SA", 900, 101, rev=True), S_(T0 + 0.1, "RA", 901, 101, rev=True)], "RSTRH", "^hr"),
])
def test_zeek_conn_state_and_history(segs: list[Seg], state: str, history: str) -> None:
    an = analyse(segs)
    assert one(an, "conn_state") == state
    assert one(an, "history") == history


def test_syn_retransmissions_and_latency() -> None:
    segs = [S_(T0, "S", 100), S_(T0 + 1.0, "S", 100), S_(T0 + 3.0, "S", 100),
            S_(T0 + 3.0004, "SA", 900, 101, rev=True), S_(T0 + 3.0008, "A", 101, 901)]
    an = analyse(segs)
    assert one(an, "syn_retries") == 2
    assert one(an, "syn_rtx_ms") == pytest.approx(1000.0)
    assert one(an, "connect_ms") == pytest.approx(3000.4, abs=0.01)
    assert one(an, "answer") == "synack" and one(an, "established") is True
    rr = an.to_run_result()
    assert rr.outcomes() == {"ok": 1} and rr.reasons() == {"ok_after_syn_retry": 1}
    assert rr.attempts.cols["syn_tries"][0] == 3


def test_zeek_table_is_the_step_function() -> None:
    t = zeek.table()
    rng = random.Random(1)
    for _ in range(500):
        o, r, e = rng.randrange(8), rng.randrange(8), rng.randrange(64)
        no, nr = zeek.step(o, r, bool(e & 1), bool(e & 2), bool(e & 4), bool(e & 8), bool(e & 16), bool(e & 32))
        assert t[o * 8 + r, e] == no * 8 + nr


# ---- the seed incident, crafted: Windows clients, no timestamps, random ISNs ---------


def test_seed_signature_windows_clients_on_server_timewait() -> None:
    an = analyse(windows_reuse())
    a = an.attempts
    c = an.counts()
    assert c["attempts"] == 900
    old = a["answer"] == 3
    n_old = int(old.sum())
    reused = c["reused_server_timewait"]
    assert reused == 600  # every port used three times, 10-40 s apart
    assert 0.35 * reused < n_old < 0.65 * reused  # random ISNs: about half are "before" rcv_nxt
    # the model agrees with what the (crafted) server did, SYN by SYN
    v = a["tw_verdict"]
    assert set(v[old].tolist()) == {reuse.V_ACK_OLD}
    assert set(v[(a["prev_tw"] == 2) & ~old].tolist()) == {reuse.V_ACCEPT}
    assert (reuse.tw_verdicts_per_call(a) == v).all()
    # retried SYN 3 s later, then connected
    assert np.nanmedian((a["t_syn2"] - a["t_syn"])[old]) == pytest.approx(3.0, abs=0.01)
    assert a["established"].all()
    src = an.sources[0]
    assert src.addr == C and src.syn_without_ts == 900 and src.ts_clocks is None
    pp = src.ports[0]
    assert pp.pattern == "sequential" and pp.median_step == 1 and pp.distinct_ports == 300
    assert 20 < pp.cycle_median_s < 30
    ages = a["reuse_age_s"][old]
    assert ages.min() > 10 and ages.max() < 40
    f = {x.id: x for x in diagnose(Evidence(source="analyze", capture=an))}
    tw = f["capture-syn-hit-timewait"]
    assert "seed incident's signature" in tw.cause and "carried no timestamps" in tw.cause
    assert re.search(r"closed 1\d\.\d–3\d\.\d s earlier", tw.cause), tw.cause
    assert "retried its SYN 3.0 s later" in tw.cause
    assert tw.fixes[0].commands[0] == "netsh int tcp set global timestamps=enabled"  # SYNs look like Windows
    assert tw.severity == "warning"  # all connected in the end, only delayed
    assert "capture-port-cycle" in f
    rr = an.to_run_result()
    causes = rr.attempts.counts("cause")
    assert causes["syn_hit_timewait"] == n_old
    assert rr.reasons()["ok_after_syn_retry"] == n_old


# ---- tw_recycle: two timestamp clocks behind one NAT address ----------------------------


def test_tw_recycle_drops_from_two_clocks_behind_nat() -> None:
    an = analyse(nat_two_clocks())
    a = an.attempts
    b_rows = np.isnan(a["t_synack"])
    assert int(b_rows.sum()) == 19
    assert set(a["tw_recycle"][b_rows].tolist()) == {reuse.RC_DROP}
    assert set(a["tw_recycle"][~b_rows].tolist()) == {reuse.RC_NONE}
    src = an.sources[0]
    assert src.ts_clocks == 2 and src.ts_rate_hz == 1000.0 and not src.ts_per_connection
    assert "NAT" in src.ts_note
    f = {x.id: x for x in diagnose(Evidence(source="analyze", capture=an))}
    rec = f["capture-tw-recycle-drops"]
    assert rec.severity == "critical" and "2 timestamp clocks" in rec.cause
    assert rec.fixes[0].commands[0] == "sysctl -w net.ipv4.tcp_tw_recycle=0"
    assert "capture-listen-overflow" not in f  # the drops are explained, not a full queue
    rr = an.to_run_result()
    assert rr.attempts.counts("cause")["syn_dropped_recycle"] == 19
    # the client gave up on the earlier ones; the last few were still retrying at the end
    assert rr.attempts.counts("reason")["syn_dropped_recycle"] == rr.outcomes()["ETIMEDOUT"] >= 15


def test_recycle_cache_rule_no_timestamp_syn_is_4x_only() -> None:
    segs = nat_two_clocks()[:16]  # B (ok), A, B (dropped), A ...
    segs += [Seg(T0 + 30, "203.0.113.7", 31000, "10.0.0.1", 80, "S", 5, 0, mss=1460)]  # no TS
    an = analyse(segs)
    a = an.attempts
    last = int(np.argmax(a["t_syn"]))
    assert a["tw_recycle"][last] == reuse.RC_DROP_4X


def test_listen_overflow_signature_and_refused() -> None:
    segs: list[Seg] = []
    for k in range(30):
        t = T0 + k * 0.1
        port = 41000 + k
        tsv = int(1000 * (t - T0))
        if k % 3 == 2:  # dropped by a full queue, answered on the retransmission 1 s later
            segs += [Seg(t, C, port, S, 8080, "S", 7 + k, 0, ts=(tsv, 0), mss=1460)]
            segs += handshake(t + 1.0, C, port, S, 8080, 7 + k, 70 + k, ts=(tsv + 1000, 5))
        else:
            segs += handshake(t, C, port, S, 8080, 7 + k, 70 + k, ts=(tsv, 5))
    segs += [Seg(T0 + 5, C, 42000, S, 8081, "S", 1, 0), Seg(T0 + 5.0001, S, 8081, C, 42000, "RA", 0, 2)]
    an = analyse(segs)
    f = {x.id: x for x in diagnose(Evidence(source="analyze", capture=an))}
    lo = f["capture-listen-overflow"]
    assert "10.0.0.1:8080" in lo.title and "10 SYNs unanswered" in lo.cause and "1.0 s" in lo.cause
    assert f["capture-refused"].title == "SYNs to 10.0.0.1:8081 are refused with RST"
    rr = an.to_run_result()
    assert rr.attempts.counts("cause")["syn_dropped_listen_overflow"] == 10
    assert rr.reasons()["ok_after_syn_retry"] == 10 and rr.outcomes()["ECONNREFUSED"] == 1


def test_exports_use_tshark_names(tmp_path: Any) -> None:
    an = analyse(windows_reuse(n_conn=60, ports=20, gap=0.6))
    p = tmp_path / "a.csv"
    assert an.write_csv(p) == 60
    head = p.read_text().splitlines()[0].split(",")
    for name in ("ip.src", "tcp.srcport", "ip.dst", "tcp.dstport", "frame.time_epoch", "tcp.seq_raw",
                 "tcp.options.timestamp.tsval", "conn_state", "history", "syn_retries", "answer", "connect_ms",
                 "reuse_age_s", "tw_verdict"):
        assert name in head
    pq = pytest.importorskip("pyarrow.parquet")
    an.write_parquet(tmp_path / "a.parquet")
    t = pq.read_table(tmp_path / "a.parquet")
    assert t.num_rows == 60 and t.column("ip.src")[0].as_py() == C


def _syns(tuples: list[tuple[int, int, float]], uses: int, gap: float) -> tuple[np.ndarray, ...]:
    """SYN times, TSvals and 4-tuple keys: each (port, offset, rate) 4-tuple used `uses`
    times, `gap` s apart, the 4-tuples interleaved."""
    t, v, k = [], [], []
    for u in range(uses):
        for i, (port, off, rate) in enumerate(tuples):
            ti = u * gap + i * 0.003
            t.append(T0 + ti)
            v.append(int(off + rate * ti) % 2**32)
            k.append(port)
    return np.array(t), np.array(v, dtype=np.uint32), np.array(k, dtype=np.int64)


def test_clock_fit_separates_hosts_only_on_evidence() -> None:
    from tcpreuse.capture.sources import clock_fit
    rnd = random.Random(7)
    # one host with per-4-tuple offsets (4.10, 2026+ kernels): a clock per port, each reused
    # 4-tuple keeping its clock -- one host, whatever the clock count
    one_host = clock_fit(*_syns([(40000 + i, rnd.getrandbits(32), 1000.0) for i in range(50)], 4, 1.0))
    assert one_host.clocks == 50 and one_host.per_tuple and not one_host.nat and one_host.steps == 150
    assert one_host.off_clock == 0 and one_host.why == ""
    # one host with one offset toward this server (4.11-2026): one clock shared by all ports
    pair = clock_fit(*_syns([(40000 + i, 123456, 1000.0) for i in range(40)], 1, 1.0))
    assert (pair.clocks, pair.shared, pair.nat) == (1, 1, False)
    # two such hosts behind one address: two clocks each used by many ports
    two = clock_fit(*_syns([(40000 + i, 123456 if i % 2 else 9_000_000, 1000.0) for i in range(40)], 1, 1.0))
    assert two.nat and two.shared == 2 and "2 timestamp clocks each used by several 4-tuples" in two.why
    # one 4-tuple handed to two hosts in turn (a NAT port reused): its TSval leaves its clock
    t, v, k = _syns([(40000, 5_000_000, 1000.0)], 6, 2.0)
    v[1::2] = (v[1::2].astype(np.int64) - 3_000_000).astype(np.uint32)  # every other SYN: another host
    back = clock_fit(t, v, k)
    assert back.nat and back.off_clock == 5 and back.backwards >= 2 and "went backwards" in back.why
    # per-4-tuple hosts ticking at 1000 and 250 Hz
    rates = clock_fit(*_syns([(40000 + i, rnd.getrandbits(32), 1000.0 if i < 10 else 250.0) for i in range(20)],
                             3, 2.0))
    assert rates.nat and set(rates.other_rates) | {rates.rate} >= {1000.0, 250.0}
    assert "different rates" in rates.why


def tuple_reuse_reference(a: Any) -> dict[str, np.ndarray]:
    """reuse.tuple_reuse in its gathering form (each row's previous row's columns taken
    by index): the slice form must give the same columns."""
    n = len(a)
    flow = a["flow"]
    prev = np.full(n, -1, dtype=np.int64)
    if n > 1:
        prev[1:] = np.where(flow[1:] == flow[:-1], np.arange(n - 1), -1)
    has = prev >= 0
    pi = np.where(has, prev, 0)
    t_new = np.where(np.isnan(a["t_syn"]), a["t_start"], a["t_syn"])
    age = np.where(has, t_new - a["t_end"][pi], np.nan)
    holder = np.where(has, a["tw_holder"][pi], 0)
    o = holder == 1  # W_ORIG
    h_addr = np.where(o, a["orig"][pi], a["resp"][pi])
    h_port = np.where(o, a["orig_port"][pi], a["resp_port"][pi])
    h_is_client = (h_addr == a["orig"]) & (h_port == a["orig_port"])
    prev_tw = np.where(holder == 0, 0, np.where(h_is_client, 1, 2)).astype(np.int8)
    same_client = has & (a["orig"][pi] == a["orig"]) & (a["orig_port"][pi] == a["orig_port"])
    cand = np.flatnonzero(a["is_attempt"] & same_client & (prev_tw == 2) & (age < 60) & (age >= 0))
    verdict = np.zeros(n, dtype=np.int8)
    if cand.size:
        inp = reuse._tw_inputs(a, prev[cand], cand)
        verdict[cand] = [reuse._tw_call(inp, k) for k in range(cand.size)]
    return {"prev": prev, "reuse_age_s": age, "prev_tw": prev_tw, "tw_verdict": verdict}


@pytest.mark.parametrize("which", ["windows", "nat", "mixed"])
@pytest.mark.parametrize("blocks", [None, (1, 1), (7, 2), (64, 5)])
@pytest.mark.parametrize("spilled", [False, True])
def test_tuple_reuse_slices_equal_the_gathering_form(which: str, blocks: tuple[int, int] | None, spilled: bool,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Reused 4-tuples held by the client or the server, midstream segments, unanswered
    and refused attempts, 4-tuples seen from either side: the lean pass's columns are
    those of the straightforward one, row for row (NaN where it has NaN) — with rows
    taken a few at a time (a 4-tuple's segments cut between blocks, TIME_WAIT classes
    met in several groups), and on a table kept in files (spill.ColumnStore)."""
    if which == "windows":
        segs = windows_reuse(n_conn=300, ports=40)
    elif which == "nat":
        segs = nat_two_clocks()
    else:
        segs = []
        for r in range(5):
            for i in range(6):
                t = T0 + r * 2.0 + i * 0.01
                # the responder of round r becomes the originator in odd rounds: the same 4-tuple from either side
                c, s, cp, sp = (C, S, 40000 + i, 80) if r % 2 == 0 else (S, C, 80, 40000 + i)
                segs += handshake(t, c, cp, s, sp, 1000 + r * 50_000 + i, 7000 + r, ts=(r * 900 + i, 3 + r),
                                  server_closes=(i + r) % 3 == 0)
            segs += [Seg(T0 + r * 2.0 + 0.5, C, 50000, S, 80, "A", 5 + r, 9)]  # midstream
            segs += [Seg(T0 + r * 2.0 + 0.6, C, 50001, S, 81, "S", 5 + r), Seg(T0 + r * 2.0 + 0.6001, S, 81, C, 50001,
                                                                             "RA", 0, 6 + r)]
    a = analyse(segs).attempts
    ref = tuple_reuse_reference(a)
    if blocks is not None or spilled:  # the pass again, in blocks and/or on the table in files
        if blocks is not None:
            monkeypatch.setattr(reuse, "REUSE_BLOCK", blocks[0])
            monkeypatch.setattr(reuse, "TW_BLOCK", blocks[1])
        if spilled:
            store = ColumnStore()
            for k, v in a.cols.items():
                store[k] = v
            a = Attempts(store, a.history)
        for k in ref:
            del a.cols[k]
        reuse.tuple_reuse(a)
        assert set(ref) <= set(a.cols) and isinstance(a.cols, ColumnStore) == spilled
    for k, v in ref.items():
        got = a[k]
        assert got.dtype == v.dtype, k
        assert np.array_equal(got, v, equal_nan=v.dtype.kind == "f"), k
    if which != "nat":  # two clocks behind one address: no 4-tuple comes round again
        assert (a["prev"] >= 0).sum() > 10 and (a["prev_tw"] == 2).any()
        assert which == "mixed" or (a["tw_verdict"] > 0).any()
        assert which == "windows" or (a["prev_tw"] == 1).any()


def recycle_reference(a: Any) -> np.ndarray:
    """reuse.recycle_verdicts with pair ids over every row (its earlier form)."""
    from tcpreuse.capture.flows import capture_order, time_order

    out = np.zeros(len(a), dtype=np.int8)
    upd = np.flatnonzero((a["tw_holder"] == 2) & a["syn_has_ts"] & a["synack_has_ts"] & a["orig_ts_seen"]
                         & ~np.isnan(a["t_tw_enter"]))
    if not upd.size:
        return out
    pid = reuse._pair_ids(a["orig"], a["resp"])
    chk = np.flatnonzero(a["is_attempt"] & np.isin(pid, pid[upd]) & (a["tw_verdict"] != reuse.V_ACCEPT))
    if not chk.size:
        return out
    upd = upd[capture_order(a["pkt_tw_enter"][upd])]
    chk = chk[capture_order(a["pkt"][chk])]
    key_all = np.concatenate([pid[upd], pid[chk]])
    order = time_order(np.concatenate([a["t_tw_enter"][upd], a["t_syn"][chk]]))
    order = order[np.argsort(key_all[order], kind="stable")]
    out[chk] = reuse._recycle_checks_reference(
        order, upd.size, key_all, a["orig_last_tsval"][upd].astype(np.int64),
        np.nan_to_num(a["t_orig_last_ts"][upd]).astype(np.int64), a["t_tw_enter"][upd].astype(np.int64),
        a["t_syn"][chk].astype(np.int64), a["syn_tsval"][chk].astype(np.int64), a["syn_has_ts"][chk])
    return out


@pytest.mark.parametrize("v6", [False, True])
@pytest.mark.parametrize("window", [None, 1, 4, 25])
@pytest.mark.parametrize("c_ext", [True, False], ids=["C", "reference"])
def test_recycle_replay_on_selected_pairs_equals_all_rows(v6: bool, window: int | None, c_ext: bool,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Two clocks behind one NAT address (drops), beside other clients and servers and
    IPv6 pairs (address keys past 32 bits): picking the SYNs by pair key and numbering
    only their pairs gives the verdicts of numbering every row's pair — and so does the
    replay in windows of a few events (RECYCLE_WINDOW), each pair's cache entry carried
    from window to window, in the C pass and in the model's PeerCache."""
    segs = nat_two_clocks()
    for i in range(30):
        t = T0 + 0.5 + i * 0.2
        c, s = ("2001:db8::7", "2001:db8::1") if v6 and i % 2 else ("10.0.0.9", "10.0.0.2")
        segs += handshake(t, c, 45000 + i % 4, s, 80, 5000 + i * 999, 800 + i, ts=(10_000 - i * 50, 3 + i),
                          server_closes=True)
    a = analyse(segs).attempts
    assert (int(max(a["orig"].max(), a["resp"].max())) >= 1 << 32) == v6  # which way pairs are matched
    ref = recycle_reference(a)
    assert (ref != 0).sum() > 5 and np.array_equal(a["tw_recycle"], ref)
    if window is not None or not c_ext:
        if window is not None:
            monkeypatch.setattr(reuse, "RECYCLE_WINDOW", window)
        if not c_ext:
            monkeypatch.setattr(backend, "ACTIVE", backend.NumpyBackend())
        elif backend.c_extension() is None:
            pytest.skip("no C extension")
        del a.cols["tw_recycle"]
        reuse.recycle_verdicts(a)
        assert np.array_equal(a["tw_recycle"], ref)
