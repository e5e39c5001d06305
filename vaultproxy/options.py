"""The addon's options, and the checks that keep a bad one from switching vaultproxy off.

mitmproxy learns a script's options only once it loads the script, so it defers every
`--set vault_*=...` until then and applies them right after the addon's `load`. A value it
cannot parse there (`vault_allow_plaintext=maybe`) makes the whole script fail to load
without a word (mitmproxy 11 and 12): the proxy runs on, resolving nothing. An unknown
`vault_*` name stays deferred forever, and `choices` are only a hint for UIs. So the addon
checks all three itself, and a bad option stops the proxy with one line that names it and
its valid values (`stop_starting`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from mitmproxy import exceptions, optmanager
from mitmproxy.addonmanager import Loader
from mitmproxy.utils import human

PREFIX = "vault_"


@dataclass(frozen=True)
class Option:
    name: str
    typespec: Any
    default: Any
    help: str
    valid: str  # what a valid value is, for the error that names this option
    choices: tuple[str, ...] | None = None


OPTIONS = (
    Option("vault_home", str, "", "Vault home directory (default: $VAULTPROXY_HOME or the user config dir).", "a directory"),
    Option(
        "vault_on_missing", str, "block",
        "What to do with a placeholder whose key is unknown: block the request, or keep the placeholder as it is.",
        "block or keep", choices=("block", "keep"),
    ),
    Option("vault_allow_plaintext", bool, False, "Send secrets to non-loopback hosts over plain HTTP.", "true or false"),
    Option(
        "vault_redact_responses", bool, True,
        "Show placeholders instead of the values a response echoes back (in every encoding a server plausibly "
        "uses). Turned off, echoed values reach the client and whatever records flows (-w files, HAR, the dumper).",
        "true or false",
    ),
    Option("vault_audit_log", str, "", 'Audit log path (default: audit.log in the vault home; "off" to disable).', "a file path, or off"),
    Option(
        "vault_max_growth", str, "2m",
        "How much resolving placeholders may grow one request (or WebSocket message), e.g. 512k or 2m; larger ones are refused.",
        "a size such as 512k or 2m",
    ),
    Option(
        "vault_served_names", Sequence[str], [],
        "Reverse mode: host names clients use to reach this proxy, besides its listen address and the reverse target. "
        "A request naming any other host gets no secret (DNS rebinding).",
        "host names",
    ),
)
BY_NAME = {option.name: option for option in OPTIONS}


def declare_options(loader: Loader) -> None:
    for option in OPTIONS:
        loader.add_option(option.name, option.typespec, option.default, option.help, option.choices)


def invalid(option: Option, value: object = None) -> exceptions.OptionsError:
    shown = option.name if value is None else f"{option.name}={value}"
    return exceptions.OptionsError(f"vaultproxy: {shown}: not a valid value (use {option.valid})")


def check_deferred(options: optmanager.OptManager) -> None:
    """Refuse, before mitmproxy applies them, the deferred `vault_*` settings it could not:
    unknown names, and values that do not parse (tried on a scratch copy of the option, so
    that nothing is applied twice and the error names its option)."""
    for name, value in options.deferred.items():
        if not name.startswith(PREFIX):
            continue
        option = BY_NAME.get(name)
        if option is None:
            raise exceptions.OptionsError(f"vaultproxy: unknown option {name} (the options are {', '.join(BY_NAME)})")
        scratch = optmanager.OptManager()
        scratch.add_option(option.name, option.typespec, option.default, option.help, option.choices)
        scratch.deferred[name] = value
        try:
            scratch.process_deferred()
        except (exceptions.OptionsError, TypeError):  # TypeError: a config.yaml value of another type
            raise invalid(option) from None


def check_choices(options: optmanager.OptManager) -> None:
    for option in OPTIONS:
        if option.choices and (value := getattr(options, option.name)) not in option.choices:
            raise invalid(option, value)


def growth_limit(options: optmanager.OptManager) -> int:
    try:
        return human.parse_size(options.vault_max_growth) or 0
    except ValueError:
        raise invalid(BY_NAME["vault_max_growth"], options.vault_max_growth) from None


def stop_starting(error: exceptions.OptionsError) -> NoReturn:
    """End a start-up that cannot give a working vaultproxy, as mitmproxy ends one for a bad
    option of its own: the one line on stderr, exit status 1, before the proxy listens.

    Left to mitmproxy, an OptionsError from a script at start-up is a traceback, the proxy
    listens anyway and exits only afterwards; one raised while mitmproxy applies deferred
    options is not shown at all. SystemExit passes mitmproxy's error handlers and ends its
    event loop from inside the script's load."""
    raise SystemExit(str(error))
