"""`vaultproxy secret ...`: the provider secrets a configuration maps to aliases, and their fetches."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable
from typing import Any

from vaultcore.cli import (
    ANY_HOST_HELP, UsageError, add_refresh_flags, checked, command, error_text, note, print_json, print_table, rules, subcommands,
    warn,
)
from vaultcore.hostrules import normalise_host_rule, normalise_origin_rule
from vaultcore.cli.config import add_field_flags, field_values
from vaultcore.configurations import abbreviated
from vaultcore.profiles import MODES, ProviderConfig, SecretMapping, check_alias, check_text, parse_duration, parse_refresh_on
from vaultcore.providers.base import schema_for
from vaultcore.vault import Vault

CONFIG_HELP = "the configuration, e.g. staging (default: the active one)"


def progress_printer() -> Callable[[int, int], None] | None:
    """Progress on a terminal only; scripts get clean output."""
    if not sys.stderr.isatty():
        return None

    def show(done: int, total: int) -> None:
        sys.stderr.write(f"\rfetched {done}/{total}")
        if done == total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    return show


def _non_empty(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return check_text(value)


def cmd_add(vault: Vault, args: argparse.Namespace) -> int:
    alias = checked("ALIAS", args.alias, check_alias)
    provider = vault.config(args.config).provider
    names_secret = schema_for(provider).secret_id is not None
    if names_secret != (args.secret_id is not None):
        raise UsageError(f"--secret-id is {'needed' if names_secret else 'not a setting'} with provider {provider}")
    mapping = SecretMapping(
        alias=alias,
        secret_id=checked("--secret-id", args.secret_id, _non_empty) if names_secret else "",
        mode=args.mode,
        hosts=rules("--hosts", args.hosts, normalise_host_rule, args.allow_any_host),
        origins=rules("--origins", args.origins, normalise_origin_rule, args.allow_any_host) or (),
        refresh=checked("--refresh", args.refresh, parse_duration) if args.refresh is not None else None,
        refresh_on=checked("--refresh-on", args.refresh_on, parse_refresh_on) if args.refresh_on is not None else None,
        **field_values(args, provider, "secret", SecretMapping),
    )
    config = vault.add_secret(mapping, args.config)
    print(f"{args.alias} added to {config.name}; fetch it with `vaultproxy secret fetch {args.alias}`")
    _warn_about(vault, config, mapping)
    return 0


def _warn_about(vault: Vault, config: ProviderConfig, mapping: SecretMapping) -> None:
    """What `local set` would say too: a secret that goes nowhere, or local keys it hides."""
    if not config.hosts_for(mapping):
        note(f"{mapping.alias} has no hosts rule (and {config.name} no default hosts), so it is injected nowhere; "
             f"add one with `vaultproxy secret add {mapping.alias} {_source_flags(mapping)} --hosts HOST`")
    hidden = [
        row["key"] for row in vault.local_secrets()
        if row["key"] == mapping.alias or (mapping.mode == "json" and row["key"].startswith(mapping.alias + "."))
    ]
    if hidden:
        warn(f"{mapping.alias} overrides the local secret{'s' if len(hidden) > 1 else ''} {abbreviated(hidden)} "
             f"while {config.name} is active (provider keys come first); choose another alias, or "
             f"`vaultproxy local unset {hidden[0]}`")


def _source_flags(mapping: SecretMapping) -> str:
    """The flags that name what `mapping` fetches, as `secret add` takes them."""
    if mapping.secret_id:
        return f"--secret-id {shlex.quote(mapping.secret_id)}"
    return f"--command {shlex.quote(shlex.join(mapping.option('command', ())))}"


def cmd_list(vault: Vault, args: argparse.Namespace) -> int:
    rows = vault.secret_rows(args.config)
    if args.json:
        print_json(rows)
    else:
        refreshing = ["refresh", "refresh_due"] if any(r["refresh"] for r in rows) else []
        print_table([{**r, "status": _status(r)} for r in rows],
                    ["alias", "secret_id", "mode", "last_fetched", *refreshing, "status"],
                    "no secrets in this configuration: vaultproxy secret add ALIAS --secret-id ID")
    return 0


def _status(row: dict[str, Any]) -> str:
    if not row["error"]:
        return row["status"]
    return f"{row['error']} ({row['failures']} failed in a row)" if row["failures"] > 1 else row["error"]


def cmd_fetch(vault: Vault, args: argparse.Namespace) -> int:
    if args.all == bool(args.aliases):
        raise UsageError(
            f"name the aliases to {args.secret_command} (`vaultproxy secret list` shows them), "
            f"or all of them: vaultproxy secret {args.secret_command} --all"
        )
    results = vault.fetch(None if args.all else args.aliases, args.config,
                          use_batch=not args.no_batch, progress=progress_printer())
    failed: dict[str, list[str]] = {}  # one line per distinct error: an outage fails every secret alike
    for r in results.values():
        if r.error:
            failed.setdefault(r.error, []).append(r.alias)
    for error, aliases in failed.items():
        print(f"vaultproxy: {abbreviated(aliases)}: {error_text(error)}", file=sys.stderr)
    failures = sum(len(aliases) for aliases in failed.values())
    print(f"fetched {len(results) - failures} of {len(results)}")
    return 1 if failures else 0


def cmd_move_to_local(vault: Vault, args: argparse.Namespace) -> int:
    keys = vault.move_to_local(args.alias, args.config)
    print(f"{args.alias} is now local: {', '.join(keys)}")
    return 0


def cmd_remove(vault: Vault, args: argparse.Namespace) -> int:
    config = vault.remove_secret(args.alias, args.config)
    print(f"removed {args.alias} with its fetched value from {config.name}")
    return 0


def register(commands: Any) -> None:
    secret = subcommands(commands, "secret", "the provider secrets of a configuration, by alias", [
        "vaultproxy secret add db --secret-id prod/db --mode json",
        "vaultproxy secret fetch db",
    ])
    p = command(secret, "add", cmd_add, "map a provider secret to an alias (an existing alias is changed)", [
        "vaultproxy secret add token --secret-id prod/api-token --hosts api.example.com",
        "vaultproxy secret add db --secret-id prod/db --mode json   # <<vault:db.user>>, <<vault:db.password>>",
        "vaultproxy secret add app --secret-id /app/prod/ --mode json   # ssm: every parameter under the path",
        "vaultproxy secret add stripe --secret-id payments/stripe --field api_key   # vault: one field",
        "vaultproxy secret add gh --command 'op read op://dev/github/token'   # command: its output",
    ])
    p.add_argument("alias", help="the name placeholders use: <<vault:ALIAS>> (A-Z a-z 0-9 _ - /, no dots)")
    p.add_argument("--secret-id", help="what to fetch, e.g. a Secrets Manager name or ARN (prod/db), a parameter name or "
                                       "path ending in / (ssm), a path in the KV mount (vault); not for command")
    p.add_argument("--mode", default="plaintext", choices=MODES,
                   help="plaintext: the whole value; json: each field as ALIAS.FIELD")
    p.add_argument("--hosts", help="hosts it may be sent to, e.g. api.example.com (default: the configuration's)")
    p.add_argument("--origins", help="web pages (origins) that may use it, e.g. http://localhost:3000")
    p.add_argument("--allow-any-host", action="store_true", help=ANY_HOST_HELP)
    add_field_flags(p, "secret")
    add_refresh_flags(p, "(default: the configuration's)")
    p.add_argument("--config", help=CONFIG_HELP)
    p = command(secret, "list", cmd_list, "alias, secret id, mode, last fetched, status",
                ["vaultproxy secret list --config staging"], listing=True)
    p.add_argument("--config", help=CONFIG_HELP)
    for name, help in (("fetch", "fetch secrets from the provider now"), ("refresh", "fetch secrets again (the same as fetch)")):
        p = command(secret, name, cmd_fetch, help, [f"vaultproxy secret {name} db token", f"vaultproxy secret {name} --all"])
        p.add_argument("aliases", nargs="*", help="the aliases to fetch")
        p.add_argument("--all", action="store_true", help="every secret of the configuration")
        p.add_argument("--config", help=CONFIG_HELP)
        p.add_argument("--no-batch", action="store_true", help="one call per secret (aws: no BatchGetSecretValue; ssm: no GetParameters)")
    p = command(secret, "move-to-local", cmd_move_to_local, "turn a fetched secret into local secrets",
                ["vaultproxy secret move-to-local db"])
    p.add_argument("alias", help="the fetched alias to make local")
    p.add_argument("--config", help=CONFIG_HELP)
    p = command(secret, "remove", cmd_remove, "remove a secret from its configuration, with its fetched value",
                ["vaultproxy secret remove token"])
    p.add_argument("alias", help="the alias to remove")
    p.add_argument("--config", help=CONFIG_HELP)
