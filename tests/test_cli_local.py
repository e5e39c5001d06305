"""The `vaultproxy` command for local secrets, run as a real subprocess: output, exit codes
(0 ok, 1 failed, 2 usage), one-line errors, and values that never leak."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.cli import parse_exports, run_cli, stand_in_proxy
from tests.support.tls import TLSMaterial

FAKE_VALUE = "FAKE-cli-secret-0b7d3e91"
FAKE_OTHER = "FAKE-cli-other-6a2f55c4"
FAKE_BINARY = b"\xff\x00FAKE-cli-binary\xfe\x80"


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "vault-home"


def no_value_in(*texts: bytes) -> None:
    for text in texts:
        for value in (FAKE_VALUE.encode(), FAKE_OTHER.encode(), b"FAKE-cli-binary"):
            assert value not in text


def assert_error(result: subprocess.CompletedProcess[bytes], code: int) -> str:
    """Exit `code` with exactly one line on stderr, `vaultproxy: error: ...`, no traceback."""
    stderr = result.stderr.decode()
    assert result.returncode == code, (result.returncode, stderr)
    assert stderr.startswith("vaultproxy: error: ") and stderr.endswith("\n"), stderr
    assert stderr.count("\n") == 1 and "Traceback" not in stderr, stderr
    no_value_in(result.stdout, result.stderr)
    return stderr


def files_containing(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def set_value(home: Path, key: str, value: bytes, *options: str) -> subprocess.CompletedProcess[bytes]:
    result = run_cli(home, "local", "set", key, *options, stdin=value)
    assert result.returncode == 0, result.stderr.decode()
    no_value_in(result.stdout, result.stderr)
    return result


# --- the local secret life cycle ---------------------------------------------------------------


def test_set_get_list_status_unset(home: Path, tmp_path: Path) -> None:
    result = set_value(home, "api_token", FAKE_VALUE.encode() + b"\n", "--hosts", "api.example.com,*.example.org")
    assert result.stdout == b"stored api_token (hosts: api.example.com, *.example.org)\n" and result.stderr == b""

    got = run_cli(home, "local", "get", "api_token")
    assert got.returncode == 0 and got.stdout == FAKE_VALUE.encode()  # echo's newline dropped, none added

    listing = run_cli(home, "local", "list")
    assert listing.returncode == 0
    assert b"api_token" in listing.stdout and b"api.example.com,*.example.org" in listing.stdout
    rows = json.loads(run_cli(home, "local", "list", "--json").stdout)
    assert [(r["key"], r["hosts"]) for r in rows] == [("api_token", ["api.example.com", "*.example.org"])]

    status = run_cli(home, "status")
    assert status.returncode == 0 and b"api_token" in status.stdout and b"local" in status.stdout
    status_json = json.loads(run_cli(home, "status", "--json").stdout)
    assert [(r["key"], r["source"]) for r in status_json["keys"]] == [("api_token", "local")]
    no_value_in(listing.stdout, json.dumps(rows).encode(), status.stdout, json.dumps(status_json).encode())

    assert files_containing(tmp_path, FAKE_VALUE.encode()) == []

    assert run_cli(home, "local", "unset", "api_token").stdout == b"removed api_token\n"
    assert "unknown key 'api_token'" in assert_error(run_cli(home, "local", "get", "api_token"), 1)
    assert run_cli(home, "local", "list").stdout == b"no local secrets\n"
    assert json.loads(run_cli(home, "local", "list", "--json").stdout) == []


def test_values_keep_their_bytes(home: Path) -> None:
    set_value(home, "multi", b"line1\nline2\n\n", "--hosts", "h.test")  # only the last newline goes
    assert run_cli(home, "local", "get", "multi").stdout == b"line1\nline2\n"
    set_value(home, "bin", FAKE_BINARY, "--hosts", "h.test")
    assert run_cli(home, "local", "get", "bin").stdout == FAKE_BINARY
    set_value(home, "bin", FAKE_VALUE.encode())  # a new value keeps the hosts rule
    assert json.loads(run_cli(home, "local", "list", "--json").stdout)[0]["hosts"] == ["h.test"]


def test_set_without_hosts_rule_warns_but_succeeds(home: Path) -> None:
    result = set_value(home, "nohosts", FAKE_VALUE.encode())
    assert result.stderr.decode().startswith("vaultproxy: note: nohosts has no hosts rule")


# --- resolve: the dry run ------------------------------------------------------------------------


def test_resolve_masks_the_value(home: Path) -> None:
    set_value(home, "k", FAKE_VALUE.encode(), "--hosts", "api.example.com")
    result = run_cli(home, "resolve", "Bearer <<vault:k>>", "--host", "api.example.com")
    assert result.returncode == 0, result.stderr.decode()
    lines = result.stdout.decode().splitlines()
    assert lines[0] == "Bearer ********"
    assert "k: resolves (local)" in lines[1]
    no_value_in(result.stdout, result.stderr)

    as_json = run_cli(home, "resolve", "Bearer <<vault:k>>", "--host", "api.example.com", "--json")
    assert json.loads(as_json.stdout) == {"text": "Bearer ********", "keys": [{"key": "k", "resolves": True, "source": "local"}]}


@pytest.mark.parametrize(("text", "problem"), [("<<vault:k|bas64>>", "base64"), ("<<VAULT:k>>", "case"), ("<<vault: k>>", "space")])
def test_resolve_reports_a_near_miss_as_the_proxy_would(home: Path, text: str, problem: str) -> None:
    set_value(home, "k", FAKE_VALUE.encode(), "--hosts", "api.example.com")
    result = run_cli(home, "resolve", f"Bearer {text}", "--host", "api.example.com")
    assert result.returncode == 1
    out = result.stdout.decode()
    assert "REFUSED malformed_placeholder" in out and problem in out.lower(), out
    no_value_in(result.stdout, result.stderr)


def test_resolve_for_a_disallowed_host_fails_and_says_why(home: Path) -> None:
    set_value(home, "k", FAKE_VALUE.encode(), "--hosts", "api.example.com")
    result = run_cli(home, "resolve", "Bearer <<vault:k>>", "--host", "evil.test")
    assert result.returncode == 1
    out = result.stdout.decode()
    assert "Bearer ********" in out
    assert "REFUSED host_not_allowed" in out and "'evil.test'" in out and "api.example.com" in out
    no_value_in(result.stdout, result.stderr)

    plain = run_cli(home, "resolve", "<<vault:k>>", "--host", "api.example.com", "--scheme", "http")
    assert plain.returncode == 1 and b"plaintext_not_allowed" in plain.stdout
    unknown = run_cli(home, "resolve", "<<vault:nope>>", "--host", "api.example.com")
    assert unknown.returncode == 1 and b"unknown_key" in unknown.stdout


# --- exit codes and error lines ----------------------------------------------------------------------


def broken_vault(home: Path) -> None:
    set_value(home, "k", FAKE_VALUE.encode(), "--hosts", "h.test")
    (home / "vault.enc").write_bytes(b"garbage, not a vault\n")


@pytest.mark.parametrize(
    ("args", "stdin", "prepare", "says"),
    [
        (["local", "get", "nope"], b"", None, "unknown key 'nope'"),
        (["local", "unset", "nope"], b"", None, "no local secret 'nope'"),
        (["local", "set", "a b", "--hosts", "h.test"], FAKE_VALUE.encode(), None, "invalid key 'a b'"),
        (["local", "set", "clé", "--hosts", "h.test"], FAKE_VALUE.encode(), None, "invalid key"),
        (["local", "set", "k", "--hosts", "h.test"], b"", None, "the value is empty"),
        (["local", "set", "k", "--hosts", "h.test"], b"\n", None, "the value is empty"),
        (["local", "list"], b"", broken_vault, "is not a vaultproxy vault"),
        (["local", "get", "k"], b"", broken_vault, "is not a vaultproxy vault"),
        (["local", "set", "k"], FAKE_OTHER.encode(), broken_vault, "is not a vaultproxy vault"),
        (["status"], b"", broken_vault, "is not a vaultproxy vault"),
    ],
    ids=["get-unknown", "unset-unknown", "invalid-key", "unicode-key", "empty-value", "newline-only",
         "list-broken", "get-broken", "set-broken", "status-broken"],
)
def test_failed_operations_exit_1_with_one_line(
    home: Path, args: list[str], stdin: bytes, prepare: Callable[[Path], None] | None, says: str
) -> None:
    if prepare:
        prepare(home)
    assert says in assert_error(run_cli(home, *args, stdin=stdin), 1)


def test_vault_home_that_is_a_file_exits_1(home: Path) -> None:
    home.write_text("a file")
    assert "not a directory" in assert_error(run_cli(home, "local", "list"), 1)


@pytest.mark.parametrize(
    "args",
    [[], ["lcoal", "list"], ["local"], ["local", "set"], ["local", "get"], ["resolve", "x"], ["local", "list", "--bogus"],
     ["status", "extra"]],
    ids=["nothing", "unknown-command", "no-subcommand", "set-no-key", "get-no-key", "resolve-no-host", "unknown-option",
         "extra-argument"],
)
def test_usage_errors_exit_2_with_one_line(home: Path, args: list[str]) -> None:
    assert_error(run_cli(home, *args), 2)
    assert not home.exists()


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["local", "set", "k", FAKE_VALUE], "never taken from the command line"),
        (["local", "set", "k", FAKE_VALUE, "--hosts", "h.test"], "never taken from the command line"),
        (["local", "set", "k", FAKE_VALUE, FAKE_OTHER], "unrecognized arguments"),  # an unquoted value with a space
        (["local", "get", "k", FAKE_VALUE], "unrecognized arguments"),
    ],
    ids=["value", "value-and-hosts", "value-with-space", "get-with-value"],
)
def test_a_value_in_argv_is_refused_not_stored_and_not_echoed(home: Path, args: list[str], says: str) -> None:
    assert says in assert_error(run_cli(home, *args, stdin=FAKE_OTHER.encode()), 2)
    assert "unknown key" in assert_error(run_cli(home, "local", "get", "k"), 1)
    assert not (home / "vault.enc").exists()


# --- env -----------------------------------------------------------------------------------------------


def test_env_points_clients_at_the_proxy_and_its_ca(home: Path, tmp_path: Path, tls_material: TLSMaterial) -> None:
    confdir = tmp_path / "mitmproxy-conf"
    confdir.mkdir()
    fake_ca = tls_material.ca_cert.read_text()
    (confdir / "mitmproxy-ca-cert.pem").write_text(fake_ca)
    with stand_in_proxy(home, confdir) as port:
        result = run_cli(home, "env")
    assert result.returncode == 0, result.stderr.decode()
    exported = parse_exports(result.stdout.decode())
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        assert exported[name] == f"http://127.0.0.1:{port}"
    bundles = {exported[name] for name in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "NODE_EXTRA_CA_CERTS")}
    assert len(bundles) == 1
    bundle = Path(bundles.pop())
    assert bundle.parent == home
    assert fake_ca.strip() in bundle.read_text()


def test_env_before_the_proxy_ever_ran_says_to_start_it(home: Path, tmp_path: Path) -> None:
    with stand_in_proxy(home, tmp_path / "empty"):
        assert "does not exist yet: start the proxy once (`vaultproxy start`)" in assert_error(run_cli(home, "env"), 1)


def test_an_unexpected_exception_is_one_line_without_its_message(
    home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """In process: no command fails this way on purpose, so one is made to. Its message could
    quote a value, so only its type is shown."""
    from vaultcore import cli
    from vaultcore.vault import Vault

    def broken(self: Vault) -> list[dict[str, object]]:
        raise RuntimeError(f"internal detail {FAKE_VALUE}")

    monkeypatch.setattr(Vault, "local_secrets", broken)
    assert cli.main(["--home", str(home), "local", "list"]) == 1
    captured = capsys.readouterr()
    assert captured.err == "vaultproxy: error: unexpected RuntimeError; run with VAULTPROXY_DEBUG=1 for details\n"
    assert FAKE_VALUE not in captured.out + captured.err
