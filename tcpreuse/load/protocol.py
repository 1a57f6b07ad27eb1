"""The two exchanges `load` and `serve` speak, sans-I/O (bytes in, decisions out).

**line** — the seed incident's service in miniature. The client sends
``VERIFY <id>\\n`` and the server answers ``OK <6 digits>\\n`` (the digits are a CRC of the
id, so an answer can be checked). ``VERIFY <id> KEEP\\n`` asks the server to keep the
connection open for another request, the way ``Connection: keep-alive`` does in HTTP; a
request without ``KEEP`` is the last one, after which the server applies its close policy.

**http** — enough HTTP/1.x for wrk and curl: any method and path get ``200`` with the same
kind of body; HTTP/1.1 is keep-alive unless ``Connection: close``; HTTP/1.0 closes unless
``Connection: keep-alive``. Request bodies with Content-Length are read and ignored.

Parsers are plain functions over ``bytes`` because they run once per answer in the load
generator's hot path; a per-connection parser object would cost more than the parsing.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

MAX_HEAD = 16384  # bytes of an HTTP head or a request line we accept before giving up
LINE_VERB = b"VERIFY"
HTTP_METHODS = (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH")


class ProtocolError(Exception):
    """The peer sent something that is not the protocol (the attempt fails with EPROTO)."""


def verification_code(key: bytes) -> bytes:
    """Six digits derived from the request, so the answer to a request can be checked."""
    return b"%06d" % (zlib.crc32(key) % 1_000_000)


# ---- client side -----------------------------------------------------------------------


def line_request(ident: int, keep: bool) -> bytes:
    return b"VERIFY %d KEEP\n" % ident if keep else b"VERIFY %d\n" % ident


def http_request(path: str, host: str, keep: bool) -> bytes:
    conn = b"" if keep else b"Connection: close\r\n"
    return (b"GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: tcpreuse\r\n%s\r\n"
            % (path.encode(), host.encode(), conn))


def parse_line_answer(buf: bytes) -> int:
    """Length of the complete answer at the start of `buf`, or -1 if more bytes are needed.

    Raises ProtocolError if it is not ``OK <digits>``.
    """
    end = buf.find(b"\n")
    if end < 0:
        if len(buf) > MAX_HEAD:
            raise ProtocolError("answer line too long")
        return -1
    if not buf.startswith(b"OK "):
        raise ProtocolError(f"unexpected answer {buf[:40]!r}")
    return end + 1


def parse_http_answer(buf: bytes, eof: bool = False) -> tuple[int, int, bool] | None:
    """(status, length, closes) of the response at the start of `buf`, None if incomplete.

    `length` is the bytes of `buf` this response takes; `closes` says the server announced
    it closes the connection after it. Complete means: the head and a Content-Length body,
    a chunked body up to its last chunk, or (neither given) everything up to the server's
    FIN (`eof`). Header names are matched in their usual spelling first and lower-cased
    only when that fails: this runs once per answer in the load generator's hot path.
    """
    head_end = buf.find(b"\r\n\r\n")
    if head_end < 0:
        if len(buf) > MAX_HEAD or (eof and buf):
            raise ProtocolError("incomplete HTTP response head")
        return None
    if not buf.startswith(b"HTTP/1."):
        raise ProtocolError(f"not an HTTP response: {buf[:40]!r}")
    try:
        status = int(buf[9:12])
    except ValueError:
        raise ProtocolError(f"bad HTTP status line {buf[:40]!r}") from None
    head = buf[:head_end]
    body_start = head_end + 4
    closes = b"\r\nConnection: close" in head or (
        b"onnection:" in head and b"\r\nconnection: close" in head.lower())
    if buf[7:8] == b"0" and b"keep-alive" not in head.lower():
        closes = True  # HTTP/1.0 without keep-alive
    i = head.find(b"\r\nContent-Length:")
    if i < 0:
        head = head.lower()
        i = head.find(b"\r\ncontent-length:")
    if i >= 0:
        j = head.find(b"\r\n", i + 2)
        try:
            n = int(head[i + 17 : j if j >= 0 else len(head)])
        except ValueError:
            raise ProtocolError("bad Content-Length") from None
        end = body_start + n
        if len(buf) < end:
            if eof:
                raise ProtocolError("HTTP body cut short by the server's FIN")
            return None
        return status, end, closes
    lhead = head.lower()
    if b"\r\ntransfer-encoding: chunked" in lhead:
        end = buf.find(b"\r\n0\r\n\r\n", body_start - 2)
        if end < 0:
            if eof:
                raise ProtocolError("chunked HTTP body cut short by the server's FIN")
            return None
        return status, end + 7, closes
    if status in (204, 304) or 100 <= status < 200:
        return status, body_start, closes
    if not eof:
        return None
    return status, len(buf), True


# ---- server side -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Request:
    kind: str  # "line" | "http"
    key: bytes  # what the verification code is derived from (the id, or the HTTP target)
    keep_alive: bool  # the client wants to send another request on this connection
    head_only: bool = False  # HTTP HEAD
    http10: bool = False


class BadRequest(Exception):
    """Malformed request; `answer` is what the server sends before it closes."""

    def __init__(self, answer: bytes) -> None:
        super().__init__(answer.decode(errors="replace").strip())
        self.answer = answer


def _http_error(status: str) -> BadRequest:
    body = status.encode() + b"\n"
    return BadRequest(b"HTTP/1.1 %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                      % (status.encode(), len(body), body))


def parse_request(buf: bytes) -> tuple[Request, int] | None:
    """The first request in `buf` and the bytes it took, or None if incomplete.

    Raises BadRequest for what neither protocol accepts.
    """
    if buf.startswith(LINE_VERB):
        end = buf.find(b"\n")
        if end < 0:
            if len(buf) > MAX_HEAD:
                raise BadRequest(b"ERR request line too long\n")
            return None
        parts = buf[:end].rstrip(b"\r").split()
        if (len(parts) not in (2, 3) or parts[0] != LINE_VERB
                or (len(parts) == 3 and parts[2].upper() != b"KEEP")):
            raise BadRequest(b"ERR expected: VERIFY <id> [KEEP]\n")
        return Request("line", parts[1], keep_alive=len(parts) == 3), end + 1
    head_end = buf.find(b"\r\n\r\n")
    if head_end < 0:
        if len(buf) > MAX_HEAD:
            raise _http_error("431 Request Header Fields Too Large")
        if buf and not any(m.startswith(buf[:7]) or buf.startswith(m) for m in (*HTTP_METHODS, LINE_VERB)):
            raise BadRequest(b"ERR expected: VERIFY <id> [KEEP], or an HTTP request\n")
        return None
    line_end = buf.find(b"\r\n")
    parts = buf[:line_end].split()
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        raise _http_error("400 Bad Request")
    method, target, version = parts
    head = buf[line_end:head_end].lower()
    http10 = version == b"HTTP/1.0"
    keep = b"\r\nconnection: keep-alive" in head if http10 else b"\r\nconnection: close" not in head
    if b"\r\ntransfer-encoding:" in head:
        raise _http_error("501 Not Implemented")
    used = head_end + 4
    i = head.find(b"\r\ncontent-length:")
    if i >= 0:
        j = head.find(b"\r\n", i + 2)
        try:
            n = int(head[i + 17 : j if j >= 0 else len(head)])
        except ValueError:
            raise _http_error("400 Bad Request") from None
        if len(buf) < used + n:
            return None
        used += n
    return Request("http", target, keep_alive=keep, head_only=method == b"HEAD", http10=http10), used


def answer(req: Request, closing: bool) -> bytes:
    """The server's answer to `req`; `closing` says the server ends the connection after it."""
    body = b"OK " + verification_code(req.key) + b"\n"
    if req.kind == "line":
        return body
    conn = b"Connection: close\r\n" if closing else (b"Connection: keep-alive\r\n" if req.http10 else b"")
    head = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n%s\r\n"
            % (len(body), conn))
    return head if req.head_only else head + body
