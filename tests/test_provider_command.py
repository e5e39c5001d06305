"""The command provider: a mapping's command prints the value. Real processes: Python one-liners
that succeed, fail, hang and print too much, and `pass` with a throwaway GPG key."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import run_cli
from vaultcore.profiles import ConfigError, ProviderConfig, SecretMapping, parse_config
from vaultcore.providers import command
from vaultcore.providers.base import ProviderError
from vaultcore.store import VaultError
from vaultcore.vault import Vault

HOST = "api.example.com"
VALUE = "FAKE-command-value-3e8a"
PY = sys.executable


def run(alias: str, code: str, mode: str = "plaintext", **options: object) -> SecretMapping:
    """A mapping whose command is a Python one-liner (options: e.g. timeout=1)."""
    return SecretMapping(alias, mode=mode, options=(("command", (PY, "-c", code)), *options.items()))


@pytest.fixture
def vault(vault_home: Path) -> Vault:
    vault = Vault(vault_home)
    vault.add_config(ProviderConfig(name="cli", display_name="CLI", provider="command", credentials_source="default",
                                    hosts=(HOST,)))
    return vault


def test_output_is_the_value_and_json_expands(vault: Vault, tmp_path: Path) -> None:
    (tmp_path / "value").write_text(VALUE)  # read by the command: the listings show its argv
    vault.add_secret(run("token", f"print(open({str(tmp_path / 'value')!r}).read())"))
    vault.add_secret(run("db", "import json; print(json.dumps({'user': 'FAKE-u', 'password': 'FAKE-p'}))", mode="json"))
    vault.add_secret(run("blob", "import sys; sys.stdout.buffer.write(bytes([0, 255, 1]))"))
    results = vault.fetch()
    assert all(r.error is None for r in results.values()), results
    assert vault.get("token") == VALUE  # the trailing newline dropped
    assert vault.get("db.password") == "FAKE-p" and vault.resolve("<<vault:db.user>>", HOST) == "FAKE-u"
    assert vault.get("blob") == b"\x00\xff\x01"
    rows = {r["alias"]: r for r in vault.secret_rows()}
    assert rows["token"]["secret_id"].startswith(PY) and rows["token"]["status"] == "ok"
    assert VALUE not in json.dumps([vault.status(), vault.secret_rows()])


def test_a_failing_command_is_one_line_and_the_cached_value_stays(vault: Vault, tmp_path: Path) -> None:
    flag = tmp_path / "fail"
    code = (f"import pathlib, sys\nif pathlib.Path({str(flag)!r}).exists():\n"
            f"    sys.stderr.write('[ERROR] not signed in: run op signin\\nsecond line\\n'); sys.exit(3)\nprint({VALUE!r})")
    vault.add_secret(run("token", code))
    assert vault.fetch()["token"].error is None
    flag.touch()
    result = vault.fetch()["token"]
    assert result.error_code == "command_failed"
    assert result.error == f"{PY} exited with status 3: [ERROR] not signed in: run op signin"
    assert vault.get("token") == VALUE
    assert vault.status()["config_error"].startswith("1 of 1 secrets failed")


def test_a_command_never_gets_the_vaults_passphrase(monkeypatch: pytest.MonkeyPatch) -> None:
    """`vaultproxy secret fetch` may run with VAULTPROXY_PASSPHRASE set: a provider's command
    (any program a shared configuration names) must not be able to open the vault with it."""
    monkeypatch.setenv("VAULTPROXY_PASSPHRASE", "FAKE-the-vaults-passphrase")
    monkeypatch.setenv("VAULTPROXY_PASSPHRASE_FD", "9")
    config = ProviderConfig(name="cli", display_name="CLI", provider="command", credentials_source="default")
    seen = run("seen", "import os; print(os.environ.get('VAULTPROXY_PASSPHRASE'), os.environ.get('VAULTPROXY_PASSPHRASE_FD'))")
    assert command.fetch(config, [seen], None)["seen"].value == "None None"


def test_a_hanging_command_is_killed_with_its_children(vault: Vault, tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    code = (f"import subprocess, sys, time, pathlib\n"
            f"child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
            f"pathlib.Path({str(pid_file)!r}).write_text(str(child.pid))\ntime.sleep(60)")
    vault.add_secret(run("slow", code, timeout=5))  # time enough for a loaded host to start both
    began = time.monotonic()
    result = vault.fetch()["slow"]
    assert time.monotonic() - began < 15
    assert result.error_code == "command_timeout" and result.error == f"{PY} did not finish within 5s"
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child), "the command's own child outlived the timeout"


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False
    return status != "Z"


def test_too_much_output_and_nothing_at_all(vault: Vault) -> None:
    vault.add_secret(run("big", "import sys\nwhile True: sys.stdout.write('x' * 65536)"))
    vault.add_secret(run("empty", "pass"))
    vault.add_secret(run("noisy", "import sys; sys.stderr.write('e' * 10_000_000); print('FAKE-after-noise')"))
    results = vault.fetch()
    assert results["big"].error_code == "too_large" and "more than 1048576 bytes" in (results["big"].error or "")
    assert results["empty"].error == f"{PY} printed nothing"
    assert results["noisy"].value == "FAKE-after-noise"  # a flood on stderr neither blocks nor fails it


def test_missing_program_and_connection_test(vault: Vault) -> None:
    vault.add_secret(SecretMapping("op", options=(("command", ("vaultproxy-no-such-tool", "read", "op://x/y/z")),)))
    result = vault.fetch()["op"]
    assert result.error_code == "missing_command" and "command not found: vaultproxy-no-such-tool" in (result.error or "")
    with pytest.raises(ProviderError, match="not found on PATH: vaultproxy-no-such-tool"):
        vault.test_config()
    assert command.config_warning(vault.config()) is not None
    vault.remove_secret("op")
    vault.add_secret(run("ok", "print(1)"))
    assert vault.test_config().arn == f"commands {PY}"
    with pytest.raises(VaultError, match="takes its credentials from each command's own login"):
        vault.set_credentials("cli", object())


def test_file_schema() -> None:
    text = "name: c\nprovider: command\nsecrets:\n  - alias: gh\n    command: [op, read, 'op://dev/gh/token']\n    timeout: 20s\n"
    config = parse_config(text, "c.yaml")
    assert config.mapping("gh").option("command") == ("op", "read", "op://dev/gh/token")  # type: ignore[union-attr]
    assert config.mapping("gh").option("timeout") == 20  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match=r"^c.yaml:4: secrets\[0\].command: missing \(required\)"):
        parse_config(text.replace("    command: [op, read, 'op://dev/gh/token']\n", ""), "c.yaml")
    with pytest.raises(ConfigError, match=r"^c.yaml:5: secrets\[0\].command: must be a list"):
        parse_config(text.replace("[op, read, 'op://dev/gh/token']", "op read x"), "c.yaml")
    with pytest.raises(ConfigError, match=r"^c.yaml:7: secrets\[0\].secret_id: unknown field"):
        parse_config(text + "    secret_id: x\n", "c.yaml")
    with pytest.raises(ConfigError, match=r"^c.yaml:6: secrets\[0\].timeout: must be a duration of at least 1s"):
        parse_config(text.replace("20s", "off"), "c.yaml")


def test_a_changed_timeout_keeps_the_value_a_changed_command_does_not(vault: Vault) -> None:
    vault.add_secret(run("token", f"print({VALUE!r})"))
    vault.fetch()
    vault.add_secret(run("token", f"print({VALUE!r})", timeout=5))
    assert vault.get("token") == VALUE
    vault.add_secret(run("token", "print('FAKE-other')"))
    assert "token" not in vault.keys()


def test_cli(tmp_path: Path) -> None:
    home = tmp_path / "home"
    added = run_cli(home, "config", "add", "cli", "--provider", "command", "--hosts", HOST)
    assert added.returncode == 0, added.stderr
    assert b"connected as commands (none mapped yet)" in added.stdout
    (tmp_path / "value").write_text(VALUE)  # the command reads it: no value on any command line
    mapped = run_cli(home, "secret", "add", "token", "--command", f"{PY} -c 'print(open(\"{tmp_path / 'value'}\").read())'")
    assert mapped.returncode == 0, mapped.stderr
    assert run_cli(home, "secret", "add", "x", "--secret-id", "y").returncode == 2
    fetched = run_cli(home, "secret", "fetch", "token")
    assert fetched.stdout == b"fetched 1 of 1\n", fetched.stderr
    refused = run_cli(home, "config", "set-credentials", "cli")
    assert refused.returncode == 1 and b"each command's own login" in refused.stderr
    exported = run_cli(home, "config", "export", "cli").stdout.decode()
    assert "provider: command" in exported and "command: [" in exported and VALUE not in exported
    for output in (added, mapped, fetched):
        assert VALUE.encode() not in output.stdout + output.stderr


# --- pass, with a throwaway GPG key ------------------------------------------------------------


@pytest.fixture(scope="module")
def password_store() -> Iterator[dict[str, str]]:
    """A GPG home with a fresh key (no passphrase) and a password store encrypted to it; the
    gpg-agent it starts is stopped at the end."""
    missing = [tool for tool in ("pass", "gpg", "gpgconf") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (scripts/test installs pass and gnupg with apt-get as root)")
    root = Path(tempfile.mkdtemp(prefix="vp-gpg-"))  # short: gpg-agent's socket path has a length limit
    env = {**os.environ, "GNUPGHOME": str(root / "g"), "PASSWORD_STORE_DIR": str(root / "store")}
    (root / "g").mkdir(mode=0o700)
    try:
        subprocess.run(["gpg", "--batch", "--pinentry-mode", "loopback", "--passphrase", "", "--quick-gen-key",
                        "vaultproxy test <test@example.invalid>", "future-default", "default", "never"],
                       env=env, check=True, capture_output=True, timeout=60)
        subprocess.run(["pass", "init", "test@example.invalid"], env=env, check=True, capture_output=True, timeout=30)
        subprocess.run(["pass", "insert", "--multiline", "web/token"], env=env, input=f"{VALUE}\n".encode(),
                       check=True, capture_output=True, timeout=30)
        yield env
    finally:
        subprocess.run(["gpgconf", "--kill", "all"], env=env, capture_output=True, timeout=30)
        shutil.rmtree(root, ignore_errors=True)


def test_pass(vault: Vault, password_store: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("GNUPGHOME", "PASSWORD_STORE_DIR"):
        monkeypatch.setenv(name, password_store[name])
    vault.add_secret(SecretMapping("web", options=(("command", ("pass", "show", "web/token")),)))
    vault.add_secret(SecretMapping("nope", options=(("command", ("pass", "show", "web/missing")),)))
    results = vault.fetch()
    assert results["web"].error is None and vault.get("web") == VALUE
    assert results["nope"].error_code == "command_failed"
    assert "pass exited with status 1: Error: web/missing is not in the password store." == results["nope"].error
