"""How do `simulate` and `analyze` scale? Wall time, rate and peak memory at 1x, 10x, 100x.

For each size, one child process (so its peak RSS is its own: ``os.wait4``'s
``ru_maxrss``):

- simulate: ``tcpreuse simulate seed --duration D --json`` at the seed's 2,000 new
  connections/s, D = 90 s x size (90 / 900 / 9,000 s: 180,000 / 1.8 M / 18 M attempts).
  A run the command's own estimate refuses (memory, CPU time) is shown as refused, not
  forced: forcing it could take the machine's memory from everything else on it.
- analyze: ``tcpreuse analyze FILE --json`` on a pcap of ~1 M packets x size. The base
  is a real capture: a short-connection run (nginx + wrk, or tcpreuse serve + load) on
  the loopback of a fresh network namespace, recorded by tcpdump
  (bench/analyze_speed.py's recorder; root needed), or ``--capture FILE``; its first
  ``--base-packets`` records are kept. Size k is k copies of it, one after the other,
  each shifted in time by the base's span + 1 s (record times) and its TCP timestamps
  (TSval and TSecr) by the same shift at 1,000 Hz and its sequence and acknowledgment
  numbers by the ISN clock's advance over it (64 ns steps), so the same 4-tuples come
  round again as a busy client's ports do, with later timestamps and new ISNs (with the
  ISNs of the first copy, every later SYN would repeat its 4-tuple's first SYN, which
  the analysis takes for a retransmission: one attempt per 4-tuple, growing). The files are written to
  a temporary directory (or ``--dir``) and deleted afterwards; the free space is checked
  first and a size that does not fit is refused with the estimate; so is a size whose
  peak RSS, scaled from the previous size's, would not fit in 80 % of MemAvailable.

The commands run from this checkout (it goes first on the children's PYTHONPATH), with
its C extension when it is built in place. Prints one row per command and size (wall s, attempts or packets per second, peak RSS)
and whether the peak RSS at the largest size is within 2x of the smallest.

``--rotated N`` adds, per size, the same packets cut into N files at record boundaries
(``tcpdump -C`` names: scale-10x.pcap, scale-10x.pcap1, ...) and analysed merged
(``tcpreuse analyze FILES --json``): a set of 192 MB or more is read as one stream too.

``--format gzip|pcapng`` adds, per size, the same packets as one gzip-compressed pcap
(level 1, ``scale-10x.pcap.gz``) or one pcapng file (a section, an Ethernet interface,
an Enhanced Packet Block per record), analysed the same way: such a file of 192 MB or
more (a gzip file by its inflated size) is streamed as well.

``python bench/scale.py [--sizes 1,10,100] [--only simulate|analyze] [--capture FILE]
[--base-packets 1000000] [--dir DIR] [--rotated N] [--format gzip|pcapng]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "bench"))

SIM_BASE_S = 90.0
SIM_RATE = 2000  # the seed's workload.rate
TS_HZ = 1000  # TSval ticks per second of the recorded kernel (Linux >= 4.13)
ISN_HZ = 15_625_000  # the ISN clock: secure_tcp_seq() adds ktime in 64 ns steps


# Runs argv and reports its peak RSS. Linux carries a process's peak RSS across exec()
# (and a forked child starts with its parent's pages), so a child forked straight from
# this process, which holds the base capture, would report at least this process's size:
# a small fresh interpreter forks the measured command instead.
_LAUNCHER = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, ru = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    f.write(str(ru.ru_maxrss * 1024))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def measured(argv: list[str]) -> tuple[int, float, int, str, str]:
    """(exit code, wall s, peak RSS bytes, stdout, stderr) of argv run as a child."""
    with tempfile.TemporaryDirectory(prefix="tcpr-scale-run-") as d:
        rss_file = Path(d) / "rss"
        t = time.perf_counter()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))}
        p = subprocess.run([sys.executable, "-c", _LAUNCHER, str(rss_file), *argv], capture_output=True,
                           cwd=d, env=env, check=False)
        wall = time.perf_counter() - t
        rss = int(rss_file.read_text()) if rss_file.exists() else 0
    return p.returncode, wall, rss, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")


def tcpreuse() -> list[str]:
    return [sys.executable, "-m", "tcpreuse"]


def run_simulate(size: int) -> dict[str, Any]:
    dur = SIM_BASE_S * size
    rc, wall, rss, out, err = measured([*tcpreuse(), "simulate", "seed", "--duration", f"{dur:g}",
                                        "--set", f"workload.rate={SIM_RATE}", "--json"])
    row: dict[str, Any] = {"what": "simulate", "size": size, "input": f"{dur:,.0f} s at {SIM_RATE:,}/s",
                           "wall_s": wall, "rss": rss}
    if rc != 0:
        row["refused"] = (err.strip().splitlines() or [f"exit {rc}"])[-1][:160]
        return row
    n = int(json.loads(out)["attempts"])
    row.update(n=n, unit="attempts", rate=n / wall)
    return row


# --------------------------------------------------------------------------------------
# captures


def base_capture(args: argparse.Namespace, work: Path) -> Path:
    if args.capture is not None:
        return Path(args.capture).resolve()
    if os.geteuid() != 0:
        sys.exit("scale: recording a capture needs root (network namespace, tcpdump); or pass --capture FILE")
    from analyze_speed import record

    path = work / "recorded.pcap"
    info = record(path, args.base_packets, max_s=90, ns_prefix=args.netns_prefix)
    print(f"recorded: {info}", flush=True)
    return path


class Base:
    """A pcap's records, and where each TCP timestamp option's TSval and TSecr are."""

    def __init__(self, path: Path, keep: int) -> None:
        data = path.read_bytes()
        if data[:4] != b"\xd4\xc3\xb2\xa1":
            sys.exit(f"scale: {path}: a little-endian microsecond pcap is needed (tcpdump -w writes one)")
        if int.from_bytes(data[20:24], "little") & 0x0FFFFFFF != 1:
            sys.exit(f"scale: {path}: an Ethernet capture is needed (tcpdump -i lo writes one)")
        offs: list[int] = []
        off = 24
        while off + 16 <= len(data) and len(offs) < keep:
            incl = int.from_bytes(data[off + 8:off + 12], "little")
            if off + 16 + incl > len(data):
                break
            offs.append(off)
            off += 16 + incl
        self.header = data[:24]
        self.body = np.frombuffer(data[24:off], dtype=np.uint8).copy()
        rec = np.asarray(offs, dtype=np.int64) - 24
        self.packets = rec.size
        self.sec_pos = rec  # little-endian u32 seconds of each record header
        sec = self._u32le(self.sec_pos)
        self.span = int(sec.max() - sec.min()) + 1 if rec.size else 1
        # TCP timestamp options: Ethernet, IPv4, TCP; kind 8 length 10 two bytes in
        # (NOP NOP TS, every packet after the handshake) or six (MSS, SACK_PERM, TS: SYNs)
        b = self.body
        ip = rec + 16 + 14
        ok = (b[rec + 16 + 12] == 0x08) & (b[rec + 16 + 13] == 0x00) & ((b[ip] >> 4) == 4) & (b[ip + 9] == 6)
        ip = ip[ok]
        tcp = ip + (b[ip] & 0x0F).astype(np.int64) * 4
        opt = tcp + 20
        doff = (b[tcp + 12] >> 4).astype(np.int64) * 4
        pos = []
        for at in (2, 6):
            k = opt + at
            m = (doff >= 20 + at + 10) & (k + 10 <= b.size)
            k = k[m]
            hit = (b[k] == 8) & (b[k + 1] == 10)
            pos.append(k[hit] + 2)
        tsv = np.concatenate(pos)
        self.ts_pos = np.concatenate([tsv, tsv + 4])  # TSval, TSecr (big-endian u32)
        self.sec = sec
        self.ts = self._u32be(self.ts_pos)
        self.seq_pos = np.concatenate([tcp + 4, tcp + 8])  # sequence and acknowledgment numbers
        self.seq = self._u32be(self.seq_pos)

    def _u32le(self, pos: np.ndarray) -> np.ndarray:
        b = self.body.astype(np.uint32)
        return b[pos] | b[pos + 1] << 8 | b[pos + 2] << 16 | b[pos + 3] << 24

    def _u32be(self, pos: np.ndarray) -> np.ndarray:
        b = self.body
        return (b[pos].astype(np.uint64) << 24 | b[pos + 1].astype(np.uint64) << 16
                | b[pos + 2].astype(np.uint64) << 8 | b[pos + 3].astype(np.uint64))

    def write(self, path: Path | list[Path], copies: int) -> int:
        """`copies` time-shifted copies one after the other; returns the bytes written.
        Several paths: the same packets cut into that many files of about the same size
        at record boundaries (inside copies, so inside connections), each with the pcap
        header, as ``tcpdump -C`` rotates them."""
        paths = [path] if isinstance(path, Path) else path
        total = copies * self.body.size
        cuts = [total * j // len(paths) for j in range(1, len(paths))]  # in the records' bytes
        rec = self.sec_pos  # record starts within a copy
        files = iter(paths)
        out = self.body.copy()
        f = open(next(files), "wb")  # noqa: SIM115 (a new file at each cut)
        try:
            f.write(self.header)
            pos = 0
            for k in range(copies):
                shift = k * (self.span + 1)
                sec = (self.sec + shift) & 0xFFFFFFFF
                for i in range(4):
                    out[self.sec_pos + i] = (sec >> (8 * i)) & 0xFF
                ts = (self.ts + shift * TS_HZ) & 0xFFFFFFFF
                for i in range(4):
                    out[self.ts_pos + i] = (ts >> (8 * (3 - i))) & 0xFF
                seq = (self.seq + shift * ISN_HZ) & 0xFFFFFFFF
                for i in range(4):
                    out[self.seq_pos + i] = (seq >> (8 * (3 - i))) & 0xFF
                start = 0
                while cuts and cuts[0] < pos + out.size:
                    i = int(np.searchsorted(rec, cuts.pop(0) - pos))
                    end = int(rec[i]) if i < rec.size else out.size
                    f.write(out[start:end].tobytes())
                    f.close()
                    f = open(next(files), "wb")  # noqa: SIM115
                    f.write(self.header)
                    start = end
                f.write(out[start:].tobytes())
                pos += out.size
        finally:
            f.close()
        return 24 * len(paths) + total


def mem_available() -> int:
    """MemAvailable from /proc/meminfo, bytes (0: unknown)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def to_gzip(src: Path) -> Path:
    """`src` compressed (level 1, as a capture rotated with `tcpdump -z gzip` might be); `src` removed."""
    dst = src.with_name(src.name + ".gz")
    z = zlib.compressobj(1, wbits=31)
    with open(src, "rb") as f, open(dst, "wb") as g:
        while block := f.read(1 << 24):
            g.write(z.compress(block))
        g.write(z.flush())
    src.unlink()
    return dst


def to_pcapng(src: Path) -> Path:
    """`src` (a little-endian microsecond Ethernet pcap) as pcapng: a section header, an
    interface, an Enhanced Packet Block per record; `src` removed."""
    dst = src.with_suffix(".pcapng")
    with open(src, "rb") as f, open(dst, "wb") as g:
        head = f.read(24)
        if len(head) < 24:
            sys.exit(f"scale: {src}: not a pcap file")
        g.write(struct.pack("<IIIHHqI", 0x0A0D0D0A, 28, 0x1A2B3C4D, 1, 0, -1, 28))
        g.write(struct.pack("<IIHHII", 1, 20, 1, 0, 262144, 20))
        rec = struct.Struct("<IIII")
        out: list[bytes] = []
        while hdr := f.read(16):
            if len(hdr) < 16:
                break
            sec, usec, incl, orig = rec.unpack(hdr)
            data = f.read(incl)
            ts = sec * 1_000_000 + usec
            pad = -incl % 4
            blen = 32 + incl + pad
            out.append(struct.pack("<IIIIIII", 6, blen, 0, ts >> 32, ts & 0xFFFFFFFF, incl, orig) + data
                       + b"\0" * pad + struct.pack("<I", blen))
            if len(out) >= 65536:
                g.write(b"".join(out))
                out = []
        g.write(b"".join(out))
    src.unlink()
    return dst


def run_analyze(base: Base, size: int, work: Path, prev: dict[str, Any] | None, files: int = 1,
                fmt: str = "pcap") -> dict[str, Any]:
    paths = [work / (f"scale-{size}x.pcap" + (str(i) if i else "")) for i in range(files)]  # tcpdump -C names
    need = (24 * files + size * base.body.size) * (2 if fmt != "pcap" else 1)  # pcap, then converted
    free = shutil.disk_usage(work).free
    what = "analyze" if files == 1 else "rotated"
    row: dict[str, Any] = {"what": what if fmt == "pcap" else fmt, "size": size,
                           "input": f"~{size * base.packets:,} packets, {need / 1e9:.2f} GB"
                           + (f", {files} files" if files > 1 else ""), "wall_s": 0.0, "rss": 0}
    avail = mem_available()
    if prev and prev.get("rss") and avail:  # the last size's peak, grown in proportion
        guess = prev["rss"] * size / prev["size"]
        if guess > 0.8 * avail:
            row["refused"] = (f"peak RSS estimated at {guess / 2**30:.1f} GiB (the {prev['size']}x peak scaled), "
                              f"{avail / 2**30:.1f} GiB available")
            return row
    if need + (1 << 30) > free:
        row["refused"] = (f"needs {need / 1e9:.1f} GB in {work} (+1 GB margin), "
                          f"{free / 1e9:.1f} GB free: use --dir or smaller --sizes")
        return row
    try:
        t = time.perf_counter()
        base.write(paths, size)
        if fmt != "pcap":
            paths = [to_gzip(p) if fmt == "gzip" else to_pcapng(p) for p in paths]
            row["input"] = (f"~{size * base.packets:,} packets, {paths[0].stat().st_size / 1e9:.2f} GB "
                            + ("gzip" if fmt == "gzip" else "pcapng"))
        row["write_s"] = time.perf_counter() - t
        rc, wall, rss, out, err = measured([*tcpreuse(), "analyze", *map(str, paths), "--json"])
        row.update(wall_s=wall, rss=rss)
        if rc not in (0, 1):  # 1: findings were made
            row["refused"] = (err.strip().splitlines() or [f"exit {rc}"])[-1][:160]
            return row
        n = int(json.loads(out)["counts"]["packets"])
        row.update(n=n, unit="packets", rate=n / wall)
    finally:
        for path in paths:
            path.unlink(missing_ok=True)
    return row


def show(rows: list[dict[str, Any]]) -> None:
    print(f"\n{'command':9} {'size':>5}  {'input':34} {'wall s':>9} {'per second':>22} {'peak RSS':>10}")
    for r in rows:
        rate = f"{r['rate']:,.0f} {r['unit']}/s" if "rate" in r else ""
        rss = f"{r['rss'] / 2**20:,.0f} MB" if r["rss"] else ""
        print(f"{r['what']:9} {r['size']:>4}x  {r['input']:34} {r['wall_s']:9.1f} {rate:>22} {rss:>10}")
        if "refused" in r:
            print(f"{'':17}not measured: {r['refused']}")
    for what in ("simulate", "analyze", "rotated", "gzip", "pcapng"):
        done = [r for r in rows if r["what"] == what and "rate" in r]
        if len(done) >= 2:
            lo, hi = min(done, key=lambda r: r["size"]), max(done, key=lambda r: r["size"])
            ratio = hi["rss"] / lo["rss"]
            print(f"{what}: peak RSS at {hi['size']}x is {ratio:.2f}x that at {lo['size']}x -> "
                  f"{'within' if ratio <= 2 else 'NOT within'} 2x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1,10,100", help="multiples of the base sizes, e.g. 1,10")
    ap.add_argument("--only", choices=("simulate", "analyze"), default=None)
    ap.add_argument("--capture", type=Path, default=None, help="base capture (pcap) instead of recording one")
    ap.add_argument("--base-packets", type=int, default=1_000_000, help="records of the base capture to use")
    ap.add_argument("--dir", type=Path, default=None, help="where to write the scaled captures")
    ap.add_argument("--rotated", type=int, default=0, metavar="N",
                    help="also analyse each size's packets cut into N rotated files, merged (0: not)")
    ap.add_argument("--netns-prefix", default="tcpr-bench-sc-", help="name prefix of the recording's namespace")
    ap.add_argument("--format", choices=("gzip", "pcapng"), default=None,
                    help="also analyse each size's packets as one gzip-compressed pcap or one pcapng file")
    args = ap.parse_args()
    try:
        sizes = sorted({int(x) for x in args.sizes.split(",") if x.strip()})
    except ValueError:
        sys.exit(f"scale: --sizes: whole numbers separated by commas, not {args.sizes!r}")
    if not sizes or min(sizes) < 1:
        sys.exit("scale: --sizes must be 1 or more")
    rows: list[dict[str, Any]] = []
    if args.only in (None, "simulate"):
        for k in sizes:
            rows.append(run_simulate(k))
            print(f"simulate {k}x done ({rows[-1]['wall_s']:.1f} s)", flush=True)
    if args.only in (None, "analyze"):
        work = Path(tempfile.mkdtemp(prefix="tcpr-scale-", dir=args.dir))
        try:
            base = Base(base_capture(args, work), args.base_packets)
            print(f"base: {base.packets:,} records, {base.body.size / 1e6:.1f} MB, span {base.span} s, "
                  f"{base.ts_pos.size // 2:,} timestamp options", flush=True)
            for k in sizes:
                done = [r for r in rows if r["what"] == "analyze" and r["rss"]]
                rows.append(run_analyze(base, k, work, done[-1] if done else None))
                print(f"analyze {k}x done ({rows[-1]['wall_s']:.1f} s)", flush=True)
                if args.format:
                    rows.append(run_analyze(base, k, work, rows[-1] if rows[-1]["rss"] else None, fmt=args.format))
                    print(f"analyze {k}x as {args.format} done ({rows[-1]['wall_s']:.1f} s)", flush=True)
                if args.rotated > 1:
                    rows.append(run_analyze(base, k, work, rows[-1] if rows[-1]["rss"] else None, args.rotated))
                    print(f"analyze {k}x in {args.rotated} files done ({rows[-1]['wall_s']:.1f} s)", flush=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    show(rows)


if __name__ == "__main__":
    main()
