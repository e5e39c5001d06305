"""Auto-refresh without I/O: the `refresh`/`refresh_on` settings as files and flags spell
them, when a secret falls due (jitter, backoff), and which of two overlapping fetches wins."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vaultcore import schedule
from vaultcore.profiles import (
    ConfigError, ProviderConfig, SecretMapping, dump_config, format_duration, parse_config, parse_duration, parse_refresh_on,
)
from vaultcore.providers.base import FetchResult
from tests.support.cli import run_cli
from vaultcore.configurations import _record
from vaultcore.vault import Vault

BASE = "name: prod\nregion: us-east-1\nhosts: [api.example.com]\n"


@pytest.mark.parametrize(("text", "seconds"), [
    ("90s", 90), ("15m", 900), ("1h", 3600), ("1h30m", 5400), ("2d", 172800), ("45", 45), ("off", 0), ("0", 0), ("1s", 1),
])
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "15 minutes", "m", "1.5h", "-5m", "15M5", "soon"])
def test_bad_durations_say_what_to_write(text: str) -> None:
    with pytest.raises(ValueError, match="duration such as 90s, 15m"):
        parse_duration(text)


@given(st.integers(min_value=1, max_value=10**7))
def test_format_duration_round_trips(seconds: int) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


def test_refresh_on_statuses() -> None:
    assert parse_refresh_on("401") == (401,)
    assert parse_refresh_on("401, 403,401") == (401, 403)
    assert parse_refresh_on("off") == ()
    with pytest.raises(ValueError, match="among 401, 403"):
        parse_refresh_on("500")


def test_yaml_refresh_settings_inherit_and_round_trip() -> None:
    text = BASE + (
        "refresh: 15m\nrefresh_on: [401]\nsecrets:\n"
        "  - {alias: a, secret_id: s/a}\n"
        "  - {alias: b, secret_id: s/b, refresh: off, refresh_on: [401, 403]}\n"
        "  - {alias: c, secret_id: s/c, refresh: 90}\n"
    )
    config = parse_config(text, "prod.yaml")
    a, b, c = config.secrets
    assert (config.refresh_for(a), config.refresh_on_for(a)) == (900, (401,))
    assert (config.refresh_for(b), config.refresh_on_for(b)) == (0, (401, 403))
    assert config.refresh_for(c) == 90
    assert parse_config(dump_config(config), "again.yaml") == config
    assert "refresh" not in dump_config(ProviderConfig("x", "x", "us-east-1"))  # not written when unused


@pytest.mark.parametrize(("snippet", "line", "field"), [
    ("refresh: soon\n", 4, "refresh: must be a duration"),
    ("refresh: [15m]\n", 4, "refresh: must be a duration"),
    ("refresh_on: 401\n", 4, "refresh_on: must be a list"),
    ("refresh_on: [500]\n", 4, "refresh_on[0]: must be one of 401, 403"),
    ("secrets:\n  - {alias: a, secret_id: s, refresh: 0.5s}\n", 5, "secrets[0].refresh: must be a duration"),
])
def test_bad_refresh_settings_name_the_line(snippet: str, line: int, field: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_config(BASE + snippet, "prod.yaml")
    assert str(error.value).startswith(f"prod.yaml:{line}: {field}")


# --- when a secret falls due ----------------------------------------------------------------


def fetched(at: str, **extra: object) -> dict[str, object]:
    return {"value": "v", "fetched_at": at, **extra}


def test_a_fetched_secret_falls_due_before_its_ttl_runs_out() -> None:
    start = schedule.epoch("2026-12-01T10:00:00.000+00:00")
    assert start is not None
    due = schedule.due_at("token", fetched("2026-12-01T10:00:00.000+00:00"), 900)
    assert start + 900 - 60 <= due <= start + 900  # early by at most a tenth of the TTL, capped at a minute
    assert due == schedule.due_at("token", fetched("2026-12-01T10:00:00.000+00:00"), 900)  # the same every time


def test_jitter_spreads_secrets_fetched_together() -> None:
    at = "2026-12-01T10:00:00.000+00:00"
    dues = {schedule.due_at(f"s{n}", fetched(at), 600) for n in range(50)}
    assert len(dues) > 40


def test_never_fetched_is_due_at_once() -> None:
    assert schedule.due_at("token", {}, 900) == 0.0


def test_failures_back_off_exponentially_up_to_a_cap() -> None:
    delays = [schedule.backoff(n, 900) for n in range(1, 12)]
    assert delays[:4] == [5, 10, 20, 40]
    assert delays[-1] == schedule.BACKOFF_CAP_SECONDS and delays == sorted(delays)
    assert schedule.backoff(1, 2) == 1  # a short TTL starts at half of it
    failed = schedule.epoch("2026-12-01T10:00:00.000+00:00")
    assert failed is not None
    entry = fetched("2026-12-01T09:00:00.000+00:00", failures=3, error_at="2026-12-01T10:00:00.000+00:00")
    assert schedule.due_at("token", entry, 900) == failed + 20


# --- two fetches of one secret, the later-started one finishing first ---------------------------


def test_the_later_started_fetch_wins() -> None:
    config = ProviderConfig("prod", "prod", "us-east-1", secrets=(SecretMapping("token", "s/token"),))
    state: dict[str, object] = {}
    _record(state, config, {"token": FetchResult("token", "newer", "v2")}, "2026-12-01T10:00:01.500+00:00")
    _record(state, config, {"token": FetchResult("token", "older", "v1")}, "2026-12-01T10:00:01.000+00:00")
    _record(state, config, {"token": FetchResult("token", error="down", error_code="unreachable")}, "2026-12-01T10:00:01.200+00:00")
    entry = state["cache"]["token"]  # type: ignore[index]
    assert (entry["value"], entry["version_id"], entry["error"], entry["failures"]) == ("newer", "v2", None, 0)
    _record(state, config, {"token": FetchResult("token", error="down", error_code="unreachable")}, "2026-12-01T10:00:02.000+00:00")
    _record(state, config, {"token": FetchResult("token", error="down", error_code="unreachable")}, "2026-12-01T10:00:03.000+00:00")
    assert (entry["value"], entry["error"], entry["failures"]) == ("newer", "down", 2)  # the value is kept


# --- the same settings as command-line flags ---------------------------------------------------


def test_cli_flags_write_the_settings_and_refuse_bad_ones(vault_home: Path) -> None:
    added = run_cli(vault_home, "config", "add", "prod", "--region", "us-east-1", "--source", "default",
                    "--hosts", "api.example.com", "--refresh", "15m", "--refresh-on", "401")
    assert added.returncode == 0, added.stderr
    secret = run_cli(vault_home, "secret", "add", "db", "--secret-id", "s/db", "--refresh", "off", "--refresh-on", "401,403")
    assert secret.returncode == 0, secret.stderr
    config = Vault(vault_home).config("prod")
    assert (config.refresh, config.refresh_on) == (900, (401,))
    assert (config.secrets[0].refresh, config.secrets[0].refresh_on) == (0, (401, 403))

    listed = run_cli(vault_home, "secret", "list", "--json")
    assert json.loads(listed.stdout)[0]["refresh"] is None  # off for this one secret
    for flag, value, problem in (("--refresh", "soon", "must be a duration"), ("--refresh-on", "500", "must list statuses among 401, 403")):
        refused = run_cli(vault_home, "secret", "add", "x", "--secret-id", "s/x", flag, value)
        assert refused.returncode == 2 and f"{flag}: {problem}".encode() in refused.stderr
    assert Vault(vault_home).config("prod").mapping("x") is None
