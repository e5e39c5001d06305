"""The `config` and `secret` commands as a user runs them: the real CLI in a subprocess, with
VAULTPROXY_HOME, credentials on stdin (or typed at a real terminal), against moto over HTTP.

Every command's stdout and stderr is kept; at teardown none may hold a value or a secret key.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.cli import cli_env, run_cli, run_on_terminal
from tests.support.moto import ACCOUNT_ID, REGION, MotoServer, enforced_auth
from tests.support.upstream import RecordingUpstream
from vaultcore.profiles import SecretMapping
from vaultcore.providers.aws import StaticCredentials
from vaultcore.vault import Vault

TIMEOUT = 120  # a guard against a hung command, not a measurement
KEY_ID = "FAKECLITEST000000001"
SECRET_KEY = "FAKE-cli-secret-access-key-9d4e"
NEW_SECRET_KEY = "FAKE-cli-rotated-access-key-77b2"
TOKEN = "FAKE-cli-token-value-0c3f"
DB = {"user": "FAKE-cli-db-user", "password": "FAKE-cli-db-password", "conn": {"host": "db.internal", "port": 5432}}
BLOB = b"\x00FAKE-cli-binary\xff"


@dataclass
class Cli:
    """Runs the CLI against the vault at `home`, with HOME in `user_home`; remembers all output
    for leak checks."""

    home: Path
    user_home: Path
    transcript: list[str] = field(default_factory=list)
    secrets: list[str] = field(default_factory=lambda: [SECRET_KEY, NEW_SECRET_KEY, TOKEN, "FAKE-cli-db", "FAKE-cli-binary"])

    @property
    def env(self) -> dict[str, str]:
        return cli_env(self.home, self.user_home)

    def __call__(self, *args: str, input: str = "") -> subprocess.CompletedProcess[str]:
        ran = run_cli(self.home, *args, stdin=input.encode(), user_home=self.user_home, timeout=TIMEOUT)
        result = subprocess.CompletedProcess(ran.args, ran.returncode, ran.stdout.decode(), ran.stderr.decode())
        self.transcript.append(f"$ {' '.join(args)}\n{result.stdout}{result.stderr}")
        return result

    def ok(self, *args: str, input: str = "") -> str:
        result = self(*args, input=input)
        assert result.returncode == 0, f"{args}: exit {result.returncode}\n{result.stderr}"
        return result.stdout

    def fails(self, code: int, *args: str, input: str = "") -> str:
        """Runs a command that must fail with `code`; returns its one-line message (stderr)."""
        result = self(*args, input=input)
        assert result.returncode == code, f"{args}: exit {result.returncode}, wanted {code}\n{result.stderr}"
        assert result.stderr.startswith("vaultproxy: error: ") or code == 1, result.stderr
        assert "Traceback" not in result.stderr
        return result.stderr

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "--json"))

    def on_terminal(self, args: Sequence[str], replies: Sequence[tuple[str, str]] = ()) -> tuple[int, str]:
        """Run on a pseudo-terminal, answering each prompt (see run_on_terminal)."""
        status, text = run_on_terminal(self.home, args, replies, user_home=self.user_home, timeout=TIMEOUT)
        self.transcript.append(f"$ (terminal) {' '.join(args)}\n{text}")
        return status, text

    def vault(self) -> Vault:
        return Vault(self.home)


@pytest.fixture
def admin(moto: MotoServer) -> Any:
    return moto.client()


@pytest.fixture
def cli(tmp_path: Path, moto: MotoServer) -> Iterator[Cli]:
    user_home = tmp_path / "user-home"
    user_home.mkdir()  # the working directory of commands run on a terminal
    runner = Cli(tmp_path / "vaultproxy-home", user_home)
    yield runner
    for text in runner.transcript:
        for secret in runner.secrets:
            assert secret not in text, f"a secret appeared in the output of:\n{text.splitlines()[0]}"


def add_prod(cli: Cli, moto: MotoServer, *extra: str) -> str:
    return cli.ok("config", "add", "prod", "--region", REGION, "--endpoint-url", moto.endpoint_url,
                  "--hosts", "api.example.com", *extra, input=f"{KEY_ID}\n{SECRET_KEY}\n")


def rows(listing: list[dict[str, Any]], key: str = "alias") -> dict[str, dict[str, Any]]:
    return {r[key]: r for r in listing}


# --- configurations ----------------------------------------------------------------------------


def test_configuration_lifecycle(cli: Cli, moto: MotoServer, tmp_path: Path) -> None:
    out = add_prod(cli, moto, "--display-name", "Production")
    assert "saved configuration prod" in out and f"connected as arn:aws:sts::{ACCOUNT_ID}:" in out
    assert cli.vault().credentials("prod") == StaticCredentials(KEY_ID, SECRET_KEY)
    assert SECRET_KEY.encode() not in b"".join(p.read_bytes() for p in cli.home.rglob("*") if p.is_file())

    # Saved even though its test fails (no credentials anywhere for the default chain).
    result = cli("config", "add", "staging", "--region", "eu-west-1", "--source", "default",
                 "--endpoint-url", moto.endpoint_url)
    assert result.returncode == 0 and "saved configuration staging" in result.stdout
    assert "connection test failed: no AWS credentials found" in result.stderr
    aws_files = Path(cli.env["AWS_CONFIG_FILE"]).parent
    aws_files.mkdir(parents=True)
    Path(cli.env["AWS_CONFIG_FILE"]).write_text(f"[profile team]\nregion = {REGION}\n")
    Path(cli.env["AWS_SHARED_CREDENTIALS_FILE"]).write_text(
        "[team]\naws_access_key_id = FAKECLIPROFILE000001\naws_secret_access_key = FAKE-cli-profile-secret\n")
    cli.secrets.append("FAKE-cli-profile-secret")
    out = cli.ok("config", "add", "team", "--region", REGION, "--source", "profile", "--aws-profile", "team",
                 "--endpoint-url", moto.endpoint_url)
    assert f"connected as arn:aws:sts::{ACCOUNT_ID}:" in out

    listed = rows(cli.json("config", "list"), "name")
    assert set(listed) == {"prod", "staging", "team"}
    assert listed["prod"]["active"] and not listed["staging"]["active"]  # the first one added
    assert listed["prod"]["display_name"] == "Production" and listed["staging"]["source"] == "default"
    assert listed["team"]["source"] == "profile" and cli.vault().configs.load("team").aws_profile == "team"
    assert "staging" in cli.ok("config", "list")

    assert cli.ok("config", "use", "staging") == "active configuration: staging\n"
    assert f"connected as arn:aws:sts::{ACCOUNT_ID}:" in cli.ok("config", "test", "prod")
    assert "connection test failed: no AWS credentials found" in cli.fails(1, "config", "test")  # the active one

    assert "credentials of prod updated" in cli.ok("config", "set-credentials", "prod", input=f"{KEY_ID}\n{NEW_SECRET_KEY}\n")
    assert cli.vault().credentials("prod") == StaticCredentials(KEY_ID, NEW_SECRET_KEY)
    assert "default AWS chain" in cli.fails(1, "config", "set-credentials", "staging", input=f"{KEY_ID}\n{SECRET_KEY}\n")

    cli.ok("secret", "add", "token", "--secret-id", "cli/token", "--config", "prod")
    assert [r["alias"] for r in cli.json("secret", "list", "--config", "prod")] == ["token"]
    exported = cli.ok("config", "export", "prod")
    document = yaml.safe_load(exported)
    assert document["credentials"] == {"source": "static"} and document["secrets"][0]["secret_id"] == "cli/token"
    assert KEY_ID not in exported
    shared = tmp_path / "prod-shared.yaml"
    shared.write_text(exported)
    cli.ok("config", "remove", "prod")
    listed = rows(cli.json("config", "list"), "name")
    assert set(listed) == {"staging", "team"} and listed["staging"]["active"]
    assert cli.vault().credentials("prod") is None  # removed with its keys
    out = cli.ok("config", "import", str(shared))
    assert "imported configuration prod" in out and "vaultproxy config set-credentials prod" in out
    assert cli.ok("config", "export", "prod") == exported


def test_a_profiles_credential_process_never_gets_the_vaults_passphrase(cli: Cli, moto: MotoServer, tmp_path: Path) -> None:
    """A user who exported VAULTPROXY_PASSPHRASE adds a configuration with an AWS profile:
    botocore runs the profile's credential_process (any program the AWS config names) with
    the CLI's environment, and it could open the vault with the passphrase."""
    seen = tmp_path / "seen.json"
    process = tmp_path / "credentials.py"
    process.write_text(
        f"import json, os, pathlib\npathlib.Path({str(seen)!r}).write_text(json.dumps(sorted(os.environ)))\n"
        "print(json.dumps({'Version': 1, 'AccessKeyId': 'FAKECLIPROCESS000001', 'SecretAccessKey': 'FAKE-cli-process-key'}))\n")
    aws_config = Path(cli.env["AWS_CONFIG_FILE"])
    aws_config.parent.mkdir(parents=True)
    aws_config.write_text(f"[profile team]\nregion = {REGION}\ncredential_process = {sys.executable} {process}\n")
    passphrase = {"VAULTPROXY_PASSPHRASE": "FAKE-the-vaults-passphrase"}
    result = run_cli(cli.home, "config", "add", "team", "--region", REGION, "--source", "profile", "--aws-profile", "team",
                     "--endpoint-url", moto.endpoint_url, user_home=cli.user_home, env=passphrase, timeout=TIMEOUT)
    assert result.returncode == 0 and f"connected as arn:aws:sts::{ACCOUNT_ID}:" in result.stdout.decode(), result.stderr
    assert not {"VAULTPROXY_PASSPHRASE", "VAULTPROXY_PASSPHRASE_FD"} & set(json.loads(seen.read_text()))
    # The passphrase still opened (and made) the vault: a passphrase vault, readable with it.
    listed = run_cli(cli.home, "config", "list", user_home=cli.user_home, env=passphrase, timeout=TIMEOUT)
    assert listed.returncode == 0 and "team" in listed.stdout.decode()
    assert run_cli(cli.home, "config", "list", user_home=cli.user_home, timeout=TIMEOUT).returncode != 0


def test_configuration_typed_at_a_terminal(cli: Cli, moto: MotoServer) -> None:
    status, shown = cli.on_terminal(
        ["config", "add", "prod", "--region", REGION, "--endpoint-url", moto.endpoint_url],
        [("AWS access key id for prod: ", KEY_ID), ("AWS secret access key: ", SECRET_KEY),
         ("AWS session token (empty if none): ", "FAKE-cli-session-token")],
    )
    assert status == 0 and "saved configuration prod" in shown and "connected as" in shown
    assert "FAKE-cli-session-token" not in shown  # hidden prompts: the terminal never echoed them
    assert cli.vault().credentials("prod") == StaticCredentials(KEY_ID, SECRET_KEY, "FAKE-cli-session-token")


@pytest.mark.parametrize("args", [
    ["config", "add", "x"],  # no --region
    ["config", "add", "x", "--region", REGION, "--source", "profile"],
    ["config", "add", "x", "--region", REGION, "--aws-profile", "team"],  # a profile with static keys
    ["secret", "add", "a", "--secret-id", "x", "--mode", "yaml"],
    ["secret", "fetch"],
    ["secret", "refresh", "--all", "token"],
], ids=lambda args: "-".join(args[:2]) + f"-{len(args)}")
def test_usage_errors_exit_2(cli: Cli, args: list[str]) -> None:
    assert cli.fails(2, *args, input=f"{KEY_ID}\n{SECRET_KEY}\n")
    assert not cli.home.joinpath("configs").exists()


def test_failures_exit_1_with_one_line(cli: Cli, moto: MotoServer, tmp_path: Path) -> None:
    assert "no active configuration" in cli.fails(1, "secret", "list")
    assert "access key id and a secret access key" in cli.fails(1, "config", "add", "x", "--region", REGION, input="")
    assert "no configuration named nope" in cli.fails(1, "config", "use", "nope")
    assert "no configuration named nope" in cli.fails(1, "config", "remove", "nope")
    assert "cannot read" in cli.fails(1, "config", "import", str(tmp_path / "missing.yaml"))
    add_prod(cli, moto)
    assert "already exists" in cli.fails(1, "config", "add", "prod", "--region", REGION, input=f"{KEY_ID}\n{SECRET_KEY}\n")
    assert "has no secret 'nope'" in cli.fails(1, "secret", "fetch", "nope")
    refused = cli.fails(2, "secret", "add", "a.b", "--secret-id", "x")  # no dots in aliases
    assert "ALIAS: must be 1-256 of" in refused and "yaml" not in refused  # the flag, not the file it would go to
    assert cli.fails(1, "secret", "remove", "nope").count("\n") == 1
    (cli.home / "configs" / "broken.yaml").write_text("name: broken\nregion: US East 1\n")
    listed = rows(cli.json("config", "list"), "name")  # a file broken by hand does not hide the others
    assert listed["prod"]["error"] is None and "broken.yaml:2: region" in listed["broken"]["error"]
    cli.ok("config", "remove", "broken")


# --- secrets ------------------------------------------------------------------------------------


def test_secret_commands(cli: Cli, moto: MotoServer, admin: Any) -> None:
    admin.create_secret(Name="cli/token", SecretString=TOKEN)
    admin.create_secret(Name="cli/db", SecretString=json.dumps(DB))
    blob_arn = admin.create_secret(Name="cli/blob", SecretBinary=BLOB)["ARN"]
    add_prod(cli, moto)
    cli.ok("local", "set", "db.password", "--hosts", "api.example.com", input="FAKE-cli-db-local-shadowed\n")
    cli.ok("secret", "add", "token", "--secret-id", "cli/token", "--hosts", "api.example.com,*.example.org",
           "--origins", "http://localhost:3000")
    cli.ok("secret", "add", "db", "--secret-id", "cli/db", "--mode", "json")
    cli.ok("secret", "add", "blob", "--secret-id", blob_arn, "--version-stage", "AWSCURRENT")

    assert cli.ok("secret", "fetch", "token", "db") == "fetched 2 of 2\n"
    listed = rows(cli.json("secret", "list"))
    assert listed["token"]["status"] == "ok" and listed["token"]["last_fetched"] and listed["token"]["mode"] == "plaintext"
    assert listed["token"]["hosts"] == ["api.example.com", "*.example.org"]
    assert listed["db"]["mode"] == "json" and listed["blob"]["status"] == "not fetched"
    assert listed["blob"]["secret_id"] == blob_arn

    refreshed = cli("secret", "refresh", "--all")  # stderr is no terminal: no progress
    assert (refreshed.returncode, refreshed.stdout, refreshed.stderr) == (0, "fetched 3 of 3\n", "")
    vault = cli.vault()  # what other processes fetched, read here
    assert (vault.get("token"), vault.get("db.user"), vault.get("db.conn.port"), vault.get("blob")) == (
        TOKEN, DB["user"], "5432", BLOB)
    status = cli.json("status")
    keys = {r["key"]: r for r in status["keys"] if not r.get("shadowed_by")}
    assert keys["db.user"]["source"] == "aws:prod" and keys["token"]["origins"] == ["http://localhost:3000"]
    table = cli.ok("secret", "list")
    assert "cli/db" in table and "json" in table and "ok" in table
    assert "overridden by duplicate key in aws:prod" in (text := cli.ok("status")) and "secret list" not in text

    admin.put_secret_value(SecretId="cli/token", SecretString="FAKE-cli-token-rotated")
    cli.secrets.append("FAKE-cli-token-rotated")
    assert cli.ok("secret", "refresh", "token") == "fetched 1 of 1\n"
    assert cli.vault().get("token") == "FAKE-cli-token-rotated"
    assert cli.ok("resolve", "Bearer <<vault:token>>", "--host", "api.example.com").startswith("Bearer ********")

    refused = cli.fails(1, "local", "set", "token", input="FAKE-cli-db-overwrite\n")
    assert "vaultproxy secret move-to-local token" in refused
    moved = cli.ok("secret", "move-to-local", "db")
    assert moved.startswith("db is now local: ") and "db.user" in moved
    assert "cli/db" not in cli.ok("config", "export", "prod")
    cli.ok("local", "set", "db.user", input="FAKE-cli-db-edited\n")
    assert cli.vault().get("db.user") == "FAKE-cli-db-edited"
    assert cli.vault().get("db.password") == DB["password"]  # the moved value replaced the shadowed one

    cli.ok("secret", "remove", "blob")
    assert [r["alias"] for r in cli.vault().secret_rows()] == ["token"] and "blob" not in cli.vault().keys()


def test_fetch_errors_are_shown_and_cleared(cli: Cli, moto: MotoServer, admin: Any) -> None:
    admin.create_secret(Name="cli/token", SecretString=TOKEN)
    add_prod(cli, moto)
    cli.ok("secret", "add", "token", "--secret-id", "cli/token")
    cli.ok("secret", "add", "gone", "--secret-id", "cli/gone")
    result = cli("secret", "fetch", "token", "gone")
    assert (result.returncode, result.stdout) == (1, "fetched 1 of 2\n")
    assert result.stderr == "vaultproxy: gone: secret not found: cli/gone\n"
    assert rows(cli.json("secret", "list"))["gone"]["error"] == "secret not found: cli/gone"
    assert "1 of 2 secrets failed to fetch: gone" in cli.json("status")["config_error"]
    assert "secret not found: cli/gone" in cli.ok("status")

    with enforced_auth(moto) as users:
        cli.secrets.append(users.reader.secret_access_key)
        result = cli("secret", "refresh", "--all")
        assert result.returncode == 1 and result.stdout == "fetched 0 of 2\n"
        assert result.stderr.count("\n") == 1 and "token, gone: credentials rejected (" in result.stderr
        config_error = cli.json("status")["config_error"]
        assert config_error.startswith("credentials rejected (") and "vaultproxy config set-credentials prod" in config_error
        assert rows(cli.json("config", "list"), "name")["prod"]["error"] == config_error
        assert "credentials rejected" in cli.ok("secret", "list")
        # The cached value keeps resolving meanwhile.
        assert cli.ok("resolve", "<<vault:token>>", "--host", "api.example.com") == "********\n  token: resolves (aws:prod)\n"
        assert cli.vault().get("token") == TOKEN
        assert cli.fails(1, "config", "test").startswith("vaultproxy: connection test failed: credentials rejected")

        reader = users.reader
        cli.ok("config", "set-credentials", "prod", input=f"{reader.access_key_id}\n{reader.secret_access_key}\n")
        assert ":user/reader-" in cli.ok("config", "test")
        assert cli.ok("secret", "fetch", "token") == "fetched 1 of 1\n"
        assert cli.json("status")["config_error"].startswith("1 of 2 secrets failed to fetch: gone")
    admin.create_secret(Name="cli/gone", SecretString="FAKE-cli-found-later")
    cli.secrets.append("FAKE-cli-found-later")
    assert cli.ok("secret", "refresh", "--all") == "fetched 2 of 2\n"
    assert cli.json("status")["config_error"] is None
    assert {r["status"] for r in cli.json("secret", "list")} == {"ok"}
    assert rows(cli.json("config", "list"), "name")["prod"]["error"] is None


def test_refresh_all_shows_progress_on_a_terminal(cli: Cli, moto: MotoServer, admin: Any) -> None:
    add_prod(cli, moto)
    config = cli.vault().configs.load("prod")
    for i in range(25):
        admin.create_secret(Name=f"cli/bulk{i}", SecretString=f"FAKE-cli-bulk-{i}")
        config = config.with_secret(SecretMapping(f"bulk{i}", f"cli/bulk{i}"))
    cli.vault().configs.save(config)
    status, shown = cli.on_terminal(["secret", "refresh", "--all"])
    assert status == 0
    assert "\rfetched 1/25" in shown and "\rfetched 25/25" in shown and "fetched 25 of 25" in shown
    assert "FAKE-cli-bulk" not in shown
    assert cli("secret", "refresh", "--all").stderr == ""  # and none without a terminal


# --- rules that could never match, in flags and files --------------------------------------------


def test_hosts_and_origins_are_checked_in_flags_and_files(cli: Cli, moto: MotoServer, tmp_path: Path) -> None:
    assert "--hosts: invalid host rule 'exa mple.com'" in cli.fails(
        2, "config", "add", "x", "--region", REGION, "--hosts", "exa mple.com", input=f"{KEY_ID}\n{SECRET_KEY}\n")
    assert "--hosts: * matches every host; add --allow-any-host" in cli.fails(
        2, "config", "add", "x", "--region", REGION, "--hosts", "*", input=f"{KEY_ID}\n{SECRET_KEY}\n")
    add_prod(cli, moto)
    result = cli("secret", "add", "token", "--secret-id", "cli/token", "--hosts", "https://API.example.com/v1")
    assert result.returncode == 0 and "--hosts: https://API.example.com/v1 is taken as api.example.com" in result.stderr
    assert "--origins: invalid origin 'localhost:3000': no scheme" in cli.fails(
        2, "secret", "add", "token", "--secret-id", "cli/token", "--origins", "localhost:3000")
    cli.ok("secret", "add", "any", "--secret-id", "cli/any", "--hosts", "*", "--allow-any-host")
    mappings = {m.alias: m for m in cli.vault().configs.load("prod").secrets}
    assert mappings["token"].hosts == ("api.example.com",) and mappings["any"].hosts == ("*",)

    shared = tmp_path / "team.yaml"
    shared.write_text("name: team\nregion: us-east-1\nsecrets:\n  - alias: a\n    secret_id: a\n"
                      "    origins: [\"localhost:3000\"]\n")
    refused = cli.fails(1, "config", "import", str(shared))
    assert refused.startswith(f"vaultproxy: error: {shared}:6: secrets[0].origins[0]: invalid origin 'localhost:3000'")
    (cli.home / "configs" / "hand.yaml").write_text("name: hand\nregion: us-east-1\nhosts: [\"https://api.example.com/\"]\n")
    listed = rows(cli.json("config", "list"), "name")
    assert "hand.yaml:3: hosts[0]: must be a host such as api.example.com, not a URL: write api.example.com" in listed["hand"]["error"]


# --- config import: never silently over an existing configuration ------------------------------------


def test_import_refuses_an_existing_name_without_replace_and_says_what_became_of_the_keys(
    cli: Cli, moto: MotoServer, tmp_path: Path,
) -> None:
    add_prod(cli, moto)
    cli.ok("secret", "add", "token", "--secret-id", "cli/token")
    shared = tmp_path / "prod.yaml"
    shared.write_text(f"name: prod\nregion: {REGION}\nendpoint_url: {moto.endpoint_url}\nhosts: [other.example.com]\n")
    refused = cli.fails(1, "config", "import", str(shared))
    assert f"configuration prod already exists: `vaultproxy config import {shared} --replace`" in refused
    assert [m.alias for m in cli.vault().configs.load("prod").secrets] == ["token"]  # unchanged

    out = cli.ok("config", "import", str(shared), "--replace")
    assert out == "replaced configuration prod: uses the static AWS keys kept in the vault for prod\n"
    assert cli.vault().configs.load("prod").hosts == ("other.example.com",)
    assert "connected as" in cli.ok("config", "test", "prod")  # the keys stayed

    shared.write_text(f"name: prod\nregion: {REGION}\ncredentials: {{source: profile, profile: team}}\n")
    assert "--allow-new-destination" in cli.fails(2, "config", "import", str(shared), "--replace")  # another source, endpoint
    out = cli.ok("config", "import", str(shared), "--replace", "--allow-new-destination")
    assert out == "replaced configuration prod: credentials come from AWS profile 'team'; the static keys kept in the vault stay unused\n"
    shared.write_text(f"name: fresh\nregion: {REGION}\nhosts: ['*']\nsecrets:\n  - alias: a\n    secret_id: a\n")
    result = cli("config", "import", str(shared), "--allow-any-host")
    assert result.stdout == "imported configuration fresh: no AWS keys yet: set them with `vaultproxy config set-credentials fresh`\n"
    assert f"vaultproxy: warning: a may be sent to any host (a * hosts rule in {shared})" in result.stderr


# --- mapped, but no value yet --------------------------------------------------------------------------


def test_a_mapped_alias_without_a_value_names_secret_fetch(cli: Cli, moto: MotoServer, admin: Any) -> None:
    admin.create_secret(Name="cli/db", SecretString=json.dumps(DB))
    add_prod(cli, moto)
    cli.ok("secret", "add", "db", "--secret-id", "cli/db", "--mode", "json")
    cli.ok("secret", "add", "gone", "--secret-id", "cli/gone")
    refused = cli("resolve", "<<vault:db.user>>", "--host", "api.example.com")
    assert refused.returncode == 1 and refused.stdout.splitlines()[1] == (
        "  db.user: REFUSED unknown_key: 'db.user' is mapped in the active configuration as 'db', "
        "but it has not been fetched yet: `vaultproxy secret fetch db`")
    cli("secret", "fetch", "gone")
    refused = cli("resolve", "<<vault:gone>>", "--host", "api.example.com")
    assert refused.returncode == 1 and refused.stdout.splitlines()[1] == (
        "  gone: REFUSED unknown_key: 'gone' is mapped in the active configuration as 'gone', "
        "but its last fetch failed (secret not found: cli/gone): `vaultproxy secret fetch gone`")


# --- quiet mistakes say so ---------------------------------------------------------------------------------


def test_quiet_aws_mistakes_warn(cli: Cli, moto: MotoServer) -> None:
    result = cli("config", "add", "odd", "--region", "us-east-7", "--source", "default", "--endpoint-url", moto.endpoint_url)
    assert result.returncode == 0 and "vaultproxy: warning: region 'us-east-7' is not one AWS Secrets Manager has" in result.stderr
    assert "connection test failed: no AWS credentials found" in result.stderr
    listed = rows(cli.json("config", "list"), "name")["odd"]
    assert listed["error"].startswith("connection test failed: no AWS credentials found")  # not `ok`
    assert "connection test failed" in cli.ok("config", "list") and "connection test failed" in cli.json("status")["config_error"]
    assert "--region: must be an AWS region like us-east-1 (got 'US East 1')" in cli.fails(
        2, "config", "add", "x", "--region", "US East 1", input=f"{KEY_ID}\n{SECRET_KEY}\n")

    cli.ok("config", "remove", "odd")
    cli.ok("config", "add", "bare", "--region", REGION, "--endpoint-url", moto.endpoint_url, input=f"{KEY_ID}\n{SECRET_KEY}\n")
    assert rows(cli.json("config", "list"), "name")["bare"]["error"] is None  # its test passed
    cli.ok("local", "set", "db.password", "--hosts", "api.example.com", input="FAKE-cli-db-local\n")
    result = cli("secret", "add", "db", "--secret-id", "cli/db", "--mode", "json")
    assert "vaultproxy: note: db has no hosts rule (and bare no default hosts), so it is injected nowhere" in result.stderr
    assert ("vaultproxy: warning: db overrides the local secret db.password while bare is active "
            "(provider keys come first)") in result.stderr
    assert cli.ok("secret", "remove", "db") == "removed db with its fetched value from bare\n"


def test_fetch_without_aliases_says_how(cli: Cli, moto: MotoServer, admin: Any) -> None:
    admin.create_secret(Name="cli/token", SecretString=TOKEN)
    add_prod(cli, moto)
    cli.ok("secret", "add", "token", "--secret-id", "cli/token")
    for verb in ("fetch", "refresh"):
        says = cli.fails(2, "secret", verb)
        assert f"name the aliases to {verb} (`vaultproxy secret list` shows them), or all of them: vaultproxy secret {verb} --all" in says
        assert cli.ok("secret", verb, "--all") == "fetched 1 of 1\n"


# --- kept keys go only where they were set for --------------------------------------------------------


def test_kept_keys_never_follow_the_endpoint_or_the_region_elsewhere(cli: Cli, moto: MotoServer, admin: Any, tmp_path: Path) -> None:
    admin.create_secret(Name="cli/token", SecretString=TOKEN)
    add_prod(cli, moto)
    cli.ok("secret", "add", "token", "--secret-id", "cli/token")
    assert cli.ok("secret", "fetch", "--all") == "fetched 1 of 1\n"
    original = tmp_path / "prod-original.yaml"
    original.write_text(cli.ok("config", "export", "prod"))
    shared = tmp_path / "prod.yaml"
    with RecordingUpstream() as elsewhere:
        shared.write_text(original.read_text().replace(moto.endpoint_url, elsewhere.url))
        imported = cli.ok("config", "import", str(shared), "--replace", "--allow-new-destination")
        fetched = cli("secret", "fetch", "--all")
        leaked = KEY_ID.encode() in elsewhere.all_bytes()
        assert not leaked, "the kept keys signed a request to the other endpoint"
        assert not elsewhere.requests
        changed = f"endpoint_url is now {elsewhere.url}, not {moto.endpoint_url}"
    assert imported == (f"replaced configuration prod: AWS keys kept for prod were set for another destination ({changed}): "
                        "they are not used until set again with `vaultproxy config set-credentials prod`\n")
    assert fetched.returncode == 1 and changed in fetched.stderr

    # Another region is another destination too, until the user says the keys belong there.
    shared.write_text(original.read_text().replace(f"region: {REGION}", "region: eu-west-1"))
    cli.ok("config", "import", str(shared), "--replace", "--allow-new-destination")
    assert "(region is now eu-west-1, not us-east-1)" in cli.fails(1, "config", "test", "prod")
    cli.ok("config", "set-credentials", "prod", input=f"{KEY_ID}\n{SECRET_KEY}\n")
    assert "connected as" in cli.ok("config", "test", "prod")

    # A record kept before records were bound: an import binds it to the configuration it replaces.
    cli.vault().store.update(lambda state: state["configs"]["prod"].pop("destination", None))
    imported = cli.ok("config", "import", str(original), "--replace", "--allow-new-destination")
    assert "(region is now us-east-1, not eu-west-1)" in imported and "`vaultproxy config set-credentials prod`" in imported
    assert "region is now us-east-1, not eu-west-1" in cli.fails(1, "secret", "fetch", "--all")


def test_concurrent_secret_commands_lose_none_of_each_others_changes(cli: Cli, moto: MotoServer) -> None:
    """Each `secret add` or `remove` reads the configuration file and writes it back: without
    the vault's lock around that, of 12 parallel adds 2 mappings were left."""
    add_prod(cli, moto)
    aliases = [f"s{n}" for n in range(8)]

    def aliases_now() -> set[str]:
        return {m.alias for m in cli.vault().configs.load("prod").secrets}

    with ThreadPoolExecutor(len(aliases)) as pool:
        added = list(pool.map(lambda alias: cli("secret", "add", alias, "--secret-id", f"cli/{alias}"), aliases))
    assert [r.returncode for r in added] == [0] * len(aliases)
    assert aliases_now() == set(aliases)
    with ThreadPoolExecutor(len(aliases)) as pool:
        removed = list(pool.map(lambda alias: cli("secret", "remove", alias), aliases[::2]))
    assert [r.returncode for r in removed] == [0] * len(removed)
    assert aliases_now() == set(aliases[1::2])
