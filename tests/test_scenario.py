"""Scenario files: validation errors name file, line and field; overrides; variants."""

from __future__ import annotations

from pathlib import Path

import pytest

from tcpreuse.errors import ProfileError, ScenarioError, UnknownSettingError
from tcpreuse.model.profiles import get_profile
from tcpreuse.model.settings import resolve_settings
from tcpreuse.scenario.loader import (
    builtin_names,
    list_builtin,
    load_scenario,
    load_text,
    parse_sets,
)

GOOD = """\
name = "t"
duration_s = 5

[[host]]
name = "c"
role = "client"
profile = "linux-6.18"
[host.settings]
"net.ipv4.tcp_tw_reuse" = 1

[[host]]
name = "s"
role = "server"
profile = "linux-6.18"

[[workload]]
clients = "c"
target = "s"
rate = 10
"""


def test_good_scenario_resolves_settings() -> None:
    sc = load_text(GOOD)
    c = sc.group("c")
    assert c.effective_settings["net.ipv4.tcp_tw_reuse"] == 1
    assert c.effective_settings["net.ipv4.ip_local_port_range"] == (32768, 60999)
    assert c.effective_settings["net.ipv4.tcp_tw_reuse_delay"] == 1000


def test_unknown_field_names_line_and_field() -> None:
    bad = GOOD.replace('rate = 10', 'rate = 10\nratee = 3')
    with pytest.raises(ScenarioError) as e:
        load_text(bad, "x.toml")
    assert "x.toml:20" in str(e.value) and "ratee" in str(e.value)


def test_bad_value_says_what_was_expected() -> None:
    with pytest.raises(ScenarioError) as e:
        load_text(GOOD.replace('rate = 10', 'rate = -1'), "x.toml")
    assert "x.toml:19" in str(e.value) and "workload[0].rate" in str(e.value) and "greater than 0" in str(e.value)


def test_sysctl_that_does_not_exist_on_the_kernel_is_rejected_by_name() -> None:
    bad = GOOD.replace('"net.ipv4.tcp_tw_reuse" = 1', '"net.ipv4.tcp_tw_recycle" = 1')
    with pytest.raises(UnknownSettingError) as e:
        load_text(bad, "x.toml")
    msg = str(e.value)
    assert "x.toml:9" in msg and "net.ipv4.tcp_tw_recycle does not exist on linux-6.18" in msg
    assert "removed in 4.12" in msg
    # ... but exists on 4.9
    load_text(bad.replace('profile = "linux-6.18"', 'profile = "linux-4.9"', 1))


def test_unknown_sysctl_and_bad_value() -> None:
    with pytest.raises(UnknownSettingError, match=r"unknown setting 'net\.ipv4\.tcp_tw_reuze'"):
        load_text(GOOD.replace("tcp_tw_reuse", "tcp_tw_reuze"))
    with pytest.raises(ScenarioError, match=r"expected one of 0, 1 on linux-4\.9, got 2"):
        load_text(GOOD.replace('"net.ipv4.tcp_tw_reuse" = 1', '"net.ipv4.tcp_tw_reuse" = 2').replace(
            'profile = "linux-6.18"', 'profile = "linux-4.9"', 1))
    with pytest.raises(UnknownSettingError, match="is a windows setting"):
        resolve_settings(get_profile("linux-6.18"), {"netsh.tcp.timestamps": "enabled"})


def test_unknown_profile_is_named() -> None:
    with pytest.raises(ProfileError, match="unknown OS/kernel profile 'solaris-11'"):
        get_profile("solaris-11")
    with pytest.raises(ScenarioError, match=r"x\.toml:7.*unknown OS/kernel profile"):
        load_text(GOOD.replace('profile = "linux-6.18"', 'profile = "solaris-11"', 1), "x.toml")
    assert get_profile("linux-5.10.3").version == (5, 10, 3)
    with pytest.raises(ProfileError, match="tcpreuse models Linux"):
        get_profile("linux-2.4")


def test_cross_references_are_checked() -> None:
    with pytest.raises(ScenarioError, match="'nobody' is not 'lb' or a server host group"):
        load_text(GOOD.replace('target = "s"', 'target = "nobody"'))
    with pytest.raises(ScenarioError, match="not valid TOML"):
        load_text("name = ")


def test_overrides() -> None:
    sets = parse_sets(["workload.rate=250", "c:net.ipv4.ip_local_port_range=1024 65535",
                       "host.s.count=3", "duration_s=1.5"])
    sc = load_text(GOOD, overrides=sets)
    assert sc.workload[0].rate == 250 and sc.group("s").count == 3 and sc.duration_s == 1.5
    assert sc.group("c").effective_settings["net.ipv4.ip_local_port_range"] == (1024, 65535)
    with pytest.raises(ScenarioError, match="unknown key"):
        load_text(GOOD, overrides=parse_sets(["bogus=1"]))
    with pytest.raises(ScenarioError, match="no host group named 'x'"):
        load_text(GOOD, overrides=parse_sets(["x:net.ipv4.tcp_tw_reuse=1"]))


def test_every_builtin_scenario_loads_with_a_summary() -> None:
    names = builtin_names()
    for required in ("seed", "client-exhaustion", "seed-client-timestamps", "seed-no-recycle",
                     "seed-nat-timestamps", "seed-modern-kernel", "seed-linux-direct"):
        assert required in names
    for name, summary in list_builtin():
        assert summary, name
        load_scenario(name)


def test_variant_extends_base(tmp_path: Path) -> None:
    base = tmp_path / "base.toml"
    base.write_text(GOOD)
    var = tmp_path / "var.toml"
    var.write_text('name = "v"\nextends = "base.toml"\n[set]\n"workload.rate" = 77\n')
    sc = load_scenario(str(var))
    assert sc.name == "v" and sc.workload[0].rate == 77


def test_attempt_tables_fill_absent_columns_with_none() -> None:
    from tcpreuse.result import AttemptTable, RunResult

    t = AttemptTable.build({"t": [0.2, 0.1], "outcome": [0, 1], "reason": [0, 1]},
                           {"outcome": ["ok", "ETIMEDOUT"], "reason": ["ok", "connect_timeout"]})
    assert t.column("t") == [0.1, 0.2]  # start order
    assert t.column("outcome") == ["ETIMEDOUT", "ok"] and t.column("cause") == ["", ""]
    assert t.column("server") == ["", ""] and t.column("sport") == [0, 0]
    run = RunResult(source="lab", scenario="x", duration_s=1, attempts=t)
    back = RunResult.from_json(run.to_json(records=True))
    assert back.attempts.column("outcome") == ["ETIMEDOUT", "ok"] and back.attempts.column("cause") == ["", ""]
