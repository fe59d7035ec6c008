"""The hot paths (flux.api.hotpaths): reading one entity and publishing one event answered in
the HTTP protocol itself. Two real `flux serve`, one with `FLUX_HOT_PATHS` on and one with it
off, get the same requests on raw sockets; every answer must be the same bytes (but the `date`
header and storage times), and the hot server's /metrics must show that it took the hot path
for the plain cases (so the comparison is not of two servers that both went through ASGI)."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from conftest import FluxServer, module_server

ADMIN = "tok-admin"
LIMIT = 4096
ENV = {
    "FLUX_AUTH_ENABLED": "1",
    "FLUX_ADMIN_TOKEN": ADMIN,
    "FLUX_DIRECTORY_INTERVAL_SECONDS": "0",
    "FLUX_RATE_LIMIT_ENABLED": "0",
    "FLUX_BODY_SIZE_LIMIT_SINGLE_BYTES": str(LIMIT),
    "FLUX_ALLOWED_HOSTS": "127.0.0.1,localhost",
    "FLUX_CORS_ORIGINS": "http://app.example",
}
READ = "/api/state/entities/{entity_id:fullpath}"
PUBLISH = "/api/events"


@pytest.fixture(scope="module")
def hot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FluxServer]:
    yield from module_server(tmp_path_factory, "hot", ENV)


@pytest.fixture(scope="module")
def cold(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FluxServer]:
    yield from module_server(tmp_path_factory, "cold", {**ENV, "FLUX_HOT_PATHS": "0"})


class Connection:
    """One kept-alive HTTP/1.1 connection: bytes in, whole answers out (1xx skipped)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buffer = b""

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        self.buffer += chunk
        return bool(chunk)

    def answer(self, to_head: bool = False) -> bytes:
        """The next final answer on the connection (`to_head`: to a HEAD, so without its body);
        b"" once the server closed it."""
        while True:
            while b"\r\n\r\n" not in self.buffer:
                if not self._fill():
                    return b""
            head, _, rest = self.buffer.partition(b"\r\n\r\n")
            match = re.search(rb"(?im)^content-length: *(\d+)", head)
            length = int(match.group(1)) if match and not to_head else 0
            while len(rest) < length:
                if not self._fill():
                    break
                rest = self.buffer.partition(b"\r\n\r\n")[2]
            self.buffer = rest[length:]
            if not head.startswith(b"HTTP/1.1 1"):
                return head + b"\r\n\r\n" + rest[:length]


def request(
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    version: str = "1.1",
) -> bytes:
    lines = [f"{method} {path} HTTP/{version}", "Host: 127.0.0.1"]
    fields = dict(headers or {})
    if body and "transfer-encoding" not in {k.lower() for k in fields}:
        fields.setdefault("content-length", str(len(body)))
    lines += [f"{name}: {value}" for name, value in fields.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def event(entity_id: str, n: int, **fields: object) -> bytes:
    """A fixed event (its id and time given), so both servers store the same bytes."""
    body: dict[str, object] = {
        "eventId": f"018f0000-0000-7000-8000-{n:012d}",
        "stream": "test",
        "source": "hot-test",
        "timestamp": 1_767_225_600_000 + n,
        "payload": {"entity_id": entity_id, "properties": {"n": n}},
    }
    body.update(fields)
    return orjson.dumps(body)


def normal(answer: bytes) -> bytes:
    """An answer without what differs between two servers: the date and storage times."""
    answer = re.sub(rb"(?im)^date: [^\r]*\r\n", b"", answer)
    return re.sub(rb'"lastUpdated":"[^"]*"', b'"lastUpdated":"T"', answer)


def setup(server: FluxServer) -> dict[str, str]:
    """Namespaces `pub` (public) and `priv` (private); their tokens by name."""
    tokens = {}
    for name, private in (("pub", False), ("priv", True)):
        answer = httpx.post(
            f"{server.url}/api/namespaces",
            json={"name": name, "private": private},
            headers={"authorization": f"Bearer {ADMIN}"},
        )
        assert answer.status_code == 200, answer.text
        tokens[name] = answer.json()["token"]
    return tokens


def conversation(tokens: dict[str, str]) -> list[bytes]:
    """Requests for every case the hot paths take or leave to the app, in order."""
    pub = {"authorization": f"Bearer {tokens['pub']}", "content-type": "application/json"}
    priv = {"authorization": f"Bearer {tokens['priv']}", "content-type": "application/json"}
    auth_pub = {"authorization": f"Bearer {tokens['pub']}"}
    return [
        request("POST", PUBLISH, event("pub/a", 1), pub),  # hot
        request("POST", PUBLISH, event("pub/a", 1), pub),  # the same eventId: a duplicate
        request("POST", PUBLISH, event("pub/b c", 2), pub),  # hot
        request("GET", "/api/state/entities/pub/a"),  # hot
        request("GET", "/api/state/entities/pub%2Fb%20c"),  # hot, percent-decoded
        request("GET", "/api/state/entities/pub/a?x=1"),  # hot, the query ignored as before
        request("GET", "/api/state/entities/pub/missing"),  # 404
        request("GET", "/api/state/entities/"),  # no id
        request("HEAD", "/api/state/entities/pub/a"),
        request("POST", PUBLISH, event("priv/a", 3), priv),  # hot
        request("GET", "/api/state/entities/priv/a"),  # private, no token: 404
        request("GET", "/api/state/entities/priv/a", headers=auth_pub),  # another's token
        request("GET", "/api/state/entities/priv/a", headers={"authorization": "Bearer x"}),
        request("POST", PUBLISH, event("pub/c", 4), {"content-type": "application/json"}),
        request("POST", PUBLISH, event("pub/c", 5), {**pub, "authorization": "Bearer nope"}),
        request("POST", PUBLISH, event("priv/c", 6), pub),  # another namespace
        request("POST", PUBLISH, event("nons", 7), pub),  # no namespace in the id
        request("POST", PUBLISH, b"{not json", pub),
        request("POST", PUBLISH, b"[]", pub),
        request("POST", PUBLISH, event("pub/c", 8, stream="Bad Stream"), pub),
        request("POST", PUBLISH, event("pub/c", 9, payload=None), pub),
        request("POST", PUBLISH, event("pub/big", 10, blob="x" * LIMIT), pub),  # over the limit
        request("POST", PUBLISH, event("pub/d", 11), {**pub, "content-type": "text/plain"}),
        request(
            "POST",
            PUBLISH,
            event("pub/d", 12),
            {**pub, "content-type": "application/json; charset=utf-8"},
        ),  # hot: any JSON type
        request(
            "POST",
            PUBLISH,
            event("pub/d", 21),
            {**pub, "content-type": "Application/Vnd.Flux+JSON"},
        ),  # hot
        request("POST", PUBLISH, event("pub/d", 22), {**pub, "content-type": "application/jsonx"}),
        request("POST", PUBLISH, event("pub/d", 13), {**pub, "if-none-match": "*"}),
        request("POST", PUBLISH, event("pub/d", 14, expected_version=1), pub),  # fails: 409
        request("POST", PUBLISH, event("pub/e", 15, expected_version=0), pub),  # holds
        request("POST", PUBLISH, event("pub/f", 16), {**pub, "origin": "http://app.example"}),
        request("GET", "/api/state/entities/pub/a", headers={"origin": "http://app.example"}),
        request(
            "OPTIONS",
            PUBLISH,
            headers={
                "origin": "http://app.example",
                "access-control-request-method": "POST",
            },
        ),
        request("POST", PUBLISH, event("pub/g", 17), {**pub, "expect": "100-continue"}),
        request(
            "POST",
            PUBLISH,
            b"%x\r\n%s\r\n0\r\n\r\n" % (len(event("pub/h", 18)), event("pub/h", 18)),
            {**pub, "transfer-encoding": "chunked"},
        ),
        request("POST", PUBLISH + "?x=1", event("pub/i", 19), pub),
        request("POST", "/api/events/", event("pub/i", 20), pub),
        request("GET", "/api/state/entities/pub/a", body=b"{}"),  # a GET with a body
        request("GET", "/api/health"),
    ]


def test_same_answers_with_and_without_the_hot_paths(hot: FluxServer, cold: FluxServer) -> None:
    answers = {}
    for server in (hot, cold):
        requests = conversation(setup(server))
        connection = Connection(server.port)
        try:
            got = []
            for data in requests:
                connection.send(data)
                got.append(normal(connection.answer(to_head=data.startswith(b"HEAD "))))
        finally:
            connection.close()
        answers[server.port] = got
    for i, (one, other) in enumerate(zip(answers[hot.port], answers[cold.port], strict=True)):
        assert one == other, f"request {i}: {one!r} != {other!r}"
    statuses = [a.split(b" ", 2)[1] for a in answers[hot.port]]
    assert statuses.count(b"200") >= 12 and b"409" in statuses and b"413" in statuses
    # The hot server answered the plain cases itself, the cold one none.
    assert hot_counts(hot) == {READ: 3, PUBLISH: 9}
    assert hot_counts(cold) == {}


def test_one_of_each_kind_on_new_connections(hot: FluxServer, cold: FluxServer) -> None:
    """HTTP/1.0, `Connection: close` and a `Host` the server does not answer: the app's answers
    (the hot paths take only kept-alive HTTP/1.1), the connection closed where it should be."""
    cases = [
        request("GET", "/api/state/entities/pub/a", version="1.0"),
        request("GET", "/api/state/entities/pub/a", headers={"connection": "close"}),
        request("GET", "/api/state/entities/pub/a").replace(b"127.0.0.1", b"evil.example"),
    ]
    for data in cases:
        got = []
        for server in (hot, cold):
            connection = Connection(server.port)
            try:
                connection.send(data)
                first = normal(connection.answer())
                got.append((first, connection.answer() if b"close" in first.lower() else b""))
            finally:
                connection.close()
        assert got[0] == got[1]
        assert got[0][0]


def test_pipelined_requests_answered_in_order(hot: FluxServer) -> None:
    """Requests sent in one write, hot ones and others mixed: each answered in order (a hot
    publish waiting for its commit holds back the requests behind it)."""
    token = setup_once(hot)
    pub = {"authorization": f"Bearer {token}", "content-type": "application/json"}
    burst = []
    expected = []
    for n in range(100, 160):
        burst.append(request("POST", PUBLISH, event("pub/pipe", n), pub))
        expected.append(("publish", n))
        burst.append(request("GET", "/api/state/entities/pub/pipe"))
        expected.append(("read", n))
        if n % 10 == 0:
            burst.append(request("GET", "/api/health"))
            expected.append(("health", n))
    connection = Connection(hot.port)
    try:
        connection.send(b"".join(burst))
        for kind, n in expected:
            answer = connection.answer()
            assert answer.startswith(b"HTTP/1.1 200 "), answer
            doc = orjson.loads(answer.partition(b"\r\n\r\n")[2])
            if kind == "publish":
                assert doc["eventId"] == f"018f0000-0000-7000-8000-{n:012d}"
            elif kind == "read":
                assert doc["properties"] == {"n": n}  # the publish before it is applied
            else:
                assert doc["status"] == "ok"
    finally:
        connection.close()


def test_pipelined_reads_answered_in_order(hot: FluxServer) -> None:
    """Reads of several entities in one write, with a health check and a miss between them: a
    hot GET's answer is written after the event loop's pass, and the reads behind it wait for
    it, so every answer comes back in order and about its own entity."""
    token = setup_once(hot)
    pub = {"authorization": f"Bearer {token}", "content-type": "application/json"}
    for n in range(300, 310):
        answer = httpx.post(f"{hot.url}{PUBLISH}", content=event(f"pub/r{n}", n), headers=pub)
        assert answer.status_code == 200, answer.text
    order = [300, 301, 301, "health", 302, "missing", *range(303, 310), 300]
    burst = b"".join(
        request("GET", "/api/health")
        if n == "health"
        else request("GET", f"/api/state/entities/pub/r{n}")
        for n in order
    )
    before = hot_counts(hot)[READ]
    connection = Connection(hot.port)
    try:
        connection.send(burst)
        for n in order:
            answer = connection.answer()
            doc = orjson.loads(answer.partition(b"\r\n\r\n")[2])
            if n == "health":
                assert doc["status"] == "ok"
            elif n == "missing":
                assert answer.startswith(b"HTTP/1.1 404 "), answer
            else:
                assert answer.startswith(b"HTTP/1.1 200 "), answer
                assert doc["id"] == f"pub/r{n}" and doc["properties"] == {"n": n}
    finally:
        connection.close()
    assert hot_counts(hot)[READ] > before  # the first read at least took the hot path


def test_reads_on_many_connections_each_get_their_own(hot: FluxServer) -> None:
    """Many connections send their reads at once, so one pass of the event loop reads several
    and writes their answers together: each connection gets the answer to its own request, and
    a client gone before its answer is written leaves the others answered."""
    token = setup_once(hot)
    pub = {"authorization": f"Bearer {token}", "content-type": "application/json"}
    ns = range(400, 440)
    for n in ns:
        answer = httpx.post(f"{hot.url}{PUBLISH}", content=event(f"pub/m{n}", n), headers=pub)
        assert answer.status_code == 200, answer.text
    before = hot_counts(hot)[READ]
    for _ in range(5):
        connections = {n: Connection(hot.port) for n in ns}
        try:
            for n, connection in connections.items():
                connection.send(request("GET", f"/api/state/entities/pub/m{n}"))
                if n % 4 == 0:  # gone before its answer
                    connection.close()
            for n, connection in connections.items():
                if n % 4 == 0:
                    continue
                answer = connection.answer()
                assert answer.startswith(b"HTTP/1.1 200 "), answer
                doc = orjson.loads(answer.partition(b"\r\n\r\n")[2])
                assert doc["id"] == f"pub/m{n}" and doc["properties"] == {"n": n}
        finally:
            for connection in connections.values():
                connection.close()
    assert hot_counts(hot)[READ] - before >= 5 * 30  # answered by the hot path
    assert httpx.get(f"{hot.url}/api/state/entities/pub/m400").json()["properties"] == {"n": 400}


def test_client_gone_before_the_commit_answers(hot: FluxServer) -> None:
    """A client that sends a hot publish and closes at once: the event is stored, and the
    server goes on serving."""
    token = setup_once(hot)
    pub = {"authorization": f"Bearer {token}", "content-type": "application/json"}
    for n in range(200, 220):
        sock = socket.create_connection(("127.0.0.1", hot.port))
        sock.sendall(request("POST", PUBLISH, event(f"pub/gone{n}", n), pub))
        sock.close()
    for n in range(200, 220):
        for _ in range(100):
            answer = httpx.get(f"{hot.url}/api/state/entities/pub/gone{n}")
            if answer.status_code == 200:
                break
        assert answer.status_code == 200
        assert answer.json()["properties"] == {"n": n}


def test_shutdown_answers_a_waiting_publish(
    server_factory: type[FluxServer], tmp_path: Path
) -> None:
    """SIGTERM with hot publishes in flight: each one sent before it is either answered 200
    and stored, or not answered at all (never a 200 for an event that is not kept)."""
    server = server_factory(tmp_path / "data", env={"FLUX_RATE_LIMIT_ENABLED": "0"}).start()
    connections = [Connection(server.port) for _ in range(20)]
    headers = {"content-type": "application/json"}
    for n, connection in enumerate(connections):
        connection.send(request("POST", PUBLISH, event(f"sd/e{n}", n), headers))
    server.stop()
    answered = []
    for n, connection in enumerate(connections):
        try:
            answer = connection.answer()
        except OSError:
            answer = b""
        connection.close()
        if answer:
            assert answer.startswith(b"HTTP/1.1 200 "), answer
            answered.append(n)
    restarted = server_factory(tmp_path / "data", env={"FLUX_RATE_LIMIT_ENABLED": "0"}).start()
    try:
        for n in answered:
            got = httpx.get(f"{restarted.url}/api/state/entities/sd/e{n}")
            assert got.status_code == 200 and got.json()["properties"] == {"n": n}
    finally:
        restarted.stop()


_TOKENS: dict[int, str] = {}


def setup_once(server: FluxServer) -> str:
    """The `pub` namespace's token on `server`, registering it when this module has not."""
    if server.port not in _TOKENS:
        answer = httpx.post(
            f"{server.url}/api/namespaces/pub/token", headers={"authorization": f"Bearer {ADMIN}"}
        )
        if answer.status_code == 404:
            _TOKENS[server.port] = setup(server)["pub"]
        else:
            assert answer.status_code == 200, answer.text
            _TOKENS[server.port] = answer.json()["token"]
    return _TOKENS[server.port]


def hot_counts(server: FluxServer) -> dict[str, int]:
    text = httpx.get(f"{server.url}/metrics").text
    return {
        route: int(count)
        for route, count in re.findall(
            r'^flux_http_hot_path_requests_total\{route="([^"]*)"\} (\d+)$', text, re.M
        )
    }
