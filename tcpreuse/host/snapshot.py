"""`doctor --save` archives: what the collectors read, replayable elsewhere.

Layout of the .tar.gz (read in memory, never extracted to disk)::

    meta.json                          format, tool, host, interval, sample index
    sample-0/proc/sys/net/ipv4/...     raw sysctl files as read
    sample-0/proc/net/netstat, snmp    raw counter files
    sample-0/sockets.json              the socket table (columnar, see SockTable.to_json)
    sample-1/...                       the second sample (counters and sockets)

Raw files rather than parsed values, so that a better parser later diagnoses an old
snapshot better.
"""

from __future__ import annotations

import io
import json
import tarfile
import time
from pathlib import Path
from typing import Any

from ..errors import HostError
from .observed import ProcessInfo
from .raw import RawHost, RawSample
from .sockets import SockTable

FORMAT = "tcpreuse-doctor-snapshot"
VERSION = 1
MAX_MEMBER = 512 << 20  # refuse absurd members instead of exhausting memory


def _add(tar: tarfile.TarFile, name: str, data: bytes, mtime: float) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = int(mtime)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def save(raw: RawHost, path: str | Path) -> Path:
    path = Path(path)
    mtime = float(raw.meta.get("taken_at") or time.time())
    index = []
    try:
        with tarfile.open(path, "w:gz") as tar:
            for i, s in enumerate(raw.samples):
                d = f"sample-{i}"
                for p, text in s.files.items():
                    _add(tar, d + p, text.encode(), mtime)
                sockets = None
                if s.sockets is not None:
                    sockets = f"{d}/sockets.json"
                    _add(tar, sockets, json.dumps(s.sockets.to_json(), separators=(",", ":")).encode(), mtime)
                index.append({"t": s.t, "dir": d, "files": sorted(s.files), "unreadable": s.unreadable,
                              "sockets": sockets, "socket_error": s.socket_error})
            meta = {"format": FORMAT, "version": VERSION, **raw.meta, "samples": index}
            if raw.processes is not None:
                meta["processes"] = [vars(p) for p in raw.processes]
            _add(tar, "meta.json", json.dumps(meta, indent=1, default=str).encode(), mtime)
    except OSError as e:
        raise HostError(f"cannot write snapshot {path}: {e.strerror or e}") from None
    return path


def _read(tar: tarfile.TarFile, name: str) -> bytes | None:
    try:
        m = tar.getmember(name)
    except KeyError:
        return None
    if not m.isfile() or m.size > MAX_MEMBER:
        return None
    f = tar.extractfile(m)
    return f.read() if f is not None else None


def load(path: str | Path) -> RawHost:
    path = Path(path)
    try:
        tar = tarfile.open(path, "r:*")  # noqa: SIM115 (closed by the `with tar:` below)
    except FileNotFoundError:
        raise HostError(f"no such file: {path}") from None
    except (tarfile.TarError, OSError, EOFError) as e:
        raise HostError(f"{path} is not a tcpreuse snapshot (not a readable tar archive: {e})") from None
    with tar:
        try:
            blob = _read(tar, "meta.json")
        except (tarfile.TarError, OSError, EOFError) as e:
            raise HostError(f"{path}: snapshot archive is damaged ({e})") from None
        if blob is None:
            raise HostError(f"{path} is not a tcpreuse snapshot (no meta.json)",
                            hint="make one with `tcpreuse doctor --save FILE.tar.gz`")
        try:
            meta: dict[str, Any] = json.loads(blob)
        except (ValueError, UnicodeDecodeError) as e:
            raise HostError(f"{path}: meta.json is not valid JSON ({e})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise HostError(f"{path} is not a tcpreuse snapshot (meta.json has no format {FORMAT!r})")
        if int(meta.get("version", 0)) > VERSION:
            raise HostError(f"{path} was written by a newer tcpreuse (snapshot version {meta['version']})")
        raw = RawHost(meta={k: v for k, v in meta.items() if k not in ("samples", "processes")})
        notes: list[str] = raw.meta.setdefault("notes", [])
        for entry in meta.get("samples", []):
            s = RawSample(t=float(entry.get("t", 0.0)), unreadable=dict(entry.get("unreadable", {})),
                          socket_error=entry.get("socket_error"))
            d = entry.get("dir", "")
            for p in entry.get("files", []):
                try:
                    data = _read(tar, d + p)
                except (tarfile.TarError, OSError, EOFError):
                    data = None
                if data is None:
                    notes.append(f"snapshot member {d + p} is missing or damaged")
                    continue
                s.files[p] = data.decode("utf-8", errors="replace")
            if entry.get("sockets"):
                try:
                    data = _read(tar, entry["sockets"])
                    s.sockets = SockTable.from_json(json.loads(data)) if data is not None else None
                    if data is None:
                        notes.append(f"snapshot member {entry['sockets']} is missing")
                except (ValueError, tarfile.TarError, OSError, EOFError) as e:
                    notes.append(f"snapshot socket table {entry['sockets']} unreadable ({e})")
                except HostError as e:
                    notes.append(e.message)
            raw.samples.append(s)
        if isinstance(meta.get("processes"), list):
            try:
                raw.processes = [ProcessInfo(**p) for p in meta["processes"]]
            except TypeError:
                notes.append("snapshot process list malformed; ignored")
    return raw
