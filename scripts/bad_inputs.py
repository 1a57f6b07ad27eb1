"""Bad inputs, every verb: each must end in exit 2 with one line on stderr, no traceback.

Runs the installed `tcpreuse` command (the one beside this Python, else the one on PATH,
else `python -m tcpreuse`) on each case below, in a scratch directory holding the
malformed files the cases name, with an empty HOME, and writes the table to
docs/bad-inputs.md (`--markdown`, default) or checks only (`--check`). Nothing here runs
a lab, resolves a name or sends traffic anywhere: every case must be refused before any work starts, in
under two seconds.

    python scripts/bad_inputs.py                 # run all, write docs/bad-inputs.md
    python scripts/bad_inputs.py --check         # run all, exit 1 if any case misbehaves
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

# ---- the files the cases use --------------------------------------------------------------

GOOD = """\
name = "ok"
duration_s = 5
[[host]]
name = "client"
role = "client"
profile = "linux-6.18"
[[host]]
name = "server"
role = "server"
profile = "linux-6.18"
port = 8080
[[workload]]
clients = "client"
target = "server"
rate = 100
"""

FILES: dict[str, str | bytes] = {
    "good.toml": GOOD,
    "bad-count.toml": GOOD.replace('role = "client"\n', 'role = "client"\ncount = "three"\n', 1),
    "unknown-field.toml": GOOD.replace('duration_s = 5\n', 'duration_s = 5\ncolour = "blue"\n'),
    "syntax.toml": GOOD.replace('name = "ok"', 'name = "ok'),
    "duplicate-key.toml": GOOD.replace('duration_s = 5\n', 'duration_s = 5\nduration_s = 6\n'),
    "unknown-sysctl.toml": GOOD.replace('role = "client"\n', 'role = "client"\n[host.settings]\n'
                                        '"net.ipv4.tcp_nosuch" = 1\n', 1),
    "removed-sysctl.toml": GOOD.replace('role = "client"\n', 'role = "client"\n[host.settings]\n'
                                        '"net.ipv4.tcp_tw_recycle" = 1\n', 1),
    "bad-sysctl-value.toml": GOOD.replace('role = "client"\n', 'role = "client"\n[host.settings]\n'
                                          '"net.ipv4.ip_local_port_range" = "60000 50000"\n', 1),
    "unknown-profile.toml": GOOD.replace('profile = "linux-6.18"', 'profile = "linux-99.1"', 1),
    "unknown-kernel.toml": GOOD.replace('profile = "linux-6.18"', 'profile = "linux-2.4"', 1),
    "no-hosts.toml": 'name = "x"\nduration_s = 5\n[[workload]]\nclients = "client"\ntarget = "server"\nrate = 1\n',
    "no-workload.toml": GOOD.split("[[workload]]")[0],
    "unknown-target.toml": GOOD.replace('target = "server"', 'target = "nowhere"'),
    "unknown-clients.toml": GOOD.replace('clients = "client"', 'clients = "nobody"'),
    "negative-rate.toml": GOOD.replace("rate = 100", "rate = -100"),
    "zero-duration.toml": GOOD.replace("duration_s = 5", "duration_s = 0"),
    "bad-role.toml": GOOD.replace('role = "client"', 'role = "router"', 1),
    "bad-close.toml": GOOD.replace("rate = 100", 'rate = 100\nclose = "sometimes"'),
    "bad-port.toml": GOOD.replace("port = 8080", "port = 70000"),
    "two-servers-one-name.toml": GOOD + '[[host]]\nname = "server"\nrole = "server"\nprofile = "linux-6.18"\n',
    "bad-extends.toml": 'extends = "no-such-base"\nname = "x"\n',
    "bad-model-param.toml": GOOD.replace('role = "client"\n', 'role = "client"\n[host.model]\nisn = "psychic"\n', 1),
    "empty.toml": "",
    "binary.toml": bytes(range(256)) * 4,
    "not-a-capture.pcap": "this is text, not a packet capture\n" * 4,
    "empty.pcap": b"",
    "garbage.pcap.gz": b"\x1f\x8b\x08\x00" + bytes(range(200)),
    "pcapng-bad-magic.pcapng": b"\x0a\x0d\x0d\x0a" + b"\x00" * 40,
    "not-json.json": "{ this is not json",
    "wrong-kind.json": '{"kind": "spaceship", "hello": 1}\n',
    "empty.json": "",
    "list.json": "[1, 2, 3]\n",
    "garbage.tar.gz": b"\x1f\x8b\x08\x00" + b"\x00" * 64,
    "not-a-snapshot.tar.gz": b"plain text, not a tar archive\n",
    "random-words.txt": "the quick brown fox jumps over the lazy dog\n" * 5,
    "binary.txt": bytes(range(256)),
}


@dataclass(frozen=True)
class Case:
    what: str  # the bad input, in words
    argv: tuple[str, ...]  # arguments of `tcpreuse` ({d} = the scratch directory)
    fast: bool = False  # in the test's subset (tests/test_bad_inputs.py)


def C(what: str, *argv: str, fast: bool = False) -> Case:
    return Case(what, tuple(argv), fast)


CASES: list[Case] = [
    # simulate: scenario names and files
    C("unknown built-in scenario", "simulate", "no-such-scenario"),
    C("nonexistent scenario file", "simulate", "missing.toml"),
    C("wrong type (count = \"three\")", "simulate", "bad-count.toml", fast=True),
    C("unknown top-level field", "simulate", "unknown-field.toml"),
    C("TOML syntax error", "simulate", "syntax.toml"),
    C("duplicate key", "simulate", "duplicate-key.toml"),
    C("unknown sysctl", "simulate", "unknown-sysctl.toml"),
    C("sysctl removed in that kernel (tcp_tw_recycle on 6.18)", "simulate", "removed-sysctl.toml"),
    C("port range low > high", "simulate", "bad-sysctl-value.toml"),
    C("unknown profile", "simulate", "unknown-profile.toml"),
    C("kernel older than any profile", "simulate", "unknown-kernel.toml"),
    C("no hosts", "simulate", "no-hosts.toml"),
    C("no workload", "simulate", "no-workload.toml"),
    C("workload targets an unknown host", "simulate", "unknown-target.toml"),
    C("workload from unknown clients", "simulate", "unknown-clients.toml"),
    C("negative rate", "simulate", "negative-rate.toml"),
    C("zero duration", "simulate", "zero-duration.toml"),
    C("unknown role", "simulate", "bad-role.toml"),
    C("unknown close policy", "simulate", "bad-close.toml"),
    C("port 70000", "simulate", "bad-port.toml"),
    C("two host groups with one name", "simulate", "two-servers-one-name.toml"),
    C("extends an unknown scenario", "simulate", "bad-extends.toml"),
    C("unknown model parameter value", "simulate", "bad-model-param.toml"),
    C("empty file", "simulate", "empty.toml"),
    C("binary file", "simulate", "binary.toml"),
    C("a directory", "simulate", "."),
    # simulate: options
    C("--set without =", "simulate", "good.toml", "--set", "workload.rate", fast=True),
    C("--set with an empty key", "simulate", "good.toml", "--set", "=3"),
    C("--set with a non-number rate", "simulate", "good.toml", "--set", "workload.rate=abc"),
    C("--set of an unknown key", "simulate", "good.toml", "--set", "nosuch.key=1"),
    C("--set of an unknown sysctl", "simulate", "good.toml", "--set", "client:net.ipv4.tcp_nosuch=1"),
    C("--set on an unknown host group", "simulate", "good.toml", "--set", "nogroup:net.ipv4.tcp_tw_reuse=1"),
    C("--set of a negative rate", "simulate", "good.toml", "--set", "workload.rate=-5"),
    C("--set of an unknown profile", "simulate", "good.toml", "--set", "host.client.profile=linux-99"),
    C("--set of a bad tw_reuse value", "simulate", "good.toml", "--set", "client:net.ipv4.tcp_tw_reuse=7"),
    C("--set with a broken TOML value", "simulate", "good.toml", "--set", "host.client.model={isn="),
    C("negative --duration", "simulate", "good.toml", "--duration", "-1"),
    C("zero --duration", "simulate", "good.toml", "--duration", "0"),
    C("--duration inf", "simulate", "good.toml", "--duration", "inf"),
    C("--duration nan", "simulate", "good.toml", "--duration", "nan"),
    C("--duration not a number", "simulate", "good.toml", "--duration", "ten"),
    C("--seed not an integer", "simulate", "good.toml", "--seed", "1.5"),
    C("--result into a missing directory", "simulate", "good.toml", "--result", "nodir/r.json"),
    C("--html into a missing directory", "simulate", "good.toml", "--html", "nodir/r.html"),
    C("--attempts-csv into a missing directory", "simulate", "good.toml", "--attempts-csv", "nodir/a.csv"),
    C("--workers 0", "simulate", "good.toml", "--fixes", "--workers", "0"),
    C("unknown option", "simulate", "good.toml", "--colour"),
    C("no scenario", "simulate"),
    # scenarios
    C("unknown scenario name", "scenarios", "no-such-scenario", fast=True),
    C("two names", "scenarios", "seed", "seed"),
    # lab (refused before anything is built)
    C("unknown scenario", "lab", "no-such-scenario", fast=True),
    C("malformed scenario file", "lab", "bad-count.toml"),
    C("--set without =", "lab", "good.toml", "--set", "oops"),
    C("negative --duration", "lab", "good.toml", "--duration", "-3"),
    C("tcp_tw_recycle on this kernel", "lab", "good.toml", "--set", "server:net.ipv4.tcp_tw_recycle=1"),
    C("a built-in scenario this kernel cannot realise (seed: tcp_tw_recycle)", "lab", "seed"),
    C("unknown option of cleanup", "lab", "cleanup", "--everything"),
    # validate
    C("neither a scenario nor a suite", "validate", fast=True),
    C("unknown suite", "validate", "--suite", "huge"),
    C("--quick with another suite", "validate", "--quick", "--suite", "full"),
    C("a scenario and a suite", "validate", "good.toml", "--quick"),
    C("unknown scenario", "validate", "no-such-scenario"),
    C("--set without =", "validate", "good.toml", "--set", "oops"),
    # doctor
    C("--from a missing file", "doctor", "--from", "missing.txt", fast=True),
    C("--from text it cannot read", "doctor", "--from", "random-words.txt"),
    C("--from a binary file", "doctor", "--from", "binary.txt"),
    C("--from a damaged .tar.gz", "doctor", "--from", "garbage.tar.gz"),
    C("--from a .tar.gz that is text", "doctor", "--from", "not-a-snapshot.tar.gz"),
    C("negative --interval", "doctor", "--interval", "-1"),
    C("--count without --watch", "doctor", "--count", "2"),
    C("--watch 0", "doctor", "--watch", "0"),
    C("--from with --watch", "doctor", "--from", "random-words.txt", "--watch", "1"),
    C("unknown network namespace", "doctor", "--netns", "tcpr-no-such-ns", "--interval", "0"),
    C("unknown --profile", "doctor", "--profile", "linux-99", "--interval", "0"),
    C("unknown --role", "doctor", "--role", "router"),
    C("--save into a missing directory", "doctor", "--interval", "0", "--save", "nodir/host.tar.gz"),
    # analyze
    C("nonexistent capture", "analyze", "missing.pcap", fast=True),
    C("text instead of a capture", "analyze", "not-a-capture.pcap"),
    C("empty capture file", "analyze", "empty.pcap"),
    C("damaged gzip", "analyze", "garbage.pcap.gz"),
    C("pcapng with a bad byte-order magic", "analyze", "pcapng-bad-magic.pcapng"),
    C("a directory", "analyze", "."),
    C("--top 0", "analyze", "not-a-capture.pcap", "--top", "0"),
    C("--jobs 0", "analyze", "not-a-capture.pcap", "--jobs", "0"),
    C("no file", "analyze"),
    # load (refused before any connection is made)
    C("no target", "load", fast=True),
    C("target without a port", "load", "127.0.0.1"),
    C("port 99999", "load", "127.0.0.1:99999"),
    C("port not a number", "load", "127.0.0.1:http-ish"),
    C("negative --rate", "load", "127.0.0.1:9", "--rate", "-5"),
    C("--rate not a number", "load", "127.0.0.1:9", "--rate", "fast"),
    C("unknown --close", "load", "127.0.0.1:9", "--close", "sometimes"),
    C("unknown --protocol", "load", "127.0.0.1:9", "--protocol", "ftp"),
    C("--source prefix /99", "load", "127.0.0.1:9", "--source", "10.0.0.0/99"),
    C("--local-port-range reversed", "load", "127.0.0.1:9", "--local-port-range", "5000-4000"),
    C("--concurrency 0", "load", "127.0.0.1:9", "--concurrency", "0", "--duration", "1"),
    C("--count 0", "load", "127.0.0.1:9", "--rate", "10", "--count", "0"),
    C("negative --duration", "load", "127.0.0.1:9", "--rate", "10", "--duration", "-2"),
    # serve (refused before it listens)
    C("--listen port 99999", "serve", "--listen", "127.0.0.1:99999", fast=True),
    C("--listen port not a number", "serve", "--listen", "127.0.0.1:abc"),
    C("--listen an address of no interface", "serve", "--listen", "192.0.2.1:9313"),
    C("unknown --close", "serve", "--close", "sometimes"),
    C("--workers 0", "serve", "--listen", "127.0.0.1:0", "--workers", "0"),
    C("no --listen", "serve"),
    C("negative --delay-ms", "serve", "--listen", "127.0.0.1:0", "--delay-ms", "-1"),
    C("negative --backlog", "serve", "--listen", "127.0.0.1:0", "--backlog", "-1"),
    # sweep
    C("--grid without =", "sweep", "good.toml", "--grid", "workload.rate", fast=True),
    C("--grid with no values", "sweep", "good.toml", "--grid", "workload.rate="),
    C("--grid of an unknown key", "sweep", "good.toml", "--grid", "nosuch.key=1,2"),
    C("--grid of a bad value", "sweep", "good.toml", "--grid", "workload.rate=abc,1"),
    C("--grid of an unknown sysctl", "sweep", "good.toml", "--grid", "client:net.ipv4.tcp_nosuch=0,1"),
    C("--seeds 0", "sweep", "good.toml", "--grid", "workload.rate=1", "--seeds", "0"),
    C("negative --duration", "sweep", "good.toml", "--grid", "workload.rate=1", "--duration", "-5"),
    C("--workers 0", "sweep", "good.toml", "--grid", "workload.rate=1", "--workers", "0"),
    C("unknown scenario", "sweep", "no-such-scenario", "--grid", "workload.rate=1"),
    C("malformed scenario file", "sweep", "syntax.toml", "--grid", "workload.rate=1"),
    # capacity
    C("--max-failure not a share", "capacity", "good.toml", "--max-failure", "some", fast=True),
    C("--max-failure over 100 %", "capacity", "good.toml", "--max-failure", "200%"),
    C("negative --max-failure", "capacity", "good.toml", "--max-failure", "-1%"),
    C("--resolution 0", "capacity", "good.toml", "--resolution", "0"),
    C("negative --max-rate", "capacity", "good.toml", "--max-rate", "-1"),
    C("--max-delayed not a share", "capacity", "good.toml", "--max-delayed", "x"),
    C("unknown scenario", "capacity", "no-such-scenario"),
    C("--set of an unknown key", "capacity", "good.toml", "--set", "nosuch.key=1"),
    # report
    C("nonexistent file", "report", "missing.json", fast=True),
    C("not JSON", "report", "not-json.json"),
    C("JSON of no known kind", "report", "wrong-kind.json"),
    C("empty file", "report", "empty.json"),
    C("a JSON list", "report", "list.json"),
    C("--check without --html", "report", "wrong-kind.json", "--check"),
    C("a directory", "report", "."),
    C("text instead of a capture", "report", "not-a-capture.pcap"),
    C("--html into a missing directory", "report", "not-json.json", "--html", "nodir/r.html"),
]


@dataclass
class Outcome:
    case: Case
    code: int
    stderr: str
    stdout: str
    seconds: float

    @property
    def lines(self) -> list[str]:
        return [ln for ln in self.stderr.splitlines() if ln.strip()]

    @property
    def ok(self) -> bool:
        return self.code == 2 and len(self.lines) == 1 and "Traceback" not in self.stderr

    @property
    def message(self) -> str:
        return self.lines[0] if len(self.lines) == 1 else " / ".join(self.lines)


def command() -> list[str]:
    beside = Path(sys.executable).with_name("tcpreuse")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("tcpreuse")
    return [found] if found else [sys.executable, "-m", "tcpreuse"]


def prepare(d: Path) -> None:
    for name, content in FILES.items():
        p = d / name
        if isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(content)


def run_case(case: Case, d: Path, home: Path, timeout: float = 20.0) -> Outcome:
    env = {k: v for k, v in os.environ.items() if not k.startswith("XDG_")}
    env.update(HOME=str(home), COLUMNS="100", NO_COLOR="1", TERM="dumb")
    t0 = time.monotonic()
    try:
        r = subprocess.run([*command(), *case.argv], cwd=d, env=env, capture_output=True, text=True,
                           timeout=timeout, stdin=subprocess.DEVNULL)
        code, out, err = r.returncode, r.stdout, r.stderr
    except subprocess.TimeoutExpired as e:
        code, out, err = -9, str(e.stdout or ""), f"timed out after {timeout:g} s"
    return Outcome(case, code, err, out, time.monotonic() - t0)


def run_all(cases: list[Case], jobs: int = 2) -> list[Outcome]:
    with tempfile.TemporaryDirectory(prefix="tcpreuse-bad-inputs-") as tmp:
        d, home = Path(tmp) / "work", Path(tmp) / "home"
        d.mkdir()
        home.mkdir()
        prepare(d)
        with ThreadPoolExecutor(jobs) as pool:
            return list(pool.map(lambda c: run_case(c, d, home), cases))


def markdown(outs: list[Outcome]) -> str:
    good = sum(o.ok for o in outs)
    verbs = sorted({o.case.argv[0] for o in outs})
    out = [
        "# Bad inputs",
        "",
        f"Generated by `python scripts/bad_inputs.py` (do not edit): {len(outs)} bad inputs across "
        f"{len(verbs)} verbs ({', '.join(verbs)}), each run through the installed `tcpreuse` command "
        "in a scratch directory with an empty HOME. What a user should get, and gets in "
        f"{good} of {len(outs)} rows: exit status 2, one line on stderr saying what is wrong "
        "(and where: file, line and field for scenario files), no traceback. "
        "`tests/test_bad_inputs.py` runs a subset (the rows marked *) on every test run.",
        "",
        "The malformed files are built by the script (its `FILES`); `good.toml` is a valid "
        "two-host scenario the option cases start from. `nodir/` does not exist.",
        "",
        "| # | verb | bad input | command | exit | message (stderr) |",
        "|---:|---|---|---|---:|---|",
    ]
    for i, o in enumerate(outs, 1):
        cmd = "tcpreuse " + " ".join(a if a and " " not in a else repr(a) for a in o.case.argv)
        msg = o.message.replace("|", "\\|")
        cmd = cmd.replace("|", "\\|")
        flag = "" if o.ok else " **(not one line / not exit 2)**"
        out.append(f"| {i}{' *' if o.case.fast else ''} | {o.case.argv[0] if o.case.argv else ''} | "
                   f"{o.case.what} | `{cmd}` | {o.code} | {msg}{flag} |")
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--markdown", type=Path, default=Path(__file__).resolve().parent.parent / "docs" / "bad-inputs.md")
    ap.add_argument("--check", action="store_true", help="Only run and report; write no file.")
    ap.add_argument("--fast", action="store_true", help="Only the cases the test runs.")
    ap.add_argument("-j", "--jobs", type=int, default=2)
    args = ap.parse_args()
    cases = [c for c in CASES if c.fast] if args.fast else CASES
    outs = run_all(cases, args.jobs)
    bad = [o for o in outs if not o.ok]
    slow = [o for o in outs if o.seconds > 2.0]
    for o in bad:
        print(f"BAD  exit {o.code}  tcpreuse {' '.join(o.case.argv)}\n     {o.stderr.strip()[-600:]}",
              file=sys.stderr)
    for o in slow:
        print(f"SLOW {o.seconds:.1f} s  tcpreuse {' '.join(o.case.argv)}", file=sys.stderr)
    print(f"{len(outs)} bad inputs over {len({o.case.argv[0] for o in outs if o.case.argv})} verbs: "
          f"{len(outs) - len(bad)} gave exit 2 with one line and no traceback, {len(bad)} did not; "
          f"{len(slow)} took more than 2 s")
    if not args.check and not args.fast:
        args.markdown.write_text(markdown(outs))
        print(f"written to {args.markdown}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
