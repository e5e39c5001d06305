"""The `vaultproxy` command.

Exit codes: 0 ok, 1 the operation failed (one line on stderr), 2 usage error; `exec` exits
127 or 126 like a shell when its command cannot run, and a closed pipe (`| head`) ends the
output quietly (141, as for SIGPIPE). Values are read from stdin or a hidden prompt, never
from argv (shell history, `ps`), and printed only by `local get`, which exists to print one.

This module assembles the parser and handles errors; the commands live by group in
`local`, `config`, `secret`, `proxy` and `completion`, each with a `register` that adds
its parsers. `--home` and `--json` are accepted before and after the command's words.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from vaultcore.hostrules import reaches_any_host
from vaultcore.peertext import quoted
from vaultcore.profiles import Check, ConfigError
from vaultcore.providers.base import ProviderError
from vaultcore.store import VaultError, forget_passphrase_environment
from vaultcore.vault import Vault, default_home

USER_ERRORS = (VaultError, ConfigError, ProviderError)
SIGPIPE_EXIT = 141  # what a shell reports for a command ended by SIGPIPE
Handler = Callable[[Vault, argparse.Namespace], int]
HOME_HELP = "the vault home, e.g. ~/work-vault (default: $VAULTPROXY_HOME, else ~/.config/vaultproxy)"
JSON_HELP = "machine-readable output (JSON)"
T = TypeVar("T")
ANY_HOST_HELP = "allow a * rule (any host, or any page for --origins): only ever on purpose"


class CliError(Exception):
    """A failure with its own exit code: one line on stderr."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


class UsageError(CliError):
    """Wrong words on the command line: exit code 2."""

    def __init__(self, message: str):
        super().__init__(message, 2)


# --- output helpers shared by the commands --------------------------------------------------


def csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def note(message: str) -> None:
    print(f"vaultproxy: note: {message}", file=sys.stderr)


def warn(message: str) -> None:
    print(f"vaultproxy: warning: {message}", file=sys.stderr)


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
    """A table cell, control characters escaped: cells show what files and the vault's state
    hold, whoever wrote them, and a terminal acts on an escape sequence or a carriage return."""
    if value is None:
        return "-"
    if isinstance(value, (list, tuple)):
        value = ",".join(value) or "-"
    return quoted(str(value), None, neutralised=False)


# --- checking what the flags say -------------------------------------------------------------


def checked(flag: str, value: str, check: Callable[[str], T]) -> T:
    """`value` as `check` accepts it; else a usage error that names the flag (never a line
    of an internal file that the value would have ended up in)."""
    try:
        return check(value)
    except ValueError as e:
        raise UsageError(f"{flag}: {e}") from None


def add_refresh_flags(p: argparse.ArgumentParser, default: str) -> None:
    """`--refresh` and `--refresh-on`, the same for a configuration and for one secret."""
    p.add_argument("--refresh", metavar="TTL",
                   help=f"fetch again this often while a proxy runs, e.g. 15m, 1h, or off {default}")
    p.add_argument("--refresh-on", metavar="STATUSES",
                   help=f"when an upstream answers 401 (or 403), fetch again and retry once if the value changed, e.g. 401 {default}")


def rules(flag: str, text: str | None, normalise: Check, allow_any: bool) -> tuple[str, ...] | None:
    """A comma-separated --hosts or --origins value as canonical rules, None when not given.
    A URL becomes its host (or origin), said on stderr; a rule that could never match is an
    error; `*` (anywhere) needs --allow-any-host."""
    if text is None:
        return None
    result = []
    for part in csv(text):
        rule = checked(flag, part, normalise)
        if "://" in part and rule != part.lower().removesuffix("/"):
            note(f"{flag}: {part} is taken as {rule}")
        if reaches_any_host(rule) and not allow_any:
            raise UsageError(f"{flag}: {part} matches every host; add --allow-any-host if that is what you mean")
        result.append(rule)
    return tuple(result)


# --- the parser ------------------------------------------------------------------------------


class Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)  # examples keep their lines
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        """One line, like every other error; the usage is one `--help` away."""
        if message.startswith("unrecognized arguments"):
            # argparse would quote them back: one may be a value typed into argv by mistake
            message = "unrecognized arguments (not repeated here: one may be a secret; values go on stdin)"
        self.exit(2, f"vaultproxy: error: {message} (see `{self.prog} --help`)\n")


def _examples(lines: Sequence[str]) -> str:
    return "example" + ("s" if len(lines) > 1 else "") + ":\n" + "".join(f"  {line}\n" for line in lines)


def command(
    group: Any, name: str, handler: Handler, help: str, examples: Sequence[str], *, listing: bool = False,
) -> argparse.ArgumentParser:
    """One command's parser, with its examples under --help. It takes --home (and, for
    `listing` commands, --json) after its words too."""
    p = group.add_parser(name, help=help, description=help[:1].upper() + help[1:] + ".", epilog=_examples(examples))
    p.set_defaults(handler=handler)
    p.add_argument("--home", default=argparse.SUPPRESS, help=HOME_HELP)
    if listing:
        p.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help=JSON_HELP)
    return p


def subcommands(parent: Any, name: str, help: str, examples: Sequence[str]) -> Any:
    """A command group (`local`, `config`, `secret`) whose commands are added next."""
    group = parent.add_parser(name, help=help, description=help[:1].upper() + help[1:] + ".", epilog=_examples(examples))
    return group.add_subparsers(dest=f"{name}_command", required=True, parser_class=Parser, metavar="COMMAND")


class VersionAction(argparse.Action):
    """`--version`, looked up only when asked: importing importlib.metadata is a fifth of
    every command's start-up."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help="show the version and exit", **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option_string: str | None = None) -> None:
        import importlib.metadata

        try:
            version = importlib.metadata.version("vaultproxy")
        except importlib.metadata.PackageNotFoundError:
            version = "(not installed: pip install -e .)"
        print(f"vaultproxy {version}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    # Imported here: the command modules import this module's helpers.
    from vaultcore.cli import completion, config, local, proxy, secret

    parser = Parser(
        prog="vaultproxy",
        description="Resolve <<vault:KEY>> placeholders in HTTP(S) requests with secrets from a local vault "
                    "and AWS Secrets Manager.",
        epilog=_examples([
            "printf %s \"$TOKEN\" | vaultproxy local set demo --hosts httpbin.org",
            "vaultproxy start",
            "vaultproxy exec -- curl -s https://httpbin.org/headers -H 'Authorization: Bearer <<vault:demo>>'",
        ]) + "\n`vaultproxy COMMAND --help` shows each command's options and examples.",
    )
    parser.add_argument("--version", action=VersionAction)
    parser.add_argument("--home", help=HOME_HELP)
    parser.add_argument("--json", action="store_true", help=JSON_HELP + ", for the commands that list things")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser, metavar="COMMAND")
    proxy.register(commands)
    local.register(commands)
    config.register(commands)
    secret.register(commands)
    completion.register(commands)
    return parser


def error_text(error: Exception | str) -> str:
    """An error for the terminal, on one line with control characters escaped: a provider's
    error may quote what its server said (a field name, a version), which could hold an
    escape sequence that clears the screen or retitles the window."""
    return quoted(str(error), None, neutralised=False)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    if "_ARGCOMPLETE" in os.environ:  # the shell asks for completions (`vaultproxy completion`)
        import argcomplete

        argcomplete.autocomplete(parser)
    args = parser.parse_args(argv)
    vault = Vault(Path(args.home).expanduser() if args.home else default_home())
    try:
        forget_passphrase_environment()  # what this process starts (a credential_process) inherits os.environ
        code = args.handler(vault, args)
        sys.stdout.flush()  # a reader that has gone (`| head`) shows here, not at exit
        return code
    except BrokenPipeError:
        _silence_stdout()
        return SIGPIPE_EXIT
    except CliError as e:
        print(f"vaultproxy: error: {error_text(e)}", file=sys.stderr)
        return e.code
    except USER_ERRORS as e:
        print(f"vaultproxy: error: {error_text(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except OSError as e:  # the OS's words and the path: no value is in either
        where = f": {e.filename}" if e.filename else ""
        print(f"vaultproxy: error: {e.strerror or type(e).__name__}{where}", file=sys.stderr)
        return 1
    except Exception as e:  # never a traceback (it could quote a value); the type says where to look
        if os.environ.get("VAULTPROXY_DEBUG"):
            raise
        print(f"vaultproxy: error: unexpected {type(e).__name__}; run with VAULTPROXY_DEBUG=1 for details", file=sys.stderr)
        return 1


def _silence_stdout() -> None:
    """Point stdout at /dev/null: the interpreter flushes it once more at exit, and would
    complain about the closed pipe then."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
