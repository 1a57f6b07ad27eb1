"""The kernel abstraction without booting anything: jobs and facts as data, the UML boot's
command line and init script (read-only root, the writable share, modules), the
not-applicable rule for sysctls a kernel lacks."""

from __future__ import annotations

from pathlib import Path

import pytest

from tcpreuse.errors import TcpreuseError
from tcpreuse.kernels import get_kernel
from tcpreuse.kernels.jobs import JobOutcome, KernelFacts, LabJob, list_sysctls, missing_sysctls
from tcpreuse.kernels.uml import MODULES, Boot, Install, init_script
from tcpreuse.validate import suite


def facts(*lacking: str) -> KernelFacts:
    names = ["net.ipv4.tcp_tw_reuse", "net.ipv4.tcp_tw_reuse_delay", "net.ipv4.ip_local_port_range",
             "net.ipv4.tcp_timestamps", "net.ipv4.tcp_max_tw_buckets"]
    return KernelFacts(release="6.1.176", hz=100, hz_source="/proc/config.gz",
                       sysctls=[n for n in names if n not in lacking], nft_ip=False)


def test_facts_name_the_model_profile_and_round_trip() -> None:
    f = facts()
    assert f.profile == "linux-6.1.176"
    assert KernelFacts(release="6.18.44-cloud-amd64", hz=250, hz_source="x").profile == "linux-6.18.44"
    assert KernelFacts.from_json(f.to_json()) == f


def test_a_sysctl_the_kernel_lacks_makes_the_scenario_not_applicable() -> None:
    sc = suite.load("v-reuse1-delay1000")
    assert missing_sysctls(sc, facts()) == []
    assert missing_sysctls(sc, facts("net.ipv4.tcp_tw_reuse_delay")) == ["net.ipv4.tcp_tw_reuse_delay"]
    # a scenario that does not set it is applicable on the same kernel
    assert missing_sysctls(suite.load("v-exhaust-even"), facts("net.ipv4.tcp_tw_reuse_delay")) == []


def test_sysctls_are_listed_from_the_proc_tree(tmp_path: Path) -> None:
    for rel in ("net/ipv4/tcp_tw_reuse", "net/ipv4/conf/all/forwarding", "net/core/somaxconn",
                "net/netfilter/nf_conntrack_max"):
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("1\n")
    assert list_sysctls(tmp_path) == ["net.core.somaxconn", "net.ipv4.tcp_tw_reuse",
                                      "net.netfilter.nf_conntrack_max"]


def test_jobs_and_outcomes_cross_a_file_boundary() -> None:
    j = LabJob(ref="v-exhaust-even", overrides={"duration_s": 3}, native=True)
    assert LabJob.from_json(j.to_json()) == j
    o = JobOutcome(not_applicable="no such sysctl", overrides={"a": 1}, notes=["n"], seconds=1.5)
    back = JobOutcome.from_json(o.to_json())
    assert (back.not_applicable, back.overrides, back.notes, back.result) == ("no such sysctl", {"a": 1}, ["n"], None)


def test_the_boot_mounts_the_host_root_read_only_and_passes_init_as_a_file(tmp_path: Path) -> None:
    boot = Boot(Install(Path("/usr/bin/linux"), Path("/usr/lib/uml/modules")), [], 60.0)
    try:
        argv = boot.argv()
        assert {"rootfstype=hostfs", "rootflags=/", "ro"} <= set(argv)
        assert "rw" not in argv
        init = next(a for a in argv if a.startswith("init="))[5:]
        assert Path(init).parent == boot.dir and " " not in init
        assert any(a == f"uml_dir={boot.dir / 'uml'}" for a in argv)  # UML's umid dir is ours
        assert boot.dir.name.startswith("tcpr-uml-") and (boot.dir / "owner.json").exists()
    finally:
        boot.close()
    assert not boot.dir.exists()


def test_the_init_script_writes_only_to_the_share_and_loads_modules_from_the_package() -> None:
    s = init_script(Path("/tmp/tcpr-uml-x/share"), "/venv/bin/python", "/repo",
                    Path("/usr/lib/uml/modules"), 100)
    assert "mount -t hostfs hostfs /run/tcpr-share -o /tmp/tcpr-uml-x/share" in s
    assert "remount" not in s and ",rw" not in s and " rw " not in s
    assert "mount -t tmpfs tmpfs /tmp" in s and "mount -t tmpfs tmpfs /run" in s
    assert "modprobe -d /run/tcpr-mods" in s and "ln -s /usr/lib/uml/modules /run/tcpr-mods/lib/modules" in s
    assert {"veth", "sch_netem", "nf_conntrack", "nf_nat", "configs", "iptable_nat"} <= set(MODULES)
    assert "timeout -s KILL 100 /venv/bin/python -m tcpreuse.kernels.guest" in s
    assert "PYTHONPATH=/repo" in s


def test_unknown_kernel_is_a_clear_error() -> None:
    with pytest.raises(TcpreuseError, match="unknown kernel 'qemu'"):
        get_kernel("qemu")


def test_pacing_dilates_time_and_keeps_the_attempts() -> None:
    from tcpreuse.kernels.pace import PACE_SHARE, pace_factor, pace_overrides

    sc = suite.load("v-exhaust-even")  # 300/s, 1200 attempts, 7 s
    assert pace_factor(sc, 0.0) == 1.0  # speed unknown: as written
    assert pace_factor(sc, 300 / PACE_SHARE * 2) == 1.0  # within budget: as written
    k = pace_factor(sc, 600.0)
    assert k == pytest.approx(PACE_SHARE * 600 / 300)
    ov = pace_overrides(sc, k)
    paced = suite.load("v-exhaust-even", ov)
    (w0,), (w1,) = sc.workload, paced.workload
    assert w1.rate == pytest.approx(w0.rate * k) and w1.count == w0.count
    assert paced.duration_s == pytest.approx(sc.duration_s / k)
    assert pace_overrides(sc, 1.0) == {}
    # the model on the paced scenario makes the same attempts with the same outcomes (the
    # run stays within one TIME_WAIT), only slower
    from tcpreuse.sim.engine import Engine

    a, b = Engine(sc).run(), Engine(paced).run()
    assert a.outcomes() == b.outcomes() and len(a.attempts) == len(b.attempts)


def test_the_models_clocks_start_where_the_kernels_were() -> None:
    import numpy as np

    from tcpreuse.result import RunResult
    from tcpreuse.sim.engine import Engine
    from tcpreuse.validate.run import clock_overrides

    sc = suite.load("v-reuse1-seconds", {"host.client.profile": "linux-6.1", "host.server.profile": "linux-6.1"})
    lab = Engine(sc).run()  # a stand-in with the lab's fields: attempts from t = 1.5
    lab.attempts.cols["t"] = lab.attempts.cols["t"] + 1.5
    lab.meta["t0_monotonic"] = 1000.25
    ov, notes = clock_overrides(sc, lab, sim_first_t=0.0)
    first = 1000.25 + float(np.min(lab.attempts.cols["t"]))
    assert ov == {"host.client.model.uptime_s": round(first, 6), "host.server.model.uptime_s": round(first, 6)}
    assert "seconds-clock phase 0.750 s" in notes[0]
    assert clock_overrides(sc, RunResult(source="lab", scenario="x", duration_s=1.0), 0.0) == ({}, [])
    # on 6.1 the seconds clock's phase decides how many connects reuse a TIME_WAIT; on
    # 6.18 (tcp_tw_reuse_delay from the TIME_WAIT's entry) it does not
    ok = {}
    for prof in ("linux-6.1", "linux-6.18"):
        for up in (1000.0, 1000.5):
            s = suite.load("v-reuse1-seconds", {f"host.{g}.{k}": v for g in ("client", "server")
                                                for k, v in (("profile", prof), ("model.uptime_s", up))})
            ok[prof, up] = Engine(s).run().outcomes()["ok"]
    assert ok["linux-6.1", 1000.0] != ok["linux-6.1", 1000.5]
    assert ok["linux-6.18", 1000.0] == ok["linux-6.18", 1000.5]


def test_latency_rows_allow_the_measured_start_lag_of_the_labs_load_and_say_so() -> None:
    from tcpreuse.result import RunResult
    from tcpreuse.validate.compare import LATENCY, lag_tolerance
    from tcpreuse.validate.run import start_lag_ms

    lab = RunResult(source="lab", scenario="x", duration_s=1.0)
    lab.meta["loads"] = [{"start_lag": {"p50": 0.2, "p99": 180.0}}, {"start_lag": None}]
    assert start_lag_ms(lab) == 180.0
    tol = lag_tolerance(LATENCY, 180.0)
    assert tol.text == "±(10 + 180) ms + 10 %" and "180 ms late" in tol.reason
    assert tol.ok(0.1, 150.0) and not tol.ok(0.1, 250.0)
    assert not LATENCY.ok(0.1, 150.0)  # without the lag it would disagree


def test_the_tick_phase_is_a_circular_mean_and_delays_the_seconds_clock() -> None:
    from tcpreuse.lab.clockphase import circular_phase, tick_delay
    from tcpreuse.model.clocks import seconds_clock
    from tcpreuse.model.profiles import get_profile

    # 3.9 ms, 0.1 ms and 3.95 ms on a 4 ms grid sit together around the wrap, near 4 ms
    assert circular_phase([0.0039, 0.0001, 0.00395], 0.004) == pytest.approx(0.00398, abs=1e-4)
    assert circular_phase([1.0021, 7.0019, 3.0020], 0.01) == pytest.approx(0.002, abs=1e-5)
    d = tick_delay(250, samples=5, spacing_s=0.001)
    assert d is not None and 0.0 <= d < 0.004
    # ktime_get_seconds() turns over at the first tick after the boundary (4.19+ only)
    assert seconds_clock(get_profile("linux-6.1"), 100.0, 5e8, 0.004) == pytest.approx(99.996)
    assert seconds_clock(get_profile("linux-4.9"), 100.0, 5e8, 0.004) == 5e8


def test_cleanup_removes_boot_directories_of_dead_owners_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json
    import os
    import tempfile

    import psutil

    from tcpreuse.kernels import uml

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead, live, bare = (tmp_path / f"tcpr-uml-{k}-x" for k in ("aaaaaa", "bbbbbb", "cccccc"))
    for d in (dead, live, bare):
        (d / "share").mkdir(parents=True)
    (dead / "owner.json").write_text(json.dumps({"pid": 2 ** 22 + 7, "started": 1.0}))
    me = psutil.Process(os.getpid())
    (live / "owner.json").write_text(json.dumps({"pid": me.pid, "started": me.create_time()}))
    assert uml.leftovers() == sorted([dead, live, bare])
    gone = uml.cleanup()
    assert sorted(gone) == sorted([str(dead), str(bare)])  # no owner file: nobody owns it
    assert live.exists() and not dead.exists() and not bare.exists()


def test_a_lagging_lab_series_is_compared_with_the_model_up_to_the_lag_earlier() -> None:
    from tcpreuse.validate.compare import series_agree

    sim = [100, 200, 300, 400, 500]
    lab = [100, 120, 300, 400, 500]  # at 2 s the lab's attempts ran ~0.8 s behind
    assert not series_agree(sim, 1.0, lab, 1.0, 0.0)[0]
    assert series_agree(sim, 1.0, lab, 1.0, 0.0, lag_s=1.0)[0]
    assert not series_agree(sim, 1.0, [100, 20, 300, 400, 500], 1.0, 0.0, lag_s=1.0)[0]


def test_validation_markdown_has_one_verdict_column_per_kernel() -> None:
    from tcpreuse.validate import render
    from tcpreuse.validate.compare import Row
    from tcpreuse.validate.kernel import Hz
    from tcpreuse.validate.run import Outcome, Report

    def outcome(name: str, agree: bool) -> Outcome:
        return Outcome(name=name, summary=f"{name} pins a rule",
                       rows=[Row("outcomes", "outcome ok", 10, 10 if agree else 9, agree, "exact", "why")])

    host = Report(kernel="6.18.44", hz=Hz(250, "/proc/config.gz"), kernel_name="host",
                  outcomes=[outcome("v-a", True), outcome("v-b", True)])
    uml = Report(kernel="6.1.176", hz=Hz(100, "/proc/config.gz"), kernel_name="uml",
                 outcomes=[outcome("v-a", False),
                           Outcome(name="v-b", summary="", not_applicable="tcp_tw_reuse_delay does not exist")])
    md = render.markdown_kernels([host, uml], "tcpreuse validate --kernel host --kernel uml --suite full")
    assert "| scenario | what it pins | Linux 6.18.44 (host, HZ 250) | Linux 6.1.176 (uml, HZ 100) |" in md
    assert "| v-a | v-a pins a rule | [agree](#v-a-host) | [**1 disagree**](#v-a-uml) |" in md
    assert "[not applicable: tcp_tw_reuse_delay does not exist](#v-b-uml)" in md
    assert "2 of 2 applicable agree on Linux 6.18.44" in md and "0 of 1 applicable agree on Linux 6.1.176" in md
    assert '### v-a <a id="v-a-uml"></a>' in md and "## On Linux 6.1.176 (uml, HZ 100)" in md
