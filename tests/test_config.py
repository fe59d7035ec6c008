"""flux.config: the declarations and what is made from them (the table, the environment, the
admin config's checks, the OAuth clients), with plain mappings and no server."""

from __future__ import annotations

import dataclasses

import pytest

from flux.catalogue import CONNECTORS
from flux.config import (
    RUNTIME_SETTINGS,
    SETTINGS,
    ConfigError,
    OAuthSettings,
    Settings,
    check_runtime,
    shown_default,
)

OAUTH_ENV = {
    f"FLUX_OAUTH_{name}_{part}"
    for name in ("GITHUB", "GMAIL", "LINKEDIN", "CALENDAR")
    for part in ("CLIENT_ID", "CLIENT_SECRET", "AUTH_URL", "TOKEN_URL")
}


def test_every_field_is_a_declaration_and_every_variable_is_one_row() -> None:
    names = [f.name for f in dataclasses.fields(Settings)]
    assert [s.name for s in SETTINGS if s.key is None] == [n for n in names if n != "oauth"]
    envs = [s.env for s in SETTINGS]
    assert len(envs) == len(set(envs))
    assert {s.env for s in SETTINGS if s.name == "oauth"} == OAUTH_ENV


def test_the_defaults_are_the_declared_ones() -> None:
    settings = Settings()
    for row in SETTINGS:
        if row.key is None:
            assert getattr(settings, row.name) == row.default, row.env
        else:
            entry, attribute = row.key
            assert getattr(settings.oauth[entry], attribute) == row.default, row.env
    assert Settings.from_env({}) == settings
    assert settings.port == 3000 and settings.host == "127.0.0.1"


def test_one_oauth_client_per_connector_with_sign_in() -> None:
    apps = Settings().oauth
    assert list(apps) == [c.name for c in CONNECTORS if c.oauth is not None]
    for connector in CONNECTORS:
        if connector.oauth is None:
            continue
        assert apps[connector.name] == OAuthSettings(
            None, None, connector.oauth.auth_url, connector.oauth.token_url
        )
    with pytest.raises(TypeError):
        apps["github"] = apps["gmail"]  # type: ignore[index]  # read-only


def test_the_environment_sets_one_client_and_keeps_the_others() -> None:
    settings = Settings.from_env(
        {"FLUX_OAUTH_GMAIL_CLIENT_ID": "gid", "FLUX_OAUTH_GMAIL_TOKEN_URL": "http://t.example/"}
    )
    gmail = settings.oauth["gmail"]
    assert (gmail.client_id, gmail.token_url) == ("gid", "http://t.example")
    assert gmail.auth_url == Settings().oauth["gmail"].auth_url
    assert settings.oauth["github"] == Settings().oauth["github"]


def test_a_bad_value_names_the_variable_and_a_secret_is_never_shown() -> None:
    with pytest.raises(ConfigError, match=r"^PORT='x': invalid literal"):
        Settings.from_env({"PORT": "x"})
    with pytest.raises(ConfigError, match=r"^FLUX_ENCRYPTION_KEY=<hidden>: must be standard"):
        Settings.from_env({"FLUX_ENCRYPTION_KEY": "not-a-key"})
    key = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
    secrets = {s.env: key for s in SETTINGS if s.secret}
    assert {"FLUX_ENCRYPTION_KEY", "FLUX_OAUTH_GITHUB_CLIENT_SECRET"} <= set(secrets)
    assert key not in repr(Settings.from_env(secrets))


def test_flags_win_unless_not_given() -> None:
    settings = Settings.from_env({"PORT": "4000", "FLUX_HOST": "0.0.0.0"}, port=5000, host=None)
    assert (settings.port, settings.host) == (5000, "0.0.0.0")


def test_the_runtime_settings_and_their_checks() -> None:
    assert RUNTIME_SETTINGS == (
        "rate_limit_enabled",
        "rate_limit_per_namespace_per_minute",
        "body_size_limit_single_bytes",
        "body_size_limit_batch_bytes",
        "max_batch_delete",
    )
    assert check_runtime(Settings().runtime_values()) == Settings().runtime_values()
    assert check_runtime({"max_batch_delete": 7, "port": 1, "x": 2}) == {"max_batch_delete": 7}
    for value in (0, -1, 1.0, True, "5", None):
        with pytest.raises(ValueError, match="^max_batch_delete must be a positive integer$"):
            check_runtime({"max_batch_delete": value})
    for value in (1, 0, "true", None):
        with pytest.raises(ValueError, match="^rate_limit_enabled must be true or false$"):
            check_runtime({"rate_limit_enabled": value})


def test_defaults_as_the_docs_show_them() -> None:
    shown = {s.env: shown_default(s) for s in SETTINGS}
    assert shown["PORT"] == "3000"
    assert shown["FLUX_EVENT_LOG"] == "(empty)"
    assert shown["FLUX_ADMIN_TOKEN"] == "unset"
    assert shown["FLUX_LOG_CHECK_AFTER_START"] == "true"
    assert shown["FLUX_METRICS_INTERVAL_SECONDS"] == "2"
    assert shown["FLUX_SOURCES_ALLOWED_NETWORKS"] == "(empty)"
