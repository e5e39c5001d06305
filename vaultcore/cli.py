"""The `vaultproxy` command.

Exit codes: 0 ok, 1 the operation failed (one line on stderr), 2 usage error. Values are
read from stdin or a hidden prompt, never from argv (shell history, `ps`), and printed only
by `local get`, which exists to print one.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from vaultcore import placeholders, proxyenv
from vaultcore.credential import CREDENTIAL_FILE
from vaultcore.index import Destination, is_loopback
from vaultcore.placeholders import Context, SubstitutionError
from vaultcore.profiles import ConfigError, ProviderConfig, SecretMapping, dump_config
from vaultcore.providers.base import ProviderError, StaticCredentials
from vaultcore.store import PASSPHRASE_ENV, PASSPHRASE_FD_ENV, VaultError, check_home, pass_passphrase_by_pipe
from vaultcore.vault import Vault, abbreviated, config_error, default_home

USER_ERRORS = (VaultError, ConfigError, ProviderError)


class UsageError(Exception):
    """Wrong words on the command line: exit code 2."""


# --- small helpers -----------------------------------------------------------------------


def csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True))


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str], empty: str) -> None:
    if not rows:
        print(empty)
        return
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths)).rstrip())
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, (list, tuple)):
        return ",".join(value) or "-"
    return str(value)


def read_secret(prompt: str) -> str | bytes:
    """A value from a hidden prompt on a terminal, else all of stdin (one trailing newline
    dropped, as `echo` adds it). Non-UTF-8 input is kept as bytes."""
    if sys.stdin.isatty():
        return getpass.getpass(prompt)
    data = sys.stdin.buffer.read()
    data = data[:-2] if data.endswith(b"\r\n") else data[:-1] if data.endswith(b"\n") else data
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data


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


# --- commands -----------------------------------------------------------------------------


def cmd_start(vault: Vault, args: argparse.Namespace) -> int:
    extra = args.mitmdump_args[1:] if args.mitmdump_args[:1] == ["--"] else args.mitmdump_args
    check_home(vault.home)
    if not is_loopback(args.listen_host):
        print(
            f"vaultproxy: warning: listening on {args.listen_host}: anyone who can reach this address can ask for "
            f"your secrets, so every client must present the proxy credential ({vault.home / CREDENTIAL_FILE}; "
            "`vaultproxy env` and `vaultproxy exec` pass it on); listen on 127.0.0.1 unless you need this",
            file=sys.stderr,
        )
    argv = proxyenv.mitmdump_argv(vault.home, args.listen_host, args.listen_port, extra)
    os.execve(argv[0], argv, pass_passphrase_by_pipe(dict(os.environ)))
    return 1  # not reached: execve replaces this process


def cmd_env(vault: Vault, args: argparse.Namespace) -> int:
    for name, value in proxyenv.client_environment(vault.home).items():
        print(f"export {name}={_shell_quote(value)}")
    return 0


def _shell_quote(value: str) -> str:
    return "'" + value.replace("'", "'\"'\"'") + "'"


def cmd_exec(vault: Vault, args: argparse.Namespace) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise UsageError("exec needs a command: vaultproxy exec -- curl https://...")
    environment = proxyenv.client_environment(vault.home)
    host, port = proxyenv.proxy_address(vault.home)
    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError:
        raise VaultError(f"no proxy answers on {host}:{port}: start it with `vaultproxy start`") from None
    # The command gets the proxy, never the vault's passphrase (it could open the vault itself).
    inherited = {name: value for name, value in os.environ.items() if name not in (PASSPHRASE_ENV, PASSPHRASE_FD_ENV)}
    os.execvpe(command[0], command, {**inherited, **environment})
    return 1  # not reached


def cmd_status(vault: Vault, args: argparse.Namespace) -> int:
    status = vault.status()
    if args.json:
        print_json(status)
        return 0
    print(f"vault home:    {status['home']}")
    print(f"configuration: {status['active_config'] or '(none active)'}")
    if status["config_error"]:
        print(f"config error:  {status['config_error']}")
    rows = [
        {**row, "status": f"overridden by duplicate key in {row['shadowed_by']}" if row.get("shadowed_by") else row.get("error") or "ok"}
        for row in status["keys"]
    ]
    print_table(rows, ["key", "source", "hosts", "last_fetched", "status"], "no secrets yet: vaultproxy local set KEY --hosts HOST")
    return 0


def cmd_local_set(vault: Vault, args: argparse.Namespace) -> int:
    if args.value_in_argv is not None:
        raise UsageError(
            "values are never taken from the command line (they end up in shell history and ps); "
            f"pipe it instead: printf %s \"$VALUE\" | vaultproxy local set {args.key}"
        )
    hosts = csv(args.hosts) if args.hosts is not None else None
    origins = csv(args.origins) if args.origins is not None else None
    vault.set(args.key, read_secret(f"value for {args.key}: "), hosts, origins)
    if not (hosts or any(s["key"] == args.key and s["hosts"] for s in vault.local_secrets())):
        print(f"vaultproxy: note: {args.key} has no hosts rule, so it is injected nowhere; add one with --hosts", file=sys.stderr)
    return 0


def cmd_local_get(vault: Vault, args: argparse.Namespace) -> int:
    value = vault.get(args.key)
    if isinstance(value, bytes):
        sys.stdout.buffer.write(value)
    else:
        sys.stdout.write(value + ("\n" if sys.stdout.isatty() else ""))
    return 0


def cmd_local_unset(vault: Vault, args: argparse.Namespace) -> int:
    vault.unset(args.key)
    return 0


def cmd_local_list(vault: Vault, args: argparse.Namespace) -> int:
    rows = vault.local_secrets()
    if args.json:
        print_json(rows)
    else:
        print_table(rows, ["key", "hosts", "origins", "updated_at"], "no local secrets")
    return 0


def cmd_resolve(vault: Vault, args: argparse.Namespace) -> int:
    """Dry run: which keys would resolve for this host, with every value masked."""
    index = vault.index()
    destination = Destination(args.host, args.scheme, args.origin)
    context = Context(args.context)
    results = []
    for ref in placeholders.find_references(args.text, context):
        try:
            secret = index.check(ref.key, destination, allow_plaintext=args.allow_plaintext)
            results.append({"key": ref.key, "resolves": True, "source": secret.source})
        except SubstitutionError as e:
            results.append({"key": ref.key, "resolves": False, "code": e.code, "error": str(e)})
    masked = placeholders.substitute(args.text, context, lambda key: "*" * 8)[0]
    if args.json:
        print_json({"text": masked, "keys": results})
    else:
        print(masked)
        for r in results:
            print(f"  {r['key']}: " + (f"resolves ({r['source']})" if r["resolves"] else f"REFUSED {r['code']}: {r['error']}"))
    return 0 if all(r["resolves"] for r in results) else 1


def cmd_config_add(vault: Vault, args: argparse.Namespace) -> int:
    config = ProviderConfig(
        name=args.name,
        display_name=args.display_name or args.name,
        region=args.region,
        credentials_source=args.source,
        aws_profile=args.aws_profile,
        endpoint_url=args.endpoint_url,
        hosts=tuple(csv(args.hosts or "")),
    )
    if (args.source == "profile") != bool(args.aws_profile):
        raise UsageError("--aws-profile NAME goes with --source profile, and --source profile needs it")
    credentials = read_credentials(args.name) if args.source == "static" else None
    vault.add_config(config, credentials)
    print(f"saved configuration {args.name}")
    # The configuration is saved either way (it may be set up before the network or the
    # keys work), so a failed test is a warning here, not a failed command.
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


def cmd_config_list(vault: Vault, args: argparse.Namespace) -> int:
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


def cmd_config_use(vault: Vault, args: argparse.Namespace) -> int:
    vault.use_config(args.name)
    print(f"active configuration: {args.name}")
    return 0


def cmd_config_test(vault: Vault, args: argparse.Namespace) -> int:
    return _report_test(vault, args.name)


def cmd_config_set_credentials(vault: Vault, args: argparse.Namespace) -> int:
    vault.set_credentials(args.name, read_credentials(args.name))
    print(f"credentials of {args.name} updated")
    return 0


def cmd_config_remove(vault: Vault, args: argparse.Namespace) -> int:
    vault.remove_config(args.name)
    print(f"removed configuration {args.name} with its keys and fetched values")
    return 0


def cmd_config_import(vault: Vault, args: argparse.Namespace) -> int:
    config = vault.import_config(Path(args.file))
    print(f"imported configuration {config.name}" + (": set its keys with `vaultproxy config set-credentials " + config.name + "`" if config.credentials_source == "static" else ""))
    return 0


def cmd_config_export(vault: Vault, args: argparse.Namespace) -> int:
    sys.stdout.write(dump_config(vault.configs.load(args.name)))
    return 0


def cmd_secret_add(vault: Vault, args: argparse.Namespace) -> int:
    mapping = SecretMapping(
        alias=args.alias, secret_id=args.secret_id, mode=args.mode,
        hosts=tuple(csv(args.hosts)) if args.hosts is not None else None,
        origins=tuple(csv(args.origins or "")), version_stage=args.version_stage,
    )
    config = vault.add_secret(mapping, args.config)
    print(f"{args.alias} added to {config.name}; fetch it with `vaultproxy secret fetch {args.alias}`")
    return 0


def cmd_secret_list(vault: Vault, args: argparse.Namespace) -> int:
    rows = vault.secret_rows(args.config)
    if args.json:
        print_json(rows)
    else:
        print_table([{**r, "status": r["error"] or r["status"]} for r in rows],
                    ["alias", "secret_id", "mode", "last_fetched", "status"], "no secrets in this configuration: vaultproxy secret add ALIAS --secret-id ID")
    return 0


def cmd_secret_fetch(vault: Vault, args: argparse.Namespace) -> int:
    if getattr(args, "all", False) == bool(args.aliases):
        raise UsageError("name the aliases to fetch, or use refresh --all")
    results = vault.fetch(None if getattr(args, "all", False) else args.aliases, args.config,
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


def cmd_secret_move_to_local(vault: Vault, args: argparse.Namespace) -> int:
    keys = vault.move_to_local(args.alias, args.config)
    print(f"{args.alias} is now local: {', '.join(keys)}")
    return 0


def cmd_secret_remove(vault: Vault, args: argparse.Namespace) -> int:
    vault.remove_secret(args.alias, args.config)
    return 0


# --- the parser ------------------------------------------------------------------------------


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line, like every other error; the usage is one `--help` away."""
        if message.startswith("unrecognized arguments"):
            # argparse would quote them back: one may be a value typed into argv by mistake
            message = "unrecognized arguments (not repeated here: one may be a secret; values go on stdin)"
        self.exit(2, f"vaultproxy: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="vaultproxy", description="Resolve <<vault:KEY>> placeholders in HTTP(S) requests.")
    parser.add_argument("--home", help="vault home (default: $VAULTPROXY_HOME or the user config dir)")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    def command(group: Any, name: str, handler: Callable[..., int], help: str, *, listing: bool = False) -> argparse.ArgumentParser:
        p = group.add_parser(name, help=help, description=help)
        p.set_defaults(handler=handler)
        if listing:
            p.add_argument("--json", action="store_true", help="machine-readable output")
        return p

    p = command(commands, "start", cmd_start, "run the proxy (mitmdump with the vaultproxy addon)")
    p.add_argument("--listen-host", default="127.0.0.1")
    p.add_argument("--listen-port", type=int, default=8080)
    p.add_argument("mitmdump_args", nargs=argparse.REMAINDER, help="after --: passed to mitmdump")
    command(commands, "env", cmd_env, "print export lines that point HTTP clients at the proxy")
    p = command(commands, "exec", cmd_exec, "run a command with the proxy environment")
    p.add_argument("command", nargs=argparse.REMAINDER)
    command(commands, "status", cmd_status, "active configuration and every key with its source", listing=True)
    p = command(commands, "resolve", cmd_resolve, "dry run: which keys would resolve for a host (values masked)", listing=True)
    p.add_argument("text")
    p.add_argument("--host", required=True)
    p.add_argument("--origin")
    p.add_argument("--scheme", default="https", choices=["http", "https"])
    p.add_argument("--context", default="raw", choices=[c.value for c in Context])
    p.add_argument("--allow-plaintext", action="store_true")

    local = commands.add_parser("local", help="local secrets").add_subparsers(dest="local_command", required=True, parser_class=Parser)
    p = command(local, "set", cmd_local_set, "store a local secret; the value comes from stdin or a hidden prompt")
    p.add_argument("key")
    p.add_argument("value_in_argv", nargs="?", help=argparse.SUPPRESS)
    p.add_argument("--hosts", help="comma-separated host globs the secret may be sent to")
    p.add_argument("--origins", help="comma-separated web origins allowed to use it")
    command(local, "get", cmd_local_get, "print a value").add_argument("key")
    command(local, "unset", cmd_local_unset, "remove a local secret").add_argument("key")
    command(local, "list", cmd_local_list, "list local secrets (no values)", listing=True)

    config = commands.add_parser("config", help="AWS provider configurations").add_subparsers(dest="config_command", required=True, parser_class=Parser)
    p = command(config, "add", cmd_config_add, "add a configuration (static keys are prompted)")
    p.add_argument("name")
    p.add_argument("--region", required=True)
    p.add_argument("--display-name")
    p.add_argument("--source", default="static", choices=["static", "profile", "default"])
    p.add_argument("--aws-profile")
    p.add_argument("--endpoint-url")
    p.add_argument("--hosts", help="default host globs for its secrets")
    command(config, "list", cmd_config_list, "list configurations", listing=True)
    command(config, "use", cmd_config_use, "make a configuration the active one").add_argument("name")
    command(config, "test", cmd_config_test, "check the credentials (STS GetCallerIdentity)").add_argument("name", nargs="?")
    command(config, "set-credentials", cmd_config_set_credentials, "replace a configuration's static keys").add_argument("name")
    command(config, "remove", cmd_config_remove, "delete a configuration and its cache").add_argument("name")
    command(config, "import", cmd_config_import, "add a shared YAML configuration").add_argument("file")
    command(config, "export", cmd_config_export, "print a configuration as shareable YAML").add_argument("name")

    secret = commands.add_parser("secret", help="secrets of a configuration").add_subparsers(dest="secret_command", required=True, parser_class=Parser)
    p = command(secret, "add", cmd_secret_add, "map an AWS secret to an alias")
    p.add_argument("alias")
    p.add_argument("--secret-id", required=True)
    p.add_argument("--mode", default="plaintext", choices=["plaintext", "json"])
    p.add_argument("--hosts")
    p.add_argument("--origins")
    p.add_argument("--version-stage")
    p.add_argument("--config")
    p = command(secret, "list", cmd_secret_list, "alias, secret id, mode, last fetched, status", listing=True)
    p.add_argument("--config")
    for name, help in (("fetch", "fetch secrets now"), ("refresh", "fetch again (--all: every secret)")):
        p = command(secret, name, cmd_secret_fetch, help)
        p.add_argument("aliases", nargs="*")
        if name == "refresh":
            p.add_argument("--all", action="store_true")
        p.add_argument("--config")
        p.add_argument("--no-batch", action="store_true", help="one GetSecretValue per secret")
    p = command(secret, "move-to-local", cmd_secret_move_to_local, "turn a fetched secret into local secrets")
    p.add_argument("alias")
    p.add_argument("--config")
    p = command(secret, "remove", cmd_secret_remove, "remove a secret from its configuration")
    p.add_argument("alias")
    p.add_argument("--config")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    vault = Vault(Path(args.home).expanduser() if args.home else default_home())
    try:
        return args.handler(vault, args)
    except UsageError as e:
        print(f"vaultproxy: error: {e}", file=sys.stderr)
        return 2
    except USER_ERRORS as e:
        print(f"vaultproxy: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # never a traceback (it could quote a value); the type says where to look
        if os.environ.get("VAULTPROXY_DEBUG"):
            raise
        print(f"vaultproxy: error: unexpected {type(e).__name__}; run with VAULTPROXY_DEBUG=1 for details", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
