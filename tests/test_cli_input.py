"""What a new user types, right or wrong, for local secrets and the command line itself: the
real CLI in a subprocess (a pseudo-terminal for prompts), values on stdin only.

- hosts and origins rules that could never match are refused naming the flag and the form,
  a URL is taken as its host or origin, and `*` needs --allow-any-host;
- `local edit` changes hosts and origins without the value;
- --version, --home and --json after the command's words, help with an example for every
  command and flag, shell completion from argcomplete, success lines, a prompt that asks
  twice, `local get` on a terminal.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import pytest

from tests.support.cli import run_cli, run_on_terminal
from vaultcore.cli import build_parser, print_table
from vaultcore.publicsuffix import NO_LIST, system_suffixes

VALUE = "FAKE-input-value-5c1e77"
OTHER = "FAKE-input-other-90ad12"


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "vault-home"


def shown(result: subprocess.CompletedProcess[bytes]) -> tuple[int, str, str]:
    """(exit status, stdout, stderr), after checking that no value was printed."""
    out, err = result.stdout.decode(), result.stderr.decode()
    assert VALUE not in out + err and OTHER not in out + err
    return result.returncode, out, err


def local_rows(home: Path) -> dict[str, dict[str, object]]:
    return {row["key"]: row for row in json.loads(run_cli(home, "local", "list", "--json").stdout)}


# --- rules that could never match -------------------------------------------------------------


@pytest.mark.parametrize(("flag", "text", "says"), [
    ("--hosts", "exa mple.com", "--hosts: invalid host rule 'exa mple.com': a name holds only"),
    ("--hosts", "10.*", "--hosts: invalid host rule '10.*'"),
    ("--hosts", "api.example.com:99999", "a port is a number from 1 to 65535"),
    ("--hosts", "*", "--hosts: * matches every host; add --allow-any-host"),
    ("--origins", "localhost:3000", "--origins: invalid origin 'localhost:3000': no scheme; expected an origin as browsers send it"),
    ("--origins", "http://user@localhost:3000", "no user name"),
    ("--origins", "https://*", "--origins: https://* matches every host; add --allow-any-host"),
    pytest.param("--hosts", "*.co.uk", "--hosts: *.co.uk matches every host; add --allow-any-host", marks=pytest.mark.skipif(
        system_suffixes() is NO_LIST, reason="no Public Suffix List on this system (Debian: apt install publicsuffix)")),
], ids=["space", "short-ipv4", "port", "anywhere", "origin-without-scheme", "origin-with-user", "any-origin", "public-suffix"])
def test_a_rule_that_can_never_match_is_refused_and_nothing_is_stored(home: Path, flag: str, text: str, says: str) -> None:
    code, out, err = shown(run_cli(home, "local", "set", "k", flag, text, stdin=VALUE.encode()))
    assert code == 2 and says in err and err.count("\n") == 1 and out == ""
    assert not (home / "vault.enc").exists()


def test_urls_become_their_host_or_origin(home: Path) -> None:
    code, out, err = shown(run_cli(
        home, "local", "set", "k", "--hosts", "https://API.example.com/v1/me,*.Example.org",
        "--origins", "http://localhost:3000/app?x=1,HTTPS://App.example.com:443/", stdin=VALUE.encode(),
    ))
    assert code == 0, err
    assert out == "stored k (hosts: api.example.com, *.example.org; origins: http://localhost:3000, https://app.example.com)\n"
    assert "--hosts: https://API.example.com/v1/me is taken as api.example.com" in err
    assert "--origins: http://localhost:3000/app?x=1 is taken as http://localhost:3000" in err
    assert local_rows(home)["k"]["hosts"] == ["api.example.com", "*.example.org"]


def test_any_host_on_purpose(home: Path) -> None:
    code, out, _ = shown(run_cli(home, "local", "set", "k", "--hosts", "*", "--allow-any-host", stdin=VALUE.encode()))
    assert code == 0 and out == "stored k (hosts: *)\n"


# --- local edit: where it may go, without the value ---------------------------------------------


def test_edit_changes_hosts_and_origins_and_keeps_the_value(home: Path) -> None:
    assert run_cli(home, "local", "set", "k", "--hosts", "a.example.com", stdin=VALUE.encode()).returncode == 0
    # stdin holds a value that edit must never read
    code, out, err = shown(run_cli(home, "local", "edit", "k", "--hosts", "https://b.example.com/", stdin=OTHER.encode()))
    assert code == 0 and out == "updated k (hosts: b.example.com)\n", err
    code, out, _ = shown(run_cli(home, "local", "edit", "k", "--origins", "http://localhost:3000"))
    assert code == 0 and out == "updated k (hosts: b.example.com; origins: http://localhost:3000)\n"
    assert run_cli(home, "local", "get", "k").stdout == VALUE.encode()
    code, out, _ = shown(run_cli(home, "local", "edit", "k", "--origins", ""))
    assert out == "updated k (hosts: b.example.com)\n"


@pytest.mark.parametrize(("args", "code", "says"), [
    (["local", "edit", "k"], 2, "say what changes: --hosts and/or --origins"),
    (["local", "edit", "nope", "--hosts", "h.example.com"], 1, "no local secret 'nope': store it first with `vaultproxy local set nope`"),
    (["local", "edit", "k", "--hosts", "*"], 2, "--allow-any-host"),
], ids=["nothing-to-change", "unknown-key", "anywhere"])
def test_edit_mistakes(home: Path, args: list[str], code: int, says: str) -> None:
    assert run_cli(home, "local", "set", "k", "--hosts", "a.example.com", stdin=VALUE.encode()).returncode == 0
    status, _, err = shown(run_cli(home, *args))
    assert status == code and says in err and err.count("\n") == 1
    assert local_rows(home)["k"]["hosts"] == ["a.example.com"]


# --- tables: nothing reaches the terminal raw --------------------------------------------------


def test_table_cells_escape_control_characters(capsys: pytest.CaptureFixture[str]) -> None:
    """A listing's cells come from files and the vault's state, written by anyone: a terminal
    escape in one (or a carriage return, or a bidi override) could make its row say something else."""
    print_table([{"name": "cli\x1b[8m", "command": ["op", "\r\x1b[2K  op read x"], "note": "\u202eevil\x9b2J\x7f"}],
                ["name", "command", "note"], "none")
    out = capsys.readouterr().out
    assert out.splitlines()[1] == "cli\\x1b[8m  op,\\r\\x1b[2K  op read x  \\u202eevil\\x9b2J\\x7f"
    assert all(line.isprintable() for line in out.splitlines()) and out.count("\n") == 2
    print_table([{"name": "Café (EU)", "hosts": ["a.example.com", "*.b.example.com"], "n": 3, "none": None}],
                ["name", "hosts", "n", "none"], "none")
    assert capsys.readouterr().out.splitlines()[1] == "Café (EU)  a.example.com,*.b.example.com  3  -"


# --- success lines -----------------------------------------------------------------------------


def test_set_and_unset_say_what_they_did(home: Path) -> None:
    code, out, err = shown(run_cli(home, "local", "set", "bare", stdin=VALUE.encode()))
    assert (code, out) == (0, "stored bare (no hosts rule)\n")
    assert err.startswith("vaultproxy: note: bare has no hosts rule") and "vaultproxy local edit bare --hosts HOST" in err
    assert shown(run_cli(home, "local", "unset", "bare"))[:2] == (0, "removed bare\n")


# --- global options, version, help ---------------------------------------------------------------


def test_version(home: Path) -> None:
    result = run_cli(home, "--version")
    assert result.returncode == 0 and result.stdout.decode().startswith("vaultproxy 0.")


def test_home_and_json_go_after_the_command_too(home: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    assert run_cli(home, "local", "set", "k", "--hosts", "h.example.com", "--home", str(elsewhere), stdin=VALUE.encode()).returncode == 0
    assert not home.exists() and (elsewhere / "vault.enc").exists()
    before = json.loads(run_cli(home, "--home", str(elsewhere), "--json", "local", "list").stdout)
    after = json.loads(run_cli(home, "local", "list", "--json", "--home", str(elsewhere)).stdout)
    assert before == after and [r["key"] for r in after] == ["k"]
    status = json.loads(run_cli(home, "status", "--home", str(elsewhere), "--json").stdout)
    assert status["home"] == str(elsewhere)


def commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every command's parser (leaves and groups), by its words."""
    found = [(path, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += commands(sub, (*path, name))
    return found


def test_every_command_and_flag_has_help_and_every_command_an_example() -> None:
    for words, parser in commands(build_parser()):
        assert parser.epilog and "vaultproxy " in parser.epilog and parser.epilog.startswith("example"), words
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction) or action.help == argparse.SUPPRESS:
                continue
            assert action.help, f"vaultproxy {' '.join(words)}: {action.dest} has no help"
            if action.option_strings and action.nargs != 0 and not action.choices:
                assert "e.g." in action.help, f"vaultproxy {' '.join(words)}: {action.option_strings[0]} has no example"


def test_help_shows_the_examples(home: Path) -> None:
    for words, _ in commands(build_parser())[:4]:  # a few for real: the walk above checks every parser
        result = run_cli(home, *words, "--help")
        assert result.returncode == 0 and b"example" in result.stdout, words


# --- shell completion ------------------------------------------------------------------------------


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_prints_the_shells_code(home: Path, shell: str) -> None:
    result = run_cli(home, "completion", shell)
    assert result.returncode == 0 and b"vaultproxy" in result.stdout
    if shell == "bash":
        assert subprocess.run(["bash", "-n"], input=result.stdout, capture_output=True).returncode == 0


def complete(home: Path, line: str, tmp_path: Path) -> list[str]:
    """What argcomplete offers for `line`, asked as the shell code from `completion` asks."""
    answer = tmp_path / "completions"
    env = {"_ARGCOMPLETE": "1", "_ARGCOMPLETE_IFS": "\n", "COMP_LINE": line, "COMP_POINT": str(len(line)),
           "_ARGCOMPLETE_STDOUT_FILENAME": str(answer)}
    result = run_cli(home, env=env)
    assert result.returncode == 0, result.stderr.decode()
    return [word.strip() for word in answer.read_text().split("\n")]  # bash gets a space after a whole word


def test_completion_offers_commands_options_and_configuration_names(home: Path, tmp_path: Path) -> None:
    assert {"local", "log"} <= set(complete(home, "vaultproxy lo", tmp_path))
    assert "--allow-any-host" in complete(home, "vaultproxy local set k --al", tmp_path)
    (home / "configs").mkdir(parents=True)
    for name in ("prod", "staging"):
        (home / "configs" / f"{name}.yaml").write_text(f"name: {name}\nregion: us-east-1\n")
    assert complete(home, "vaultproxy config use pr", tmp_path) == ["prod"]


# --- on a terminal ----------------------------------------------------------------------------------


def test_the_hidden_prompt_asks_twice(home: Path) -> None:
    status, screen = run_on_terminal(home, ["local", "set", "k", "--hosts", "h.example.com"],
                                     [("value for k: ", VALUE), ("again, to confirm: ", VALUE)])
    assert status == 0 and "stored k (hosts: h.example.com)" in screen and VALUE not in screen
    status, screen = run_on_terminal(home, ["local", "set", "k"], [("value for k: ", OTHER), ("again, to confirm: ", VALUE)])
    assert status == 1 and "vaultproxy: error: the two entries differ; nothing was stored" in screen
    assert run_cli(home, "local", "get", "k").stdout == VALUE.encode()  # the first value stays


def test_get_ends_with_a_newline_on_a_terminal(home: Path) -> None:
    assert run_cli(home, "local", "set", "k", "--hosts", "h.example.com", stdin=VALUE.encode()).returncode == 0
    assert run_cli(home, "local", "get", "k").stdout == VALUE.encode()  # into a pipe: the exact value
    status, screen = run_on_terminal(home, ["local", "get", "k"])
    assert status == 0 and screen == VALUE + "\r\n"
