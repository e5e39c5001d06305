"""`vaultproxy config ...`: provider configurations (shareable YAML, credentials in the vault).

Each provider's own settings are flags generated from its Schema (vaultcore/providers/):
`--region` for aws and ssm, `--address` for vault, and so on; a new provider's fields need
no code here.
"""

from __future__ import annotations

import argparse
import getpass
import shlex
import sys
from pathlib import Path
from typing import Any

from vaultcore.cli import (
    ANY_HOST_HELP, UsageError, add_refresh_flags, checked, command, error_text, print_json, print_table, rules, subcommands,
    warn,
)
from vaultcore.configurations import config_error, destination, destination_changes
from vaultcore.hostrules import normalise_host_rule, reaches_any_host
from vaultcore.peertext import quoted
from vaultcore.profiles import (
    PROVIDERS, SOURCES, ConfigError, ProviderConfig, check_name, check_text, dump_config, parse_duration, parse_field,
    parse_refresh_on, settings,
)
from vaultcore.providers.base import Field, ProviderError, provider_for, schema_for
from vaultcore.store import VaultError
from vaultcore.vault import Vault, default_home

# The destination fields that name a server of the file's choosing (an AWS-compatible endpoint,
# a Vault address), where ambient credentials would go; without one, AWS's own endpoints.
SERVER_FIELDS = ("endpoint_url", "address")


def read_credentials(config: ProviderConfig) -> Any:
    """What the configuration's provider keeps in the vault: prompted on a terminal (secrets
    hidden), else one line of stdin each, in the prompts' order (optional lines may be empty
    or missing)."""
    provider = provider_for(config)
    prompts = provider.credential_prompts(config)
    if sys.stdin.isatty():
        answers = [(getpass.getpass if p.secret else input)(f"{p.label}: ").strip() for p in prompts]
    else:
        lines = sys.stdin.read().splitlines() + [""] * len(prompts)
        answers = [line.strip() for line in lines[:len(prompts)]]
    missing = [p.noun for p, answer in zip(prompts, answers) if p.required and not answer]
    if missing:
        raise VaultError(f"{' and '.join(missing)} {'are both' if len(missing) == 2 else 'is'} needed")
    return provider.credentials_from_dict({p.key: answer for p, answer in zip(prompts, answers) if answer})


def provider_fields(where: str) -> dict[str, list[tuple[str, Field]]]:
    """Each provider field of `where` by name, with the providers that have it (aws and ssm
    share `region`): one flag serves them all."""
    fields: dict[str, list[tuple[str, Field]]] = {}
    for provider in PROVIDERS:
        for f in schema_for(provider).of(where):
            fields.setdefault(f.name, []).append((provider, f))
    return fields


def add_field_flags(p: argparse.ArgumentParser, where: str) -> None:
    for name, owners in provider_fields(where).items():
        f = owners[0][1]
        used_by = ", ".join(provider for provider, _ in owners)
        p.add_argument(flag(name), dest=f"field_{name}", metavar=name.upper() if f.kind != "choice" else None,
                       choices=f.choices if f.kind == "choice" else None, help=f"{f.help} ({used_by})")


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def field_values(args: argparse.Namespace, provider: str, where: str, owner: type) -> dict[str, Any]:
    """The provider's own settings from its flags, as keyword arguments for `owner`; a flag of
    another provider, or a required one missing, is a usage error."""
    own = {f.name: f for f in schema_for(provider).of(where)}
    values: dict[str, Any] = {}
    for name, owners in provider_fields(where).items():
        text = getattr(args, f"field_{name}")
        if text is None:
            continue
        if name not in own:
            raise UsageError(f"{flag(name)} is a setting of {', '.join(p for p, _ in owners)}, not of provider {provider}")
        values[name] = checked(flag(name), text, lambda value, f=own[name]: parse_field(f, value))
    for f in own.values():
        if f.required and f.name not in values:
            raise UsageError(f"{flag(f.name)} is needed with provider {provider}: {f.help}")
    return settings(owner, tuple(own.values()), values)


def cmd_add(vault: Vault, args: argparse.Namespace) -> int:
    schema = schema_for(args.provider)
    source = args.source or schema.sources[0]
    if source not in schema.sources:
        raise UsageError(f"--source: provider {args.provider} takes credentials from {', '.join(schema.sources)} (got {source})")
    if (source == "profile") != bool(args.aws_profile):
        raise UsageError("--aws-profile NAME goes with --source profile, and --source profile needs it")
    own = field_values(args, args.provider, "top", ProviderConfig)
    credential_options = field_values(args, args.provider, "credentials", dict)["options"]
    config = ProviderConfig(
        name=checked("NAME", args.name, check_name),
        display_name=checked("--display-name", args.display_name, check_text) if args.display_name else args.name,
        provider=args.provider,
        credentials_source=source,
        aws_profile=checked("--aws-profile", args.aws_profile, check_text) if args.aws_profile else None,
        hosts=rules("--hosts", args.hosts, normalise_host_rule, args.allow_any_host) or (),
        refresh=checked("--refresh", args.refresh, parse_duration) if args.refresh else 0,
        refresh_on=checked("--refresh-on", args.refresh_on, parse_refresh_on) if args.refresh_on else (),
        **{**own, "options": own["options"] + credential_options},
    )
    credentials = read_credentials(config) if provider_for(config).credential_prompts(config) else None
    vault.add_config(config, credentials)
    print(f"saved configuration {args.name}")
    _warn_about(config)
    # The configuration is saved either way (it may be set up before the network or the
    # credentials work), so a failed test is a warning here, not a failed command; `config
    # list` and `status` show it until a test or a fetch succeeds.
    _report_test(vault, args.name)
    return 0


def _warn_about(config: ProviderConfig) -> None:
    """What validates but is likely wrong, e.g. a region AWS does not have (AWS answers one
    with a connection failure that does not say so)."""
    problem = provider_for(config).config_warning(config)
    if problem:
        warn(problem)


def _report_test(vault: Vault, name: str | None) -> int:
    try:
        identity = vault.test_config(name)
    except ProviderError as e:
        print(f"vaultproxy: connection test failed: {error_text(e)}", file=sys.stderr)
        return 1
    # What the server says it is: a file's endpoint may answer anything, escape sequences too.
    shown = [quoted(str(part), None, neutralised=False) for part in (identity.arn, identity.scope, identity.account)]
    print(f"connected as {shown[0]} ({shown[1]} {shown[2]})")
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
        location = schema_for(config.provider).location
        rows.append({
            "name": name, "display_name": config.display_name, "provider": config.provider,
            "location": (getattr(config, location, None) or config.option(location)) if location else None,
            "region": config.region or None, "source": config.credentials_source, "endpoint_url": config.endpoint_url,
            "secrets": len(config.secrets), "active": name == active,
            "last_fetched": config_state.get("last_fetched"), "error": config_error(config, config_state),
        })
    if args.json:
        print_json(rows)
    else:
        print_table([{**r, "active": "*" if r["active"] else "", "status": r["error"] or "ok"} for r in rows],
                    ["active", "name", "display_name", "provider", "location", "source", "secrets", "last_fetched", "status"],
                    "no configurations: vaultproxy config add NAME --provider aws --region R")
    return 0


def cmd_use(vault: Vault, args: argparse.Namespace) -> int:
    vault.use_config(args.name)
    print(f"active configuration: {args.name}")
    return 0


def cmd_test(vault: Vault, args: argparse.Namespace) -> int:
    return _report_test(vault, args.name)


def cmd_set_credentials(vault: Vault, args: argparse.Namespace) -> int:
    config = vault.configurations.credentials_target(args.name)  # refused before anything is asked
    vault.set_credentials(args.name, read_credentials(config))
    print(f"credentials of {args.name} updated")
    return 0


def cmd_remove(vault: Vault, args: argparse.Namespace) -> int:
    vault.remove_config(args.name)
    print(f"removed configuration {args.name} with its keys and fetched values")
    return 0


def cmd_import(vault: Vault, args: argparse.Namespace) -> int:
    path = Path(args.file)
    replaced: list[ProviderConfig | None] = []

    def vet(incoming: ProviderConfig, current: ProviderConfig | None) -> None:
        _refuse_unintended(path, incoming, current, args)
        replaced.append(current)

    replacing = set(vault.configs.names())
    config = vault.import_config(path, replace=args.replace, vet=vet)
    current = replaced[0]
    verb = "replaced" if config.name in replacing else "imported"
    print(f"{verb} configuration {config.name}: {_credentials_said(vault, config, verb == 'replaced')}")
    everywhere = [m.alias for m in config.secrets if any(map(reaches_any_host, config.hosts_for(m)))]
    if everywhere:
        warn(f"{', '.join(everywhere)} may be sent to any host (a * hosts rule in {args.file})")
    _warn_about(config)
    _list_commands(config)
    if current is not None:
        _warn_widened(current, config)
    return 0


# --- config import: what a shared file may only do on purpose ------------------------------------


def _refuse_unintended(path: Path, incoming: ProviderConfig, current: ProviderConfig | None, args: argparse.Namespace) -> None:
    """Refuse what the user must ask for by name, as on the command line: commands that this
    machine would run (new or changed ones: those of the configuration replaced were allowed
    already) without --allow-commands, another destination for the credentials of the one it
    replaces (its address, endpoint, region, credentials source or AWS profile: ambient
    credentials, a VAULT_TOKEN or an AWS profile's, would follow it at once), or for a new
    one a server of its choosing for ambient credentials, without --allow-new-destination,
    a rule that reaches nearly every host without --allow-any-host. Each is shown in full, as
    the file says it."""
    known = set(_commands(current).values()) if current else set()
    new = {alias: argv for alias, argv in _commands(incoming).items() if argv not in known}
    if new and not args.allow_commands:
        raise UsageError(
            f"{path} runs commands as you, with access to your files and the vault (at `secret fetch`, and at each "
            f"refresh while a proxy runs): {'; '.join(f'{alias}: {_shown_command(argv)}' for alias, argv in new.items())}; "
            "if you trust them, add --allow-commands"
        )
    if current is not None and (moved := destination_changes(destination(current), destination(incoming))) and not args.allow_new_destination:
        raise UsageError(
            f"{path} sends {incoming.name}'s credentials elsewhere ({moved}): those your environment or AWS profile "
            "gives would go there at once; if you trust it, add --allow-new-destination (credentials kept in the "
            f"vault then need `vaultproxy config set-credentials {incoming.name}`)"
        )
    if current is None and (chosen := _ambient_destination(incoming)) and not args.allow_new_destination:
        raise UsageError(
            f"{path} sends the credentials your environment or AWS profile gives (credentials.source: "
            f"{incoming.credentials_source}) to {chosen}, as soon as {incoming.name} is used; if you trust it, "
            "add --allow-new-destination"
        )
    anywhere = [f"{who} ({field}: {', '.join(rules)})" for who, field, rules in _rules(incoming) if any(map(reaches_any_host, rules))]
    if anywhere and not args.allow_any_host:
        raise UsageError(f"{path}: * rules let secrets go anywhere: {'; '.join(anywhere)}; "
                         "add --allow-any-host if that is what you mean")


def _ambient_destination(config: ProviderConfig) -> str | None:
    """Where a new configuration sends ambient credentials (a VAULT_TOKEN, boto3's default
    chain, an AWS profile's keys), when its file chose the server: an AWS endpoint of its
    own, a Vault address. None for credentials kept in the vault (a configuration gets
    none until `config set-credentials`) and for AWS's own endpoints."""
    if config.credentials_source == "static":
        return None
    chosen = {name: value for name, value in destination(config).items() if name in SERVER_FIELDS and value}
    return ", ".join(f"{name} {quoted(str(value), None, neutralised=False)}" for name, value in chosen.items()) or None


def _commands(config: ProviderConfig) -> dict[str, tuple[str, ...]]:
    """The commands a configuration runs, by alias: its mappings' `command` (a command
    provider's; no other provider's file names a program: an AWS profile's credential_process
    is in the user's own AWS config, not in the file)."""
    return {m.alias: m.option("command") for m in config.secrets if m.option("command")}


def _shown_command(argv: tuple[str, ...]) -> str:
    """An argv as a shell would take it, whole, control characters escaped."""
    return quoted(shlex.join(argv), None, neutralised=False)


def _rules(config: ProviderConfig) -> list[tuple[str, str, tuple[str, ...]]]:
    """Every hosts and origins rule list of a configuration, with whose it is."""
    return [("the configuration", "hosts", config.hosts)] + [
        (m.alias, field, rules) for m in config.secrets
        for field, rules in (("hosts", m.hosts or ()), ("origins", m.origins))
    ]


def _list_commands(config: ProviderConfig) -> None:
    """Every command the imported configuration runs, whole: what --allow-commands allowed."""
    commands = _commands(config)
    if commands:
        print("commands it runs, as you, at `secret fetch` and at each refresh while a proxy runs:")
        for alias, argv in commands.items():
            print(f"  {alias}: {_shown_command(argv)}")


def _warn_widened(current: ProviderConfig, config: ProviderConfig) -> None:
    """Per secret, the hosts and pages the new file adds to those of the one it replaced: a
    value already fetched goes there from now on, without a new fetch to notice."""
    for m in config.secrets:
        old = current.mapping(m.alias)
        if old is None:
            warn(f"{m.alias} is a new secret, sent to {', '.join(config.hosts_for(m)) or 'no host'}"
                 + (f" (and used by pages of {', '.join(m.origins)})" if m.origins else ""))
            continue
        for field, before, after, where in (("hosts", current.hosts_for(old), config.hosts_for(m), "sent to"),
                                            ("origins", old.origins, m.origins, "used by pages of")):
            added = [rule for rule in after if rule not in before]
            if added:
                warn(f"{m.alias} may now also be {where} {', '.join(added)} "
                     f"({field}: {', '.join(before) or 'none'} -> {', '.join(after)})")


def _credentials_said(vault: Vault, config: ProviderConfig, replaced: bool) -> str:
    """What the import did to credentials, truthfully: files never hold them, so an import
    never changes them; it only says where they come from now."""
    provider = provider_for(config)
    noun = schema_for(config.provider).credentials
    stored = vault.state().get("configs", {}).get(config.name, {}).get("credentials") is not None
    kept = "kept" if replaced else "found"
    if provider.credential_prompts(config):
        if stored:
            try:
                vault.credentials(config.name)  # refused when set for another destination: says what changed, and the fix
            except ProviderError as e:
                return str(e)
            return f"uses the static {noun} {kept} in the vault for {config.name}"
        return f"no {noun} yet: set them with `vaultproxy config set-credentials {config.name}`"
    unused = f"; the static keys {kept} in the vault stay unused" if stored else ""
    return f"credentials come from {provider.credentials_origin(config)}{unused}"


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
    config = subcommands(commands, "config", "provider configurations (shareable YAML; credentials stay in the vault)", [
        "vaultproxy config add production --region us-east-1 --hosts '*.example.com'",
        "vaultproxy config add team --provider vault --address https://vault.example.com:8200 --hosts '*.example.com'",
        "vaultproxy config list",
    ])
    p = command(config, "add", cmd_add, "add a configuration and test it (credentials are prompted, or read from stdin)", [
        "vaultproxy config add production --region us-east-1 --hosts '*.example.com'",
        "vaultproxy config add staging --region eu-west-1 --source profile --aws-profile staging",
        "printf '%s\\n%s\\n' \"$KEY_ID\" \"$SECRET_KEY\" | vaultproxy config add ci --region us-east-1",
        "vaultproxy config add params --provider ssm --region us-east-1 --source default",
        "vaultproxy config add team --provider vault --address https://vault.example.com:8200 --source default",
        "vaultproxy config add cli --provider command --hosts api.example.com",
    ])
    named(p, "a name for it: 1-64 of A-Z a-z 0-9 _ -")
    p.add_argument("--provider", default="aws", choices=PROVIDERS,
                   help="aws (Secrets Manager, the default), ssm (Parameter Store), vault (HashiCorp Vault or "
                        "OpenBao KV) or command (any command-line secret manager)")
    p.add_argument("--display-name", help="a longer name for listings, e.g. 'Production (EU)'")
    p.add_argument("--source", choices=SOURCES,
                   help="where credentials come from: static ones kept in the vault (the default where the "
                        "provider has it), an AWS CLI profile (aws, ssm), or the provider's own default sources "
                        "(boto3's chain; VAULT_TOKEN or ~/.vault-token)")
    p.add_argument("--aws-profile", help="the AWS CLI profile, with --source profile, e.g. staging")
    add_field_flags(p, "top")
    add_field_flags(p, "credentials")
    p.add_argument("--hosts", help="default hosts for its secrets, e.g. '*.example.com' (`secret add --hosts` overrides)")
    p.add_argument("--allow-any-host", action="store_true", help=ANY_HOST_HELP)
    add_refresh_flags(p, "(default: only when asked, by `secret refresh`)")
    command(config, "list", cmd_list, "list configurations with the state of their last test or fetch",
            ["vaultproxy config list --json"], listing=True)
    named(command(config, "use", cmd_use, "make a configuration the active one", ["vaultproxy config use staging"]),
          "the configuration to use")
    named(command(config, "test", cmd_test, "check the credentials (AWS: STS GetCallerIdentity; Vault: token lookup)",
                  ["vaultproxy config test production"]),
          "the configuration to test (default: the active one)", optional=True)
    named(command(config, "set-credentials", cmd_set_credentials,
                  "replace the credentials kept for a configuration (AWS keys, a Vault token or AppRole; prompted, or stdin)",
                  ["vaultproxy config set-credentials production"]), "the configuration whose keys change")
    named(command(config, "remove", cmd_remove, "delete a configuration with its keys and fetched values",
                  ["vaultproxy config remove staging"]), "the configuration to delete")
    p = command(config, "import", cmd_import, "add a shared YAML configuration (credentials are set separately)", [
        "vaultproxy config import configs/example-production.yaml",
        "vaultproxy config import production.yaml --replace",
        "vaultproxy config import configs/example-command.yaml --allow-commands   # after reading its commands",
    ])
    p.add_argument("file", help="the YAML file, e.g. one that `vaultproxy config export` wrote")
    p.add_argument("--replace", action="store_true",
                   help="replace a configuration of the same name (its keys stay in the vault); says which hosts "
                        "each secret gains")
    p.add_argument("--allow-commands", action="store_true",
                   help="allow a file whose secrets are commands (provider command): they run as you, at `secret "
                        "fetch` and at each refresh; only for a file you trust (with --replace: needed for new or "
                        "changed commands only)")
    p.add_argument("--allow-new-destination", action="store_true",
                   help="allow a file that sends credentials somewhere new: with --replace, another address, "
                        "endpoint, region, credentials source or AWS profile; a new configuration, the credentials "
                        "your environment or an AWS profile gives to a server the file names")
    p.add_argument("--allow-any-host", action="store_true", help=ANY_HOST_HELP)
    named(command(config, "export", cmd_export, "print a configuration as shareable YAML (never credentials)",
                  ["vaultproxy config export production > production.yaml"]), "the configuration to print")
