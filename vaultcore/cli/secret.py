"""`vaultproxy secret ...`: the AWS secrets a configuration maps to aliases, and their fetches."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from vaultcore.cli import ANY_HOST_HELP, UsageError, checked, command, note, print_json, print_table, rules, subcommands, warn
from vaultcore.hostrules import normalise_host_rule, normalise_origin_rule
from vaultcore.profiles import MODES, ProviderConfig, SecretMapping, check_alias
from vaultcore.vault import Vault, abbreviated

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
    return value


def cmd_add(vault: Vault, args: argparse.Namespace) -> int:
    mapping = SecretMapping(
        alias=checked("ALIAS", args.alias, check_alias),
        secret_id=checked("--secret-id", args.secret_id, _non_empty),
        mode=args.mode,
        hosts=rules("--hosts", args.hosts, normalise_host_rule, args.allow_any_host),
        origins=rules("--origins", args.origins, normalise_origin_rule, args.allow_any_host) or (),
        version_stage=checked("--version-stage", args.version_stage, _non_empty) if args.version_stage is not None else None,
    )
    config = vault.add_secret(mapping, args.config)
    print(f"{args.alias} added to {config.name}; fetch it with `vaultproxy secret fetch {args.alias}`")
    _warn_about(vault, config, mapping)
    return 0


def _warn_about(vault: Vault, config: ProviderConfig, mapping: SecretMapping) -> None:
    """What `local set` would say too: a secret that goes nowhere, or local keys it hides."""
    if not config.hosts_for(mapping):
        note(f"{mapping.alias} has no hosts rule (and {config.name} no default hosts), so it is injected nowhere; "
             f"add one with `vaultproxy secret add {mapping.alias} --secret-id {mapping.secret_id} --hosts HOST`")
    hidden = [
        row["key"] for row in vault.local_secrets()
        if row["key"] == mapping.alias or (mapping.mode == "json" and row["key"].startswith(mapping.alias + "."))
    ]
    if hidden:
        warn(f"{mapping.alias} overrides the local secret{'s' if len(hidden) > 1 else ''} {abbreviated(hidden)} "
             f"while {config.name} is active (provider keys come first); choose another alias, or "
             f"`vaultproxy local unset {hidden[0]}`")


def cmd_list(vault: Vault, args: argparse.Namespace) -> int:
    rows = vault.secret_rows(args.config)
    if args.json:
        print_json(rows)
    else:
        print_table([{**r, "status": r["error"] or r["status"]} for r in rows],
                    ["alias", "secret_id", "mode", "last_fetched", "status"], "no secrets in this configuration: vaultproxy secret add ALIAS --secret-id ID")
    return 0


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
        print(f"vaultproxy: {abbreviated(aliases)}: {error}", file=sys.stderr)
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
    secret = subcommands(commands, "secret", "the AWS secrets of a configuration, by alias", [
        "vaultproxy secret add db --secret-id prod/db --mode json",
        "vaultproxy secret fetch db",
    ])
    p = command(secret, "add", cmd_add, "map an AWS secret to an alias (an existing alias is changed)", [
        "vaultproxy secret add token --secret-id prod/api-token --hosts api.example.com",
        "vaultproxy secret add db --secret-id prod/db --mode json   # <<vault:db.user>>, <<vault:db.password>>",
    ])
    p.add_argument("alias", help="the name placeholders use: <<vault:ALIAS>> (A-Z a-z 0-9 _ - /, no dots)")
    p.add_argument("--secret-id", required=True, help="the secret's name or ARN in Secrets Manager, e.g. prod/db")
    p.add_argument("--mode", default="plaintext", choices=MODES,
                   help="plaintext: the whole value; json: each field as ALIAS.FIELD")
    p.add_argument("--hosts", help="hosts it may be sent to, e.g. api.example.com (default: the configuration's)")
    p.add_argument("--origins", help="web pages (origins) that may use it, e.g. http://localhost:3000")
    p.add_argument("--allow-any-host", action="store_true", help=ANY_HOST_HELP)
    p.add_argument("--version-stage", help="a version stage to fetch instead of the current one, e.g. AWSPREVIOUS")
    p.add_argument("--config", help=CONFIG_HELP)
    p = command(secret, "list", cmd_list, "alias, secret id, mode, last fetched, status",
                ["vaultproxy secret list --config staging"], listing=True)
    p.add_argument("--config", help=CONFIG_HELP)
    for name, help in (("fetch", "fetch secrets from AWS now"), ("refresh", "fetch secrets again (the same as fetch)")):
        p = command(secret, name, cmd_fetch, help, [f"vaultproxy secret {name} db token", f"vaultproxy secret {name} --all"])
        p.add_argument("aliases", nargs="*", help="the aliases to fetch")
        p.add_argument("--all", action="store_true", help="every secret of the configuration")
        p.add_argument("--config", help=CONFIG_HELP)
        p.add_argument("--no-batch", action="store_true", help="one GetSecretValue per secret (no BatchGetSecretValue)")
    p = command(secret, "move-to-local", cmd_move_to_local, "turn a fetched secret into local secrets",
                ["vaultproxy secret move-to-local db"])
    p.add_argument("alias", help="the fetched alias to make local")
    p.add_argument("--config", help=CONFIG_HELP)
    p = command(secret, "remove", cmd_remove, "remove a secret from its configuration, with its fetched value",
                ["vaultproxy secret remove token"])
    p.add_argument("alias", help="the alias to remove")
    p.add_argument("--config", help=CONFIG_HELP)
