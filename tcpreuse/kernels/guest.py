"""Inside a booted kernel: `python -m tcpreuse.kernels.guest JOBS.json OUTDIR`.

Reads the kernel's facts, writes them to OUTDIR/facts.json, runs each job of JOBS.json
(a list of LabJob) and writes OUTDIR/NNN.json after each, so what finished survives a
timeout; OUTDIR/done marks a complete batch. Progress lines go to stdout (the console).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..result import dumps
from .jobs import JobOutcome, LabJob, read_facts, run_jobs

TAG = "tcpreuse-guest:"  # console lines the host forwards as progress


def _write(path: Path, data: object) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(dumps(data))
    tmp.rename(path)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m tcpreuse.kernels.guest JOBS.json OUTDIR", file=sys.stderr)
        return 2
    jobs = [LabJob.from_json(j) for j in json.loads(Path(argv[0]).read_text())]
    out = Path(argv[1])

    def say(msg: str) -> None:
        print(f"{TAG} {msg}", flush=True)

    facts = read_facts()
    _write(out / "facts.json", facts.to_json())
    say(f"Linux {facts.release}, HZ {facts.hz} ({facts.hz_source}), "
        f"nftables ip family: {'yes' if facts.nft_ip else 'no'}, process start-up "
        f"{facts.startup_s:g} s, 1 ms sleep late by {facts.jitter_ms[0]:g} ms (p50) / "
        f"{facts.jitter_ms[1]:g} ms (p99), {facts.connect_rate:g} loopback connects/s")

    def each(k: int, o: JobOutcome) -> None:
        _write(out / f"{k:03d}.json", o.to_json())

    run_jobs(jobs, facts, say, each, capture_root=out)
    (out / "done").write_text("")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
