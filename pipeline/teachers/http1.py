"""HTTP/1.1 POSTs to one server over keep-alive connections, on the transport's event loop (wire.Transport).

aiohttp's client cost about 0.14-0.17 ms of CPU per request at 64 in flight against benchmarks/_latency_server.py,
and this one about 0.05 (its request and response objects, its timers, its tracing and cookie hooks, none of which
a JSON POST to a model server needs): the request and its reply share the event loop's thread, and with it the
interpreter's lock, with the thread that reads the replies, so at a fast server this CPU paces every stage
(benchmarks/RESULTS.md, "A lean HTTP/1.1 client"). A direct connection only: through a proxy, wire.Transport sends
with aiohttp as before.

What a server may send is taken as HTTP/1.1 allows: a body framed by Content-Length, by chunks (extensions and
trailers read past), or by the connection's end (HTTP/1.0); 1xx replies skipped; header names in any case; a gzip or
deflate body (Accept-Encoding offers them, as aiohttp did) decoded. A connection is reused when its reply says it
may be, and dropped at once when the server closes it while idle, or when it has been idle for IDLE_KEEP_S. What
goes wrong is raised so that wire.Client maps it to the SDK's exceptions as it mapped aiohttp's: a broken or
unreadable reply, or a connection closed before its reply ended (or before its request went out), as BadReply, a
ConnectionError (an OSError); no byte for `timeout_s` while connecting or reading, TimeoutError.
"""

from __future__ import annotations

import asyncio
import collections
import re
import ssl
import urllib.parse
import zlib
from typing import Any

_HEAD_END = re.compile(rb"\r?\n\r?\n")  # the empty line that ends a reply's head
MAX_HEAD = 1 << 16  # a status line and headers longer than this are not a model server's reply
USER_AGENT = "seed2lora"
# A connection idle this long is closed, not reused: uvicorn (vLLM, llama-cpp-python) and llama.cpp's server close one
# idle for 5 s, and a request sent as that close crosses it is lost (a connection error, retried, the endpoint "down").
IDLE_KEEP_S = 4.0


class BadReply(ConnectionError):
    """A reply that breaks HTTP/1.1 (a bad status line, a bad length or chunk size, a head too long), or a connection
    closed before its reply ended: the connection is dropped and the call fails as a connection error, retried."""


class Reply(asyncio.Protocol):
    """One connection: a request written whole, its reply parsed as the bytes arrive (`reply` resolved with
    (status, headers, body)); idle, nothing is expected, and a close drops it from its pool."""

    def __init__(self, pool: Pool):
        self.pool, self.loop = pool, pool.loop
        self.transport: asyncio.Transport | None = None
        self.reply: asyncio.Future | None = None
        self.buf = bytearray()
        self.head: tuple[int, list[tuple[str, str]], bool] | None = None  # status, headers, reusable
        self.framing = ""  # "length", "chunked" or "close", once the head is read
        self.left = 0  # body bytes still to come ("length") or of the current chunk ("chunked", -1: a size line)
        self.body = bytearray()
        self.trailers = False  # a chunked body's last chunk read: its trailer lines up to an empty one
        self.read_at = 0.0  # loop time of the last bytes read (the read timeout counts from it)
        self.idle_at = 0.0  # loop time it went idle (IDLE_KEEP_S counts from it)
        self.closed = False

    # -- asyncio's calls ----------------------------------------------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.reply is None or self.reply.done():  # bytes nobody asked for: the connection cannot be trusted
            self.drop()
            return
        self.read_at = self.loop.time()
        self.buf += data
        try:
            self.parse()
        except (BadReply, ValueError) as e:
            self.fail(e if isinstance(e, BadReply) else BadReply(f"a reply HTTP/1.1 cannot read: {e}"))

    def eof_received(self) -> bool:
        if self.head is not None and self.framing == "close" and self.reply is not None and not self.reply.done():
            self.finish(reusable=False)  # the body ended with the connection, as HTTP/1.0 frames it
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.lost(self)
        if self.reply is not None and not self.reply.done():
            if self.head is not None and self.framing == "close" and exc is None:
                self.finish(reusable=False)
            else:
                error = BadReply("the server closed the connection before its reply ended")
                error.__cause__ = exc
                self.reply.set_exception(error)

    # -- the reply ---------------------------------------------------------------------------------------------
    def parse(self) -> None:
        buf = self.buf
        while self.head is None:
            end = _HEAD_END.search(buf)  # CRLF CRLF, or bare LFs, which some servers send and aiohttp read
            if end is None:
                if len(buf) > MAX_HEAD:
                    raise BadReply(f"a reply's head longer than {MAX_HEAD:,} bytes")
                return
            head = bytes(buf[:end.start()]).decode("latin-1")
            del buf[:end.end()]
            self.read_head(head)
        if self.framing == "length":
            take = min(self.left, len(buf))
            self.body += buf[:take]
            del buf[:take]
            self.left -= take
            if self.left == 0:
                self.finish(reusable=self.head[2] and not buf)
        elif self.framing == "chunked":
            self.read_chunks()
        else:  # "close": everything until the server closes
            self.body += buf
            buf.clear()

    def read_head(self, head: str) -> None:
        """The status line and headers; a 1xx reply is skipped (the real one follows)."""
        status_line, *lines = head.replace("\r\n", "\n").split("\n")
        version, _, rest = status_line.partition(" ")
        if not version.startswith("HTTP/1.") or not rest[:3].isdigit():
            raise BadReply(f"not an HTTP/1.x status line: {status_line[:80]!r}")
        status = int(rest[:3])
        if 100 <= status < 200:
            return
        headers: list[tuple[str, str]] = []
        for line in lines:
            if line[:1] in (" ", "\t") and headers:  # a folded line (obs-fold) goes on with the header before it
                headers[-1] = (headers[-1][0], f"{headers[-1][1]} {line.strip()}".strip())
                continue
            name, colon, value = line.partition(":")
            if not colon or not name.strip():
                raise BadReply(f"a header line HTTP/1.1 cannot read: {line[:80]!r}")
            headers.append((name.strip(), value.strip()))  # a space before the colon read past, as aiohttp did
        found = {name.lower(): value for name, value in headers}
        lengths = {v.strip() for name, value in headers if name.lower() == "content-length" for v in value.split(",")}
        connection = found.get("connection", "").lower()
        reusable = ("keep-alive" in connection) if version == "HTTP/1.0" else ("close" not in connection)
        coding = found.get("transfer-encoding", "").lower()
        if coding:
            if coding.rsplit(",", 1)[-1].strip() != "chunked":
                self.framing = "close"  # RFC 9112 6.3: a final coding other than chunked reads to the close
            else:
                self.framing, self.left = "chunked", -1
        elif lengths:
            length = lengths.pop()  # repeated equal values are allowed, differing ones not
            if lengths or not length.isdigit():
                raise BadReply(f"a Content-Length HTTP/1.1 cannot read: {found['content-length'][:40]!r}")
            self.framing, self.left = "length", int(length)
        elif status in (204, 304):
            self.framing, self.left = "length", 0
        else:
            self.framing = "close"
        if self.framing == "close":
            reusable = False
        self.head = (status, headers, reusable)
        if self.framing == "length" and self.left == 0:
            self.finish(reusable=reusable and not self.buf)

    def read_chunks(self) -> None:
        buf = self.buf
        while True:
            if self.trailers or self.left < 0:  # a line: a trailer (the last chunk read), or a chunk's size
                end = buf.find(b"\n")  # CRLF, or a bare LF
                if end < 0:
                    if len(buf) > MAX_HEAD:
                        raise BadReply("a chunk size or trailer line that never ends")
                    return
                line = bytes(buf[:end]).rstrip(b"\r")
                del buf[:end + 1]
                if self.trailers:
                    if not line:  # the empty line after the trailers: the body is whole
                        self.finish(reusable=self.head[2] and not buf)
                        return
                    continue
                self.left = int(line.split(b";", 1)[0].strip(), 16)  # hex, maybe ";extensions"; ValueError: no size
                self.trailers = self.left == 0
                continue
            end = self.left + (2 if buf[self.left:self.left + 1] == b"\r" else 1)  # the chunk and its line end
            if len(buf) < end:
                return
            if buf[end - 1:end] != b"\n":
                raise BadReply("a chunk not followed by its line end")
            self.body += buf[:self.left]
            del buf[:end]
            self.left = -1

    def finish(self, reusable: bool) -> None:
        status, headers, _ = self.head
        body = bytes(self.body)
        reply = self.reply
        self.head, self.framing, self.trailers, self.body = None, "", False, bytearray()
        self.reply = None
        try:
            body, headers = decoded_body(body, headers)
        except (zlib.error, BadReply) as e:
            reply.set_exception(e if isinstance(e, BadReply) else BadReply(f"a body its Content-Encoding cannot "
                                                                            f"decode: {e}"))
            self.drop()
            return
        reply.set_result((status, headers, body))
        if reusable and not self.closed:
            self.pool.release(self)
        else:
            self.drop()

    def fail(self, error: BaseException) -> None:
        if self.reply is not None and not self.reply.done():
            self.reply.set_exception(error)
        self.drop()

    def drop(self) -> None:
        """This connection closed at once (abort: no lingering over unsent bytes), and out of its pool."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()
        self.pool.lost(self)

    def send(self, data: bytes) -> asyncio.Future:
        """The request written; the future of its reply. On a connection already closed (a reset that came between
        the connect and this write: a server going down) the reply fails at once: asyncio drops a write to a closed
        transport without a word, and the call waited out its whole timeout (a CI run: 120 s)."""
        self.reply = self.loop.create_future()
        self.read_at = self.loop.time()
        self.buf.clear()
        if self.closed or self.transport.is_closing():
            self.reply.set_exception(BadReply("the server closed the connection before the request went out"))
            return self.reply
        self.transport.write(data)
        return self.reply


def decoded_body(body: bytes, headers: list[tuple[str, str]]) -> tuple[bytes, list[tuple[str, str]]]:
    """A gzip or deflate body decoded, as aiohttp decoded it (its Content-Encoding header then left out); an
    identity one as it is; one in a coding never offered (br, zstd) is a broken reply."""
    coding = next((value.lower().strip() for name, value in headers if name.lower() == "content-encoding"), "")
    if coding in ("", "identity"):
        return body, headers
    if coding in ("gzip", "x-gzip"):
        out = zlib.decompressobj(16 + zlib.MAX_WBITS)
    elif coding == "deflate":  # zlib-wrapped, as RFC 9110 says; some servers send it raw
        out = zlib.decompressobj(zlib.MAX_WBITS if body[:1] == b"\x78" else -zlib.MAX_WBITS)
    else:
        raise BadReply(f"a body in the Content-Encoding {coding!r}, which was not asked for")
    data = out.decompress(body) + out.flush()
    return data, [(name, value) for name, value in headers if name.lower() != "content-encoding"]


class Pool:
    """The connections to one server (a wire.Client's): idle ones reused, the newest first; at most `limit` open,
    a request waiting for one to be free beyond that."""

    def __init__(self, url: str, headers: dict[str, str], limit: int, ssl_context: ssl.SSLContext | None,
                 loop: asyncio.AbstractEventLoop):
        parts = urllib.parse.urlsplit(url)
        self.secure = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if self.secure else 80)
        self.ssl = ssl_context if self.secure else None
        self.loop, self.limit = loop, limit
        default = self.port == (443 if self.secure else 80)
        host = f"[{self.host}]" if ":" in self.host else self.host  # an IPv6 literal keeps its brackets
        lines = [f"Host: {host if default else f'{host}:{self.port}'}", f"User-Agent: {USER_AGENT}",
                 "Accept-Encoding: gzip, deflate", *(f"{k}: {v}" for k, v in headers.items())]
        for line in lines:
            if "\r" in line or "\n" in line:  # aiohttp refused these too: a header cannot hold a line break
                raise ValueError("Newline or carriage return character detected in an HTTP header")
        self.headers = "".join(f"{line}\r\n" for line in lines)
        self.heads: dict[str, bytes] = {}  # a URL's request line and headers, but its Content-Length
        self.idle: list[Reply] = []
        self.open: set[Reply] = set()
        self.waiting: collections.deque[asyncio.Future] = collections.deque()
        self.closed = False

    async def post(self, url: str, data: bytes, timeout_s: float) -> tuple[int, list[tuple[str, str]], bytes]:
        """POST `data` (JSON) to `url` on this pool's server: (status, headers, body)."""
        head = self.heads.get(url)
        if head is None:  # made once a URL (a teacher posts to one or two)
            parts = urllib.parse.urlsplit(url)
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            head = self.heads[url] = f"POST {target} HTTP/1.1\r\n{self.headers}".encode("latin-1")
        conn = await self.connection(timeout_s)
        reply = conn.send(b"%sContent-Length: %d\r\n\r\n%s" % (head, len(data), data))
        timer = self.loop.call_at(conn.read_at + timeout_s, self.check, conn, reply, timeout_s)
        try:
            return await reply
        except BaseException:  # cancelled (the run stops), or failed: the connection cannot be reused
            if conn.reply is reply:  # not if its reply had ended and it went on to another request
                conn.drop()
            raise
        finally:
            timer.cancel()

    def check(self, conn: Reply, reply: asyncio.Future, timeout_s: float) -> None:
        """The read timeout: no byte for timeout_s since the request went out or since the last one read."""
        if reply.done():
            return
        due = conn.read_at + timeout_s
        if self.loop.time() < due:
            self.loop.call_at(due, self.check, conn, reply, timeout_s)
            return
        reply.set_exception(TimeoutError(f"no reply from {self.host}:{self.port} for {timeout_s:g} s"))
        conn.drop()

    async def connection(self, timeout_s: float) -> Reply:
        """An idle connection, or a new one while fewer than `limit` are open, or the first one freed."""
        while True:
            while self.idle:
                conn = self.idle.pop()
                if conn.closed:
                    continue
                if self.loop.time() - conn.idle_at < IDLE_KEEP_S:
                    return conn
                conn.drop()  # idle so long that the server may be closing it as the request goes out
            if self.closed:
                raise ConnectionError("the client was closed")
            if len(self.open) < self.limit:
                break
            waiter = self.loop.create_future()
            self.waiting.append(waiter)
            try:
                conn = await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled() and waiter.exception() is None and waiter.result():
                    self.release(waiter.result())  # handed over as this request was cancelled: to the next
                raise
            if conn is not None and not conn.closed:
                return conn
        conn = Reply(self)
        self.open.add(conn)
        try:
            await asyncio.wait_for(self.loop.create_connection(lambda: conn, self.host, self.port, ssl=self.ssl,
                                                               server_hostname=self.host if self.ssl else None),
                                   timeout_s)
        except BaseException:
            self.lost(conn)
            raise
        return conn

    def release(self, conn: Reply) -> None:
        """A connection whose reply ended and may carry another: to a request waiting, else idle."""
        while self.waiting:
            waiter = self.waiting.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        if self.closed:
            conn.drop()
        else:
            conn.idle_at = self.loop.time()
            self.idle.append(conn)

    def lost(self, conn: Reply) -> None:
        """A connection closed: out of the pool; a request waiting for room opens one of its own."""
        if conn in self.open:
            self.open.discard(conn)
            while self.waiting:
                waiter = self.waiting.popleft()
                if not waiter.done():
                    waiter.set_result(None)
                    break

    def close(self) -> None:
        """Every connection closed at once, idle or carrying a request (whose caller gets a connection error)."""
        self.closed = True
        for conn in list(self.open):
            conn.drop()
        self.idle.clear()
        while self.waiting:
            waiter = self.waiting.popleft()
            if not waiter.done():
                waiter.set_exception(ConnectionError("the client was closed"))
