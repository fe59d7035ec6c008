"""`flux connectors` and `flux connector show|token|oauth`, run with click's CliRunner against a
real `flux serve` that polls a local fake GitHub and signs in with a local fake OAuth
provider."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result

from conftest import FluxServer, free_port, wait_for
from fakegithub import TOKEN, FakeGitHub, repo
from fakeoauth import FakeOAuth
from flux import _output
from flux.cli import main

KEY = base64.b64encode(bytes(range(64, 96))).decode()
CLEAN_ENV: dict[str, str | None] = {
    "FLUX_URL": None,
    "FLUX_TOKEN": None,
    "FLUX_ADMIN_TOKEN": None,
    "FLUX_PRETTY": None,
    "FLUX_CONNECTOR_TOKEN": None,
}


@pytest.fixture(scope="module")
def github() -> Iterator[FakeGitHub]:
    fake = FakeGitHub().start()
    fake.repos = [repo("octo", "cli")]
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def provider() -> Iterator[FakeOAuth]:
    fake = FakeOAuth().start()
    fake.access_tokens = [TOKEN]
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def url(
    tmp_path_factory: pytest.TempPathFactory, github: FakeGitHub, provider: FakeOAuth
) -> Iterator[str]:
    port = free_port()
    env = {
        "FLUX_ENCRYPTION_KEY": KEY,
        "FLUX_GITHUB_API_URL": github.url,
        "FLUX_CONNECTOR_RETRY_SECONDS": "0.05",
        "FLUX_OAUTH_CALLBACK_BASE_URL": f"http://127.0.0.1:{port}",
        "FLUX_OAUTH_GITHUB_CLIENT_ID": provider.client_id,
        "FLUX_OAUTH_GITHUB_CLIENT_SECRET": provider.client_secret,
        "FLUX_OAUTH_GITHUB_AUTH_URL": provider.authorize_url,
        "FLUX_OAUTH_GITHUB_TOKEN_URL": provider.token_url,
    }
    srv = FluxServer(tmp_path_factory.mktemp("cli-connectors") / "data", env, port=port)
    try:
        srv.start()
        yield srv.url
    finally:
        if srv.proc is not None:
            srv.stop()
    # No secret in the server's log, nor in the clear in its data dir.
    logs = srv.logs()
    secrets = [TOKEN, provider.client_secret, *provider.refresh_tokens]
    assert provider.refresh_tokens and "Traceback" not in logs
    for secret in secrets:
        assert secret not in logs
        for path in srv.data_dir.rglob("*"):
            if path.is_file():
                assert secret.encode() not in path.read_bytes(), path


def flux(url: str, *args: str, input: str | None = None, **env: str) -> Result:
    return CliRunner().invoke(
        main, list(args), input=input, env={**CLEAN_ENV, "FLUX_URL": url, **env}
    )


def ok_json(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture
def clean(url: str) -> Iterator[None]:
    """No github token before and after the test."""
    flux(url, "connector", "token", "github", "--delete")
    yield
    flux(url, "connector", "token", "github", "--delete")


def polled(url: str, github: FakeGitHub, since: int) -> dict[str, Any]:
    """The github connector's status once it has polled the fake GitHub with TOKEN (after
    request number `since`) without error."""

    def done() -> dict[str, Any] | None:
        calls = github.requests[since:]
        if not any(
            p.startswith("/notifications") and h.get("authorization") == f"Bearer {TOKEN}"
            for p, h in calls
        ):
            return None
        detail: dict[str, Any] = ok_json(flux(url, "connector", "show", "github"))
        ok = detail["polls"] >= 1 and detail["last_poll"] and detail["last_error"] is None
        return detail if ok else None

    found: dict[str, Any] = wait_for(what="a poll with the token", check=done)
    return found


def test_token_from_the_environment_then_show_and_delete(
    url: str, clean: None, github: FakeGitHub
) -> None:
    mark = len(github.requests)
    result = flux(url, "connector", "token", "github", FLUX_CONNECTOR_TOKEN=TOKEN)
    assert ok_json(result) == {"success": True}
    assert "Stored the github token" in result.stderr
    assert TOKEN not in result.output
    detail = polled(url, github, mark)
    assert detail["status"] == "configured"
    assert detail["poll_interval_seconds"] == 300
    entity = httpx.get(f"{url}/api/state/entities/github/repo/octo/cli").json()
    assert entity["properties"]["full_name"] == "octo/cli"
    assert ok_json(flux(url, "connector", "token", "github", "--delete")) == {"success": True}
    assert ok_json(flux(url, "connector", "show", "github"))["status"] == "not_configured"
    result = flux(url, "connector", "token", "github", "--delete")
    assert result.exit_code == 1
    assert result.stderr == "Error: No credentials found for connector 'github' (HTTP 404)\n"


def test_token_from_piped_stdin(url: str, clean: None, github: FakeGitHub) -> None:
    mark = len(github.requests)
    ok_json(flux(url, "connector", "token", "github", input=f"  {TOKEN}\n"))
    polled(url, github, mark)


def test_token_from_a_hidden_prompt(
    url: str, clean: None, github: FakeGitHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    mark = len(github.requests)
    monkeypatch.setattr(_output, "stdin_is_terminal", lambda: True)
    result = flux(url, "connector", "token", "github", input=f"{TOKEN}\n")
    assert result.exit_code == 0, result.output
    assert "Token: " in result.stderr
    assert TOKEN not in result.output  # not echoed
    polled(url, github, mark)


def test_token_is_never_an_argument(url: str) -> None:
    result = flux(url, "connector", "token", "github", "ghp_on_the_command_line")
    assert result.exit_code == 2
    assert "unexpected extra argument" in result.stderr.lower()
    result = flux(url, "connector", "token", "github", input="\n")
    assert result.exit_code == 2
    assert "empty token" in result.stderr
    help_text = flux(url, "connector", "token", "--help").stdout
    assert "FLUX_CONNECTOR_TOKEN" in help_text and "stdin" in help_text
    assert "hidden" in help_text and "prompt" in help_text


def test_connectors_json_when_piped_table_on_request(
    url: str, clean: None, github: FakeGitHub
) -> None:
    mark = len(github.requests)
    listed = ok_json(flux(url, "connectors"))
    assert [c["name"] for c in listed["connectors"]] == ["github", "gmail", "linkedin", "calendar"]
    ok_json(flux(url, "connector", "token", "github", FLUX_CONNECTOR_TOKEN=TOKEN))
    polled(url, github, mark)
    result = flux(url, "connectors", "--table")
    assert result.exit_code == 0, result.output
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["NAME", "STATUS", "LAST", "POLL", "POLLS", "EVENTS", "LAST", "ERROR"]
    cells = {row.split()[0]: row.split() for row in rows}
    assert list(cells) == ["github", "gmail", "linkedin", "calendar"]
    assert cells["github"][1] == "configured" and cells["github"][2] != "-"
    assert cells["gmail"] == ["gmail", "not_configured", "-", "0", "0", "-"]


def test_the_table_is_the_default_on_a_terminal(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("flux.cli.stdout_is_terminal", lambda: True)
    result = flux(url, "connectors")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("NAME ")


def test_errors_are_the_servers_with_exit_1(url: str) -> None:
    result = flux(url, "connector", "show", "nope")
    assert (result.exit_code, result.stderr) == (
        1,
        "Error: Connector 'nope' not found (HTTP 404)\n",
    )
    result = flux(url, "connector", "oauth", "gmail")
    assert result.exit_code == 1
    assert result.stderr == (
        "Error: OAuth not configured for connector 'gmail'. Set FLUX_OAUTH_GMAIL_CLIENT_ID and "
        "FLUX_OAUTH_GMAIL_CLIENT_SECRET environment variables. (HTTP 500)\n"
    )
    dead = f"http://127.0.0.1:{free_port()}"
    result = flux(dead, "connector", "token", "github", FLUX_CONNECTOR_TOKEN="x")
    assert result.exit_code == 1 and "cannot reach Flux" in result.stderr


def test_oauth_prints_the_sign_in_url_and_the_browser_flow_connects(
    url: str, clean: None, provider: FakeOAuth, github: FakeGitHub
) -> None:
    mark = len(github.requests)
    result = flux(url, "connector", "oauth", "github")
    assert result.exit_code == 0, result.output
    sign_in = result.stdout.strip()
    assert sign_in.startswith(f"{provider.authorize_url}?client_id=flux-client&redirect_uri=")
    assert "Open this URL in a browser" in result.stderr
    # The browser: provider (approves at once) → Flux's callback.
    page = httpx.get(sign_in, follow_redirects=True)
    assert page.status_code == 200, page.text
    assert str(page.url).startswith(f"{url}/api/connectors/github/oauth/callback?code=")
    assert page.json() == {
        "success": True,
        "message": "Successfully connected github",
        "connector": "github",
    }
    detail = polled(url, github, mark)
    assert detail["status"] == "configured"
    # Used once: the same URL's callback is refused now.
    again = httpx.get(str(page.url))
    assert again.status_code == 401


@pytest.mark.parametrize("command", ["show", "token", "oauth"])
def test_every_connector_command_has_help_with_an_example(command: str) -> None:
    result = CliRunner().invoke(main, ["connector", command, "--help"], prog_name="flux")
    assert result.exit_code == 0
    assert result.stdout.startswith(f"Usage: flux connector {command} [OPTIONS] NAME")
    assert "Example" in result.stdout and f"flux connector {command} github" in result.stdout
