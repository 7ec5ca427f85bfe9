"""The teacher's HTTP/1.1 connections (pipeline/teachers/http1.py): reuse, the limit, a server that closes idle
connections, a reply cut or stalled, a cancelled request, and the pool's close. A raw asyncio server of the test's
own answers as each test scripts it (the rude replies' corpus through wire.Client is in test_wire_rude.py)."""

from __future__ import annotations

import asyncio
import json

import pytest

from pipeline.teachers import http1

BODY = json.dumps({"ok": True}).encode()


class Server:
    """An HTTP/1.1 server on 127.0.0.1 that reads each request whole and answers with `reply(n)` (bytes; None: no
    answer at all), keeping the connection unless told to close it; counts connections and requests."""

    def __init__(self, reply=None, idle_close_s: float | None = None, delay_s: float = 0.0,
                 closing_s: float | None = None):
        self.reply = reply or (lambda n: ok())
        self.idle_close_s, self.delay_s = idle_close_s, delay_s
        self.closing_s = closing_s  # a request on a connection idle this long is dropped unanswered, as its close crosses it
        self.connections = self.requests = self.open = self.most_open = 0

    async def start(self) -> str:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        SERVERS.append(self.server)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/v1"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        idle_since = asyncio.get_running_loop().time()
        try:
            while True:
                try:
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.idle_close_s)
                except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
                    return
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length"))
                await reader.readexactly(length)
                if self.closing_s is not None and asyncio.get_running_loop().time() - idle_since >= self.closing_s:
                    return  # its keep-alive timer fired as the request arrived: closed, no reply
                self.requests += 1
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                out = self.reply(self.requests)
                if out is None:
                    await asyncio.sleep(30)
                    return
                writer.write(out)
                await writer.drain()
                idle_since = asyncio.get_running_loop().time()
                if b"connection: close" in out.lower():
                    return
        finally:
            self.open -= 1
            writer.close()


SERVERS: list[asyncio.Server] = []  # closed as each test ends (run)


def ok(body: bytes = BODY, extra: str = "") -> bytes:
    return (f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
            ).encode() + body


def run(test) -> None:
    async def within():
        try:
            await asyncio.wait_for(test(), 20)
        finally:
            while SERVERS:
                SERVERS.pop().close()
        await asyncio.sleep(0.05)  # closed connections' sockets released (connection_lost, called soon)
    asyncio.run(within())


async def pool_of(server: Server, limit: int = 100) -> tuple[http1.Pool, str]:
    url = await server.start()
    return http1.Pool(url, {"Authorization": "Bearer k"}, limit, None, asyncio.get_running_loop()), url


def test_a_keep_alive_connection_carries_one_request_after_another():
    async def test():
        server = Server()
        pool, url = await pool_of(server)
        for _ in range(20):
            status, headers, body = await pool.post(url + "/chat/completions", b"{}", 5)
            assert (status, json.loads(body)) == (200, {"ok": True})
        assert (server.connections, server.requests) == (1, 20)
        pool.close()
    run(test)


def test_no_more_connections_than_the_limit_and_every_request_answered():
    async def test():
        server = Server(delay_s=0.02)
        pool, url = await pool_of(server, limit=3)
        replies = await asyncio.gather(*(pool.post(url + "/x", b"{}", 5) for _ in range(12)))
        assert all(status == 200 for status, _, _ in replies) and server.requests == 12
        assert server.most_open <= 3 and server.connections == 3
        pool.close()
    run(test)


def test_a_connection_the_server_closes_while_idle_is_not_used_again():
    """uvicorn (vLLM) closes a keep-alive connection idle for 5 s: the next request must go on a new one."""
    async def test():
        server = Server(idle_close_s=0.05)
        pool, url = await pool_of(server)
        await pool.post(url + "/x", b"{}", 5)
        await asyncio.sleep(0.3)  # the server has closed it, and the pool has seen it close
        assert not pool.open
        status, _, _ = await pool.post(url + "/x", b"{}", 5)
        assert status == 200 and server.connections == 2
        pool.close()
    run(test)


def test_a_connection_idle_near_the_servers_keep_alive_timeout_is_not_reused(monkeypatch):
    """uvicorn closes a connection idle for 5 s; a request sent as that close crosses it got no reply (a retry, the
    endpoint called down: seen against llama_cpp.server at 5 s gaps). A connection idle IDLE_KEEP_S is not reused."""
    monkeypatch.setattr(http1, "IDLE_KEEP_S", 0.2, raising=False)
    async def test():
        server = Server(closing_s=0.3)  # the server's close, raced by every request after 0.3 s idle
        pool, url = await pool_of(server)
        assert (await pool.post(url + "/x", b"{}", 5))[0] == 200
        assert (await pool.post(url + "/x", b"{}", 5))[0] == 200  # at once: the same connection
        assert server.connections == 1
        await asyncio.sleep(0.35)
        assert (await pool.post(url + "/x", b"{}", 5))[0] == 200  # a new connection, not the one being closed
        assert (server.connections, server.requests) == (2, 3)
        pool.close()
    run(test)


def test_a_reply_cut_short_is_a_connection_error_and_its_connection_is_dropped():
    cut = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nConnection: close\r\n\r\n{\"ok\": tr"

    async def test():
        server = Server(reply=lambda n: cut if n == 1 else ok())
        pool, url = await pool_of(server)
        with pytest.raises(ConnectionError, match="closed the connection before its reply ended"):
            await pool.post(url + "/x", b"{}", 5)
        assert (await pool.post(url + "/x", b"{}", 5))[0] == 200
        pool.close()
    run(test)


def test_a_stalled_reply_times_out_and_a_slow_one_does_not():
    """The timeout is a read timeout, as aiohttp's sock_read was: no byte for timeout_s, not the whole reply."""
    async def test():
        server = Server(reply=lambda n: None)
        pool, url = await pool_of(server)
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(TimeoutError):
            await pool.post(url + "/x", b"{}", 0.3)
        assert 0.25 < loop.time() - start < 2
        pool.close()

        async def trickle(reader, writer):  # the body a byte every 0.1 s, 1.2 s in all, under a 0.3 s timeout
            await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(2)
            writer.write(ok()[:-len(BODY)])
            for byte in BODY:
                await asyncio.sleep(0.1)
                writer.write(bytes([byte]))
                await writer.drain()
            writer.close()

        slow = await asyncio.start_server(trickle, "127.0.0.1", 0)
        SERVERS.append(slow)
        url = f"http://127.0.0.1:{slow.sockets[0].getsockname()[1]}"
        pool = http1.Pool(url, {}, 10, None, loop)
        status, _, body = await pool.post(url + "/x", b"{}", 0.3)
        assert (status, json.loads(body)) == (200, {"ok": True})
        pool.close()
        slow.close()
    run(test)


def test_a_cancelled_request_drops_its_connection_and_the_next_one_opens_another():
    async def test():
        server = Server(delay_s=0.5)
        pool, url = await pool_of(server)
        task = asyncio.ensure_future(pool.post(url + "/x", b"{}", 5))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not pool.open and not pool.idle
        server.delay_s = 0
        assert (await pool.post(url + "/x", b"{}", 5))[0] == 200 and server.connections == 2
        pool.close()
    run(test)


def test_close_ends_the_requests_in_flight_with_a_connection_error():
    async def test():
        server = Server(delay_s=1)
        pool, url = await pool_of(server, limit=1)
        first = asyncio.ensure_future(pool.post(url + "/x", b"{}", 5))
        waiting = asyncio.ensure_future(pool.post(url + "/x", b"{}", 5))  # waits for the one connection
        await asyncio.sleep(0.1)
        pool.close()
        for task in (first, waiting):
            with pytest.raises(ConnectionError):
                await task
        with pytest.raises(ConnectionError, match="closed"):
            await pool.post(url + "/x", b"{}", 5)
    run(test)


@pytest.mark.parametrize("reply, why", [
    (b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n{}", "Content-Length"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}", "Content-Length"),
    (b"ICY 200 OK\r\nContent-Length: 2\r\n\r\n{}", "status line"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n", "HTTP/1.1 cannot read"),
    (b"HTTP/1.1 200 OK\r\nContent-Encoding: br\r\nContent-Length: 2\r\n\r\n{}", "Content-Encoding 'br'"),
])
def test_a_reply_http_cannot_read_is_a_connection_error_naming_what_is_wrong(reply, why):
    async def test():
        server = Server(reply=lambda n: reply)
        pool, url = await pool_of(server)
        with pytest.raises(http1.BadReply, match=why):
            await pool.post(url + "/x", b"{}", 5)
        assert not pool.idle  # never reused
        pool.close()
    run(test)


def test_a_header_value_with_a_line_break_is_refused_before_anything_is_sent():
    """An API key read from a file with its newline would otherwise end the header block early."""
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(ValueError, match="Newline"):
            http1.Pool("http://127.0.0.1:9/v1", {"Authorization": "Bearer sk-1\n"}, 1, None, loop)
    finally:
        loop.close()


def test_https_is_verified_against_the_ca_bundle_the_environment_names(tmp_path, monkeypatch):
    """TLS as httpx verifies it: a server whose certificate SSL_CERT_FILE vouches for is reached; the same server
    with the default bundle is refused, as a connection error (retried, then named), never sent to unverified."""
    import shutil
    import ssl
    import subprocess
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import openai

    from pipeline.teachers.wire import Client

    if not shutil.which("openssl"):
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            self.wfile.write(BODY)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"https://127.0.0.1:{server.server_address[1]}/v1"
    try:
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        client = Client(url, "k", timeout_s=5)
        assert client.post("/chat/completions", {}) == {"ok": True}
        client.close()
        monkeypatch.delenv("SSL_CERT_FILE")
        client = Client(url, "k", timeout_s=5)
        with pytest.raises(openai.APIConnectionError) as e:
            client.post("/chat/completions", {})
        assert "CERTIFICATE_VERIFY_FAILED" in repr(e.value.__cause__)
        client.close()
    finally:
        server.shutdown()
        server.server_close()


def test_what_lenient_servers_send_is_read_as_aiohttp_read_it():
    """Bare LF line ends (in the head and around chunks), a folded header line, a space before a header's colon."""
    replies = [b"HTTP/1.1 200 OK\nContent-Length: 12\n\n" + BODY,
               b"HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n\n5\n{\"ok\"\n7\r\n: true}\n0\n\n",
               b"HTTP/1.1 200 OK\r\nX-Note: one\r\n two\r\nContent-Length : 12\r\n\r\n" + BODY]

    async def test():
        server = Server(reply=lambda n: replies[n - 1])
        pool, url = await pool_of(server)
        for i in range(3):
            status, headers, body = await pool.post(url + "/x", b"{}", 5)
            assert (status, json.loads(body)) == (200, {"ok": True}), i
        assert ("X-Note", "one two") in headers
        pool.close()
    run(test)


def test_through_a_proxy_the_request_goes_to_the_proxy_by_aiohttp(monkeypatch):
    """HTTP_PROXY still reaches the server through the proxy: aiohttp speaks to proxies (http1.py only connects
    direct). The fake server stands in for the proxy: it is asked for the whole URL of a host it is not."""
    from fakeserver import FakeOpenAI

    from pipeline.teachers.wire import Client

    proxy = FakeOpenAI()
    try:
        for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HTTP_PROXY", proxy.url.rsplit("/v1", 1)[0])
        client = Client("http://gpu-box.invalid:8000/v1", "k", timeout_s=5)
        reply = client.post("/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "hi"}]})
        assert reply["choices"] and client.pool is None and client.session is not None
        assert proxy.history[0]["path"] == "http://gpu-box.invalid:8000/v1/chat/completions"
        client.close()
    finally:
        proxy.close()


def test_a_connection_reset_before_the_request_went_out_fails_the_call_at_once():
    """A server going down reset a connection just made, between the connect and the write: asyncio drops a write to
    a closed transport silently, and the call waited out its whole timeout (120 s in a CI run of test_faults)."""
    class Closed:  # a transport asyncio has closed: writes vanish
        def __init__(self):
            self.written = []

        def is_closing(self):
            return True

        def write(self, data):
            self.written.append(data)

        def abort(self):
            pass

    async def test():
        pool = http1.Pool("http://127.0.0.1:9/v1", {}, 10, None, asyncio.get_running_loop())
        conn = http1.Reply(pool)
        conn.connection_made(Closed())
        conn.connection_lost(ConnectionResetError(104, "Connection reset by peer"))
        reply = conn.send(b"POST /v1/x HTTP/1.1\r\n\r\n")
        assert reply.done() and isinstance(reply.exception(), http1.BadReply)
        assert "before the request went out" in str(reply.exception())
    run(test)


def test_a_server_going_down_with_the_connection_in_its_accept_queue_fails_the_call_at_once():
    """The same race over a real socket: the server stops listening just after the connect (its accept queue is
    reset), before the request is written."""
    import socket
    import time

    async def test():
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        port = listener.getsockname()[1]
        loop = asyncio.get_running_loop()
        connect = loop.create_connection

        async def connect_then_go_down(*args, **kwargs):
            made = await connect(*args, **kwargs)
            listener.close()  # the connection, not yet accepted, is reset
            await asyncio.sleep(0.05)  # and the reset is read before the request goes out
            return made

        loop.create_connection = connect_then_go_down
        pool = http1.Pool(f"http://127.0.0.1:{port}/v1", {}, 10, None, loop)
        started = time.monotonic()
        with pytest.raises(http1.BadReply, match="before the request went out"):
            await pool.post(f"http://127.0.0.1:{port}/v1/x", b"{}", 5)
        assert time.monotonic() - started < 2
        pool.close()
    run(test)
