"""The project's own error types.

Every error a user can cause (bad scenario, unknown sysctl, corrupt capture, missing
privilege) is a subclass of :class:`TcpreuseError`. The CLI prints these as one clear
message and exits non-zero; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class TcpreuseError(Exception):
    """Base class: a problem with the user's input or environment, not a bug."""

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class ScenarioError(TcpreuseError):
    """A scenario file or override is malformed; the message names file, line and field."""


class UnknownSettingError(ScenarioError):
    """A sysctl or OS setting that does not exist (at all, or on that kernel)."""


class ProfileError(ScenarioError):
    """An OS/kernel profile name that tcpreuse does not know."""


class CaptureError(TcpreuseError):
    """A packet capture could not be read (fully); carries how far reading got."""


class HostError(TcpreuseError):
    """A live host or snapshot could not be read."""


class LabError(TcpreuseError):
    """The lab could not build or run a topology on this kernel."""


class UnsupportedError(TcpreuseError):
    """What was asked cannot be realised here (e.g. tcp_tw_recycle on Linux >= 4.12)."""


class Terminated(BaseException):
    """Raised in the main thread by SIGTERM or SIGHUP, as KeyboardInterrupt is by SIGINT, so
    that cleanup (finally blocks, context managers) runs; the command then exits 128 + signum."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
