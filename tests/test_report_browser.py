"""HTML reports opened in a real browser (Debian's headless Chromium, over DevTools).

Three reports made from real runs: the seed incident simulated, a lab run on the running
kernel (root only), and a capture analysis. For each: no console error or uncaught
exception, every plot has drawn data with a laid-out box, the topology diagram has its
nodes, no external resource, and a full-page screenshot is kept in
the test's temporary directory, or to TCPREUSE_TEST_ARTIFACTS for a person to look at.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from helpers import Cli
from helpers.captures import nat_two_clocks, windows_reuse, write_pcap
from helpers.scenarios import native_lab

from tcpreuse.report.browser import check_page, find_chromium

# screenshots: beside each test's page (its tmp_path), or kept in TCPREUSE_TEST_ARTIFACTS
ARTIFACTS = os.environ.get("TCPREUSE_TEST_ARTIFACTS")

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(find_chromium() is None, reason="needs chromium (scripts/system-deps.sh)")]


def opened(html: Path, name: str) -> dict[str, dict[str, float]]:
    """Open `html`, assert it renders cleanly, return the plots by key."""
    res = check_page(html, Path(ARTIFACTS or html.parent) / f"{name}.png")
    assert res.problems() == [], res.problems()
    assert not [c for c in res.console if c.startswith(("error", "exception"))]
    assert res.scripts == 0 and res.external == []
    assert res.screenshot is not None and res.screenshot.stat().st_size > 20_000
    return {p["key"]: p for p in res.plots} | {"_check": {"topology": res.topology_nodes,
                                                           "findings": res.findings}}  # type: ignore[dict-item]


def test_seed_simulation_report_in_chromium(cli: Cli, tmp_path: Path) -> None:
    html = tmp_path / "seed.html"
    # 6,000/s for 20 s: the port cycle (8.2 s) is far shorter than TIME_WAIT, failures from ~20 s
    code, _, err = cli(["simulate", "seed", "--duration", "20", "--set", "workload.rate=6000", "--html", str(html)])
    assert code == 0, err
    plots = opened(html, "simulate-seed")
    for key in ("rates", "timewait", "ports", "latency"):
        assert key in plots, sorted(plots)
    assert plots["rates"]["points"] > 20  # one step per second, three series
    assert plots["timewait"]["groups"] == 2  # both servers hold TIME_WAIT
    assert plots["_check"]["topology"] == 3  # clients, A10, servers
    assert plots["_check"]["findings"] >= 1
    text = html.read_text()
    # findings come before the plots, the verdict first of all
    assert text.index('id="verdict"') < text.index('id="findings"') < text.index('id="plots"')
    assert "syn_hit_timewait" in text and "netsh int tcp set global timestamps=enabled" in text


def test_seed_with_fixes_shows_them_side_by_side(cli: Cli, tmp_path: Path) -> None:
    html = tmp_path / "fixes.html"
    code, _, err = cli(["simulate", "seed", "--duration", "12", "--set", "workload.rate=8000", "--fixes",
                        "--workers", "1", "--html", str(html)])
    assert code == 0, err
    plots = opened(html, "simulate-seed-fixes")
    assert plots["fixes"]["groups"] >= 4  # two bars per re-simulated fix
    assert "re-simulated: failed" in html.read_text()


def test_capture_analysis_report_in_chromium(cli: Cli, tmp_path: Path) -> None:
    pcap = write_pcap(tmp_path / "mixed.pcap", windows_reuse(n_conn=400, ports=120) + nat_two_clocks())
    html = tmp_path / "capture.html"
    code, out, err = cli(["analyze", str(pcap), "--html", str(html)])
    assert code == 0, err
    assert "attempts/s" in out  # the terminal timeline
    plots = opened(html, "analyze-capture")
    assert {"rates", "synoutcomes", "tsclocks"} <= set(plots)
    assert plots["tsclocks"]["groups"] >= 1  # the NAT address with its two clocks
    # the same capture through `tcpreuse report` (kind detected from the pcap magic)
    html2 = tmp_path / "capture2.html"
    code, _, err = cli(["report", str(pcap), "--html", str(html2), "--check"])
    assert code == 0, err
    assert "tsclocks" in html2.read_text()


@pytest.mark.netns
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")
@pytest.mark.skipif(not (shutil.which("ip") and shutil.which("nft")), reason="needs ip and nft")
def test_lab_run_report_in_chromium(cli: Cli, tmp_path: Path) -> None:
    sc = tmp_path / "lab.toml"
    sc.write_text(native_lab("lab-report", duration_s=4, rate=200, count=500, close="client",
                             settings={"net.ipv4.ip_local_port_range": "40000 40299"}))
    html, result = tmp_path / "lab.html", tmp_path / "lab.json"
    code, out, err = cli(["lab", str(sc), "--html", str(html), "--result", str(result)])
    assert code == 0, err
    assert "attempts/s" in out
    plots = opened(html, "lab-run")
    assert {"rates", "timewait", "latency"} <= set(plots)
    assert "EADDRNOTAVAIL" in html.read_text()  # 300 ports, client TIME_WAIT: 200 attempts fail
    # and the saved result renders the same way through `tcpreuse report`
    html2 = tmp_path / "lab2.html"
    code, _, err = cli(["report", str(result), "--html", str(html2), "--check"])
    assert code == 0, err


@pytest.mark.netns
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")
@pytest.mark.skipif(not (shutil.which("ip") and shutil.which("nft")), reason="needs ip and nft")
def test_validate_report_in_chromium(cli: Cli, tmp_path: Path) -> None:
    html = tmp_path / "validate.html"
    code, _, err = cli(["validate", "v-client-rst", "--html", str(html)])
    assert code in (0, 1), err  # 1: a disagreement, which the page must show too
    plots = opened(html, "validate")
    assert "simlab-0" in plots and plots["simlab-0"]["groups"] >= 4  # two series for each side
    assert "tolerance" in html.read_text()


def test_chromium_leaves_nothing_in_tmpdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The browser's own temporary files (its singleton socket directory) go into its
    profile, which is removed: before, every check left an org.chromium.Chromium.*
    directory in TMPDIR."""
    # a short path: a unix socket's path (the singleton socket, under TMPDIR) has at most
    # 107 bytes, which tmp_path's depth would exceed
    tmp = Path(tempfile.mkdtemp(prefix="tcpr-bt-"))
    try:
        monkeypatch.setenv("TMPDIR", str(tmp))
        monkeypatch.setattr(tempfile, "tempdir", None)  # read TMPDIR again
        page = tmp_path / "page.html"
        page.write_text("<!doctype html><title>t</title><p>hello</p>")
        check_page(page, tmp_path / "page.png")
        assert list(tmp.iterdir()) == []
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
