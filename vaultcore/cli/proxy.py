"""The proxy and its clients: `start`, `stop`, `status`, `env`, `exec`, `log` and `resolve`.

Every command here that talks to a proxy uses the one serving this vault home, as its
proxy.json says and verified (vaultcore/proxyenv.py), never a default address.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import socket
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from vaultcore import auditlog, placeholders, proxyenv
from vaultcore.cli import CliError, UsageError, checked, command, note, print_json, print_table, warn
from vaultcore.credential import CREDENTIAL_FILE
from vaultcore.hostrules import parse_host_rule
from vaultcore.index import Destination, is_loopback
from vaultcore.peertext import quoted
from vaultcore.placeholders import Context, SubstitutionError
from vaultcore.proxyenv import NoProxy, ProxyInfo
from vaultcore.store import PASSPHRASE_ENV, VaultError, check_home, handed_over_passphrase, pass_passphrase_by_pipe, read_header, without_passphrase
from vaultcore.tokens import TokenSourceError, load_sources, reserved_credentials
from vaultcore.vault import Vault

# mitmdump's own ways to choose the address; after `--` they win over vaultproxy's.
LISTEN_FLAGS = ("-p", "--listen-port", "--listen-host", "--mode", "-m")


# --- start and stop --------------------------------------------------------------------------


def cmd_start(vault: Vault, args: argparse.Namespace) -> int:
    extra = _mitmdump_args(args.mitmdump_args)
    check_home(vault.home)
    try:
        running = proxyenv.serving_proxy(vault.home)
    except NoProxy:
        pass
    else:
        raise CliError(f"a proxy already serves {vault.home}, on {running.address} (pid {running.pid}): `vaultproxy stop` first")
    if not any(word.partition("=")[0] in LISTEN_FLAGS for word in extra):  # else mitmdump's address
        _check_free(args.listen_host, args.listen_port)
    environment = _open_vault(vault)
    if not is_loopback(args.listen_host):
        warn(
            f"listening on {args.listen_host}: anyone who can reach this address can ask for your secrets, so every "
            f"client must present the proxy credential ({vault.home / CREDENTIAL_FILE}; `vaultproxy env` and "
            "`vaultproxy exec` pass it on); listen on 127.0.0.1 unless you need this"
        )
    argv = proxyenv.mitmdump_argv(vault.home, args.listen_host, args.listen_port, extra)
    os.execve(argv[0], argv, environment)
    return 1  # not reached: execve replaces this process


def _mitmdump_args(words: list[str]) -> list[str]:
    """What goes to mitmdump: only words after `--`. A stray word before it is refused:
    mitmdump would take it as a flow filter."""
    if words and words[0] != "--":
        raise UsageError("stray words after the options (not repeated here: one may be a secret); options for mitmdump go after --: "
                         "vaultproxy start --listen-port 8081 -- --set vault_on_missing=keep")
    return words[1:]


def _check_free(host: str, port: int) -> None:
    """Bind the address once: a port in use is one line naming --listen-port here, instead of
    mitmdump's hint about its own flags after start-up."""
    if not 0 <= port < 65536:
        raise UsageError("--listen-port: a port is a number from 0 (any free port) to 65535")
    if port == 0:
        return
    try:
        addresses = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        raise CliError(f"cannot listen on {host!r}: no such address here; give --listen-host an address of this machine") from None
    for family, kind, protocol, _, address in addresses:
        with socket.socket(family, kind, protocol) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as mitmproxy binds
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as e:
                raise CliError(
                    f"cannot listen on {address[0]}:{port}: {(e.strerror or 'refused').lower()}; "
                    "choose another port with --listen-port PORT (or stop what uses it)"
                ) from None


def _open_vault(vault: Vault) -> dict[str, str]:
    """Open the vault here, as the proxy is about to: a wrong passphrase or a damaged vault is
    then one line, before mitmdump starts. Returns mitmdump's environment: the passphrase,
    handed over or typed at the prompt here, goes on in a pipe, so nobody is asked twice."""
    passphrase = handed_over_passphrase()
    if passphrase is None and sys.stdin.isatty() and _key_source(vault) == "passphrase":
        passphrase = getpass.getpass("vault passphrase: ")
    if passphrase is not None:
        os.environ[PASSPHRASE_ENV] = passphrase  # read by snapshot(), then moved into the pipe
    vault.snapshot()
    return pass_passphrase_by_pipe(dict(os.environ))


def _key_source(vault: Vault) -> str | None:
    try:
        header = read_header(vault.store.path.read_bytes(), vault.store.path)[0]
    except (OSError, VaultError):
        return None  # no vault yet, or one that snapshot() will say is damaged
    return str(header.get("key_source"))


def cmd_stop(vault: Vault, args: argparse.Namespace) -> int:
    proxy = proxyenv.stop_proxy(vault.home)
    print(f"stopped the proxy on {proxy.address} (pid {proxy.pid})")
    return 0


# --- clients ------------------------------------------------------------------------------------


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
    # The command gets the proxy, never the vault's passphrase (it could open the vault itself).
    try:
        os.execvpe(command[0], command, {**without_passphrase(os.environ), **environment})
    except FileNotFoundError:
        raise CliError(f"{command[0]}: {'no such file' if os.sep in command[0] else 'command not found'}", 127) from None
    except OSError as e:  # as a shell says it: found, but it cannot run
        raise CliError(f"{command[0]}: {e.strerror or 'cannot run'}", 126) from None
    return 1  # not reached: execvpe replaces this process


# --- what happens -----------------------------------------------------------------------------


def cmd_status(vault: Vault, args: argparse.Namespace) -> int:
    status = vault.status()
    status["proxy"] = _proxy_status(vault)
    if args.json:
        print_json(status)
        return 0
    proxy = status["proxy"]
    print(f"vault home:    {status['home']}")
    if proxy["running"]:
        print(f"proxy:         on {proxy['address']} (pid {proxy['pid']}) since {proxy['started'] or 'an unknown time'}")
        options = ", ".join(f"{name}={_shown(value)}" for name, value in sorted(proxy["options"].items()) if name != "vault_home")
        print(f"proxy options: {options or '(not recorded)'}")
    else:
        print(f"proxy:         {proxy['problem']}")
    print(f"configuration: {status['active_config'] or '(none active)'}")
    if status["config_error"]:
        print(f"config error:  {status['config_error']}")
    if status["signing"]:
        print(f"signing:       {', '.join(rule['name'] + ' (' + rule['kind'] + ')' for rule in status['signing'])}")
    if status["signing_error"]:
        print(f"signing error: {status['signing_error']}")
    for token in status["tokens"]:
        print(f"token {token['name']}: {_token_state(token)}")
    if status["tokens_error"]:
        print(f"tokens error:  {status['tokens_error']}")
    rows = [
        {**row, "status": f"overridden by duplicate key in {row['shadowed_by']}" if row.get("shadowed_by") else row.get("error") or "ok"}
        for row in status["keys"]
    ]
    columns = ["key", "source", "hosts", "last_fetched", "refresh_due", "status"] if any(r.get("refresh") for r in rows) else \
        ["key", "source", "hosts", "last_fetched", "status"]
    print_table(rows, columns, "no secrets yet: vaultproxy local set KEY --hosts HOST")
    return 0


def _token_state(token: dict[str, Any]) -> str:
    """A token source's line in `status`: its grant and what the proxy last said of it."""
    said = f"{token['grant']} at {token['token_url']}"
    if token.get("error"):
        return f"{said}; failing since {token['failed_at']} ({token['failures']} in a row): {token['error']}"
    if token.get("minted_at"):
        return f"{said}; minted {token['minted_at']}" + (f", expires {token['expires_at']}" if token.get("expires_at") else "")
    return f"{said}; not minted yet (the proxy mints it for the first request that uses it)"


def _proxy_status(vault: Vault) -> dict[str, Any]:
    """Whether a proxy serves this home, where, since when, with which options."""
    try:
        info: ProxyInfo | None = proxyenv.serving_proxy(vault.home)
        problem = None
    except NoProxy as e:
        info, problem = e.info, str(e)
    known = {"pid": info.pid, "address": info.address, "started": info.started, "options": info.options} if info else {}
    return {"running": problem is None, "problem": problem, **known}


def _shown(value: Any) -> str:
    if isinstance(value, str):
        return value or '""'
    return json.dumps(value)


def cmd_log(vault: Vault, args: argparse.Namespace) -> int:
    if args.host is not None:
        checked("--host", args.host, lambda rule: str(parse_host_rule(rule)))
    try:
        since = auditlog.parse_since(args.since, datetime.now(timezone.utc)) if args.since else None
    except ValueError as e:
        raise UsageError(f"--since: {e}") from None
    path = _audit_path(vault)
    if not path.exists() and not args.follow:
        note(f"nothing logged yet in {path} (the proxy adds a line for each request that uses a secret)")
        return 0
    wanted = auditlog.Filter(args.key, args.host, since)
    for entry in auditlog.entries(auditlog.read_lines(path, follow=args.follow)):
        if wanted.matches(entry):
            print(json.dumps(entry) if args.json else _log_line(entry), flush=args.follow)
    return 0


def _audit_path(vault: Vault) -> Path:
    """The log of the proxy serving this home, as its options say (else the default). In a
    home others can write to, proxy.json could name any file, and the log be theirs: refused."""
    check_home(vault.home)
    info = proxyenv.proxy_info(vault.home)
    setting = str(info.options.get("vault_audit_log", "")) if info else ""
    path = auditlog.audit_path(vault.home, setting)
    if path is None:
        raise VaultError("the proxy runs with vault_audit_log=off: it logs nothing")
    return path


def _log_line(entry: dict[str, Any]) -> str:
    """An entry for people. Its path is what a client sent: control characters are escaped, or
    it could drive the terminal or forge a line."""
    keys = ", ".join(map(str, entry.get("keys") or [])) or "-"
    line = f"{entry.get('time')}  {entry.get('outcome')}  {entry.get('method')} {entry.get('host')}{entry.get('path')}  {keys}"
    return quoted(line, None, neutralised=False)


def cmd_resolve(vault: Vault, args: argparse.Namespace) -> int:
    """Dry run: which keys would resolve for this host, with every value masked."""
    index = vault.index()
    try:
        sources = load_sources(vault.home)
    except TokenSourceError as e:
        raise VaultError(str(e)) from None
    index = index.overlaid(reserved_credentials(sources, index))  # as the proxy's: a token source's credentials are its own
    destination = Destination(args.host, args.scheme, args.origin)
    context = Context(args.context)
    results = []
    if (miss := placeholders.find_near_miss(args.text, context)) is not None:  # the proxy refuses the request
        error = miss.error()
        results.append({"key": error.key, "resolves": False, "code": error.code, "error": str(error)})
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


def register(commands: Any) -> None:
    p = command(commands, "start", cmd_start, "run the proxy (mitmdump with the vaultproxy addon) for this vault home", [
        "vaultproxy start",
        "vaultproxy start --listen-port 8081 -- --set vault_on_missing=keep",
    ])
    p.add_argument("--listen-host", default="127.0.0.1",
                   help="the address to listen on, e.g. 0.0.0.0 (default 127.0.0.1; any other needs the proxy credential)")
    p.add_argument("--listen-port", type=int, default=8080, help="the port to listen on, e.g. 8081 (default 8080; 0: any free port)")
    p.add_argument("mitmdump_args", nargs=argparse.REMAINDER, metavar="-- MITMDUMP_ARGS",
                   help="after --: options for mitmdump, e.g. -- --set vault_allow_plaintext=true")
    command(commands, "stop", cmd_stop, "stop the proxy that serves this vault home", ["vaultproxy stop"])
    command(commands, "status", cmd_status, "the proxy serving this home, the active configuration, every key and its source",
            ["vaultproxy status", "vaultproxy status --json"], listing=True)
    command(commands, "env", cmd_env, "print export lines that point HTTP clients at this home's proxy",
            ["eval \"$(vaultproxy env)\""])
    p = command(commands, "exec", cmd_exec, "run a command with the environment of `env`", [
        "vaultproxy exec -- curl -s https://api.example.com/v1/me -H 'Authorization: Bearer <<vault:token>>'",
    ])
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND", help="the command and its arguments, after --")
    p = command(commands, "log", cmd_log, "show the proxy's audit log: each request that used or was refused a secret", [
        "vaultproxy log --since 10m",
        "vaultproxy log --key db --host '*.example.com' --follow",
    ], listing=True)
    p.add_argument("--key", help="only requests with this key, e.g. token (an alias also matches its JSON keys: db for db.user)")
    p.add_argument("--host", help="only requests to hosts this rule matches, e.g. api.example.com or '*.example.com'")
    p.add_argument("--since", help="only requests since an age or a time, e.g. 30s, 10m, 2h, 1d or 2026-01-31T09:00")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing requests as they come (Ctrl-C ends)")
    p = command(commands, "resolve", cmd_resolve, "dry run: which keys would resolve for a host (values masked)", [
        "vaultproxy resolve 'Bearer <<vault:token>>' --host api.example.com",
    ], listing=True)
    p.add_argument("text", help="text with placeholders, as a request would carry it")
    p.add_argument("--host", required=True, help="the host the request would go to, e.g. api.example.com")
    p.add_argument("--origin", help="the web page it would come from, e.g. http://localhost:3000 (default: not a page)")
    p.add_argument("--scheme", default="https", choices=["http", "https"], help="the request's scheme (default https)")
    p.add_argument("--context", default="raw", choices=[c.value for c in Context],
                   help="where the text goes, which decides the escaping (default raw)")
    p.add_argument("--allow-plaintext", action="store_true", help="as the proxy option vault_allow_plaintext")
