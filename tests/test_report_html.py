"""`tcpreuse report` and the HTML pages without a browser: every kind of saved output is
recognised and rendered, findings come first, user text is escaped, bad files are one
clear error. (tests/test_report_browser.py opens pages in Chromium.)"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from helpers import Cli
from helpers.captures import windows_reuse, write_pcap

from tcpreuse.commands.report import load
from tcpreuse.report import html, kinds
from tcpreuse.scenario.loader import load_scenario
from tcpreuse.sim.engine import simulate

DATA = Path(__file__).parent / "data" / "host"


def plot_keys(text: str) -> list[str]:
    return re.findall(r'data-plot="([^"]+)"', text)


@pytest.mark.slow
def test_simulate_result_file_renders_like_simulate_html(cli: Cli, tmp_path: Path) -> None:
    res, page1 = tmp_path / "r.json", tmp_path / "a.html"
    code, _, err = cli(["simulate", "seed", "--duration", "15", "--set", "workload.rate=8000", "--result", str(res),
                        "--html", str(page1)])
    assert code == 0, err
    page2 = tmp_path / "b.html"
    code, _, err = cli(["report", str(res), "--html", str(page2)])
    assert code == 0, err
    a, b = page1.read_text(), page2.read_text()
    assert plot_keys(a) == plot_keys(b) and {"rates", "timewait", "ports", "latency"} <= set(plot_keys(b))
    for t in (a, b):
        assert t.index('id="verdict"') < t.index("<h2>Findings") < t.index('id="plots"')
        assert "<script" not in t and "http://" not in t.replace("http://www.w3.org", "")
    # terminal rendering of the same file: summary, timeline sparklines, the finding
    code, out, err = cli(["report", str(res)])
    assert code == 0 and "attempts/s" in out and "TIME_WAIT" in out


@pytest.mark.slow
def test_user_text_is_escaped(tmp_path: Path) -> None:
    sc = load_scenario("seed", {"duration_s": 5, "name": "<script>alert(1)</script>"})
    run = simulate(sc)
    text = html.render(html.run_page(run, [], scenario=sc))
    assert "<script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text


def test_doctor_snapshot_and_watch_lines(cli: Cli, tmp_path: Path) -> None:
    code, out, err = cli(["doctor", "--from", str(DATA / "linux618-client-sysctl-a.txt"), "--from",
                          str(DATA / "linux618-client-ss-tanoe.txt"), "--from",
                          str(DATA / "linux618-client-nstat-az.txt"), "--json"])
    assert code == 0, err
    doc = json.loads(out)
    one = tmp_path / "doctor.json"
    one.write_text(out)
    loaded = load(one)
    assert loaded.kind == "doctor"
    page = kinds.page_of(loaded)
    assert page.findings is not None and "tuples" in "".join(p.key for p in page.plots)
    # a --watch --json stream: one document per line, TIME_WAIT growing; the last line cut short
    lines = []
    for i in range(4):
        d = json.loads(json.dumps(doc))
        d["taken_at"] = 1000.0 + i
        for h in d["hosts"].values():
            h["time_wait"] = 100 * (i + 1)
            h.get("extra", {}).pop("taken_at", None)
        lines.append(json.dumps(d))
    watch = tmp_path / "watch.jsonl"
    watch.write_text("\n".join(lines) + "\n" + lines[0][:50])
    out_html = tmp_path / "watch.html"
    code, _, err = cli(["report", str(watch), "--html", str(out_html)])
    assert code == 0, err
    text = out_html.read_text()
    assert "timewait" in plot_keys(text) and "4 samples" in text


@pytest.mark.slow
def test_capture_kinds(cli: Cli, tmp_path: Path) -> None:
    pcap = write_pcap(tmp_path / "c.pcap", windows_reuse(n_conn=300, ports=100))
    assert load(pcap).kind == "capture"
    code, out, err = cli(["analyze", str(pcap), "--json", "--save", str(tmp_path / "saved.json")])
    assert code == 0, err
    (tmp_path / "an.json").write_text(out)
    summary = load(tmp_path / "an.json")
    assert summary.kind == "capture-summary"
    page = kinds.page_of(summary)
    assert page.findings and "never established" in page.verdict
    saved = load(tmp_path / "saved.json")
    assert saved.kind == "run" and saved.data.source == "analyze"
    assert "synoutcomes" in [p.key for p in kinds.page_of(saved).plots]


@pytest.mark.parametrize("content, message", [
    (b"", "empty file"),
    (b"hello world", "not JSON"),
    (b'{"some": "thing"}', "not a result tcpreuse knows"),
    (b"[1, 2]", "expected a JSON object"),
    (b"\xff\xfe\x00garbage", "neither JSON nor a pcap"),
    (b'{"source": "simulate", "timeline": {}}', "malformed"),
])
def test_bad_files_are_one_clear_error(cli: Cli, tmp_path: Path, content: bytes,
                                       message: str) -> None:
    f = tmp_path / "bad.json"
    f.write_bytes(content)
    code, _, err = cli(["report", str(f), "--html", str(tmp_path / "x.html")])
    assert code == 2 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "x.html").exists()


@pytest.mark.slow
def test_missing_file_and_unwritable_output(cli: Cli, tmp_path: Path) -> None:
    code, _, err = cli(["report", str(tmp_path / "nope.json")])
    assert code == 2 and "cannot read" in err
    res = tmp_path / "r.json"
    cli(["simulate", "seed", "--duration", "3", "--result", str(res)])
    code, _, err = cli(["report", str(res), "--html", str(tmp_path / "no" / "dir" / "x.html")])
    assert code == 2 and "cannot write" in err and "Traceback" not in err
