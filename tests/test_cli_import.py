"""`vaultproxy config import` of a file someone else wrote: the real CLI in a subprocess.

A shared configuration is data, but some of it makes this machine act: a command provider's
`command` runs as the user (who can read the vault), a `*` hosts rule sends a secret
anywhere, a widened `hosts` list sends values already fetched to new places. Each needs the
user to see it, and the first two a flag that says "on purpose":

- a command runs only after `--allow-commands`, which the refusal names while it shows each
  command in full; `--replace` asks again only for a new or changed command;
- a `*` rule needs `--allow-any-host`, as on the command line;
- `--replace` says, per secret, which hosts it gains;
- control characters in a file are refused at their line, and listings escape them;
- YAML anchors and aliases (a 500-byte file that never finishes) and huge files are refused.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import run_cli
from tests.support.upstream import RecordingUpstream, Reply
from vaultcore.profiles import ConfigError
from vaultcore.vault import Vault

PY = sys.executable
VALUE = "FAKE-import-value-7d21c4"
HOST = "127.0.0.1"
TIMEOUT = 30  # a guard: the alias bomb kept `config import` busy for ever


def vp(home: Path, *args: str) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `vaultproxy ARGS`, after checking that no value was printed."""
    result = run_cli(home, *args, timeout=TIMEOUT)
    out, err = result.stdout.decode(), result.stderr.decode()
    assert VALUE not in out + err, f"{args}: a value was printed"
    return result.returncode, out, err


def command_file(path: Path, argv: list[str], *, name: str = "shared", hosts: str = f'["{HOST}"]', extra: str = "") -> Path:
    """A command-provider configuration whose secret `gh` runs `argv`, refreshed every second
    (what a running proxy would do within a second of the import)."""
    path.write_text(f"name: {name}\nprovider: command\nhosts: {hosts}\nrefresh: 1s\n{extra}"
                    f"secrets:\n  - alias: gh\n    command: {json.dumps(argv)}\n")
    return path


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "vault-home"


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    """The file the shared command writes when it runs."""
    return tmp_path / "the-command-ran"


@pytest.fixture
def argv(tmp_path: Path, marker: Path) -> list[str]:
    """A command that leaves `marker` behind and prints the value (read from a file: no value
    in any argv)."""
    (tmp_path / "value").write_text(VALUE)
    code = f"import pathlib; pathlib.Path({str(marker)!r}).touch(); print(open({str(tmp_path / 'value')!r}).read())"
    return [PY, "-c", code]


# --- commands run only on purpose -------------------------------------------------------------------


def test_a_file_that_runs_commands_needs_allow_commands_and_nothing_runs_without(
    home: Path, tmp_path: Path, marker: Path, argv: list[str],
) -> None:
    shared = command_file(tmp_path / "shared.yaml", argv)
    code, out, err = vp(home, "config", "import", str(shared))
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert err.startswith(f"vaultproxy: error: {shared} runs commands as you") and f"gh: {shlex.join(argv)}" in err
    assert "--allow-commands" in err
    assert not (home / "configs" / "shared.yaml").exists()
    code, _, err = vp(home, "secret", "fetch", "--all")
    assert code == 1 and "no active configuration" in err
    assert not marker.exists()

    code, out, err = vp(home, "config", "import", str(shared), "--allow-commands")
    assert code == 0, err
    assert out.startswith("imported configuration shared")
    assert f"  gh: {shlex.join(argv)}\n" in out
    assert not marker.exists()  # importing runs nothing; a fetch does
    code, out, err = vp(home, "secret", "fetch", "gh")
    assert (code, out) == (0, "fetched 1 of 1\n"), err
    assert marker.exists()


def test_replace_asks_again_only_for_a_new_or_changed_command(
    home: Path, tmp_path: Path, marker: Path, argv: list[str],
) -> None:
    shared = command_file(tmp_path / "shared.yaml", argv)
    assert vp(home, "config", "import", str(shared), "--allow-commands")[0] == 0
    code, out, err = vp(home, "config", "import", str(shared), "--replace")  # the same commands
    assert code == 0 and out.startswith("replaced configuration shared"), err

    changed = [*argv, "--now-also-this"]
    command_file(shared, changed)
    before = (home / "configs" / "shared.yaml").read_text()
    code, _, err = vp(home, "config", "import", str(shared), "--replace")
    assert code == 2 and f"gh: {shlex.join(changed)}" in err and "--allow-commands" in err
    assert (home / "configs" / "shared.yaml").read_text() == before
    code, out, err = vp(home, "config", "import", str(shared), "--replace", "--allow-commands")
    assert code == 0 and f"  gh: {shlex.join(changed)}\n" in out, err
    assert not marker.exists()


def test_a_command_the_user_added_needs_no_flag_to_come_back(home: Path, tmp_path: Path, argv: list[str]) -> None:
    assert vp(home, "config", "add", "cli", "--provider", "command", "--hosts", HOST)[0] == 0
    assert vp(home, "secret", "add", "gh", "--command", shlex.join(argv))[0] == 0
    exported = tmp_path / "cli.yaml"
    exported.write_text(vp(home, "config", "export", "cli")[1])
    code, out, err = vp(home, "config", "import", str(exported), "--replace")
    assert code == 0 and out.startswith("replaced configuration cli"), err



def test_what_is_vetted_is_what_is_saved(tmp_path: Path, argv: list[str]) -> None:
    """The file is read once, under the vault's lock: a command written into it after the
    check could not reach the saved configuration. A vet that refuses saves nothing."""
    shared = tmp_path / "shared.yaml"
    shared.write_text(f"name: shared\nprovider: command\nhosts: [{HOST}]\n")
    vault = Vault(tmp_path / "home")

    def rewrite_then_refuse(incoming: Any, current: Any) -> None:
        command_file(shared, argv)  # the file changes after it was read
        assert incoming.secrets == () and current is None
        raise ConfigError("refused")

    with pytest.raises(ConfigError, match="refused"):
        vault.import_config(shared, vet=rewrite_then_refuse)
    assert "shared" not in vault.configs.names()
    shared.write_text(f"name: shared\nprovider: command\nhosts: [{HOST}]\n")
    saved = vault.import_config(shared, vet=lambda incoming, current: command_file(shared, argv))
    assert saved.secrets == () and vault.configs.load("shared").secrets == ()


# --- where secrets may go ----------------------------------------------------------------------------


@pytest.mark.parametrize("rule", ['hosts: ["*"]', 'hosts: ["*:443"]', 'origins: ["https://*"]'])
def test_an_any_host_rule_in_a_file_needs_allow_any_host(home: Path, tmp_path: Path, rule: str) -> None:
    shared = tmp_path / "team.yaml"
    shared.write_text(f"name: team\nregion: us-east-1\nsecrets:\n  - alias: a\n    secret_id: a\n    {rule}\n")
    code, _, err = vp(home, "config", "import", str(shared))
    assert code == 2 and err.count("\n") == 1, err
    assert f"{shared}: " in err and "a (" in err and "--allow-any-host" in err
    assert not (home / "configs" / "team.yaml").exists()
    code, out, err = vp(home, "config", "import", str(shared), "--allow-any-host")
    assert code == 0 and out.startswith("imported configuration team"), err


def test_replace_says_which_hosts_each_secret_gains(home: Path, tmp_path: Path, argv: list[str]) -> None:
    assert vp(home, "config", "add", "cli", "--provider", "command", "--hosts", "api.github.com")[0] == 0
    assert vp(home, "secret", "add", "gh", "--command", shlex.join(argv))[0] == 0
    assert vp(home, "secret", "add", "own", "--command", shlex.join(argv), "--hosts", "own.example.com")[0] == 0
    assert vp(home, "secret", "fetch", "--all")[0] == 0
    exported = vp(home, "config", "export", "cli")[1]
    assert 'hosts: [api.github.com]' in exported
    shared = tmp_path / "cli.yaml"
    shared.write_text(exported.replace("hosts: [api.github.com]", "hosts: [api.github.com, evil.test]"))
    code, out, err = vp(home, "config", "import", str(shared), "--replace")
    assert code == 0 and out.startswith("replaced configuration cli"), err
    assert "gh may now also be sent to evil.test (hosts: api.github.com -> api.github.com, evil.test)" in err
    assert "own may now" not in err  # its own hosts rule did not change


def test_replace_names_the_hosts_of_a_new_secret(home: Path, tmp_path: Path, argv: list[str]) -> None:
    """A new alias in a replacing file is as much a widening as a new host for an old one."""
    assert vp(home, "config", "add", "cli", "--provider", "command", "--hosts", "api.github.com")[0] == 0
    assert vp(home, "secret", "add", "gh", "--command", shlex.join(argv))[0] == 0
    shared = tmp_path / "cli.yaml"
    exported = vp(home, "config", "export", "cli")[1]
    shared.write_text(exported + f"  - alias: session\n    command: {json.dumps(argv)}\n    hosts: [collector.example]\n")
    code, _, err = vp(home, "config", "import", str(shared), "--replace")
    assert code == 0 and "session is a new secret, sent to collector.example" in err, err


@pytest.mark.parametrize("source", ["static", "default"])
def test_replace_that_sends_the_credentials_elsewhere_needs_allow_new_destination(home: Path, tmp_path: Path, source: str) -> None:
    """A teammate's file with another Vault address: a token kept in the vault stays behind
    (destination_changed), but one from the environment (VAULT_TOKEN, ~/.vault-token) would
    follow the file at once, and so would an AWS profile's keys to another endpoint."""
    mine = tmp_path / "mine.yaml"
    mine.write_text(f"name: team\nprovider: vault\naddress: https://vault.example.com:8200\ncredentials: {{source: {source}}}\n"
                    f"hosts: [{HOST}]\nsecrets:\n  - {{alias: db, secret_id: app/db}}\n")
    ambient = ["--allow-new-destination"] if source == "default" else []  # its first import: see below
    assert vp(home, "config", "import", str(mine), *ambient)[0] == 0
    theirs = tmp_path / "theirs.yaml"
    theirs.write_text(mine.read_text().replace("https://vault.example.com:8200", "http://127.0.0.1:1").replace("source: static", "source: default"))
    code, _, err = vp(home, "config", "import", str(theirs), "--replace")
    assert code == 2 and "sends team's credentials elsewhere (" in err, err
    assert "address is now http://127.0.0.1:1, not https://vault.example.com:8200" in err
    assert "--allow-new-destination" in err
    assert Vault(home).configs.load("team").option("address") == "https://vault.example.com:8200"  # nothing imported
    assert vp(home, "config", "import", str(theirs), "--replace", "--allow-new-destination")[0] == 0
    assert Vault(home).configs.load("team").option("address") == "http://127.0.0.1:1"


def test_replace_that_switches_the_aws_profile_needs_allow_new_destination(home: Path, tmp_path: Path) -> None:
    """A review's: a --replace from `profile: localstack` to `profile: production-admin` went
    through without a word, and that profile's keys then went where the file said."""
    shared = tmp_path / "team.yaml"
    shared.write_text(f"name: team\nregion: eu-west-1\ncredentials: {{source: profile, profile: localstack}}\nhosts: [{HOST}]\n")
    assert vp(home, "config", "import", str(shared))[0] == 0
    shared.write_text(shared.read_text().replace("localstack", "production-admin"))
    code, _, err = vp(home, "config", "import", str(shared), "--replace")
    assert code == 2 and "profile is now production-admin, not localstack" in err and "--allow-new-destination" in err, err
    assert Vault(home).configs.load("team").aws_profile == "localstack"
    assert vp(home, "config", "import", str(shared), "--replace", "--allow-new-destination")[0] == 0


@pytest.mark.parametrize(("server", "credentials"), [
    ("provider: vault\naddress: http://127.0.0.1:1", "{source: default}"),  # VAULT_TOKEN, ~/.vault-token
    ("region: eu-west-1\nendpoint_url: http://127.0.0.1:1", "{source: default}"),  # boto3's default chain
    ("region: eu-west-1\nendpoint_url: http://127.0.0.1:1", "{source: profile, profile: team}"),
], ids=["vault-token", "aws-default-chain", "aws-profile"])
def test_a_new_configuration_that_sends_ambient_credentials_to_a_server_it_names_needs_allow_new_destination(
    home: Path, tmp_path: Path, server: str, credentials: str,
) -> None:
    """A review's: a teammate's file under a name of its own (no --replace, so no destination to
    compare with) sent the environment's VAULT_TOKEN, or the AWS keys of the default chain or a
    profile, to whatever server it named, as soon as it was used (the first one imported is
    active at once). Now such a file names the server and needs the flag; one that keeps its
    credentials in the vault, or uses AWS's own endpoints, does not."""
    shared = tmp_path / "team.yaml"
    shared.write_text(f"name: team\n{server}\ncredentials: {credentials}\nhosts: [{HOST}]\nsecrets:\n  - {{alias: a, secret_id: a}}\n")
    code, _, err = vp(home, "config", "import", str(shared))
    assert code == 2 and "sends the credentials your environment or AWS profile gives" in err and "http://127.0.0.1:1" in err, err
    assert "--allow-new-destination" in err and not Vault(home).configs.names()
    assert vp(home, "config", "import", str(shared), "--allow-new-destination")[0] == 0
    unremarkable = {"kept": shared.read_text().replace(credentials, "{source: static}")}  # kept keys: none yet
    if "endpoint_url" in server:
        unremarkable["aws"] = shared.read_text().replace("\nendpoint_url: http://127.0.0.1:1", "")  # AWS's own endpoint
    for name, text in unremarkable.items():
        shared.write_text(text.replace("name: team", f"name: {name}"))
        code, _, err = vp(home, "config", "import", str(shared))
        assert code == 0, err


# --- what a terminal would show -------------------------------------------------------------------------


def test_config_test_shows_what_a_files_endpoint_says_it_is_escaped(home: Path, tmp_path: Path) -> None:
    """A review's: `config test` printed the identity a file's endpoint answered raw, so a
    carriage return, a line feed or a bidi override in its Arn forged a "connected as" line of
    the server's choosing. (A hostile stand-in for STS on loopback.)"""
    forged = ("arn:aws:iam::000000000000:user/evil&#13;connected as arn:aws:iam::111111111111:user/trusted-admin &#x202E;olleh",
              "000000000000&#10;FORGED LINE")
    body = (f'<GetCallerIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><GetCallerIdentityResult>'
            f"<Arn>{forged[0]}</Arn><UserId>AIDAFAKE</UserId><Account>{forged[1]}</Account></GetCallerIdentityResult>"
            "<ResponseMetadata><RequestId>r</RequestId></ResponseMetadata></GetCallerIdentityResponse>").encode()
    with RecordingUpstream() as sts:
        sts.route("/", Reply(body=body, headers=(("Content-Type", "text/xml"),)))
        shared = tmp_path / "evil.yaml"
        shared.write_text(f"name: evil\nregion: us-east-1\nendpoint_url: {sts.url}\ncredentials: {{source: default}}\nhosts: [{HOST}]\n")
        aws = {"AWS_ACCESS_KEY_ID": "AKIAFAKEFAKEFAKE", "AWS_SECRET_ACCESS_KEY": "FAKE-sts-escape-key", "AWS_EC2_METADATA_DISABLED": "true"}
        assert run_cli(home, "config", "import", str(shared), "--allow-new-destination", env=aws).returncode == 0
        tested = run_cli(home, "config", "test", "evil", env=aws)
    out = tested.stdout.decode()
    assert tested.returncode == 0 and out.count("\n") == 1 and "\r" not in out and "\u202e" not in out, out
    assert out.startswith("connected as arn:aws:iam::000000000000:user/evil\\r") and "\\u202e" in out and "\\nFORGED LINE" in out


@pytest.mark.parametrize(("line", "field", "text"), [
    (2, "display_name", 'display_name: "cli\\e[8m"\nprovider: command'),
    (4, "secret_id", 'region: us-east-1\nsecrets:\n  - {alias: a, secret_id: "prod/a\\r\\e[2Kprod/b"}'),
    (2, "endpoint_url", 'endpoint_url: "http://127.0.0.1:4566/\\e[8m"\nregion: us-east-1'),
    (3, "address", 'provider: vault\naddress: "https://127.0.0.1:8200\\e]0;x\\a"'),
    (5, "command", 'provider: command\nsecrets:\n  - alias: gh\n    command: [op, "\\r\\e[2K  op read op://x"]'),
    (2, "display_name", 'display_name: "C1 \\x9b2J"\nprovider: command'),
    (2, "display_name", 'display_name: "DEL \\x7f"\nprovider: command'),
    (2, "display_name", 'display_name: "tab\\t"\nprovider: command'),
])
def test_control_characters_in_a_file_are_refused_at_their_line(
    home: Path, tmp_path: Path, line: int, field: str, text: str,
) -> None:
    shared = tmp_path / "cli.yaml"
    shared.write_text(f"name: cli\n{text}\n")
    code, _, err = vp(home, "config", "import", str(shared), "--allow-commands")
    assert code == 1 and err.startswith(f"vaultproxy: error: {shared}:{line}: ") and "control characters" in err, err
    assert field in err and err.endswith("\n") and err[:-1].isprintable()  # one line, nothing raw
    assert not (home / "configs").exists()


def test_listings_never_show_a_control_character_raw(home: Path) -> None:
    """A file written before control characters were refused (or by hand) still reaches the
    listings: they show it escaped."""
    (home / "configs").mkdir(parents=True)
    (home / "configs" / "cli.yaml").write_text(
        'name: cli\ndisplay_name: "cli\\e[8m"\nprovider: command\nhosts: [api.github.com]\n'
        'secrets:\n  - alias: gh\n    command: [op, "\\r\\e[2K  op read op://Private/GitHub/token"]\n')
    for args in (("config", "list"), ("secret", "list", "--config", "cli"), ("status",)):
        _, out, err = vp(home, *args)
        for text in (out, err):
            assert "\x1b" not in text and "\r" not in text, (args, text)


# --- files that only look small ---------------------------------------------------------------------------


def test_anchors_aliases_and_huge_files_are_refused_quickly(home: Path, tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(["name: bomb", "provider: command", "a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
                              + [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]) + "\n")
    assert bomb.stat().st_size < 600
    code, _, err = vp(home, "config", "import", str(bomb))
    assert code == 1 and err.startswith(f"vaultproxy: error: {bomb}:3: ") and "anchors and aliases" in err, err

    loop = tmp_path / "loop.yaml"
    loop.write_text("name: loop\nx: &r [*r]\n")
    code, _, err = vp(home, "config", "import", str(loop))
    assert code == 1 and err.startswith(f"vaultproxy: error: {loop}:2: ") and "anchors and aliases" in err, err

    huge = tmp_path / "huge.yaml"
    huge.write_text("name: huge\nregion: us-east-1\n" + "# padding\n" * 200_000)
    code, _, err = vp(home, "config", "import", str(huge))
    assert code == 1 and err.startswith(f"vaultproxy: error: {huge}: too large") and "1 MiB" in err, err
    assert not (home / "configs").exists()


def test_help_names_the_flags(home: Path) -> None:
    code, out, _ = vp(home, "config", "import", "--help")
    assert code == 0 and "--allow-commands" in out and "--allow-any-host" in out
