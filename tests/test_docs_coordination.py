"""docs/coordination.md runs: every request on the page is sent, in page order, to a fresh server
started as the page says, and every answer must be the one the page shows.

The page is read as a sequence of fenced blocks:
- an `sh` block holding one `curl` command, followed by an `http` block (`HTTP/1.1 <status>
  <reason>`, a blank line, the JSON body): a request and its answer. A GET is asked again until
  its answer is the page's (for what Flux does on its own, later: an expiry, a presence
  removed), a write is sent once;
- a `text` block starting `$ websocat <url>`: a WebSocket session, `>` a message sent, `<` one
  received (`metrics_update` skipped), `^C` the end of the connection;
- any other `sh` block: a script. Its `curl` commands are not run, but each must call a real
  route, send JSON with only the fields the run examples send to that route, and name the token
  the page's lease on that entity was given.

Answers are compared exactly, except for what differs from run to run: the values of the keys in
`VOLATILE` (times, generated ids) only need the page's JSON type, and a 13-digit number (a Unix
time in ms) inside a string stands for any number.

`python tests/test_docs_coordination.py --write` runs the page against a fresh server and writes
the answers it got into the page (for when the server's answers change on purpose).
"""

from __future__ import annotations

import http
import json
import re
import shlex
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import ClientConnection, connect

from conftest import REPO, FluxServer
from flux.api.app import routes
from flux.api.coordination import LEASE_BODY_LIMIT
from flux.config import SETTINGS, Settings
from flux.events import MAX_TTL_MS
from flux.presence import MAX_PER_CONNECTION

PAGE = REPO / "docs" / "coordination.md"
BASE = "http://localhost:3000"
WS_BASE = "ws://localhost:3000"
VOLATILE = {
    "eventId",
    "lastUpdated",
    "timestamp",
    "last_timestamp",
    "acquired_at",
    "expires_at",
    "connection",
    "since",
    "__deleted_at__",
}
UNIX_MS = re.compile(r"\d{13}")
POLL_SECONDS = 20.0

Json = Any


@dataclass
class Curl:
    method: str
    path: str  # with its query
    headers: dict[str, str]
    body: str | None


@dataclass
class Request:
    curl: Curl
    status: int
    answer: Json
    span: tuple[int, int]  # where the answer block's body is in the page


@dataclass
class Session:
    url: str
    lines: list[tuple[str, str]]  # (">", text), ("<", text) or ("^C", "")
    spans: list[tuple[int, int]]  # where each "<" line's message is in the page


@dataclass
class Script:
    text: str
    assigned: dict[str, str] = field(default_factory=dict)


Step = Request | Session | Script

FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.S | re.M)


def blocks(text: str) -> Iterator[tuple[str, str, int]]:
    """Each fenced block: its language, its text and where that text starts."""
    for match in FENCE.finditer(text):
        yield match[1], match[2], match.start(2)


def parse_curl(words: list[str]) -> Curl:
    """A curl command's request. Only the options the page uses are understood: anything else
    fails, so the page cannot show a command this test does not check."""
    assert words[0] == "curl", words
    method = None
    headers: dict[str, str] = {}
    body = None
    url = None
    rest = iter(words[1:])
    for word in rest:
        if word in ("-s", "-sf"):
            continue
        if word == "-X":
            method = next(rest)
        elif word == "-H":
            name, _, value = next(rest).partition(":")
            headers[name.strip()] = value.strip()
        elif word == "-d":
            body = next(rest)
        else:
            assert not word.startswith("-"), f"curl option {word} is not understood"
            assert url is None, words
            url = word
    assert url is not None and url.startswith("$FLUX/"), url
    return Curl(method or ("POST" if body is not None else "GET"), url[5:], headers, body)


def split_answer(block: str, start: int) -> tuple[int, Json, tuple[int, int]]:
    status_line, blank, body = block.split("\n", 2)
    match = re.fullmatch(r"HTTP/1\.1 (\d{3}) (.+)", status_line)
    assert match is not None and blank == "", status_line
    status = int(match[1])
    assert match[2] == http.HTTPStatus(status).phrase, status_line
    offset = start + len(status_line) + 2
    return status, json.loads(body), (offset, offset + len(body))


def parse_page(text: str) -> tuple[dict[str, str], list[Step]]:
    """The environment the page starts its server with, and its steps in order."""
    found = list(blocks(text))
    env: dict[str, str] | None = None
    steps: list[Step] = []
    index = 0
    while index < len(found):
        lang, block, start = found[index]
        index += 1
        if lang == "sh" and block.splitlines()[0].endswith("./scripts/serve"):
            assert env is None, "one server per page"
            *assignments, command = shlex.split(block.splitlines()[0])
            assert command == "./scripts/serve", block
            env = dict(a.split("=", 1) for a in assignments)
            assert block.splitlines()[1] == f"FLUX={BASE}", block
        elif lang == "sh" and block.startswith("curl ") and found[index][0] == "http":
            words = shlex.split(block.replace("\\\n", " "))
            _, answer_block, answer_start = found[index]
            index += 1
            status, answer, span = split_answer(answer_block, answer_start)
            steps.append(Request(parse_curl(words), status, answer, span))
        elif lang == "sh":
            assigned = dict(re.findall(r"^(\w+)=(\S+)$", block, re.M))
            steps.append(Script(block, assigned))
        elif lang == "text" and block.startswith("$ websocat "):
            first, *rest = block.splitlines()
            lines: list[tuple[str, str]] = []
            spans: list[tuple[int, int]] = []
            offset = start + len(first) + 1
            for line in rest:
                if line == "^C":
                    lines.append(("^C", ""))
                else:
                    kind, message = line[:1], line[2:]
                    assert kind in "<>" and line[1:2] == " ", line
                    lines.append((kind, message))
                    if kind == "<":
                        spans.append((offset + 2, offset + len(line)))
                offset += len(line) + 1
            steps.append(Session(first.removeprefix("$ websocat "), lines, spans))
        else:
            raise AssertionError(f"a {lang!r} block the test does not know: {block[:80]!r}")
    assert env is not None, "the page does not say how its server is started"
    return env, steps


# -- comparing answers -------------------------------------------------------------------------


def kind(value: Json) -> type:
    return bool if type(value) is bool else type(value)


def matches(documented: Json, actual: Json, key: str | None = None, loose: bool = False) -> bool:
    """Whether an answer is the page's (see the module docstring); `loose`: any number matches
    any number (for --write, whose page holds the answers of another run)."""
    if key in VOLATILE or (loose and kind(documented) in (int, float) and kind(actual) is int):
        return kind(documented) is kind(actual)
    if kind(documented) is not kind(actual):
        return False
    if isinstance(documented, dict):
        return documented.keys() == actual.keys() and all(
            matches(value, actual[name], name, loose) for name, value in documented.items()
        )
    if isinstance(documented, list):
        return len(documented) == len(actual) and all(
            matches(d, a, key, loose) for d, a in zip(documented, actual, strict=True)
        )
    if isinstance(documented, str) and (UNIX_MS.search(documented) or loose):
        numbers = r"\d+" if loose else r"\d{13}"
        pattern = re.sub(numbers, lambda _: r"\d+", re.escape(documented).replace(r"\ ", " "))
        return re.fullmatch(pattern, actual) is not None
    return bool(documented == actual)


def pretty(value: Json, indent: int = 0, used: int | None = None, width: int = 96) -> str:
    """JSON as the page writes it: on one line when it fits in `width` columns (the line has
    `used` of them already), else one member per line, `indent` deep."""
    flat = json.dumps(value, ensure_ascii=False)
    start = indent if used is None else used
    if start + len(flat) <= width or not isinstance(value, dict | list) or not value:
        return flat
    pad = " " * (indent + 2)
    if isinstance(value, dict):
        items = []
        for name, item in value.items():
            head = f"{pad}{json.dumps(name, ensure_ascii=False)}: "
            items.append(head + pretty(item, indent + 2, len(head), width))
    else:
        items = [pad + pretty(item, indent + 2, len(pad), width) for item in value]
    opening, closing = "{}" if isinstance(value, dict) else "[]"
    return opening + "\n" + ",\n".join(items) + "\n" + " " * indent + closing


# -- running the page --------------------------------------------------------------------------


class Run:
    """Runs the page's steps against a server; `write` keeps what came back instead of
    asserting it (--write)."""

    def __init__(self, url: str, write: bool = False) -> None:
        self.http = httpx.Client(base_url=url, timeout=20)
        self.ws_base = url.replace("http://", "ws://", 1)
        self.write = write
        self.got: list[tuple[tuple[int, int], str]] = []  # (span, text) for --write
        self.leases: dict[tuple[str, str], int] = {}  # (entity, owner) -> token acquired

    def request(self, step: Request) -> None:
        curl = step.curl
        deadline = time.monotonic() + POLL_SECONDS
        while True:
            response = self.http.request(
                curl.method, curl.path, headers=curl.headers, content=curl.body
            )
            assert response.headers["content-type"] == "application/json", response.text
            answer = response.json()
            if response.status_code != step.status:
                same = False
            elif self.write:  # the page may hold a placeholder, or another run's numbers
                same = step.answer == {} or matches(step.answer, answer, loose=True)
            else:
                same = matches(step.answer, answer)
            if same or curl.method != "GET" or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        shown = f"{response.status_code} {pretty(answer)}"
        if curl.path == "/api/leases/acquire" and response.status_code == 200:
            self.leases[answer["entity_id"], answer["owner"]] = answer["token"]
        assert response.status_code == step.status, f"{curl.method} {curl.path}: {shown}"
        if self.write:
            self.got.append((step.span, pretty(answer) + "\n"))
        else:
            assert matches(step.answer, answer), f"{curl.method} {curl.path} answered:\n{shown}"

    def session(self, step: Session) -> None:
        assert step.url.startswith(WS_BASE), step.url
        spans = iter(step.spans)
        with connect(self.ws_base + step.url.removeprefix(WS_BASE)) as ws:
            for index, (sign, text) in enumerate(step.lines):
                if sign == ">":
                    ws.send(text)
                elif sign == "<":
                    message = self.receive(ws)
                    if self.write:
                        self.got.append((next(spans), json.dumps(message, ensure_ascii=False)))
                    else:
                        assert matches(json.loads(text), message), f"received {message}"
                else:
                    assert index == len(step.lines) - 1, "a message after ^C"
                    ws.close()

    @staticmethod
    def receive(ws: ClientConnection) -> Json:
        while True:
            message = json.loads(ws.recv(timeout=POLL_SECONDS))
            if message.get("type") != "metrics_update":
                return message

    def script(self, step: Script, page: list[Step]) -> None:
        """A script's curl commands call real routes with fields the page's requests use, and
        the tokens the page's leases were given."""
        text = step.text.replace("\\\n", " ")
        for name, value in step.assigned.items():
            text = text.replace(f"${name}", value)
        lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        words = list(lexer)
        starts = [i for i, word in enumerate(words) if word == "curl"]
        assert starts, step.text
        known = route_operations()
        for start in starts:
            end = next(
                (i for i in range(start, len(words)) if words[i] in {">", "||", "&&", ";", "|"}),
                len(words),
            )
            curl = parse_curl(words[start:end])
            path = curl.path.partition("?")[0]
            assert (path, curl.method) in known, curl
            if curl.body is None:
                continue
            body = json.loads(curl.body)
            sent = [
                b for s in page if isinstance(s, Request) for b in self.sent(s, curl.method, path)
            ]
            assert sent, f"no request of the page shows {curl.method} {path}"
            assert body.keys() <= set().union(*(b.keys() for b in sent)), body
            if "token" in body:
                lease = self.leases.get((body["entity_id"], body["owner"]))
                assert body["token"] == lease, f"the lease was given token {lease}: {body}"

    @staticmethod
    def sent(step: Request, method: str, path: str) -> list[Json]:
        curl = step.curl
        if curl.method == method and curl.path.partition("?")[0] == path and curl.body:
            return [json.loads(curl.body)]
        return []

    def close(self) -> None:
        self.http.close()


def route_operations() -> set[tuple[str, str]]:
    found = set()
    for route in routes():
        methods = getattr(route, "methods", None) or ()
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", getattr(route, "path", ""))
        for method in methods:
            found.add((path, method))
    return found


def run_page(url: str, steps: list[Step], write: bool = False) -> Run:
    run = Run(url, write)
    try:
        for step in steps:
            if isinstance(step, Request):
                run.request(step)
            elif isinstance(step, Session):
                run.session(step)
            else:
                run.script(step, steps)
    finally:
        run.close()
    return run


# -- the tests ---------------------------------------------------------------------------------


@pytest.fixture
def page() -> tuple[dict[str, str], list[Step]]:
    return parse_page(PAGE.read_text())


def test_every_request_on_the_page_gets_the_answer_it_shows(
    server_factory: type[FluxServer], tmp_path: Path, page: tuple[dict[str, str], list[Step]]
) -> None:
    env, steps = page
    srv = server_factory(tmp_path / "data", env=env).start()
    try:
        run_page(srv.url, steps)
    finally:
        srv.stop()
    assert "Traceback" not in srv.logs()


def test_the_page_shows_each_kind_of_step(page: tuple[dict[str, str], list[Step]]) -> None:
    """The page covers what it is for: every coordination route, conditional writes in each
    form, atomic batches, a WebSocket presence, the 409 and the 410."""
    _, steps = page
    requests = [s for s in steps if isinstance(s, Request)]
    shown = {(r.curl.method, r.curl.path.partition("?")[0]) for r in requests}
    assert {
        ("POST", "/api/leases/acquire"),
        ("POST", "/api/leases/renew"),
        ("POST", "/api/leases/release"),
        ("GET", "/api/state/changes"),
        ("POST", "/api/events/batch"),
    } <= shown
    bodies = [json.loads(r.curl.body) for r in requests if r.curl.body]
    fields = {name for body in bodies for e in body.get("events", [body]) for name in e}
    assert {"expected_version", "expected_properties", "fencing_token", "ttl_ms"} <= fields
    assert any(body.get("atomic") is True for body in bodies)
    headers = {name for r in requests for name in r.curl.headers}
    assert {"If-Match", "If-None-Match"} <= headers
    assert {409, 410} <= {r.status for r in requests}
    assert any(isinstance(s, Session) for s in steps)
    assert any(isinstance(s, Script) for s in steps)


def test_the_limits_are_the_codes() -> None:
    text = PAGE.read_text()
    named = set(re.findall(r"\bFLUX_[A-Z_]+[A-Z]\b", text))
    assert named <= {s.env for s in SETTINGS}, named - {s.env for s in SETTINGS}
    limits = text.split("## Limits and settings", 1)[1]
    defaults = Settings()
    assert f"| up to {MAX_TTL_MS} ms (ten years) |" in limits
    assert MAX_TTL_MS == 10 * 365 * 24 * 3600 * 1000
    assert f"| presence entities per WebSocket connection | {MAX_PER_CONNECTION} |" in limits
    assert f"| a lease request's body | {LEASE_BODY_LIMIT} bytes |" in limits
    assert defaults.lease_max_ttl_ms == 3_600_000 and "| 1 ms to an hour |" in limits
    assert f"| {defaults.tombstones_kept:,} | `FLUX_TOMBSTONES_KEPT` |" in limits
    assert f"| {defaults.changes_page_limit:,} entities and deletions |" in limits
    ping = f"| {defaults.ws_ping_interval_seconds:g} s and {defaults.ws_ping_timeout_seconds:g} s |"
    assert ping in limits


def write_answers() -> None:
    """Run the page against a fresh server and write the answers it got into the page."""
    import tempfile

    text = PAGE.read_text()
    env, steps = parse_page(text)
    with tempfile.TemporaryDirectory() as tmp:
        srv = FluxServer(Path(tmp) / "data", env=env).start()
        try:
            run = run_page(srv.url, steps, write=True)
        finally:
            srv.stop()
    for (start, end), new in sorted(run.got, reverse=True):
        text = text[:start] + new + text[end:]
    PAGE.write_text(text)


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit(f"usage: {sys.argv[0]} --write")
    write_answers()
