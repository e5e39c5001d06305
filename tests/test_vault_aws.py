"""The Vault facade with AWS configurations, against moto's server mode over real HTTP.

Fetched values live in vault.enc only (encrypted), survive new Vault objects, never expire,
and keep resolving when a later fetch fails; configurations switch without re-fetching.
"""

from __future__ import annotations

import base64
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.moto import REGION, MotoServer, enforced_auth
from vaultcore.index import SecretIndex
from vaultcore.placeholders import SubstitutionError
from vaultcore.profiles import ConfigError, ProviderConfig, SecretMapping
from vaultcore.providers import aws
from vaultcore.providers.aws import StaticCredentials
from vaultcore.store import VaultError
from vaultcore.vault import Vault

HOST = "api.example.com"
KEYS = StaticCredentials("FAKEVAULTTEST0000001", "FAKE-vault-secret-key-3f9a", "FAKE-vault-session-token-81c0")
NESTED = {"user": "FAKE-db-user-51", "conn": {"host": "db.internal", "port": 5432}, "hosts": ["FAKE-h0", "FAKE-h1"],
          "tls": True, "note": None}
BINARY = b"\x00\xffFAKE-binary-blob\x80\x7f"


def config_for(name: str, endpoint: str, **changes: Any) -> ProviderConfig:
    return ProviderConfig(name=name, display_name=name.title(), region=REGION, endpoint_url=endpoint,
                          hosts=(HOST,), **changes)


def raw_bytes(home: Path) -> bytes:
    """Every byte of every file in the vault home, as an attacker with disk access sees it."""
    return b"".join(path.read_bytes() for path in sorted(home.rglob("*")) if path.is_file())


def visible(vault: Vault, name: str | None = None) -> str:
    """Everything listings show (status and secret list), as one text to search for leaks."""
    return json.dumps([vault.status(), vault.secret_rows(name)])


@pytest.fixture
def admin(moto: MotoServer) -> Any:
    return moto.client()


@pytest.fixture
def vault(vault_home: Path, moto: MotoServer) -> Vault:
    """A vault whose active configuration `prod` points at the shared moto server."""
    vault = Vault(vault_home)
    vault.add_config(config_for("prod", moto.endpoint_url), KEYS)
    return vault


@pytest.fixture
def own_moto() -> Iterator[MotoServer]:
    """A moto endpoint this test may stop (moto's state is per process: it is emptied here
    as the shared server's fixture would)."""
    with MotoServer() as server:
        server.reset()
        yield server


def row(vault: Vault, alias: str, name: str | None = None) -> dict[str, Any]:
    return next(r for r in vault.secret_rows(name) if r["alias"] == alias)


def status_row(vault: Vault, key: str) -> dict[str, Any]:
    return next(r for r in vault.status()["keys"] if r["key"] == key and not r.get("shadowed_by"))


# --- fetching and storing --------------------------------------------------------------------


def test_plaintext_fetch_is_stored_encrypted_and_persists(vault: Vault, admin: Any, vault_home: Path) -> None:
    admin.create_secret(Name="prod/token", SecretString="FAKE-token-value-a1")
    vault.add_secret(SecretMapping("token", "prod/token"))
    assert vault.secret_rows()[0]["status"] == "not fetched"
    with pytest.raises(VaultError):
        vault.get("token")  # mapped but never fetched: resolves nothing

    results = vault.fetch(["token"])
    assert results["token"].error is None
    assert vault.get("token") == "FAKE-token-value-a1"
    assert vault.resolve("Bearer <<vault:token>>", HOST) == "Bearer FAKE-token-value-a1"
    with pytest.raises(SubstitutionError) as refused:
        vault.resolve("<<vault:token>>", "evil.example.net")
    assert refused.value.code == "host_not_allowed"

    reopened = Vault(vault_home)
    assert reopened.get("token") == "FAKE-token-value-a1"
    fetched = row(reopened, "token")
    assert fetched["status"] == "ok" and fetched["last_fetched"] and fetched["version_id"]
    assert status_row(reopened, "token")["last_fetched"] == fetched["last_fetched"]
    on_disk = raw_bytes(vault_home)
    for secret in (b"FAKE-token-value-a1", KEYS.secret_access_key.encode(), KEYS.session_token.encode()):
        assert secret not in on_disk
    assert b"prod/token" in (vault_home / "configs" / "prod.yaml").read_bytes()
    assert "FAKE-token-value-a1" not in visible(reopened)


def test_values_never_expire(vault: Vault, admin: Any) -> None:
    admin.create_secret(Name="prod/old", SecretString="FAKE-old-but-kept")
    vault.add_secret(SecretMapping("old", "prod/old"))
    vault.fetch(["old"])
    vault.store.update(lambda state: state["configs"]["prod"]["cache"]["old"].update(fetched_at="2001-01-01T00:00:00+00:00"))
    assert Vault(vault.home).get("old") == "FAKE-old-but-kept"
    assert row(vault, "old")["status"] == "ok"


def test_nested_json_expands_into_dot_keys(vault: Vault, admin: Any) -> None:
    text = json.dumps(NESTED)
    admin.create_secret(Name="prod/db", SecretString=text)
    vault.add_secret(SecretMapping("db", "prod/db", mode="json", hosts=("db.example.com",)))
    vault.fetch(["db"])
    expected = {
        "db": text, "db.user": "FAKE-db-user-51", "db.conn": '{"host":"db.internal","port":5432}',
        "db.conn.host": "db.internal", "db.conn.port": "5432", "db.hosts": '["FAKE-h0","FAKE-h1"]',
        "db.hosts.0": "FAKE-h0", "db.hosts.1": "FAKE-h1", "db.tls": "true", "db.note": "",
    }
    assert {key: Vault(vault.home).get(key) for key in expected} == expected
    assert sorted(vault.keys()) == sorted(expected)
    assert vault.resolve("<<vault:db.user>>@<<vault:db.conn.host>>", "db.example.com") == "FAKE-db-user-51@db.internal"
    with pytest.raises(SubstitutionError):
        vault.resolve("<<vault:db.user>>", HOST)  # the mapping's hosts replace the configuration's


def test_binary_secret_is_kept_as_bytes(vault: Vault, admin: Any, vault_home: Path) -> None:
    admin.create_secret(Name="prod/blob", SecretBinary=BINARY)
    vault.add_secret(SecretMapping("blob", "prod/blob"))
    vault.fetch(["blob"])
    value = Vault(vault_home).get("blob")
    assert isinstance(value, bytes) and value == BINARY
    assert vault.resolve("<<vault:blob|base64>>", HOST) == base64.b64encode(BINARY).decode()
    assert b"FAKE-binary-blob" not in raw_bytes(vault_home)


@pytest.mark.parametrize("bad", ["FAKE-not-json-at-all", '["FAKE-array"]', b"FAKE-bytes"], ids=["text", "array", "binary"])
def test_json_mode_secret_that_is_not_an_object_is_a_row_error(vault: Vault, admin: Any, bad: str | bytes) -> None:
    admin.create_secret(Name="prod/cfg", SecretString=json.dumps({"k": "FAKE-first-good"}))
    vault.add_secret(SecretMapping("cfg", "prod/cfg", mode="json"))
    vault.fetch(["cfg"])
    admin.put_secret_value(SecretId="prod/cfg", **({"SecretBinary": bad} if isinstance(bad, bytes) else {"SecretString": bad}))
    result = vault.fetch(["cfg"])["cfg"]
    assert result.error_code == "not_json" and "mode plaintext" in result.error
    fetched = row(vault, "cfg")
    assert fetched["status"] == "error" and fetched["error"] == result.error
    assert vault.get("cfg.k") == "FAKE-first-good"  # the cached value stays in use
    assert status_row(vault, "cfg.k")["error"] == result.error
    assert "FAKE-not-json" not in visible(vault) and "FAKE-array" not in visible(vault)


def test_refresh_picks_up_rotation_and_version_stages(vault: Vault, admin: Any) -> None:
    admin.create_secret(Name="prod/rotating", SecretString="FAKE-rotation-1")
    admin.put_secret_value(SecretId="prod/rotating", SecretString="FAKE-rotation-2")
    vault.add_secret(SecretMapping("key", "prod/rotating"))
    vault.add_secret(SecretMapping("keyPrevious", "prod/rotating", version_stage="AWSPREVIOUS"))
    vault.fetch()
    assert (vault.get("key"), vault.get("keyPrevious")) == ("FAKE-rotation-2", "FAKE-rotation-1")
    first_version = row(vault, "key")["version_id"]

    admin.put_secret_value(SecretId="prod/rotating", SecretString="FAKE-rotation-3")
    assert vault.get("key") == "FAKE-rotation-2"  # nothing changes until a refresh
    vault.fetch()
    assert (vault.get("key"), vault.get("keyPrevious")) == ("FAKE-rotation-3", "FAKE-rotation-2")
    assert row(vault, "key")["version_id"] != first_version


def test_refresh_all_of_200_secrets_goes_in_batches(vault: Vault, admin: Any, moto: MotoServer, calls: Counter[str]) -> None:
    vault.configs.save(config_for("prod", moto.endpoint_url, secrets=tuple(SecretMapping(f"s{i}", f"bulk/s{i}") for i in range(200))))
    for i in range(200):
        admin.create_secret(Name=f"bulk/s{i}", SecretString=f"FAKE-bulk-{i}")
    seen: list[tuple[int, int]] = []
    results = vault.fetch(progress=lambda done, total: seen.append((done, total)))
    assert all(r.error is None for r in results.values()) and len(results) == 200
    assert calls == {"BatchGetSecretValue": 10}
    assert seen == [(n, 200) for n in range(1, 201)]
    index = Vault(vault.home).index()
    assert {f"s{i}": index.get(f"s{i}").value for i in range(200)} == {f"s{i}": f"FAKE-bulk-{i}" for i in range(200)}


# --- errors ----------------------------------------------------------------------------------


def test_secret_not_found_marks_the_row_and_the_configuration(vault: Vault, admin: Any) -> None:
    admin.create_secret(Name="prod/here", SecretString="FAKE-here-value")
    vault.add_secret(SecretMapping("here", "prod/here"))
    vault.add_secret(SecretMapping("gone", "prod/gone"))
    results = vault.fetch()
    assert results["gone"].error_code == "not_found" and results["here"].error is None
    assert row(vault, "gone")["status"] == "error" and "prod/gone" in row(vault, "gone")["error"]
    assert status_row(vault, "gone")["error"] == "secret not found: prod/gone"
    assert "gone" in vault.status()["config_error"]

    admin.create_secret(Name="prod/gone", SecretString="FAKE-found-later")
    vault.fetch(["gone"])
    assert row(vault, "gone")["status"] == "ok" and vault.get("gone") == "FAKE-found-later"
    assert vault.status()["config_error"] is None


def test_invalid_then_denied_credentials_keep_the_cache_until_fixed(vault: Vault, admin: Any, moto: MotoServer) -> None:
    admin.create_secret(Name="prod/api", SecretString="FAKE-api-cached")
    admin.create_secret(Name="prod/db", SecretString=json.dumps(NESTED))
    vault.add_secret(SecretMapping("api", "prod/api"))
    vault.add_secret(SecretMapping("db", "prod/db", mode="json"))
    vault.fetch()
    good_fetch = row(vault, "api")["last_fetched"]
    shown: list[str] = []  # what listings showed in each error state

    with enforced_auth(moto) as users:
        results = vault.fetch()  # KEYS were never issued by IAM
        assert {r.error_code for r in results.values()} == {"invalid_credentials"}
        shown.append(visible(vault))
        status = vault.status()
        assert status["config_error"].startswith("credentials rejected (")
        assert "vaultproxy config set-credentials prod" in status["config_error"]
        assert status_row(vault, "api")["error"] == results["api"].error
        assert row(vault, "db")["status"] == "error" and row(vault, "api")["last_fetched"] == good_fetch
        reopened = Vault(vault.home)
        assert reopened.get("api") == "FAKE-api-cached" and reopened.get("db.user") == NESTED["user"]
        assert reopened.resolve("<<vault:api>>", HOST) == "FAKE-api-cached"
        with pytest.raises(aws.ProviderError) as caught:
            vault.test_config()
        assert caught.value.code == "invalid_credentials"

        vault.set_credentials("prod", users.nobody)
        results = vault.fetch()
        assert {r.error_code for r in results.values()} == {"access_denied"}
        shown.append(visible(vault))
        assert row(vault, "api")["error"].startswith("access denied (")
        assert "api" in vault.status()["config_error"] and vault.get("api") == "FAKE-api-cached"

        vault.set_credentials("prod", users.reader)
        assert ":user/reader-" in vault.test_config().arn
        assert all(r.error is None for r in vault.fetch().values())
    assert vault.status()["config_error"] is None
    assert {r["alias"]: r["status"] for r in vault.secret_rows()} == {"api": "ok", "db": "ok"}
    assert all(r.get("error") is None for r in vault.status()["keys"])
    assert row(vault, "api")["last_fetched"] >= good_fetch
    for secret in (KEYS.secret_access_key, users.reader.secret_access_key, users.nobody.secret_access_key,
                   "FAKE-api-cached", NESTED["user"]):
        assert all(secret not in text for text in shown)


def test_unreachable_endpoint_keeps_the_cache(vault_home: Path, own_moto: MotoServer) -> None:
    own_moto.client().create_secret(Name="down/api", SecretString="FAKE-survives-outage")
    vault = Vault(vault_home)
    vault.add_config(config_for("prod", own_moto.endpoint_url, secrets=(SecretMapping("api", "down/api"),)), KEYS)
    vault.fetch()
    own_moto.stop()
    result = vault.fetch()["api"]
    assert result.error_code == "unreachable"
    assert vault.status()["config_error"].startswith("endpoint unreachable")
    assert row(vault, "api")["status"] == "error"
    assert Vault(vault_home).resolve("<<vault:api>>", HOST) == "FAKE-survives-outage"


def test_static_configuration_without_keys(vault_home: Path, moto: MotoServer, tmp_path: Path) -> None:
    shared = tmp_path / "shared.yaml"
    shared.write_text(f"name: team\nregion: {REGION}\nendpoint_url: {moto.endpoint_url}\nhosts: [{HOST}]\n"
                      "secrets:\n  - alias: api\n    secret_id: team/api\n")
    vault = Vault(vault_home)
    assert vault.import_config(shared).name == "team"
    assert vault.status()["active_config"] == "team"
    assert vault.fetch()["api"].error_code == "missing_credentials"
    assert "vaultproxy config set-credentials team" in vault.status()["config_error"]


# --- several configurations --------------------------------------------------------------------


def test_switching_keeps_every_cache_without_refetching(vault_home: Path, own_moto: MotoServer) -> None:
    admin = own_moto.client()
    admin.create_secret(Name="sw/prod", SecretString="FAKE-prod-token")
    admin.create_secret(Name="sw/staging", SecretString="FAKE-staging-token")
    admin.create_secret(Name="sw/staging-only", SecretString="FAKE-staging-only")
    vault = Vault(vault_home)
    vault.add_config(config_for("prod", own_moto.endpoint_url, secrets=(SecretMapping("token", "sw/prod"),)), KEYS)
    vault.add_config(config_for("staging", own_moto.endpoint_url, secrets=(
        SecretMapping("token", "sw/staging"), SecretMapping("extra", "sw/staging-only"))), KEYS)
    assert vault.status()["active_config"] == "prod"  # the first one added stays active
    vault.fetch()
    vault.fetch(config_name="staging")  # a configuration can be fetched without being active
    assert vault.get("token") == "FAKE-prod-token"
    with pytest.raises(VaultError):
        vault.get("extra")  # only the active configuration's keys resolve

    own_moto.stop()  # from here on, any fetch would fail
    vault.use_config("staging")
    reopened = Vault(vault_home)
    assert (reopened.get("token"), reopened.get("extra")) == ("FAKE-staging-token", "FAKE-staging-only")
    assert reopened.status()["active_config"] == "staging"
    vault.use_config("prod")
    assert Vault(vault_home).get("token") == "FAKE-prod-token"
    assert "extra" not in Vault(vault_home).keys()
    assert all(r["status"] == "ok" for name in ("prod", "staging") for r in vault.secret_rows(name))
    with pytest.raises(ConfigError) as unknown:
        vault.use_config("nope")
    assert "no configuration named nope" in str(unknown.value)


def test_removing_the_active_configuration(vault: Vault, admin: Any, moto: MotoServer) -> None:
    admin.create_secret(Name="rm/token", SecretString="FAKE-removed-token")
    vault.add_secret(SecretMapping("token", "rm/token"))
    vault.fetch()
    vault.remove_config("prod")
    assert vault.status()["active_config"] is None and vault.configs.names() == []
    assert "prod" not in vault.state().get("configs", {})
    assert vault.keys() == []


# --- moving to local, the library API, shadowing -------------------------------------------------


def test_move_to_local_keeps_values_and_dot_keys(vault: Vault, admin: Any, vault_home: Path) -> None:
    admin.create_secret(Name="mv/db", SecretString=json.dumps(NESTED))
    admin.create_secret(Name="mv/other", SecretString="FAKE-other-stays")
    vault.add_secret(SecretMapping("db", "mv/db", mode="json", origins=("http://localhost:3000",)))
    vault.add_secret(SecretMapping("other", "mv/other"))
    vault.add_secret(SecretMapping("never", "mv/never"))
    vault.fetch(["db", "other"])
    with pytest.raises(VaultError) as unfetched:
        vault.move_to_local("never")
    assert "vaultproxy secret fetch never" in str(unfetched.value)

    written = vault.move_to_local("db")
    assert "db" in written and "db.user" in written and "db.conn.host" in written
    local = {s["key"]: s for s in vault.local_secrets()}
    assert set(local) == set(written)
    assert local["db.user"]["hosts"] == [HOST] and local["db.user"]["origins"] == ["http://localhost:3000"]
    assert [m.alias for m in vault.configs.load("prod").secrets] == ["other", "never"]
    assert b"mv/db" not in (vault_home / "configs" / "prod.yaml").read_bytes()
    assert status_row(vault, "db.user")["source"] == "local"
    assert Vault(vault_home).get("db.user") == NESTED["user"]

    vault.set("db.user", "FAKE-edited-locally")  # a local secret now: editable
    assert Vault(vault_home).get("db.user") == "FAKE-edited-locally"
    vault.unset("db.conn.port")
    assert "db.conn.port" not in vault.keys()
    assert vault.get("other") == "FAKE-other-stays"


def test_set_and_unset_refuse_provider_keys(vault: Vault, admin: Any) -> None:
    admin.create_secret(Name="lib/db", SecretString=json.dumps(NESTED))
    vault.add_secret(SecretMapping("db", "lib/db", mode="json"))
    vault.fetch()
    for attempt in (lambda: vault.set("db.user", "FAKE-overwrite"), lambda: vault.set("db", "FAKE-overwrite"),
                    lambda: vault.unset("db.user")):
        with pytest.raises(VaultError) as refused:
            attempt()
        message = str(refused.value)
        assert "configuration 'prod'" in message and "vaultproxy secret move-to-local db" in message
        assert "FAKE" not in message
    assert vault.get("db.user") == NESTED["user"]
    vault.set("standalone", "FAKE-local-only", hosts=[HOST])
    assert vault.get("standalone") == "FAKE-local-only"
    vault.unset("standalone")
    assert "standalone" not in vault.keys()


def test_local_secret_shadowed_by_a_provider_key(vault: Vault, admin: Any) -> None:
    vault.set("token", "FAKE-local-shadowed", hosts=[HOST])
    admin.create_secret(Name="sh/token", SecretString="FAKE-provider-wins")
    vault.add_secret(SecretMapping("token", "sh/token"))
    vault.fetch()
    assert vault.get("token") == "FAKE-provider-wins"
    rows = [r for r in vault.status()["keys"] if r["key"] == "token"]
    assert {r["source"] for r in rows} == {"aws:prod", "local"}
    assert next(r for r in rows if r["source"] == "local")["shadowed_by"] == "aws:prod"


def test_remove_secret_drops_its_cache(vault: Vault, admin: Any) -> None:
    admin.create_secret(Name="rs/token", SecretString="FAKE-removed-secret")
    vault.add_secret(SecretMapping("token", "rs/token"))
    vault.fetch()
    vault.remove_secret("token")
    assert "token" not in vault.state()["configs"]["prod"].get("cache", {})
    assert vault.keys() == [] and vault.secret_rows() == []
    with pytest.raises(VaultError):
        vault.remove_secret("token")


def test_repointing_an_alias_stops_the_old_value(vault: Vault, admin: Any, vault_home: Path) -> None:
    admin.create_secret(Name="rp/live", SecretString="FAKE-live-key")
    admin.create_secret(Name="rp/test", SecretString="FAKE-test-key")
    vault.add_secret(SecretMapping("stripe", "rp/live"))
    vault.fetch()
    vault.add_secret(SecretMapping("stripe", "rp/test"))
    with pytest.raises(VaultError):
        Vault(vault_home).get("stripe")  # the live key must not go out under the re-pointed alias
    assert row(vault, "stripe")["status"] == "not fetched"
    vault.fetch()
    assert vault.get("stripe") == "FAKE-test-key"

    vault.add_secret(SecretMapping("stripe", "rp/test", hosts=("api.stripe.com",)))  # same secret: cache kept
    assert vault.resolve("<<vault:stripe>>", "api.stripe.com") == "FAKE-test-key"
    path = vault_home / "configs" / "prod.yaml"
    path.write_text(path.read_text().replace("secret_id: rp/test", "secret_id: rp/test\n    version_stage: AWSPREVIOUS"))
    assert "stripe" not in Vault(vault_home).keys()


def test_mode_edited_to_json_keeps_the_index_working(vault: Vault, admin: Any, vault_home: Path) -> None:
    admin.create_secret(Name="he/token", SecretString="FAKE-plain-then-json")
    vault.add_secret(SecretMapping("token", "he/token"))
    vault.fetch()
    path = vault_home / "configs" / "prod.yaml"
    path.write_text(path.read_text().replace("mode: plaintext", "mode: json"))
    assert Vault(vault_home).get("token") == "FAKE-plain-then-json"
    assert vault.fetch()["token"].error_code == "not_json"
    assert row(vault, "token")["status"] == "error" and vault.get("token") == "FAKE-plain-then-json"


def test_adding_a_configuration_twice_is_refused(vault: Vault, vault_home: Path, moto: MotoServer) -> None:
    vault.add_secret(SecretMapping("token", "twice/token"))
    with pytest.raises(VaultError) as refused:
        vault.add_config(config_for("prod", moto.endpoint_url), KEYS)
    assert "already exists" in str(refused.value) and "vaultproxy config remove prod" in str(refused.value)
    assert [m.alias for m in vault.configs.load("prod").secrets] == ["token"]  # mappings untouched


def test_a_configuration_file_broken_by_hand_can_still_be_removed(vault: Vault, vault_home: Path) -> None:
    (vault_home / "configs" / "prod.yaml").write_text("name: prod\nregion: US East 1\n")
    vault.remove_config("prod")
    assert vault.configs.names() == [] and vault.status()["active_config"] is None
    assert vault.credentials("prod") is None


def test_set_credentials_needs_a_static_configuration(vault_home: Path, moto: MotoServer) -> None:
    vault = Vault(vault_home)
    vault.add_config(config_for("sso", moto.endpoint_url, credentials_source="profile", aws_profile="team"))
    with pytest.raises(VaultError) as refused:
        vault.set_credentials("sso", KEYS)
    assert "AWS profile" in str(refused.value) and KEYS.secret_access_key not in str(refused.value)
    assert vault.credentials("sso") is None


def test_active_configuration_file_deleted_by_hand(vault: Vault, vault_home: Path) -> None:
    vault.set("local-key", "FAKE-local-still-here", hosts=[HOST])
    (vault_home / "configs" / "prod.yaml").unlink()
    with pytest.raises(VaultError) as missing:
        vault.get("local-key")
    assert "vaultproxy config remove prod" in str(missing.value)
    vault.remove_config("prod")  # the way out: forget it
    assert vault.get("local-key") == "FAKE-local-still-here"
    assert vault.credentials("prod") is None and vault.status()["active_config"] is None


def test_a_broken_active_configuration_file_leaves_local_secrets_editable(tmp_path: Path) -> None:
    vault = Vault(tmp_path / "home")
    vault.add_config(ProviderConfig(name="q", display_name="Q", region="us-east-1", credentials_source="default"))
    vault.set("local.k", "FAKE-local", hosts=["api.example.com"])
    (vault.configs.path / "q.yaml").write_text("name: q\nregion: [\n")
    vault.set("other", "FAKE-other", hosts=["api.example.com"])
    vault.unset("local.k")
    status = vault.status()
    assert status["active_config"] == "q" and "q.yaml:" in status["config_error"]
    assert [row["key"] for row in status["keys"]] == ["other"]
    with pytest.raises(ConfigError):
        vault.index()  # the CLI says so; the proxy's snapshot keeps serving what it can (below)


# --- the proxy's snapshot while the active configuration's file is broken ---------------------------


BROKEN_YAML = "name: prod\nregion: [\n"


def fetch_new(vault: Vault, admin: Any, *aliases: str) -> None:
    for alias in aliases:
        admin.create_secret(Name=f"prod/{alias}", SecretString=f"FAKE-{alias}-first")
        vault.add_secret(SecretMapping(alias, f"prod/{alias}"))
    assert all(result.error is None for result in vault.fetch().values())


def values(index: SecretIndex) -> dict[str, str | bytes]:
    return {secret.key: secret.value for secret in index.secrets()}


def test_a_broken_active_file_does_not_stop_a_revocation(vault: Vault, admin: Any) -> None:
    """Local secrets always come from the new state; provider ones from its cache, through the
    last configuration that loaded. Only the mappings wait for a good file."""
    fetch_new(vault, admin, "api", "db")
    vault.set("rv", "FAKE-revoked-local", hosts=[HOST])
    good = vault.snapshot()
    assert values(good.index) == {"api": "FAKE-api-first", "db": "FAKE-db-first", "rv": "FAKE-revoked-local"}

    # Before the proxy sees any of it: a rotation, a removed secret, a broken file, an unset.
    admin.put_secret_value(SecretId="prod/api", SecretString="FAKE-api-rotated")
    vault.fetch(["api"])
    vault.remove_secret("db")
    vault.configs.file("prod").write_text(BROKEN_YAML)
    vault.unset("rv")
    degraded = vault.snapshot(good)
    assert values(degraded.index) == {"api": "FAKE-api-rotated"}
    assert degraded.config == good.config and "prod.yaml:" in (degraded.config_error or "")
    assert not degraded.is_stale()
    # Still broken at the next change: the last good configuration carries on.
    vault.set("new", "FAKE-new-local", hosts=[HOST])
    again = vault.snapshot(degraded)
    assert values(again.index) == {"api": "FAKE-api-rotated", "new": "FAKE-new-local"} and again.config == good.config
    # Without a configuration that ever loaded (a proxy started now), no provider secret at all.
    assert values(vault.snapshot().index) == {"new": "FAKE-new-local"}

    vault.configs.save(good.config.without_secret("db"))  # fixed
    fixed = vault.snapshot(again)
    assert values(fixed.index) == {"api": "FAKE-api-rotated", "new": "FAKE-new-local"} and fixed.config_error is None


def test_a_switch_to_a_broken_configuration_fails_closed(vault: Vault, admin: Any) -> None:
    fetch_new(vault, admin, "api")
    vault.add_config(config_for("staging", vault.config().endpoint_url or "", secrets=(SecretMapping("api", "prod/api"),)))
    vault.fetch(config_name="staging")
    vault.set("local", "FAKE-local-kept", hosts=[HOST])
    good = vault.snapshot()
    vault.use_config("staging")  # then broken before the proxy saw the switch
    vault.configs.file("staging").write_text(BROKEN_YAML.replace("prod", "staging"))
    switched = vault.snapshot(good)
    assert values(switched.index) == {"local": "FAKE-local-kept"}  # neither prod's nor staging's cache
    assert switched.config is None and "staging.yaml:" in (switched.config_error or "")


def test_a_deleted_active_file_is_like_a_broken_one(vault: Vault, admin: Any) -> None:
    fetch_new(vault, admin, "api")
    good = vault.snapshot()
    vault.configs.file("prod").unlink()
    assert good.is_stale()
    kept = vault.snapshot(good)
    assert values(kept.index) == {"api": "FAKE-api-first"} and "has no file" in (kept.config_error or "")
    vault.remove_config("prod")  # the way out: forget it
    assert values(vault.snapshot(kept).index) == {}
