"""What several test modules share and cannot be a fixture: data builders, hypothesis
strategies and parametrize lists, needed when a module is collected. Test modules import
from here (`from helpers.captures import windows_reuse`), never from each other; fixtures
(the in-process `cli`, network namespaces, a written capture) are in tests/conftest.py.

- captures.py: crafted packet captures and the fuzzing strategy over them;
- scenarios.py: small scenario texts (a client closing first toward one server);
- tcpcraft.py: hand-made TCP segments and a loopback sniffer for the trace tests;
- sim_golden.py: the simulator's golden fingerprints (also a script: check or --record).
"""

from __future__ import annotations

from collections.abc import Callable

Cli = Callable[[list[str]], tuple[int, str, str]]
"""The `cli` fixture: `tcpreuse ARGV` run in-process, as (exit code, stdout, stderr)."""
