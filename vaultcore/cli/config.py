"""`vaultproxy config ...`: AWS provider configurations (shareable YAML, keys in the vault)."""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path
from typing import Any

from vaultcore.cli import ANY_HOST_HELP, UsageError, checked, command, print_json, print_table, rules, subcommands, warn
from vaultcore.hostrules import normalise_host_rule, reaches_any_host
from vaultcore.profiles import SOURCES, ConfigError, ProviderConfig, check_endpoint_url, check_name, check_region, dump_config
from vaultcore.providers.base import ProviderError, StaticCredentials, provider_for
from vaultcore.store import VaultError
from vaultcore.vault import Vault, config_error, default_home


def read_credentials(name: str) -> StaticCredentials:
    """Static AWS keys: prompted on a terminal, else three lines on stdin (the session token
    line may be empty or missing)."""
    if sys.stdin.isatty():
        key_id = input(f"AWS access key id for {name}: ").strip()
        secret = getpass.getpass("AWS secret access key: ").strip()
        token = getpass.getpass("AWS session token (empty if none): ").strip()
    else:
        lines = sys.stdin.read().splitlines() + ["", "", ""]
        key_id, secret, token = (line.strip() for line in lines[:3])
    if not key_id or not secret:
        raise VaultError("an access key id and a secret access key are both needed")
    return StaticCredentials(key_id, secret, token or None)


def _warn_region(config: ProviderConfig) -> None:
    """AWS answers an unknown region with a connection failure that does not say so."""
    problem = provider_for(config).region_problem(config)
    if problem:
        warn(problem)


def cmd_add(vault: Vault, args: argparse.Namespace) -> int:
    if (args.source == "profile") != bool(args.aws_profile):
        raise UsageError("--aws-profile NAME goes with --source profile, and --source profile needs it")
    config = ProviderConfig(
        name=checked("NAME", args.name, check_name),
        display_name=args.display_name or args.name,
        region=checked("--region", args.region, check_region),
        credentials_source=args.source,
        aws_profile=args.aws_profile,
        endpoint_url=checked("--endpoint-url", args.endpoint_url, check_endpoint_url) if args.endpoint_url else None,
        hosts=rules("--hosts", args.hosts, normalise_host_rule, args.allow_any_host) or (),
    )
    credentials = read_credentials(args.name) if args.source == "static" else None
    vault.add_config(config, credentials)
    print(f"saved configuration {args.name}")
    _warn_region(config)
    # The configuration is saved either way (it may be set up before the network or the
    # keys work), so a failed test is a warning here, not a failed command; `config list`
    # and `status` show it until a test or a fetch succeeds.
    _report_test(vault, args.name)
    return 0


def _report_test(vault: Vault, name: str | None) -> int:
    try:
        identity = vault.test_config(name)
    except ProviderError as e:
        print(f"vaultproxy: connection test failed: {e}", file=sys.stderr)
        return 1
    print(f"connected as {identity.arn} (account {identity.account})")
    return 0


def cmd_list(vault: Vault, args: argparse.Namespace) -> int:
    state = vault.state()
    active = state.get("active_config")
    rows: list[dict[str, Any]] = []
    for name in vault.configs.names():
        try:
            config = vault.configs.load(name)
        except ConfigError as e:  # one file broken by hand must not hide the others
            rows.append({"name": name, "active": name == active, "error": str(e)})
            continue
        config_state = state.get("configs", {}).get(name, {})
        rows.append({
            "name": name, "display_name": config.display_name, "region": config.region,
            "source": config.credentials_source, "endpoint_url": config.endpoint_url,
            "secrets": len(config.secrets), "active": name == active,
            "last_fetched": config_state.get("last_fetched"), "error": config_error(config, config_state),
        })
    if args.json:
        print_json(rows)
    else:
        print_table([{**r, "active": "*" if r["active"] else "", "status": r["error"] or "ok"} for r in rows],
                    ["active", "name", "display_name", "region", "source", "secrets", "last_fetched", "status"],
                    "no configurations: vaultproxy config add NAME --region R")
    return 0


def cmd_use(vault: Vault, args: argparse.Namespace) -> int:
    vault.use_config(args.name)
    print(f"active configuration: {args.name}")
    return 0


def cmd_test(vault: Vault, args: argparse.Namespace) -> int:
    return _report_test(vault, args.name)


def cmd_set_credentials(vault: Vault, args: argparse.Namespace) -> int:
    vault.set_credentials(args.name, read_credentials(args.name))
    print(f"credentials of {args.name} updated")
    return 0


def cmd_remove(vault: Vault, args: argparse.Namespace) -> int:
    vault.remove_config(args.name)
    print(f"removed configuration {args.name} with its keys and fetched values")
    return 0


def cmd_import(vault: Vault, args: argparse.Namespace) -> int:
    replacing = set(vault.configs.names())
    config = vault.import_config(Path(args.file), replace=args.replace)
    verb = "replaced" if config.name in replacing else "imported"
    print(f"{verb} configuration {config.name}: {_credentials_said(vault, config, verb == 'replaced')}")
    everywhere = [m.alias for m in config.secrets if any(map(reaches_any_host, config.hosts_for(m)))]
    if everywhere:
        warn(f"{', '.join(everywhere)} may be sent to any host (a * hosts rule in {args.file})")
    _warn_region(config)
    return 0


def _credentials_said(vault: Vault, config: ProviderConfig, replaced: bool) -> str:
    """What the import did to credentials, truthfully: files never hold them, so an import
    never changes them; it only says where they come from now."""
    stored = vault.credentials(config.name) is not None
    kept = "kept" if replaced else "found"
    if config.credentials_source == "static":
        if stored:
            return f"uses the static AWS keys {kept} in the vault for {config.name}"
        return f"no AWS keys yet: set them with `vaultproxy config set-credentials {config.name}`"
    source = f"AWS profile {config.aws_profile!r}" if config.credentials_source == "profile" else "the default AWS credential chain"
    unused = f"; the static keys {kept} in the vault stay unused" if stored else ""
    return f"credentials come from {source}{unused}"


def cmd_export(vault: Vault, args: argparse.Namespace) -> int:
    sys.stdout.write(dump_config(vault.configs.load(args.name)))
    return 0


def config_names(prefix: str, parsed_args: argparse.Namespace, **_: Any) -> list[str]:
    """Shell completion for a configuration name: the files, no vault to open."""
    home = Path(parsed_args.home).expanduser() if getattr(parsed_args, "home", None) else default_home()
    return [name for name in Vault(home).configs.names() if name.startswith(prefix)]


def named(p: argparse.ArgumentParser, help: str, *, optional: bool = False) -> None:
    """A configuration NAME argument, completed from the configuration files."""
    action = p.add_argument("name", nargs="?" if optional else None, help=help)
    action.completer = config_names  # type: ignore[attr-defined]  # argcomplete reads it


def register(commands: Any) -> None:
    config = subcommands(commands, "config", "AWS Secrets Manager configurations (shareable YAML; keys stay in the vault)", [
        "vaultproxy config add production --region us-east-1 --hosts '*.example.com'",
        "vaultproxy config list",
    ])
    p = command(config, "add", cmd_add, "add a configuration and test it (static keys are prompted, or read from stdin)", [
        "vaultproxy config add production --region us-east-1 --hosts '*.example.com'",
        "vaultproxy config add staging --region eu-west-1 --source profile --aws-profile staging",
        "printf '%s\\n%s\\n' \"$KEY_ID\" \"$SECRET_KEY\" | vaultproxy config add ci --region us-east-1",
    ])
    named(p, "a name for it: 1-64 of A-Z a-z 0-9 _ -")
    p.add_argument("--region", required=True, help="its AWS region, e.g. us-east-1")
    p.add_argument("--display-name", help="a longer name for listings, e.g. 'Production (EU)'")
    p.add_argument("--source", default="static", choices=SOURCES,
                   help="where credentials come from: static keys kept in the vault (default), an AWS CLI "
                        "profile (SSO and assume-role included), or boto3's default chain")
    p.add_argument("--aws-profile", help="the AWS CLI profile, with --source profile, e.g. staging")
    p.add_argument("--endpoint-url", help="a Secrets Manager-compatible endpoint, e.g. http://127.0.0.1:4566")
    p.add_argument("--hosts", help="default hosts for its secrets, e.g. '*.example.com' (`secret add --hosts` overrides)")
    p.add_argument("--allow-any-host", action="store_true", help=ANY_HOST_HELP)
    command(config, "list", cmd_list, "list configurations with the state of their last test or fetch",
            ["vaultproxy config list --json"], listing=True)
    named(command(config, "use", cmd_use, "make a configuration the active one", ["vaultproxy config use staging"]),
          "the configuration to use")
    named(command(config, "test", cmd_test, "check the credentials (STS GetCallerIdentity)", ["vaultproxy config test production"]),
          "the configuration to test (default: the active one)", optional=True)
    named(command(config, "set-credentials", cmd_set_credentials, "replace a configuration's static keys (prompted, or stdin)",
                  ["vaultproxy config set-credentials production"]), "the configuration whose keys change")
    named(command(config, "remove", cmd_remove, "delete a configuration with its keys and fetched values",
                  ["vaultproxy config remove staging"]), "the configuration to delete")
    p = command(config, "import", cmd_import, "add a shared YAML configuration (credentials are set separately)", [
        "vaultproxy config import configs/example-production.yaml",
        "vaultproxy config import production.yaml --replace",
    ])
    p.add_argument("file", help="the YAML file, e.g. one that `vaultproxy config export` wrote")
    p.add_argument("--replace", action="store_true",
                   help="replace a configuration of the same name (its keys stay in the vault)")
    named(command(config, "export", cmd_export, "print a configuration as shareable YAML (never credentials)",
                  ["vaultproxy config export production > production.yaml"]), "the configuration to print")
