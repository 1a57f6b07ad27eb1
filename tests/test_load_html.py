"""`load --html` and `serve --html`: every verb writes its report through report/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tcpreuse.load.procs import ServeProcess

pytestmark = pytest.mark.timeout(120)


def test_load_and_serve_write_their_html_reports(tmp_path: Path) -> None:
    serve_html, load_html = tmp_path / "serve.html", tmp_path / "load.html"
    srv = ServeProcess(["--listen", "127.0.0.1:0", "--html", str(serve_html)]).start()
    try:
        r = subprocess.run([sys.executable, "-m", "tcpreuse", "load", f"127.0.0.1:{srv.port}", "--rate", "100",
                            "--count", "50", "--workers", "1", "--html", str(load_html), "--quiet"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
    finally:
        summary = srv.stop()
    assert summary["connections"] == 50
    page = load_html.read_text()
    assert page.startswith("<!DOCTYPE html>") or page.lstrip().lower().startswith("<!doctype html>")
    assert "Load run" in page and "All 50 connection attempts completed at their first SYN" in page
    assert "<svg" in page  # the plots
    page = serve_html.read_text()
    assert "tcpreuse serve: 127.0.0.1:" in page and "All 50 connections were answered and closed cleanly" in page
    assert "TIME_WAIT landed mostly on the server" in page  # --close server (the default)


def test_html_to_an_unwritable_place_is_refused_up_front(tmp_path: Path) -> None:
    for verb, extra in (("serve", ["--listen", "127.0.0.1:0"]), ("load", ["127.0.0.1:9", "--count", "1"])):
        r = subprocess.run([sys.executable, "-m", "tcpreuse", verb, *extra, "--html",
                            str(tmp_path / "no" / "such" / "dir" / "x.html")], capture_output=True, text=True,
                           timeout=30)
        assert r.returncode == 2 and "Traceback" not in r.stderr, (verb, r.stderr)
        assert "cannot write --html" in r.stderr
