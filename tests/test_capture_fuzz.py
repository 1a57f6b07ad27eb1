"""Robustness: damaged captures give a result with warnings, or a CaptureError — never
another exception, never a hang.

Hypothesis mutates good pcap and pcapng files (bit flips, truncation, random record and
block lengths, inserted garbage and unknown blocks) and runs the whole pipeline: read,
decode, attempts, reuse, findings, exports. The smallest interesting cases are committed
under tests/data/pcap/corpus/ with what they must give, and replayed as plain tests.
Regenerate them with `python tests/test_capture_fuzz.py --write-corpus`.
"""

from __future__ import annotations

import contextlib
import io
import json
import struct
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers.captures import SEEDS, mutated
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tcpreuse.capture.analysis import analyze_packets
from tcpreuse.capture.decode import decode
from tcpreuse.capture.formats import parse_frames
from tcpreuse.capture.synth import (
    Frame,
    Iface,
    NgWriter,
    Seg,
    frame,
    frames_of,
    pcap_bytes,
)
from tcpreuse.diagnose.base import Evidence, diagnose
from tcpreuse.errors import CaptureError

CORPUS = Path(__file__).parent / "data" / "pcap" / "corpus"
T0 = 1_700_000_000.0


def pipeline(data: bytes) -> dict[str, Any]:
    """Everything `tcpreuse analyze` does with a file, minus the terminal."""
    fr = parse_frames(data, "fuzz")
    an = analyze_packets(decode(fr), [fr.report], ["fuzz"])
    diagnose(Evidence(source="analyze", capture=an))
    an.to_run_result().to_json(records=True)
    buf = io.StringIO()
    cols = an.export_columns()
    json.dump({k: v[:3] for k, v in cols.items()}, buf)
    c = an.counts()
    return {"attempts": c["attempts"], "packets": c["packets"], "complete": an.complete}


@pytest.mark.slow
@settings(max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(mutated())
def test_mutated_captures_give_a_result_or_a_capture_error(data: bytes) -> None:
    with contextlib.suppress(CaptureError):
        pipeline(data)


@settings(max_examples=150, deadline=2000, derandomize=True)
@given(st.binary(max_size=300))
def test_random_bytes_after_a_valid_header(tail: bytes) -> None:
    for head in (SEEDS[0][:24], SEEDS[2][:48]):
        with contextlib.suppress(CaptureError):
            pipeline(head + tail)


# ---- the committed corpus ------------------------------------------------------------------


def corpus_cases() -> dict[str, bytes]:
    """Small captures, each a case the reader must survive; kept tiny on purpose."""
    good = SEEDS[0]
    ng = SEEDS[2]
    first_rec = 24
    incl0 = struct.unpack_from("<I", good, first_rec + 8)[0]
    second_rec = first_rec + 16 + incl0
    c: dict[str, bytes] = {}
    c["empty.pcap"] = b""
    c["header_only.pcap"] = good[:24]
    c["cut_global_header.pcap"] = good[:10]
    c["cut_record_header.pcap"] = good[: second_rec + 7]
    c["cut_record_data.pcap"] = good[: second_rec + 30]
    huge = bytearray(good)
    struct.pack_into("<I", huge, second_rec + 8, 0x7FFFFFFF)
    c["huge_record_length.pcap"] = bytes(huge)
    c["garbage_between_records.pcap"] = good[:second_rec] + b"\xde\xad\xbe\xef" * 9 + good[second_rec:]
    bad_usec = bytearray(good)
    struct.pack_into("<I", bad_usec, second_rec + 4, 2_000_000)
    c["usec_out_of_range.pcap"] = bytes(bad_usec)
    unk = bytearray(good)
    struct.pack_into("<I", unk, 20, 147)  # LINKTYPE_USER0
    c["unsupported_linktype.pcap"] = bytes(unk)
    c["pcapng_no_shb.pcapng"] = ng[28:]
    bom = bytearray(ng)
    bom[8:12] = b"\x11\x22\x33\x44"
    c["pcapng_bad_byte_order_magic.pcapng"] = bytes(bom)
    odd = bytearray(ng)
    struct.pack_into("<I", odd, 4, 30)  # SHB length not a multiple of 4
    c["pcapng_bad_shb_length.pcapng"] = bytes(odd)
    ifx = bytearray(NgWriter().to_bytes(frames_of([Seg(T0, "10.0.0.2", 1, "10.0.0.1", 2, "S", 1)])))
    epb = ifx.index(b"\x06\x00\x00\x00", 48)
    struct.pack_into("<I", ifx, epb + 8, 7)  # interface 7 was never described
    c["pcapng_epb_unknown_interface.pcapng"] = bytes(ifx)
    tsr = bytearray(NgWriter(ifaces=[Iface(1, tsresol=6)]).to_bytes(
        frames_of([Seg(T0, "10.0.0.2", 1, "10.0.0.1", 2, "S", 1)])))
    assert tsr[44:46] == b"\x09\x00" and tsr[48] == 6  # IDB option if_tsresol
    tsr[48] = 0xFF  # 2^-127 s per unit: ignored, microseconds assumed
    c["pcapng_absurd_tsresol.pcapng"] = bytes(tsr)
    ep = bytearray(ng)
    e0 = ep.index(b"\x06\x00\x00\x00", 28)
    struct.pack_into("<I", ep, e0 + 20, 0xFFFF)  # captured length beyond the block
    c["pcapng_epb_caplen_beyond_block.pcapng"] = bytes(ep)
    c["pcapng_cut_block.pcapng"] = ng[: len(ng) - 9]

    def one(seg_bytes: bytes) -> bytes:
        return pcap_bytes([Frame(T0, seg_bytes)])

    syn = frame(Seg(T0, "10.0.0.2", 1, "10.0.0.1", 2, "S", 1, mss=1460, ts=(1, 0), wscale=7, sackok=True))
    bad_opt = bytearray(syn)
    bad_opt[54 + 1] = 0  # MSS option with length 0
    c["tcp_option_length_zero.pcap"] = one(bytes(bad_opt))
    long_opt = bytearray(syn)
    long_opt[54 + 1] = 200  # option longer than the header
    c["tcp_option_too_long.pcap"] = one(bytes(long_opt))
    doff = bytearray(syn)
    doff[46] = 0x30  # data offset 3 words
    c["tcp_data_offset_too_small.pcap"] = one(bytes(doff))
    tot = bytearray(syn)
    struct.pack_into("!H", tot, 16, 12)  # IP total length < IHL
    c["ip_total_length_too_small.pcap"] = one(bytes(tot))
    v6 = frame(Seg(T0, "2001:db8::2", 1, "2001:db8::1", 2, "S", 1, v6_ext=(0, 60, 43, 60, 0, 60, 43, 60, 0)))
    c["ipv6_nine_extension_headers.pcap"] = one(v6)
    v6 = frame(Seg(T0, "2001:db8::2", 1, "2001:db8::1", 2, "S", 1, v6_ext=(60,) * 20))
    c["ipv6_twenty_extension_headers.pcap"] = one(v6)
    c["sll2_cut_header.pcap"] = pcap_bytes([Frame(T0, b"\x08\x00" + b"\x00" * 8)], linktype=276)
    c["synack_then_rst_only.pcap"] = pcap_bytes(frames_of([
        Seg(T0, "10.0.0.1", 80, "10.0.0.2", 5, "SA", 9, 2), Seg(T0 + 0.1, "10.0.0.1", 80, "10.0.0.2", 5, "RA", 10, 2)]))
    c["ns_fraction_out_of_range.pcap"] = (lambda b: b[:24] + struct.pack("<IIII", int(T0), 1_500_000_000,
                                                                       *struct.unpack_from("<II", b, 32)) + b[40:])(
        pcap_bytes(frames_of([Seg(T0, "10.0.0.2", 1, "10.0.0.1", 2, "S", 1)]), nsec=True))
    return c


def outcome(data: bytes) -> dict[str, Any]:
    try:
        return {"error": False, **pipeline(data)}
    except CaptureError as e:
        return {"error": True, "message": e.message.split(": ", 1)[-1][:60]}


def load_expected() -> dict[str, Any]:
    p = CORPUS / "EXPECTED.json"
    return json.loads(p.read_text()) if p.exists() else {}


EXPECTED = load_expected()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_corpus_case(name: str) -> None:
    data = (CORPUS / name).read_bytes()
    assert outcome(data) == EXPECTED[name]


def test_corpus_is_complete_and_small() -> None:
    files = {p.name for p in CORPUS.iterdir() if p.name != "EXPECTED.json"}
    assert files == set(EXPECTED) == set(corpus_cases())
    assert all((CORPUS / f).stat().st_size < 4096 for f in files)
    # the cases are what corpus_cases() builds today (regenerate when synth changes)
    for name, data in corpus_cases().items():
        assert (CORPUS / name).read_bytes() == data, name


def write_corpus() -> None:
    CORPUS.mkdir(parents=True, exist_ok=True)
    expected = {}
    for name, data in sorted(corpus_cases().items()):
        (CORPUS / name).write_bytes(data)
        expected[name] = outcome(data)
    (CORPUS / "EXPECTED.json").write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    if "--write-corpus" in sys.argv:
        write_corpus()
