"""Fuzz `tcpreuse analyze` with damaged versions of real captures.

Records a small real capture (tcpdump on the loopback of a fresh network namespace:
short connections closed by the client, by the server, by RST, and SYNs to a closed
port; on `lo` and on `any`, so Ethernet and Linux cooked v2), or takes --seed files, and
derives seeds in other formats from it (nanosecond and big-endian pcap, pcapng with two
interfaces and several sections, gzip). Then makes --cases mutations of them, each from
its case number alone (so any case can be made again: --replay N), of these kinds:

  truncate, flip (bits anywhere), header (flips in the file or section header),
  record (flips in record/block headers), packet (flips in IP/TCP headers), length
  (absurd record/block lengths), time (absurd timestamps, fractions out of range,
  records swapped or duplicated out of order), linktype (wrong or unknown link types),
  blocks (odd and unknown pcapng blocks, sections of the other byte order, interface
  options), gzip (damaged, cut, multi-member, trailing garbage), splice (ranges
  deleted, duplicated, garbage inserted)

and runs `tcpreuse analyze FILE` on each — in-process in worker processes for speed
(alternately --json and the terminal report), and a sample (--subprocess-sample)
through the installed command as a user runs it — each with a time limit. A case is a
traceback when anything but a clean exit (0, or 2 with one error line) comes out, a
hang when it passes the limit. Counts are printed; crashers are written to --out.

Bounded: at most --jobs worker processes (default 2: the machine is shared), a time
limit per case, and everything it creates (the namespace, temporary files) is removed.

  python bench/fuzz_captures.py --cases 20000            # the full run (~10-20 min on 2 cores)
  python bench/fuzz_captures.py --cases 200 --no-record  # seeds from synthetic captures only
  python bench/fuzz_captures.py --replay 1234 --keep x.pcap
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import io
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing import Pipe, Process
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

KINDS = ("truncate", "flip", "header", "record", "packet", "length", "time", "linktype", "blocks", "gzip",
         "splice")
LINKTYPES = (0, 1, 9, 12, 14, 101, 105, 108, 113, 127, 147, 228, 229, 276, 0xFFFF, 0x0FFFFFFF, 0xFFFFFFFF)
BLOCK_TYPES = (1, 2, 3, 4, 5, 6, 7, 8, 9, 0x0A0D0D0A, 0x0BAD, 0x40000BAD, 0x80000001, 0xDEADBEEF, 0)
U32_ODD = (0, 1, 3, 4, 7, 8, 11, 12, 15, 16, 28, 31, 32, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFF0,
           0xFFFFFFFF)


# ---- seeds ------------------------------------------------------------------------------------

@dataclass
class Seed:
    name: str
    data: bytes
    kind: str  # pcap | pcapng
    endian: str = "<"
    offsets: list[int] = field(default_factory=list)  # record / block offsets


def pcap_records(data: bytes) -> tuple[str, list[int]]:
    endian = "<" if data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    off, out = 24, []
    while off + 16 <= len(data):
        incl = struct.unpack_from(endian + "I", data, off + 8)[0]
        if off + 16 + incl > len(data):
            break
        out.append(off)
        off += 16 + incl
    return endian, out


def pcapng_blocks(data: bytes) -> tuple[str, list[int]]:
    endian = "<" if struct.unpack_from("<I", data, 8)[0] == 0x1A2B3C4D else ">"
    off, out = 0, []
    while off + 12 <= len(data):
        blen = struct.unpack_from(endian + "I", data, off + 4)[0]
        if blen < 12 or off + blen > len(data):
            break
        out.append(off)
        off += blen
    return endian, out


def make_seed(name: str, data: bytes) -> Seed:
    if data[:4] == b"\x0a\x0d\x0d\x0a":
        e, offs = pcapng_blocks(data)
        return Seed(name, data, "pcapng", e, offs)
    e, offs = pcap_records(data)
    return Seed(name, data, "pcap", e, offs)


def frames_from_pcap(data: bytes, limit: int) -> tuple[int, list[Any]]:
    """(link type, synth Frames) of a pcap file's first `limit` records."""
    from tcpreuse.capture.synth import Frame

    e, offs = pcap_records(data)
    nsec = data[:4] in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
    linktype = struct.unpack_from(e + "I", data, 20)[0] & 0x0FFFFFFF
    out = []
    for off in offs[:limit]:
        sec, frac, incl, orig = struct.unpack_from(e + "IIII", data, off)
        out.append(Frame(sec + frac / (1e9 if nsec else 1e6), data[off + 16:off + 16 + incl], orig_len=orig))
    return linktype, out


def derived_seeds(name: str, data: bytes, limit: int) -> list[Seed]:
    """The capture in the other formats the reader takes (same packets)."""
    from tcpreuse.capture.synth import Frame, Iface, NgExtra, NgWriter, pcap_bytes

    lt, fr = frames_from_pcap(data, limit)
    out = [make_seed(name, pcap_bytes(fr, linktype=lt))]
    out.append(make_seed(name + "-ns-be", pcap_bytes(fr, linktype=lt, nsec=True, big_endian=True)))
    two = [Frame(f.t, f.data, orig_len=f.orig_len, iface=i % 2) for i, f in enumerate(fr)]
    ng = NgWriter(ifaces=[Iface(lt), Iface(lt, tsresol=9, tsoffset=5)]).to_bytes(
        two, extra=[NgExtra(3, 4, b"\x00" * 12), NgExtra(7, 5, b"\x00" * 16), NgExtra(9, 0x0BAD, b"x" * 8)])
    out.append(make_seed(name + "-ng", ng))
    half = len(fr) // 2
    be = NgWriter(ifaces=[Iface(lt, tsresol=0x86)], big_endian=True).to_bytes(fr[half:])
    out.append(make_seed(name + "-ng-2sections", NgWriter(ifaces=[Iface(lt)]).to_bytes(fr[:half]) + be))
    return out


def synthetic_seeds() -> list[Seed]:
    """Crafted captures (no root needed): Windows-like reuse, two clocks behind a NAT."""
    sys.path.insert(0, str(ROOT / "tests"))
    from test_capture_attempts import nat_two_clocks, windows_reuse

    from tcpreuse.capture.synth import frames_of, pcap_bytes

    out: list[Seed] = []
    for name, segs in (("windows", windows_reuse(n_conn=60, ports=20)), ("nat", nat_two_clocks())):
        out += derived_seeds(name, pcap_bytes(frames_of(sorted(segs, key=lambda s: s.t))), 400)
    return out


TRAFFIC = textwrap.dedent("""
    import socket, struct, threading, time
    def serve(port, mode):
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port)); s.listen(64)
        while True:
            c, _ = s.accept()
            c.recv(100); c.sendall(b"ok\\n")
            if mode == "server": c.close()
            else:
                while c.recv(100): pass
                c.close()
    for port, mode in ((8081, "server"), (8082, "client")):
        threading.Thread(target=serve, args=(port, mode), daemon=True).start()
    time.sleep(0.2)
    for i in range(60):
        port = (8081, 8082, 8082, 8083)[i % 4]  # 8083: nobody listens (RST)
        c = socket.socket(); c.settimeout(2)
        if i % 8 == 5: c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        try:
            c.connect(("127.0.0.1", port)); c.sendall(b"x" * (i % 5 + 1))
            c.recv(100)
            if port == 8082: c.shutdown(socket.SHUT_WR); c.recv(100)
        except OSError: pass
        c.close(); time.sleep(0.005)
    time.sleep(0.3)
""")


def record(tmp: Path) -> list[Seed]:
    """A real capture from the running kernel (root, iproute2, tcpdump), else []."""
    if os.geteuid() != 0 or not shutil.which("tcpdump") or not shutil.which("ip"):
        return []
    from tcpreuse.lab.netns import Namespace

    ns = Namespace(f"tcpr-fuzz-{os.getpid() % 100000}")
    seeds: list[Seed] = []
    try:
        ns.create()
        caps = []
        for iface in ("lo", "any"):
            path = tmp / f"real-{iface}.pcap"
            p = ns.popen(["tcpdump", "-i", iface, "-U", "-s", "0", "-Z", "root", "-w", str(path), "tcp"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            assert p.stderr is not None
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                line = p.stderr.readline()
                if b"listening on" in line or not line:
                    break
            caps.append((p, path))
        ns.run([sys.executable, "-c", TRAFFIC], timeout=60)
        for p, _ in caps:
            p.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.communicate(timeout=10)
            if p.poll() is None:
                p.kill()
                p.wait()
        for _, path in caps:
            data = path.read_bytes()
            if len(data) > 24:
                seeds += derived_seeds(path.stem, data, 300)
    except Exception as e:
        print(f"fuzz: no real capture ({type(e).__name__}: {e})", file=sys.stderr)
    finally:
        ns.delete()
    return seeds


# ---- mutations --------------------------------------------------------------------------------

def _flip(b: bytearray, r: random.Random, lo: int, hi: int, n: int) -> None:
    hi = min(hi, len(b))
    if hi <= lo:
        return
    for _ in range(n):
        i = r.randrange(lo, hi)
        b[i] ^= r.choice((1 << r.randrange(8), 0xFF, r.randrange(1, 256)))


def _u32(b: bytearray, off: int, val: int, e: str) -> None:
    if off >= 0 and off + 4 <= len(b):
        struct.pack_into(e + "I", b, off, val & 0xFFFFFFFF)


def _block(btype: int, body: bytes, e: str, blen: int | None = None) -> bytes:
    n = 12 + len(body) + (-len(body) % 4)
    return struct.pack(e + "II", btype, n if blen is None else blen) + body + b"\0" * (-len(body) % 4) \
        + struct.pack(e + "I", n if blen is None else blen)


def mutate(seed: Seed, kind: str, r: random.Random) -> tuple[bytes, str]:
    """One damaged capture of `seed` and its file suffix."""
    b = bytearray(seed.data)
    e = seed.endian
    recs = seed.offsets or [len(b)]
    rec = r.choice(recs)
    suffix = ".pcapng" if seed.kind == "pcapng" else ".pcap"
    head = 24 if seed.kind == "pcap" else 28
    if kind == "truncate":
        cut = r.choice([r.randrange(len(b) + 1), rec + r.randrange(0, 20), head + r.randrange(-4, 5), len(b) - 1])
        del b[max(cut, 0):]
    elif kind == "flip":
        _flip(b, r, 0, len(b), r.choice((1, 1, 2, 4, 16, 64)))
    elif kind == "header":
        _flip(b, r, 0, head + (40 if seed.kind == "pcapng" else 0), r.randint(1, 3))
    elif kind == "record":
        for _ in range(r.randint(1, 3)):
            o = r.choice(recs)
            _flip(b, r, o, o + (16 if seed.kind == "pcap" else 28), 1)
    elif kind == "packet":
        for _ in range(r.randint(1, 6)):
            o = r.choice(recs) + (16 if seed.kind == "pcap" else 28)
            _flip(b, r, o, o + 80, 1)
    elif kind == "length":
        for _ in range(r.randint(1, 2)):
            o = r.choice(recs)
            field_off = r.choice((8, 12)) if seed.kind == "pcap" else r.choice((4, 20, 24))
            _u32(b, o + field_off, r.choice((*U32_ODD, r.getrandbits(32))), e)
    elif kind == "time":
        how = r.randrange(5)
        o = r.choice(recs)
        if seed.kind == "pcap":
            if how == 0:
                _u32(b, o, r.choice((0, 1, 0x7FFFFFFF, 0xFFFFFFFF, r.getrandbits(32))), e)
            elif how == 1:
                _u32(b, o + 4, r.choice((999_999, 1_000_000, 999_999_999, 1_000_000_000, 0xFFFFFFFF)), e)
            elif how == 2:
                sec = struct.unpack_from(e + "I", b, o)[0] if o + 4 <= len(b) else 0
                _u32(b, o, sec + r.choice((-1, 1)) * r.choice((86400 * 400, 86400 * 365 * 6, 3600)), e)
            else:
                _swap_records(b, seed, r, dup=how == 4)
        else:
            if how <= 1:  # EPB timestamp high / low word
                _u32(b, o + 12 + 4 * how, r.choice((0, 0xFFFFFFFF, 0x7FFFFFFF, r.getrandbits(32))), e)
            elif how == 2:
                _u32(b, o + 12, (struct.unpack_from(e + "I", b, o + 12)[0] if o + 16 <= len(b) else 0)
                     + r.choice((1, 1000, 400_000)), e)
            else:
                _swap_records(b, seed, r, dup=how == 4)
    elif kind == "linktype":
        if seed.kind == "pcap":
            _u32(b, 20, r.choice(LINKTYPES), e)
        else:
            idbs = [o for o in recs if struct.unpack_from(e + "I", b, o)[0] == 1]
            for o in idbs[: r.randint(1, 2)]:
                struct.pack_into(e + "H", b, o + 8, r.choice(LINKTYPES) & 0xFFFF)
    elif kind == "blocks":
        _odd_blocks(b, seed, r)
        if seed.kind == "pcap":
            suffix = ".pcapng"
    elif kind == "gzip":
        if r.random() < 0.5:  # damage the capture too
            _flip(b, r, 0, len(b), r.randint(1, 4))
        z = bytearray(gzip.compress(bytes(b), compresslevel=r.choice((1, 6, 9))))
        how = r.randrange(6)
        if how == 0:
            del z[r.randrange(len(z)):]
        elif how == 1:
            _flip(z, r, 10, len(z), r.randint(1, 8))
        elif how == 2:
            _flip(z, r, 0, 10, 1)
        elif how == 3:
            z += gzip.compress(bytes(b[: r.randrange(len(b) + 1)]))
        elif how == 4:
            z += bytes(r.getrandbits(8) for _ in range(r.randint(1, 64)))
        else:
            z += b"\0" * r.randint(1, 512)
        return bytes(z), suffix + ".gz"
    elif kind == "splice":
        for _ in range(r.randint(1, 3)):
            i = r.randrange(len(b) + 1)
            j = min(len(b), i + r.randint(1, 200))
            op = r.randrange(3)
            if op == 0:
                del b[i:j]
            elif op == 1:
                b[i:i] = b[i:j]
            else:
                b[i:i] = bytes(r.getrandbits(8) for _ in range(r.randint(1, 100)))
    return bytes(b), suffix


def _swap_records(b: bytearray, seed: Seed, r: random.Random, dup: bool) -> None:
    """Two records exchanged (time goes backwards), or one repeated later."""
    if len(seed.offsets) < 3:
        return
    i, j = sorted(r.sample(range(len(seed.offsets) - 1), 2))
    oi, oj = seed.offsets[i], seed.offsets[j]
    ri, rj = bytes(seed.data[oi:seed.offsets[i + 1]]), bytes(seed.data[oj:seed.offsets[j + 1]])
    if dup:
        b[oj:oj] = ri
    elif len(ri) == len(rj):
        b[oi:oi + len(ri)], b[oj:oj + len(rj)] = rj, ri


def _odd_blocks(b: bytearray, seed: Seed, r: random.Random) -> None:
    """pcapng: unknown and odd blocks, a section of the other byte order, interface
    options that cannot be right. pcap seeds become a pcapng of their records first."""
    e = seed.endian
    if seed.kind == "pcap":
        from tcpreuse.capture.synth import Frame, Iface, NgWriter

        lt = struct.unpack_from(e + "I", seed.data, 20)[0] & 0xFFFF
        fr = []
        for o in seed.offsets:
            sec, frac, incl, orig = struct.unpack_from(e + "IIII", seed.data, o)
            fr.append(Frame(sec + frac / 1e6, seed.data[o + 16:o + 16 + incl], orig_len=orig))
        b[:] = NgWriter(ifaces=[Iface(lt)]).to_bytes(fr)
        e = "<"
    _, offs = pcapng_blocks(bytes(b))
    for _ in range(r.randint(1, 4)):
        at = r.choice(offs) if offs else len(b)
        how = r.randrange(7)
        if how == 0:  # unknown or known non-packet block, sane length
            blk = _block(r.choice(BLOCK_TYPES), bytes(r.getrandbits(8) for _ in range(r.randint(0, 40))), e)
        elif how == 1:  # odd length: not a multiple of 4, too small, beyond the file
            blk = _block(r.choice(BLOCK_TYPES), b"\0" * 8, e, r.choice((8, 13, 0, 0xFFFFFFF0, 1 << 20)))
        elif how == 2:  # a section header of the other byte order, then an interface
            oe = ">" if e == "<" else "<"
            blk = _block(0x0A0D0D0A, struct.pack(oe + "IHHq", 0x1A2B3C4D, 1, 0, -1), oe) + \
                _block(1, struct.pack(oe + "HHI", r.choice(LINKTYPES) & 0xFFFF, 0, 65535), oe)
        elif how == 3:  # an interface with odd options (tsresol, tsoffset, unknown, cut)
            opt = r.choice((struct.pack(e + "HHB3x", 9, 1, r.choice((0, 6, 9, 63, 64, 0x80, 0xFF, 0x8A))),
                            struct.pack(e + "HHq", 14, 8, r.choice((-(1 << 62), 1 << 62, 0))),
                            struct.pack(e + "HH", 2, 0xFFFF), struct.pack(e + "HH4s", 0x7777, 4, b"abcd")))
            blk = _block(1, struct.pack(e + "HHI", r.choice(LINKTYPES) & 0xFFFF, 0, r.choice((0, 1, 65535))) + opt, e)
        elif how == 4:  # an EPB for an interface that does not exist, or with a caplen beyond it
            data = bytes(r.getrandbits(8) for _ in range(r.randint(0, 60)))
            blk = _block(6, struct.pack(e + "IIIII", r.choice((7, 0xFFFF, 0)), 0, 0,
                                        r.choice((len(data), len(data) + 100, 0xFFFFFFFF)), len(data)) + data, e)
        elif how == 5:  # a simple packet block and an obsolete packet block
            blk = _block(3, struct.pack(e + "I", 40) + b"\x45" + b"\0" * 39, e) + \
                _block(2, struct.pack(e + "HHIII", 0, 0, 0, 0, 20) + b"\0" * 20, e)
        else:  # a block whose trailer disagrees with its header
            blk = _block(r.choice(BLOCK_TYPES), b"\0" * 16, e)[:-4] + struct.pack(e + "I", r.getrandbits(32))
        b[at:at] = blk


# ---- running ----------------------------------------------------------------------------------

SEEDS: list[Seed] = []


def case(n: int) -> tuple[bytes, str, str, str]:
    """(data, suffix, kind, seed name) of case n: everything from n alone."""
    r = random.Random(n * 7919 + 17)
    kind = KINDS[n % len(KINDS)]  # every kind in any 11 successive cases
    seed = SEEDS[(n // len(KINDS)) % len(SEEDS)]
    data, suffix = mutate(seed, kind, r)
    return data, suffix, kind, seed.name


class Timeout(Exception):
    pass


def _alarm(_sig: int, _frm: Any) -> None:
    raise Timeout


def run_in_process(path: Path, terminal: bool, limit: float) -> tuple[str, int, str]:
    """('ok'|'traceback'|'hang', exit code, detail) of `tcpreuse analyze PATH` in this process."""
    from tcpreuse.cli import main

    argv = ["analyze", str(path)] + ([] if terminal else ["--json"])
    out, err = io.StringIO(), io.StringIO()
    code = 0
    signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main(argv)
    except SystemExit as e:
        code = int(e.code) if isinstance(e.code, int) else 1
    except Timeout:
        return "hang", -1, f"over {limit} s"
    except BaseException:
        return "traceback", 1, traceback.format_exc(limit=-8)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    return _judge(code, err.getvalue())


def _judge(code: int, err: str) -> tuple[str, int, str]:
    if "Traceback" in err:
        return "traceback", code, err[-2000:]
    if code == 2:
        lines = [x for x in err.splitlines() if x.strip() and not x.startswith("  hint:")]
        if len(lines) != 1 or not lines[0].startswith("tcpreuse: error:"):
            return "traceback", code, "exit 2 without one error line: " + err[-500:]
    elif code != 0:
        return "traceback", code, f"exit {code}: " + err[-500:]
    return "ok", code, ""


def run_command(path: Path, limit: float, command: list[str]) -> tuple[str, int, str]:
    """The same through the installed command, as a user runs it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        p = subprocess.run([*command, "analyze", str(path), "--json"], capture_output=True, text=True,
                           timeout=limit, env=env)
    except subprocess.TimeoutExpired:
        return "hang", -1, f"over {limit} s (command)"
    return _judge(p.returncode, p.stderr)


def worker(conn: Connection, seeds: list[Seed], tmp: str, limit: float) -> None:
    from tcpreuse.capture import backend

    fast = backend.ACTIVE
    SEEDS[:] = seeds
    os.environ.setdefault("COLUMNS", "100")
    while True:
        msg = conn.recv()
        if msg is None:
            return
        n = int(msg)
        data, suffix, kind, seed = case(n)
        path = Path(tmp) / f"case-{os.getpid()}{suffix}"
        path.write_bytes(data)
        backend.ACTIVE = fast if n % 4 < 2 else backend.NumpyBackend()  # half the cases on the reference
        res = run_in_process(path, terminal=n % 2 == 1, limit=limit)
        conn.send((n, kind, seed, *res))


@dataclass
class Pool:
    """At most `jobs` worker processes, each given one case at a time; a worker that does
    not answer within the limit (a hang below Python, where the alarm cannot reach) is
    killed by its pid and replaced."""

    jobs: int
    seeds: list[Seed]
    tmp: str
    limit: float
    procs: list[tuple[Process, Connection]] = field(default_factory=list)

    def start(self) -> tuple[Process, Connection]:
        a, b = Pipe()
        p = Process(target=worker, args=(b, self.seeds, self.tmp, self.limit), daemon=True)
        p.start()
        return p, a

    def run(self, cases: list[int], on_result: Any) -> None:
        todo = list(reversed(cases))
        busy: dict[int, tuple[int, float]] = {}  # slot -> (case, started)
        self.procs = [self.start() for _ in range(self.jobs)]
        try:
            while todo or busy:
                for slot, (_p, conn) in enumerate(self.procs):
                    if slot not in busy and todo:
                        n = todo.pop()
                        conn.send(n)
                        busy[slot] = (n, time.monotonic())
                for slot in list(busy):
                    p, conn = self.procs[slot]
                    n, t0 = busy[slot]
                    if conn.poll(0.002):
                        on_result(conn.recv())
                        del busy[slot]
                    elif time.monotonic() - t0 > self.limit + 15 or not p.is_alive():
                        _, _, kind, seed = case(n)
                        on_result((n, kind, seed, "hang" if p.is_alive() else "traceback", -9,
                                   "worker did not answer" if p.is_alive() else f"worker died ({p.exitcode})"))
                        if p.is_alive():
                            p.kill()  # this pool's own worker, by its pid
                        p.join()
                        self.procs[slot] = self.start()
                        del busy[slot]
        finally:
            for p, conn in self.procs:
                with contextlib.suppress(OSError):
                    conn.send(None)
                p.join(timeout=5)
                if p.is_alive():
                    p.kill()  # this pool's own worker, by its pid
                    p.join()


def _c_built() -> bool:
    from tcpreuse.capture import backend

    return backend.ACTIVE.name == "c"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=20_000)
    ap.add_argument("--start", type=int, default=0, help="first case number")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--timeout", type=float, default=20.0, help="seconds per case before it counts as a hang")
    ap.add_argument("--subprocess-sample", type=int, default=200,
                    help="cases also run through the installed command (evenly spread)")
    ap.add_argument("--command", default=None,
                    help="the command to run (default: the `tcpreuse` next to this Python, this checkout "
                         "on PYTHONPATH)")
    ap.add_argument("--seed", action="append", default=[], type=Path, help="capture files to mutate (pcap)")
    ap.add_argument("--no-record", action="store_true", help="do not record a real capture (no root needed)")
    ap.add_argument("--out", type=Path, default=None, help="directory for crashers (default: a temporary one)")
    ap.add_argument("--json", type=Path, default=None, help="write the counts as JSON here")
    ap.add_argument("--replay", type=int, default=None, help="make case N again and run it once")
    ap.add_argument("--keep", type=Path, default=None, help="with --replay: write the case's file here")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the pool's finally stops its workers

    with tempfile.TemporaryDirectory(prefix="tcpr-fuzz-") as tmp_s:
        tmp = Path(tmp_s)
        seeds = [] if args.no_record else record(tmp)
        for p in args.seed:
            data = p.read_bytes()
            seeds += derived_seeds(p.stem, data, 300) if data[:4] != b"\x0a\x0d\x0d\x0a" else [make_seed(p.stem, data)]
        seeds += synthetic_seeds()
        SEEDS[:] = seeds
        print(f"fuzz: {len(seeds)} seeds: " + ", ".join(f"{s.name} ({len(s.data):,} B)" for s in seeds),
              file=sys.stderr)
        if args.replay is not None:
            from tcpreuse.capture import backend

            if args.replay % 4 >= 2:
                backend.ACTIVE = backend.NumpyBackend()
            data, suffix, kind, seed = case(args.replay)
            path = args.keep or tmp / f"case{suffix}"
            path.write_bytes(data)
            print(kind, seed, run_in_process(path, terminal=args.replay % 2 == 1, limit=args.timeout))
            return 0
        out = args.out or Path(tempfile.mkdtemp(prefix="tcpr-fuzz-crashers-"))
        out.mkdir(parents=True, exist_ok=True)
        command = args.command.split() if args.command else [str(Path(sys.executable).with_name("tcpreuse"))]
        if not Path(command[0]).exists() and not shutil.which(command[0]):
            command = [sys.executable, "-m", "tcpreuse"]
        cases = list(range(args.start, args.start + args.cases))
        counts: Counter[str] = Counter()
        codes: Counter[int] = Counter()
        by_kind: dict[str, Counter[str]] = {k: Counter() for k in KINDS}
        bad: list[dict[str, Any]] = []
        t0 = time.monotonic()
        done = [0]

        def on_result(res: tuple[Any, ...]) -> None:
            n, kind, seed, status, code, detail = res
            counts[status] += 1
            codes[code] += 1
            by_kind[kind][status] += 1
            done[0] += 1
            if status != "ok":
                data, suffix, *_ = case(n)
                (out / f"case{n}-{kind}{suffix}").write_bytes(data)
                bad.append({"case": n, "kind": kind, "seed": seed, "status": status, "code": code,
                            "detail": detail[-1500:]})
            if done[0] % 1000 == 0:
                print(f"fuzz: {done[0]:,}/{len(cases):,} in {time.monotonic() - t0:.0f} s, "
                      f"{counts['traceback']} tracebacks, {counts['hang']} hangs", file=sys.stderr)

        Pool(max(1, args.jobs), seeds, tmp_s, args.timeout).run(cases, on_result)
        in_process_s = time.monotonic() - t0
        # a sample through the real command, as a user runs it
        sub: Counter[str] = Counter()
        sub_codes: Counter[int] = Counter()
        step = max(1, len(cases) // max(1, args.subprocess_sample)) if args.subprocess_sample else 0
        for n in (cases[::step][: args.subprocess_sample] if step else []):
            data, suffix, kind, seed = case(n)
            path = tmp / f"sub{suffix}"
            path.write_bytes(data)
            status, code, detail = run_command(path, args.timeout + 10, command)
            sub[status] += 1
            sub_codes[code] += 1
            if status != "ok":
                (out / f"case{n}-{kind}-command{suffix}").write_bytes(data)
                bad.append({"case": n, "kind": kind, "seed": seed, "status": status, "code": code,
                            "detail": detail[-1500:], "via": "command"})
        summary = {
            "inputs": len(cases), "seeds": [s.name for s in seeds],
            "tracebacks": counts["traceback"], "hangs": counts["hang"], "ok": counts["ok"],
            "exit_codes": {str(k): v for k, v in sorted(codes.items())},
            "by_kind": {k: dict(v) for k, v in by_kind.items()},
            "in_process_s": round(in_process_s, 1), "timeout_s": args.timeout, "jobs": args.jobs,
            "c_extension": _c_built(),
            "command": {"inputs": sum(sub.values()), "tracebacks": sub["traceback"], "hangs": sub["hang"],
                        "exit_codes": {str(k): v for k, v in sorted(sub_codes.items())},
                        "argv": [*command, "analyze", "FILE", "--json"]},
            "crashers": bad[:50], "crashers_dir": str(out),
        }
        if args.json:
            args.json.write_text(json.dumps(summary, indent=1))
        print(f"inputs {len(cases):,} (in-process, {args.jobs} processes, {in_process_s:.0f} s; "
              f"limit {args.timeout:g} s each): tracebacks {counts['traceback']}, hangs {counts['hang']}, "
              f"exit codes " + ", ".join(f"{k}: {v:,}" for k, v in sorted(codes.items())))
        print(f"through the command ({' '.join(command)}): {sum(sub.values())} inputs, tracebacks "
              f"{sub['traceback']}, hangs {sub['hang']}, exit codes "
              + ", ".join(f"{k}: {v:,}" for k, v in sorted(sub_codes.items())))
        for k in KINDS:
            c = by_kind[k]
            print(f"  {k:9s} {sum(c.values()):6,}  tracebacks {c['traceback']}  hangs {c['hang']}")
        if bad:
            print(f"crashers in {out}:")
            for x in bad[:20]:
                print(f"  case {x['case']} ({x['kind']}, {x['seed']}): {x['status']} {x['code']}: "
                      + x["detail"].strip().splitlines()[-1][:160] if x["detail"].strip() else "")
        return 1 if counts["traceback"] or counts["hang"] or sub["traceback"] or sub["hang"] else 0


if __name__ == "__main__":
    sys.exit(main())
