"""`vaultproxy local ...`: secrets kept in the vault itself."""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any

from vaultcore.cli import ANY_HOST_HELP, UsageError, command, note, print_json, print_table, rules, subcommands
from vaultcore.hostrules import normalise_host_rule, normalise_origin_rule
from vaultcore.store import VaultError
from vaultcore.vault import Vault

HOSTS_HELP = "comma-separated hosts it may be sent to, e.g. api.example.com,*.example.org (a URL is taken as its host)"
ORIGINS_HELP = "comma-separated web pages (origins) that may use it, e.g. http://localhost:3000"


def read_secret(prompt: str) -> str | bytes:
    """A value from a hidden prompt on a terminal, typed twice (a typo would go unseen), else
    all of stdin (one trailing newline dropped, as `echo` adds it). Non-UTF-8 input is kept
    as bytes."""
    if sys.stdin.isatty():
        value = getpass.getpass(prompt)
        if getpass.getpass("again, to confirm: ") != value:
            raise VaultError("the two entries differ; nothing was stored")
        return value
    data = sys.stdin.buffer.read()
    data = data[:-2] if data.endswith(b"\r\n") else data[:-1] if data.endswith(b"\n") else data
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data


def _where(args: argparse.Namespace) -> tuple[tuple[str, ...] | None, tuple[str, ...] | None]:
    """The --hosts and --origins rules, checked before any value is read."""
    return (
        rules("--hosts", args.hosts, normalise_host_rule, args.allow_any_host),
        rules("--origins", args.origins, normalise_origin_rule, args.allow_any_host),
    )


def _report(vault: Vault, key: str, done: str) -> None:
    """One line that says what the secret is now for; a note when it goes nowhere."""
    row = next(s for s in vault.local_secrets() if s["key"] == key)
    where = f"hosts: {', '.join(row['hosts'])}" if row["hosts"] else "no hosts rule"
    if row["origins"]:
        where += f"; origins: {', '.join(row['origins'])}"
    print(f"{done} {key} ({where})")
    if not row["hosts"]:
        note(f"{key} has no hosts rule, so it is injected nowhere; add one with `vaultproxy local edit {key} --hosts HOST`")


def cmd_set(vault: Vault, args: argparse.Namespace) -> int:
    if args.value_in_argv is not None:
        raise UsageError(
            "values are never taken from the command line (they end up in shell history and ps); "
            f"pipe it instead: printf %s \"$VALUE\" | vaultproxy local set {args.key}"
        )
    hosts, origins = _where(args)
    vault.set(args.key, read_secret(f"value for {args.key}: "), hosts, origins)
    _report(vault, args.key, "stored")
    return 0


def cmd_edit(vault: Vault, args: argparse.Namespace) -> int:
    hosts, origins = _where(args)
    if hosts is None and origins is None:
        raise UsageError(f"say what changes: --hosts and/or --origins (a new value: `vaultproxy local set {args.key}`)")
    vault.edit(args.key, hosts, origins)
    _report(vault, args.key, "updated")
    return 0


def cmd_get(vault: Vault, args: argparse.Namespace) -> int:
    value = vault.get(args.key)
    data = value if isinstance(value, bytes) else value.encode()
    # On a terminal the next prompt starts on a line of its own; into a pipe, the exact value.
    sys.stdout.buffer.write(data + (b"\n" if sys.stdout.isatty() else b""))
    return 0


def cmd_unset(vault: Vault, args: argparse.Namespace) -> int:
    vault.unset(args.key)
    print(f"removed {args.key}")
    return 0


def cmd_list(vault: Vault, args: argparse.Namespace) -> int:
    rows = vault.local_secrets()
    if args.json:
        print_json(rows)
    else:
        print_table(rows, ["key", "hosts", "origins", "updated_at"], "no local secrets")
    return 0


def _where_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--hosts", help=HOSTS_HELP)
    p.add_argument("--origins", help=ORIGINS_HELP)
    p.add_argument("--allow-any-host", action="store_true", help=ANY_HOST_HELP)


def register(commands: Any) -> None:
    local = subcommands(commands, "local", "secrets kept in the local vault", [
        "printf %s \"$TOKEN\" | vaultproxy local set github --hosts api.github.com",
        "vaultproxy local list",
    ])
    p = command(local, "set", cmd_set, "store a local secret; the value comes from stdin or a hidden prompt", [
        "printf %s \"$TOKEN\" | vaultproxy local set github --hosts api.github.com",
        "vaultproxy local set stripe --hosts api.stripe.com --origins http://localhost:3000   # prompts twice",
    ])
    p.add_argument("key", help="the name placeholders use: <<vault:KEY>> (A-Z a-z 0-9 _ . - /)")
    p.add_argument("value_in_argv", nargs="?", help=argparse.SUPPRESS)
    _where_options(p)
    p = command(local, "edit", cmd_edit, "change where a local secret may go, keeping its value", [
        "vaultproxy local edit github --hosts api.github.com,uploads.github.com",
        "vaultproxy local edit stripe --origins ''   # no web page may use it",
    ])
    p.add_argument("key", help="a local secret's key")
    _where_options(p)
    p = command(local, "get", cmd_get, "print a value (the one command that does)", ["vaultproxy local get github | pbcopy"])
    p.add_argument("key", help="the key to print the value of")
    p = command(local, "unset", cmd_unset, "remove a local secret", ["vaultproxy local unset github"])
    p.add_argument("key", help="the key to remove")
    command(local, "list", cmd_list, "list local secrets (no values)", ["vaultproxy local list --json"], listing=True)
