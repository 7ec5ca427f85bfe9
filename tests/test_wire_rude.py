"""What the teacher's HTTP transport (wire.Client) must survive: a raw-socket server on 127.0.0.1 that answers as
real servers and proxies do, politely or not (issue 20).

Written against wire.Client's public behaviour only (`post` returns the decoded JSON, or raises the openai SDK's
exception: APITimeoutError, APIConnectionError, an APIStatusError subclass with its status and body; Malformed for a
2xx that is not JSON), so that any transport behind it (http1.py's connections on a direct connection, aiohttp
through a proxy) is judged by the same cases. A few run through the teacher (make_teacher), where what matters is
that a rude reply is retried.

Every post runs under a watchdog (HANG_S): a transport that hangs fails its test instead of hanging CI.
"""

from __future__ import annotations

import email.utils
import gzip
import json
import socket
import struct
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

import openai
import pytest

from pipeline.config import TeacherConfig
from pipeline.teachers import GenParams, make_teacher
from pipeline.teachers.wire import Client, Malformed, retry_after

HANG_S = 5.0  # a post that has not ended by then is a hung transport: the test fails
TIMEOUT_S = 0.4  # the client's timeout_s where a case waits it out
FAST_S = 1.0  # what "at once" means for a failure that needs no timeout (a closed connection, a refused port)
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def chat(text: str = "hi", pad: int = 0) -> dict[str, Any]:
    """A chat completion as OpenAI sends it; `pad` characters of text more, for large replies."""
    return {"id": "chatcmpl-1", "object": "chat.completion", "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text + "x" * pad},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}


OK = json.dumps(chat()).encode()


def head(status: str = "200 OK", headers: list[tuple[str, str]] | None = None, version: str = "HTTP/1.1") -> bytes:
    lines = [f"{version} {status}".rstrip()] + [f"{k}:{v}" for k, v in (headers or [])]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def sized(body: bytes = OK, status: str = "200 OK", extra: list[tuple[str, str]] | None = None) -> bytes:
    """A reply framed by Content-Length, as most servers send it."""
    return head(status, [("Content-Type", " application/json"), ("Content-Length", f" {len(body)}"),
                         *(extra or [])]) + body


def chunks(body: bytes, size: int, ext: str = "", trailer: str = "", last: bool = True, digits: str = "x") -> bytes:
    """`body` in chunks of `size` bytes (sizes in hex, `digits` "X": upper case; each with `ext` after it), then the
    last chunk and `trailer`."""
    out = b"".join((f"%{digits}" % len(body[i:i + size])).encode() + ext.encode() + b"\r\n" + body[i:i + size] + b"\r\n"
                   for i in range(0, len(body), size))
    return out + (b"0\r\n" + trailer.encode() + b"\r\n" if last else b"")


def chunked(body: bytes = OK, size: int = 16, ext: str = "", trailer: str = "", status: str = "200 OK",
            extra: list[tuple[str, str]] | None = None) -> bytes:
    return head(status, [("Content-Type", " application/json"), ("Transfer-Encoding", " chunked"),
                         *(extra or [])]) + chunks(body, size, ext, trailer)


# -- the server ---------------------------------------------------------------------------------------------------
@dataclass
class Seen:
    connection: int  # which accepted connection (1, 2, ...) carried it
    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    body: bytes


Action = Callable[[socket.socket, Seen], bool]  # answers one request; False: the connection is closed after it


@dataclass
class Rude:
    """A raw-socket HTTP server: each request gets the next enqueued action (`send`, `drop`, `reset`, `hang`), or a
    polite Content-Length reply when none is queued. `idle_s`: a kept-alive connection left idle this long is closed
    (a server's keep-alive timeout). `seen` records every request with the connection that carried it."""

    idle_s: float | None = None
    actions: deque[Action] = field(default_factory=deque)
    seen: list[Seen] = field(default_factory=list)
    connections: int = 0
    stopping: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/v1"
        self.open: set[socket.socket] = set()
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True, name="rude-accept").start()

    def enqueue(self, *actions: Action) -> None:
        self.actions.extend(actions)

    def close(self) -> None:
        self.stopping.set()
        self.listener.close()
        with self.lock:
            for conn in list(self.open):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
                self.open.add(conn)
            threading.Thread(target=self._serve, args=(conn, self.connections), daemon=True).start()

    def _serve(self, conn: socket.socket, number: int) -> None:
        buf = b""
        try:
            while True:
                conn.settimeout(self.idle_s if self.idle_s and any(s.connection == number for s in self.seen) else None)
                req, buf = self._read(conn, buf, number)
                if req is None:
                    return
                self.seen.append(req)
                action = self.actions.popleft() if self.actions else send(sized())
                if not action(conn, req):
                    return
        except OSError:  # the client went, or the idle timeout struck
            return
        finally:
            with self.lock:
                self.open.discard(conn)
            conn.close()

    @staticmethod
    def _read(conn: socket.socket, buf: bytes, number: int) -> tuple[Seen | None, bytes]:
        while b"\r\n\r\n" not in buf:
            data = conn.recv(65536)
            if not data:
                return None, b""
            buf += data
        raw, buf = buf.split(b"\r\n\r\n", 1)
        line, *fields = raw.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (f.partition(":") for f in fields)}
        size = int(headers.get("content-length", "0"))
        while len(buf) < size:
            data = conn.recv(65536)
            if not data:
                return None, b""
            buf += data
        method, path, _ = line.split(" ", 2)
        return Seen(number, method, path, headers, buf[:size]), buf[size:]


def send(*pieces: bytes, gap: float = 0.0, step: int = 0, keep: bool = True, linger: float = 0.0) -> Action:
    """Write `pieces`, each cut in `step`-byte bits with `gap` seconds between writes; then keep the connection, or
    close it (after `linger` seconds: a server that says Connection: close and is slow to close)."""

    def act(conn: socket.socket, req: Seen) -> bool:
        for piece in pieces:
            for i in range(0, len(piece), step or len(piece) or 1):
                conn.sendall(piece[i:i + (step or len(piece))])
                if gap:
                    time.sleep(gap)
        if linger:
            time.sleep(linger)
        return keep

    return act


def drop(conn: socket.socket, req: Seen) -> bool:
    """Close without a word: a keep-alive connection whose idle timer struck as the request came."""
    return False


def reset(conn: socket.socket, req: Seen) -> bool:
    """Close with a TCP RST (SO_LINGER 0), as a crashed backend or a load balancer does."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    return False


def hang(conn: socket.socket, req: Seen) -> bool:
    """Say nothing more until the client gives up (or the server closes)."""
    conn.settimeout(HANG_S * 2)
    while conn.recv(65536):
        pass
    return False


@pytest.fixture
def rude():
    server = Rude()
    yield server
    server.close()


@pytest.fixture
def post(rude):
    """post(timeout_s=3.0) -> (the decoded reply or the exception raised, seconds): one request through a Client of
    the server (one per timeout: the same pool across calls), under a watchdog."""
    clients: dict[float, Client] = {}
    pool = ThreadPoolExecutor(8)

    def call(timeout_s: float = 3.0) -> tuple[Any, float]:
        client = clients.setdefault(timeout_s, Client(rude.url, "sk-test", timeout_s))
        start = time.monotonic()
        future = pool.submit(client.post, "/chat/completions", BODY)
        try:
            return future.result(timeout=HANG_S), time.monotonic() - start
        except FutureTimeout:
            client.close()
            pytest.fail(f"the post hung for {HANG_S} s")
        except Exception as e:  # noqa: BLE001 (the exception is what the case checks)
            return e, time.monotonic() - start

    call.pool = pool  # type: ignore[attr-defined]
    yield call
    for client in clients.values():
        client.close()
    pool.shutdown(wait=False, cancel_futures=True)


def connection_error(result: Any, took: float) -> None:
    """A failed connection the retry policy retries (not a timeout, not a partial reply), at once."""
    assert isinstance(result, openai.APIConnectionError) and not isinstance(result, openai.APITimeoutError), result
    assert took < FAST_S, f"took {took:.2f} s"


# -- replies that are well framed, however oddly -------------------------------------------------------------------
GZ = gzip.compress(OK)
FRAMINGS = {
    "content-length": sized(),
    "odd-case-and-spaces": head("200 OK", [("content-type", "application/json"), ("CONTENT-LENGTH", f"   {len(OK)}   "),
                                           ("x-Request-ID", "  a  b  ")]) + OK,
    "no-reason-phrase": head("200", [("Content-Length", str(len(OK)))]) + OK,
    "chunked": chunked(),
    "chunked-1-byte-extensions-trailer": chunked(size=1, ext=';name="v";x=1', trailer="X-Trailer: done\r\n"),
    "chunked-odd-case-upper-hex": head("200 OK", [("transfer-encoding", "Chunked")]) + chunks(OK, 26, digits="X"),
    "http10-until-close": head("200 OK", [("Content-Type", "application/json")], "HTTP/1.0") + OK,
    "http11-close-no-length": head("200 OK", [("Connection", "close")]) + OK,
    "gzip-sized": sized(GZ, extra=[("Content-Encoding", "gzip")]),
    "gzip-chunked": chunked(GZ, size=7, extra=[("Content-Encoding", "gzip")]),
    "100-continue-first": head("100 Continue") + sized(),
    "103-early-hints-first": head("103 Early Hints", [("Link", " </style.css>; rel=preload")]) + sized(),
    "deflate": sized(zlib.compress(OK), extra=[("Content-Encoding", "deflate")]),
}
UNTIL_CLOSE = {"http10-until-close", "http11-close-no-length"}


@pytest.mark.parametrize("name", list(FRAMINGS))
def test_a_well_framed_reply_is_decoded_however_it_is_framed(rude, post, name):
    rude.enqueue(send(FRAMINGS[name], keep=name not in UNTIL_CLOSE))
    result, took = post()
    assert result == chat(), result
    assert took < FAST_S
    result, _ = post()  # and the client goes on: a closed connection is not reused, a kept one is
    assert result == chat(), result
    assert rude.connections == (2 if name in UNTIL_CLOSE else 1)


def test_a_reply_sent_byte_by_byte_is_read_though_it_takes_longer_than_the_timeout(rude, post):
    """timeout_s bounds each read, not the whole reply (as httpx's read timeout): a slow but steady server is not
    cut off."""
    rude.enqueue(send(sized(), gap=0.002, step=1))
    result, took = post(timeout_s=TIMEOUT_S)
    assert result == chat(), result
    assert TIMEOUT_S < took < HANG_S


@pytest.mark.parametrize("framing", ["sized", "chunked"])
def test_a_reply_over_a_megabyte_is_read_whole(rude, post, framing):
    big = json.dumps(chat(pad=1_500_000)).encode()
    rude.enqueue(send(sized(big) if framing == "sized" else chunked(big, size=65536), step=100_000))
    result, took = post()
    assert result == chat(pad=1_500_000)
    assert took < 2.0


# Replies a client may take or refuse (RFC 9112 leaves it open, or the server broke a MUST); the transport today
# takes some and refuses others (the report of issue 20 lists which). Either is fine: the reply decoded right, or a
# connection error at once (retried); never a timeout, a hang, or other bytes taken for the reply.
LAX = {
    "content-length-and-chunked": head("200 OK", [("Content-Length", str(len(OK) + 5)), ("Transfer-Encoding", "chunked")])
                                  + chunks(OK, 50),
    "duplicate-content-length": head("200 OK", [("Content-Length", str(len(OK))), ("Content-Length", str(len(OK)))]) + OK,
    "space-before-colon": head("200 OK", [("Content-Length ", str(len(OK)))]) + OK,
    "obs-fold": head("200 OK", [("X-Folded", " a\r\n b"), ("Content-Length", str(len(OK)))]) + OK,
    "header-line-of-9-kb": sized(extra=[("X-Debug", "a" * 9000)]),
    "lower-case-http-version": sized().replace(b"HTTP/1.1", b"http/1.1"),
    # RFC 9112 2.2: a recipient MAY take LF alone as a line's end (aiohttp does, but not under python -X dev)
    "bare-lf-line-ends": sized().replace(b"\r\n", b"\n"),
}


@pytest.mark.parametrize("name", list(LAX))
def test_a_reply_a_client_may_refuse_is_decoded_or_refused_at_once(rude, post, name):
    rude.enqueue(send(LAX[name]))
    result, took = post()
    if result != chat():
        connection_error(result, took)
    assert post()[0] == chat()


@pytest.mark.parametrize("extra", [sized(b"{}"), b"garbage\r\n\r\n", b"tail"], ids=["a-second-reply", "garbage", "tail"])
def test_bytes_after_a_framed_reply_are_never_taken_for_the_next_reply(rude, post, extra):
    """A server that writes more than its reply framed (a doubled write, a Content-Length too small): that post or
    the next may fail as a connection error, but none returns the stray bytes, and the client recovers."""
    rude.enqueue(send(sized() + extra))
    results = [post() for _ in range(3)]
    for result, took in results:
        if result != chat():
            connection_error(result, took)
    assert results[-1][0] == chat()


# -- connections kept, reused and closed --------------------------------------------------------------------------
def test_sequential_and_concurrent_posts_reuse_a_few_kept_alive_connections(rude, post):
    for _ in range(5):
        assert post()[0] == chat()
    assert rude.connections == 1  # one connection carried all five
    for _ in range(2):  # two waves of 6 at once: the second wave rides the first wave's connections
        futures = [post.pool.submit(post) for _ in range(6)]
        assert [f.result(timeout=HANG_S)[0] for f in futures] == [chat()] * 6
    assert len(rude.seen) == 17 and rude.connections <= 7


CLOSING = {  # replies after which the connection is not the client's to reuse, whenever the server closes it
    "connection-close": sized(extra=[("Connection", " close")]),
    "CONNECTION-Close": sized(extra=[("CONNECTION", "Close")]),
    "keep-alive-then-close": sized(extra=[("Connection", "keep-alive, close")]),
    "http10-with-length": head("200 OK", [("Content-Length", str(len(OK)))], "HTTP/1.0") + OK,
}


@pytest.mark.parametrize("name", list(CLOSING))
def test_a_reply_that_closes_its_connection_is_not_reused_while_the_server_is_slow_to_close(rude, post, name):
    rude.enqueue(send(CLOSING[name], keep=False, linger=1.5))
    assert post()[0] == chat()
    result, took = post()  # on a new connection at once, not on the one told closed and still open
    assert result == chat() and took < FAST_S
    assert rude.connections == 2 and [s.connection for s in rude.seen] == [1, 2]


def test_the_request_is_framed_by_content_length_with_its_host_and_key(rude, post):
    """Servers that take no chunked request body (and proxies that route by Host) get what they need."""
    assert post()[0] == chat()
    (seen,) = rude.seen
    assert (seen.method, seen.path) == ("POST", "/v1/chat/completions")
    assert seen.headers["host"] == rude.url.split("/")[2] and "transfer-encoding" not in seen.headers
    assert int(seen.headers["content-length"]) == len(seen.body) and json.loads(seen.body) == BODY
    assert seen.headers["authorization"] == "Bearer sk-test" and seen.headers["content-type"] == "application/json"


def test_a_kept_alive_connection_the_server_closed_while_idle_is_not_used_again(rude, post):
    rude.idle_s = 0.05  # the server's keep-alive timeout
    assert post()[0] == chat()
    time.sleep(0.3)
    result, took = post()
    assert result == chat() and took < FAST_S, result
    assert rude.connections == 2


@pytest.mark.parametrize("how", [drop, reset], ids=["closed", "reset"])
def test_a_reused_connection_closed_as_the_request_arrives_is_a_connection_error(rude, post, how):
    """The server's idle timer struck as the request came (FIN), or a backend crashed (RST): a retryable connection
    error at once, never a hang or garbage; and the next post opens a new connection."""
    assert post()[0] == chat()
    rude.enqueue(how)
    connection_error(*post())
    assert post()[0] == chat()
    assert [s.connection for s in rude.seen] == [1, 1, 2]


# -- replies cut short ---------------------------------------------------------------------------------------------
CUT = {
    # a whole JSON document arrives each time: a transport that decoded what it had would return it
    "mid-status-line": b"HTTP/1.1 20",
    "mid-headers": sized()[:40],
    "after-headers": head("200 OK", [("Content-Length", str(len(OK) + 10))]),
    "mid-body-length": head("200 OK", [("Content-Length", str(len(OK) + 10))]) + OK,
    "mid-chunk": head("200 OK", [("Transfer-Encoding", "chunked")]) + b"%x\r\n" % (len(OK) + 10) + OK,
    "before-last-chunk": head("200 OK", [("Transfer-Encoding", "chunked")]) + chunks(OK, 16, last=False),
    "mid-gzip": sized(GZ, extra=[("Content-Encoding", "gzip")])[:-12],
}


@pytest.mark.parametrize("name", list(CUT))
@pytest.mark.parametrize("how", [drop, reset], ids=["closed", "reset"])
def test_a_reply_cut_short_is_a_connection_error_not_a_partial_reply(rude, post, name, how):
    rude.enqueue(lambda conn, req: send(CUT[name])(conn, req) and how(conn, req))
    connection_error(*post())
    assert post()[0] == chat()  # and the next post is served on a new connection


@pytest.mark.parametrize("stall", ["never-answers", "after-headers", "mid-body", "mid-chunks"])
def test_a_server_that_stalls_times_out_within_about_timeout_s(rude, post, stall):
    first = {"never-answers": b"", "after-headers": head("200 OK", [("Content-Length", str(len(OK)))]),
             "mid-body": sized()[:-20], "mid-chunks": chunked()[:-30]}[stall]
    rude.enqueue(lambda conn, req: send(first)(conn, req) and hang(conn, req))
    result, took = post(timeout_s=TIMEOUT_S)
    assert isinstance(result, openai.APITimeoutError), result
    assert TIMEOUT_S * 0.9 < took < TIMEOUT_S + 1.0, f"took {took:.2f} s"


def test_a_closed_port_is_a_connection_error(post):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = Client(f"http://127.0.0.1:{port}/v1", "sk-test", 5.0)
    start = time.monotonic()
    try:
        client.post("/chat/completions", BODY)
    except Exception as e:  # noqa: BLE001
        connection_error(e, time.monotonic() - start)
    else:
        pytest.fail("a post to a closed port returned")
    finally:
        client.close()


# -- status codes and bodies ---------------------------------------------------------------------------------------
def error(message: str, kind: str = "invalid_request_error") -> bytes:
    return json.dumps({"error": {"message": message, "type": kind, "param": None, "code": None}}).encode()


@pytest.mark.parametrize("status, reply, kind", [
    (429, sized(error("Rate limit reached", "requests"), "429 Too Many Requests", [("Retry-After", " 2")]),
     openai.RateLimitError),
    (500, sized(error("The server had an error", "server_error"), "500 Internal Server Error"),
     openai.InternalServerError),
    (400, chunked(error("max_tokens is too large"), size=9, status="400 Bad Request"), openai.BadRequestError),
    (401, sized(error("Incorrect API key provided"), "401 Unauthorized"), openai.AuthenticationError),
    (400, sized(gzip.compress(error("max_tokens is too large")), "400 Bad Request", [("Content-Encoding", "gzip")]),
     openai.BadRequestError),
    (502, head("502 Bad Gateway", [("Content-Type", "text/html"), ("Connection", "close")])
     + b"<html><body>502 Bad Gateway</body></html>", openai.InternalServerError),
])
def test_a_status_raises_the_sdks_exception_with_its_status_and_body(rude, post, status, reply, kind):
    rude.enqueue(send(reply, keep=status != 502))
    result, _ = post()
    assert type(result) is kind, result
    assert result.status_code == status
    if status == 502:
        assert result.body == "<html><body>502 Bad Gateway</body></html>"
    else:
        assert isinstance(result.body, dict) and result.body["message"] in str(result), (result.body, str(result))
    assert retry_after(result) == (2.0 if status == 429 else None)
    assert post()[0] == chat()  # the connection (or a new one) serves the next post


@pytest.mark.parametrize("body", [b"{not json", b"", b'{"choices": [', "é".encode("latin-1")])
def test_a_2xx_that_is_not_json_is_malformed(rude, post, body):
    """wire.decoded raises Malformed (the teacher retries it), not an SDK exception and not a partial object."""
    rude.enqueue(send(sized(body)))
    result, _ = post()
    assert isinstance(result, Malformed) and "malformed reply" in str(result), result


# -- through the teacher -------------------------------------------------------------------------------------------
@pytest.fixture
def teacher(rude, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    cfg = TeacherConfig(spec="openai:m", base_url=rude.url, api="chat", structured="off", concurrency=2,
                        timeout_s=TIMEOUT_S, max_retries=3, max_wait_s=0.05)
    return make_teacher(cfg, seed=0)


@pytest.mark.parametrize("first", [
    send(CUT["mid-body-length"], keep=False), send(CUT["mid-chunk"], keep=False), drop, reset,
    lambda conn, req: send(head("200 OK", [("Content-Length", "999")]))(conn, req) and hang(conn, req),
    send(sized(b"{not json")), send(sized(error("busy", "server_error"), "500 Internal Server Error")),
], ids=["mid-body", "mid-chunk", "closed", "reset", "stall", "not-json", "500"])
def test_the_teacher_retries_a_rude_reply_and_keeps_the_next(rude, teacher, first):
    assert teacher.generate(["warm"], GenParams(max_tokens=5), kind="k")[0].text == "hi"  # a kept-alive connection
    rude.enqueue(first, send(chunked(GZ, size=3, extra=[("Content-Encoding", "gzip")]), gap=0.001, step=7))
    start = time.monotonic()
    (c,) = teacher.generate(["p"], GenParams(max_tokens=5), kind="k")
    assert c.ok and c.text == "hi" and c.retries == 1, (c.error, c.retries)
    assert time.monotonic() - start < TIMEOUT_S + 1.5
    assert len(rude.seen) == 3


@pytest.mark.parametrize("headers, low, high", [
    ([("Retry-After", " 2")], 2.0, 2.0),
    ([("retry-after-ms", "1500"), ("Retry-After", "2")], 1.5, 1.5),  # Azure OpenAI's, in ms, first (as the SDK)
    ([("Retry-After", "DATE")], 1.0, 3.0),  # an HTTP date 3 s ahead, to the second (RFC 9110 10.2.3)
    ([("Retry-After", "Wed, 21 Oct 2015 07:28:00 GMT")], 0.0, 0.0),  # a date gone: at once
    ([("Retry-After", "soon")], None, None),
])
def test_a_429s_retry_after_is_read_in_each_form_a_server_sends(rude, post, headers, low, high):
    """A Retry-After given as an HTTP date, or Retry-After-Ms alone, was not read: the teacher backed off at random
    and met the next 429 sooner than asked, spending its retries."""
    date = email.utils.formatdate(time.time() + 3, usegmt=True)
    rude.enqueue(send(sized(error("Rate limit reached", "requests"), "429 Too Many Requests",
                            [(k, v.replace("DATE", date)) for k, v in headers])))
    result, _ = post()
    assert isinstance(result, openai.RateLimitError), result
    after = retry_after(result)
    if low == high:
        assert after == low
    else:
        assert low < after <= high, after
