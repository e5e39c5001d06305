"""YAML provider configurations: schema, load, validate, write.

A configuration file (`$VAULTPROXY_HOME/configs/NAME.yaml`) is meant to be shared: it says
which secrets to fetch from where and where each may be sent, never credentials or values.
Files are written by hand, so every validation error names the file, the line and the field,
and unknown fields are errors rather than silently ignored typos. The `check_*` functions
validate one value for the reader here and for the CLI, which names its flag instead.

The schema here is what every provider shares (name, provider, credentials.source, hosts,
refresh, and per secret alias, secret_id, mode, hosts, origins, refresh); each provider
module declares its own fields (providers/base.py's Schema: region, address, field, command,
...), which the reader checks by kind and keeps as attributes or `options`. A file without
`provider:` is an AWS Secrets Manager one, as all were before there were others.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

# libyaml's loader where PyYAML was built with it: same nodes and marks, several times faster
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

from vaultcore.atomic import fsync_dir, replace_file
from vaultcore.freshness import Stamp, stamp
from vaultcore.hostrules import normalise_host_rule, parse_host_rule, parse_origin_rule
from vaultcore.placeholders import KEY_RE
from vaultcore.providers.base import PROVIDER_MODULES, Field, Schema, schema_for

MODES = ("plaintext", "json")
SOURCES = ("static", "profile", "default")  # of all providers; each accepts some (its Schema.sources)
PROVIDERS = tuple(PROVIDER_MODULES)
NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
# Loose on purpose (Secrets Manager-compatible endpoints use their own region names): it only
# has to catch "US East 1"-style typos.
REGION_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
URL_RE = re.compile(r"https?://[^\s\x00-\x1f\x7f-\x9f]+")
# C0, DEL and C1: a terminal acts on them (a carriage return, an escape sequence), so a listing
# that showed one raw could say something else than the file does.
FIELD_NAME_RE = re.compile(r"[A-Za-z0-9_-]+")
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
CONTROL_BUT_LAYOUT_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # tabs and line feeds kept: a script's
MAX_FILE_BYTES = 1024 * 1024  # a configuration or rule file names secrets and hosts; it holds no values
# Keys that mean someone pasted credentials or a value into a shareable file.
CREDENTIAL_KEYS = frozenset(
    {"access_key_id", "secret_access_key", "aws_secret_access_key", "session_token", "value", "password",
     "token", "vault_token", "role_id"}
)

# The common schema; each provider's own fields (its Schema) go where the `*` is.
TOP_FIELDS = ("name", "display_name", "provider", "*", "credentials", "hosts", "refresh", "refresh_on", "secrets")
SECRET_FIELDS = ("alias", "secret_id", "mode", "hosts", "origins", "*", "refresh", "refresh_on")
# The rejections that may mean "this credential changed": refetch, and replay if it did.
REFRESH_STATUSES = (401, 403)
DURATION_RE = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")
DURATION_UNITS = (86400, 3600, 60, 1)
MIN_REFRESH_SECONDS = 1

_STR = "tag:yaml.org,2002:str"
_NULL = "tag:yaml.org,2002:null"
_INT = "tag:yaml.org,2002:int"
_BOOL = "tag:yaml.org,2002:bool"  # YAML 1.1 reads a bare `off` as false


# A provider's own settings (its Schema's fields) as (name, value) pairs in schema order:
# values are str, int or tuple[str, ...]. The AWS family's region, endpoint_url and
# version_stage are attributes instead, as library callers have always built them.
Options = tuple[tuple[str, Any], ...]


def _option(options: Options, name: str, default: Any) -> Any:
    return next((value for key, value in options if key == name), default)


@dataclass(frozen=True)
class SecretMapping:
    """One provider secret under the alias placeholders use (`<<vault:alias>>`)."""

    alias: str
    secret_id: str = ""  # empty for a provider whose mappings name none (command)
    mode: str = "plaintext"
    hosts: tuple[str, ...] | None = None  # None: the configuration's default hosts
    origins: tuple[str, ...] = ()
    version_stage: str | None = None
    refresh: int | None = None  # seconds between fetches; None: the configuration's; 0: never
    refresh_on: tuple[int, ...] | None = None  # None: the configuration's
    options: Options = ()

    def option(self, name: str, default: Any = None) -> Any:
        return _option(self.options, name, default)


@dataclass(frozen=True)
class ProviderConfig:
    name: str
    display_name: str
    region: str = ""  # aws, ssm
    provider: str = "aws"
    credentials_source: str = "static"
    aws_profile: str | None = None
    endpoint_url: str | None = None
    hosts: tuple[str, ...] = ()
    secrets: tuple[SecretMapping, ...] = ()
    refresh: int = 0  # seconds between automatic fetches of each secret; 0: only when asked
    refresh_on: tuple[int, ...] = ()  # upstream statuses that make the proxy refetch and replay
    options: Options = ()

    def option(self, name: str, default: Any = None) -> Any:
        return _option(self.options, name, default)

    def mapping(self, alias: str) -> SecretMapping | None:
        return next((m for m in self.secrets if m.alias == alias), None)

    def hosts_for(self, mapping: SecretMapping) -> tuple[str, ...]:
        return self.hosts if mapping.hosts is None else mapping.hosts

    def refresh_for(self, mapping: SecretMapping) -> int:
        """Seconds between automatic fetches of `mapping`; 0: never."""
        return self.refresh if mapping.refresh is None else mapping.refresh

    def refresh_on_for(self, mapping: SecretMapping) -> tuple[int, ...]:
        return self.refresh_on if mapping.refresh_on is None else mapping.refresh_on

    def with_secret(self, mapping: SecretMapping) -> ProviderConfig:
        """Add `mapping`; an existing mapping with the same alias is replaced in place."""
        if self.mapping(mapping.alias) is None:
            return dataclasses.replace(self, secrets=(*self.secrets, mapping))
        return dataclasses.replace(
            self, secrets=tuple(mapping if m.alias == mapping.alias else m for m in self.secrets)
        )

    def without_secret(self, alias: str) -> ProviderConfig:
        return dataclasses.replace(self, secrets=tuple(m for m in self.secrets if m.alias != alias))


# --- one value: the same rules for a file and for a command's flags -------------------------

Check = Callable[[str], str]  # the value, or ValueError saying what is wrong (no file, no line)


def _matching(pattern: re.Pattern[str], hint: str) -> Check:
    def check(value: str) -> str:
        if not pattern.fullmatch(value):
            raise ValueError(f"{hint} (got {_shown(value)})")
        return value

    return check


check_name = _matching(NAME_RE, "must be 1-64 of A-Z a-z 0-9 _ -")
check_region = _matching(REGION_RE, "must be an AWS region like us-east-1")
_check_url = _matching(URL_RE, "must be an http:// or https:// URL")


def check_endpoint_url(value: str) -> str:
    """A server's URL (an AWS endpoint, a Vault address), as credentials are sent to it:
    nothing in it that makes the host a reader sees not the host a request goes to (a user
    name: `https://aws.example.com@127.0.0.1`; a look-alike letter: a Cyrillic а), and
    nothing that would make the path the client appends another one (a query or fragment
    that cuts it off, a percent-encoding or dot segment the server decodes: with
    `/v1/%61uth/token/lookup-self#`, every read was the token's own lookup). A plain path
    prefix stays: some servers are served under one."""
    _check_url(value)
    try:
        parts = urllib.parse.urlsplit(value)
        parts.port  # noqa: B018 (a second port, or one that is no number, raises here)
    except ValueError as e:
        raise ValueError(f"must be a valid URL ({e}; got {_shown(value)})") from None
    dot_segment = any(segment in (".", "..") for segment in parts.path.split("/"))
    # A backslash: urlsplit reads `https://evil.test\.vault.example.com` as vault.example.com's, urllib3 as evil.test's.
    if "@" in parts.netloc or any(c in value for c in "?#%\\") or dot_segment or not parts.hostname:
        raise ValueError(
            "must be the server's own URL, e.g. https://vault.example.com:8200, with no user name, query, fragment, "
            f"percent-encoding, backslash or dot segment (got {_shown(value)})"
        )
    _check_ascii(value, _idna_url)
    return value


def _idna_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    assert parts.hostname is not None
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.replace(parts.hostname, normalise_host_rule(parts.hostname))))


def check_text(value: str, *, layout: bool = False) -> str:
    """Any string of a configuration: without control characters (see CONTROL_RE); with
    `layout`, tabs and line feeds are allowed (an argv: `sh -c` takes a script of many lines,
    which listings show escaped)."""
    if (CONTROL_BUT_LAYOUT_RE if layout else CONTROL_RE).search(value):
        raise ValueError(f"must not hold control characters such as line breaks or terminal escapes (got {_shown(value)})")
    return value


def check_alias(value: str) -> str:
    if not KEY_RE.fullmatch(value) or "." in value:
        raise ValueError(f"must be 1-256 of A-Z a-z 0-9 _ - / with no '.' (dots name JSON fields) (got {_shown(value)})")
    return value


def parse_duration(value: str) -> int:
    """Seconds in `15m`, `1h30m`, `90s`, `2d` or a plain number of seconds; `off` or 0 is 0
    (never). At least a second: a refresh is a call to the provider, paid against its quota."""
    text = value.strip().lower()
    if text in ("off", "0", "0s"):
        return 0
    if text.isdigit():
        seconds = int(text)
    else:
        match = DURATION_RE.fullmatch(text)
        if not text or not match:
            raise ValueError(f"must be a duration such as 90s, 15m, 1h or 1h30m, or off (got {_shown(value)})")
        seconds = sum(int(n) * unit for n, unit in zip(match.groups(), DURATION_UNITS) if n)
    if seconds < MIN_REFRESH_SECONDS:
        raise ValueError(f"must be at least {MIN_REFRESH_SECONDS}s, or off (got {_shown(value)})")
    return seconds


def format_duration(seconds: int) -> str:
    """The shortest of `parse_duration`'s spellings for `seconds`: 900 -> 15m, 5400 -> 1h30m."""
    if seconds == 0:
        return "off"
    parts = []
    for unit, suffix in zip(DURATION_UNITS, "dhms"):
        count, seconds = divmod(seconds, unit)
        if count:
            parts.append(f"{count}{suffix}")
    return "".join(parts)


def read_statuses(node: yaml.Node, field: str, error: Callable[[yaml.Node, str, str], Exception]) -> tuple[int, ...]:
    """A `refresh_on` list, in a configuration or in tokens.yaml: numbers among
    REFRESH_STATUSES, each kept once; `error(node, field, problem)` makes the error to raise."""
    if not isinstance(node, yaml.SequenceNode):
        raise error(node, field, f"must be a list of statuses, e.g. [401] (got {_kind(node)})")
    statuses: list[int] = []
    for i, item in enumerate(node.value):
        if not (isinstance(item, yaml.ScalarNode) and item.tag == _INT and item.value.isdigit() and int(item.value) in REFRESH_STATUSES):
            raise error(item, f"{field}[{i}]", f"must be one of {', '.join(map(str, REFRESH_STATUSES))}")
        statuses.append(int(item.value))
    return tuple(dict.fromkeys(statuses))


def parse_refresh_on(value: str) -> tuple[int, ...]:
    """`401`, `401,403`, or `off`/empty for none: the statuses that trigger refetch and replay."""
    text = value.strip().lower()
    if text in ("", "off", "none"):
        return ()
    statuses = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit() or int(part) not in REFRESH_STATUSES:
            raise ValueError(f"must list statuses among {', '.join(map(str, REFRESH_STATUSES))}, e.g. 401 (got {_shown(value)})")
        statuses.append(int(part))
    return tuple(dict.fromkeys(statuses))


def check_host(value: str) -> str:
    """A hosts rule that can match something (vaultcore/hostrules.py). A URL is refused with
    the host to write: a file is fixed by hand, where the CLI takes the URL's host itself."""
    if "://" in value:
        try:
            hint = f": write {normalise_host_rule(value)}"
        except ValueError:
            hint = ""
        raise ValueError(f"must be a host such as api.example.com, not a URL{hint} (got {_shown(value)})")
    parse_host_rule(value)
    _check_ascii(value, normalise_host_rule)
    return value


def check_origin(value: str) -> str:
    """An origins rule that a browser's Origin can match: scheme://host[:port], or null."""
    parse_origin_rule(value)
    _check_ascii(value, parse_origin_rule)
    return value


def _check_ascii(text: str, canonical: Callable[[str], str]) -> None:
    """A file's rule or server is read by people (in a review, in a diff, in a listing) as it
    is written, and reached in IDNA form: a look-alike letter (a Cyrillic і in api.strіpe.com)
    would send secrets or credentials to a name anyone can register, and no reader would see
    it. International names are written in their IDNA form, which shows every letter for what
    it is."""
    if not text.isascii():
        raise ValueError(f"must be written in ASCII (an international name in its IDNA form): write {canonical(text)} "
                         f"if that is the name you mean; a look-alike letter would send secrets elsewhere (got {_shown(text)})")


class ConfigError(ValueError):
    """A configuration that cannot be used. The message names the file, the line and the field:
    "configs/prod.yaml:7: secrets[1].mode: must be one of plaintext, json (got 'jsn')"."""


class _Reader:
    """Turns a composed YAML node tree into a ProviderConfig, checking each node where it is,
    so an error can point at its line."""

    def __init__(self, source: str):
        self.source = source
        self.nodes: dict[str, yaml.Node] = {}  # each field's value node by dotted path, for a provider's Problem

    def error(self, node: yaml.Node, field: str, problem: str) -> ConfigError:
        where = f"{field}: " if field else ""
        return ConfigError(f"{self.source}:{node.start_mark.line + 1}: {where}{problem}")

    def fields(self, node: yaml.Node, field: str, allowed: tuple[str, ...]) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        """The mapping's entries by key (with the key node, for its line); unknown or repeated
        keys are errors."""
        if not isinstance(node, yaml.MappingNode):
            raise self.error(node, field, f"must be a mapping of {', '.join(allowed)} (got {_kind(node)})")
        entries: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            path = field_path(field, key)
            if key not in allowed:
                raise self.error(key_node, path, f"unknown field; valid fields: {', '.join(allowed)}")
            if key in entries:
                raise self.error(key_node, path, "appears twice")
            entries[key] = (key_node, value_node)
            self.nodes[path] = value_node
        return entries

    def string(self, node: yaml.Node, field: str, check: Check | None = None, *, layout: bool = False) -> str:
        if not (isinstance(node, yaml.ScalarNode) and node.tag == _STR) or not node.value:
            raise self.error(node, field, f"must be a non-empty string (got {_kind(node)})")
        try:
            check_text(node.value, layout=layout)
            return check(node.value) if check else node.value
        except ValueError as e:
            raise self.error(node, field, str(e)) from None

    def optional_string(self, node: yaml.Node | None, field: str, check: Check | None = None) -> str | None:
        if node is None or (isinstance(node, yaml.ScalarNode) and node.tag == _NULL):
            return None
        return self.string(node, field, check)

    def choice(self, node: yaml.Node, field: str, choices: tuple[str, ...]) -> str:
        value = self.string(node, field)
        if value not in choices:
            raise self.error(node, field, f"must be one of {', '.join(choices)} (got {_shown(value)})")
        return value

    def strings(self, node: yaml.Node, field: str, check: Check | None, *, layout: bool = False) -> tuple[str, ...]:
        if not isinstance(node, yaml.SequenceNode):
            raise self.error(node, field, f"must be a list, e.g. [\"api.example.com\"] (got {_kind(node)})")
        return tuple(self.string(item, f"{field}[{i}]", check, layout=layout) for i, item in enumerate(node.value))

    def refuse_credentials(self, node: yaml.Node, field: str, name: str) -> None:
        """Refuse a file that holds anything that looks like a credential or a value, wherever
        it is: such a file must not be shared, and the value would not be used anyway."""
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else ""
                path = field_path(field, key)
                if str(key).lower() in CREDENTIAL_KEYS:
                    raise self.error(
                        key_node, path,
                        "configuration files are shareable and must not hold credentials or values; "
                        f"credentials go into the vault with `vaultproxy config set-credentials {name}`",
                    )
                self.refuse_credentials(value_node, path, name)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self.refuse_credentials(item, f"{field}[{i}]", name)

    def config(self, root: yaml.Node, expected_name: str | None) -> ProviderConfig:
        self.refuse_credentials(root, "", _name_hint(root, expected_name))
        provider = self.provider(root)
        schema = schema_for(provider)
        top = self.fields(root, "", _allowed(TOP_FIELDS, schema.of("top")))
        if "name" not in top:
            raise self.error(root, "name", "missing (required)")
        name_node = top["name"][1]
        name = self.string(name_node, "name", check_name)
        if expected_name is not None and name != expected_name:
            raise self.error(name_node, "name", f"must match the file name {expected_name}.yaml (got {_shown(name)})")
        own = self.extras(root, top, "", schema.of("top"), ProviderConfig)
        source, profile, credential_options = self.credentials(top.get("credentials"), schema)
        config = ProviderConfig(
            name=name,
            display_name=self.optional_string(_value(top, "display_name"), "display_name") or name,
            provider=provider,
            credentials_source=source,
            aws_profile=profile,
            hosts=self.strings(top["hosts"][1], "hosts", check_host) if "hosts" in top else (),
            secrets=self.secrets(top["secrets"][1], schema) if "secrets" in top else (),
            refresh=self.refresh(_value(top, "refresh"), "refresh") or 0,
            refresh_on=self.refresh_on(_value(top, "refresh_on"), "refresh_on") or (),
            **{**own, "options": own["options"] + credential_options},
        )
        problem = schema.validate(config) if schema.validate else None
        if problem:
            raise self.error(self.node_at(problem.field, root), problem.field, problem.message)
        return config

    def provider(self, root: yaml.Node) -> str:
        """`provider:`, read first: it decides which other fields the file may have."""
        if isinstance(root, yaml.MappingNode):
            for key_node, value_node in root.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.value == "provider":
                    return self.choice(value_node, "provider", PROVIDERS)
        return "aws"  # files from before there were other providers

    def node_at(self, field: str, root: yaml.Node) -> yaml.Node:
        """The node of a dotted field as `fields` saw it, else of the nearest enclosing one."""
        while field:
            if field in self.nodes:
                return self.nodes[field]
            field = field.rpartition(".")[0] if "." in field else ""
        return root

    def extras(
        self, parent: yaml.Node, entries: dict[str, tuple[yaml.Node, yaml.Node]], prefix: str,
        fields: tuple[Field, ...], owner: type,
    ) -> dict[str, Any]:
        """A provider's own fields, as keyword arguments for `owner` (see `settings`). A null
        is the field left out."""
        values: dict[str, Any] = {}
        for f in fields:
            node = _value(entries, f.name)
            path = f"{prefix}{f.name}"
            if node is None or (isinstance(node, yaml.ScalarNode) and node.tag == _NULL):
                if f.required:
                    raise self.error(parent, path, f"missing (required): {f.help}")
                continue
            values[f.name] = self.typed(node, path, f)
        return settings(owner, fields, values)

    def typed(self, node: yaml.Node, field: str, f: Field) -> Any:
        if f.kind == "choice":
            return self.choice(node, field, f.choices)
        if f.kind == "strings":
            values = self.strings(node, field, f.check, layout=True)  # an argv
            if not values:
                raise self.error(node, field, "must be a non-empty list")
            return values
        if f.kind == "duration":
            seconds = self.refresh(node, field)
            if not seconds:
                raise self.error(node, field, "must be a duration of at least 1s, e.g. 10s")
            return seconds
        if f.kind == "integer":
            if not (isinstance(node, yaml.ScalarNode) and node.tag == _INT):
                raise self.error(node, field, f"must be an integer (got {_kind(node)})")
            try:
                return check_integer(f)(node.value)
            except ValueError as e:
                raise self.error(node, field, str(e)) from None
        return self.string(node, field, f.check)

    def refresh(self, node: yaml.Node | None, field: str) -> int | None:
        """`refresh: 15m` (a plain number is seconds); None when absent."""
        if node is None:
            return None
        if not isinstance(node, yaml.ScalarNode) or node.tag not in (_STR, _INT, _BOOL):
            raise self.error(node, field, f"must be a duration such as 15m or 1h, or off (got {_kind(node)})")
        text = "off" if node.tag == _BOOL and node.value.lower() in ("off", "no", "false") else node.value
        try:
            return parse_duration(text)
        except ValueError as e:
            raise self.error(node, field, str(e)) from None

    def refresh_on(self, node: yaml.Node | None, field: str) -> tuple[int, ...] | None:
        """`refresh_on: [401]` (or 403 too); None when absent, () for an empty list."""
        return None if node is None else read_statuses(node, field, self.error)

    def credentials(self, entry: tuple[yaml.Node, yaml.Node] | None, schema: Schema) -> tuple[str, str | None, Options]:
        """`credentials:`: where they come from (`source`), an AWS profile's name with
        `source: profile`, and the provider's own settings (e.g. Vault's `method`)."""
        own = schema.of("credentials")
        if entry is None:
            return schema.sources[0], None, ()
        allowed = ("source", *(("profile",) if "profile" in schema.sources else ()), *(f.name for f in own))
        fields = self.fields(entry[1], "credentials", allowed)
        source = self.choice(fields["source"][1], "credentials.source", schema.sources) if "source" in fields else schema.sources[0]
        profile = self.optional_string(_value(fields, "profile"), "credentials.profile")
        if source == "profile" and profile is None:
            raise self.error(entry[1], "credentials.profile", "required with source: profile (an AWS CLI profile name)")
        if source != "profile" and profile is not None:
            raise self.error(fields["profile"][0], "credentials.profile", f"only used with source: profile (source is {source})")
        return source, profile, self.extras(entry[1], fields, "credentials.", own, dict)["options"]

    def secrets(self, node: yaml.Node, schema: Schema) -> tuple[SecretMapping, ...]:
        if not isinstance(node, yaml.SequenceNode):
            raise self.error(node, "secrets", f"must be a list of mappings with alias and secret_id (got {_kind(node)})")
        allowed = _allowed(SECRET_FIELDS if schema.secret_id else tuple(f for f in SECRET_FIELDS if f != "secret_id"),
                           schema.of("secret"))
        mappings: list[SecretMapping] = []
        for i, item in enumerate(node.value):
            field = f"secrets[{i}]"
            self.nodes[field] = item
            entries = self.fields(item, field, allowed)
            for required in ("alias", "secret_id") if schema.secret_id else ("alias",):
                if required not in entries:
                    raise self.error(item, f"{field}.{required}", "missing (required)")
            alias_node = entries["alias"][1]
            alias = self.string(alias_node, f"{field}.alias", check_alias)
            if any(m.alias == alias for m in mappings):
                raise self.error(alias_node, f"{field}.alias", f"{_shown(alias)} is already used by another secret")
            own = self.extras(item, entries, f"{field}.", schema.of("secret"), SecretMapping)
            mappings.append(SecretMapping(
                alias=alias,
                secret_id=self.string(entries["secret_id"][1], f"{field}.secret_id") if schema.secret_id else "",
                mode=self.choice(entries["mode"][1], f"{field}.mode", MODES) if "mode" in entries else "plaintext",
                hosts=self.strings(entries["hosts"][1], f"{field}.hosts", check_host) if "hosts" in entries else None,
                origins=self.strings(entries["origins"][1], f"{field}.origins", check_origin) if "origins" in entries else (),
                refresh=self.refresh(_value(entries, "refresh"), f"{field}.refresh"),
                refresh_on=self.refresh_on(_value(entries, "refresh_on"), f"{field}.refresh_on"),
                **own,
            ))
        return tuple(mappings)


def settings(owner: type, fields: tuple[Field, ...], values: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments for `owner` (ProviderConfig or SecretMapping) from a provider's field
    values: a field named like one of its attributes as that, the others as `options`, in the
    schema's order. The one place that decides, for the reader and the CLI alike."""
    attributes = {f.name for f in dataclasses.fields(owner)} if dataclasses.is_dataclass(owner) else set()
    out: dict[str, Any] = {f.name: values[f.name] for f in fields if f.name in values and f.name in attributes}
    out["options"] = tuple((f.name, values[f.name]) for f in fields if f.name in values and f.name not in attributes)
    return out


def parse_field(f: Field, text: str) -> Any:
    """A provider field's value given as text (a command-line flag), by the file's rules:
    ValueError says what is wrong. An argv (kind strings) is split like a shell would, but
    never run by one."""
    check_text(text, layout=f.kind == "strings")
    if f.kind == "strings":
        try:
            words = tuple(shlex.split(text))
        except ValueError as e:
            raise ValueError(f"cannot split into words: {e}") from None
        if not words:
            raise ValueError("must name a command, e.g. 'op read op://vault/item/field'")
        return words
    if f.kind == "duration":
        seconds = parse_duration(text)
        if not seconds:
            raise ValueError("must be a duration of at least 1s, e.g. 10s")
        return seconds
    if f.kind == "integer":
        return check_integer(f)(text)
    if f.kind == "choice" and text not in f.choices:
        raise ValueError(f"must be one of {', '.join(f.choices)} (got {_shown(text)})")
    if not text:
        raise ValueError("must not be empty")
    return f.check(text) if f.check else text


def _allowed(common: tuple[str, ...], own: tuple[Field, ...]) -> tuple[str, ...]:
    """The common fields with a provider's own in place of the `*`."""
    at = common.index("*")
    return (*common[:at], *(f.name for f in own), *common[at + 1:])


def check_integer(f: Field) -> Check:
    """An integer field's rule, for a file's value and for a flag's alike."""

    def check(value: str) -> Any:
        if not value.strip().isdigit():
            raise ValueError(f"must be a whole number (got {_shown(value)})")
        number = int(value)
        if f.choices and value.strip() not in f.choices:
            raise ValueError(f"must be one of {', '.join(f.choices)} (got {number})")
        if number < f.minimum:
            raise ValueError(f"must be at least {f.minimum} (got {number})")
        return number

    return check


def _value(entries: dict[str, tuple[yaml.Node, yaml.Node]], key: str) -> yaml.Node | None:
    entry = entries.get(key)
    return entry[1] if entry else None


def _kind(node: yaml.Node) -> str:
    """What a node is, for error messages; never its content (it could be anything)."""
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    kind = node.tag.rsplit(":", 1)[-1]
    if kind == "str":
        return "a string" if node.value else "an empty string"
    return kind


def _shown(value: str) -> str:
    return repr(value if len(value) <= 80 else value[:77] + "...")


def field_path(field: str, key: object) -> str:
    """Where a mapping's `key` sits (`secrets[0].mode`), for an error message. A key that is
    no plain name is shown quoted and escaped: a file may hold anything there (a terminal
    escape would reach `vaultproxy status` and the proxy's log)."""
    name = str(key)
    if not FIELD_NAME_RE.fullmatch(name):
        name = _shown(name)
    return f"{field}.{name}" if field else name


def _name_hint(root: yaml.Node, expected_name: str | None) -> str:
    """The configuration's name for the set-credentials hint, when it is already readable."""
    if isinstance(root, yaml.MappingNode):
        for key_node, value_node in root.value:
            if key_node.value == "name" and isinstance(value_node, yaml.ScalarNode) and NAME_RE.fullmatch(value_node.value):
                return value_node.value
    return expected_name or "NAME"


def read_yaml(path: Path) -> str:
    """A configuration or rule file's text, read no further than a byte past MAX_FILE_BYTES:
    enough for `compose_yaml` to refuse it, however large it is. Raises what reading raises."""
    with open(path, "rb") as f:
        data = f.read(MAX_FILE_BYTES + 1)
    # cut short, its last character may be cut in two; it is refused for its size anyway
    return data.decode("utf-8", "strict" if len(data) <= MAX_FILE_BYTES else "replace")


def compose_yaml(text: str, source: str, error: type[ValueError]) -> yaml.Node | None:
    """The node tree of a configuration or rule file (None when it is empty), or `error`
    naming the file and the line. compose, not safe_load: each node keeps its line.

    Anchors and aliases are refused, found in a first pass over the events: a shared file
    gains nothing by them, and they make a few hundred bytes into a graph that a reader walks
    as 10^9 nodes, or into a cycle."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_FILE_BYTES:
        raise error(f"{source}: too large (at most {MAX_FILE_BYTES // 1024 // 1024} MiB): is it the right file?")
    try:
        for event in yaml.parse(text, Loader=YAML_LOADER):
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
                raise error(f"{source}:{event.start_mark.line + 1}: anchors and aliases (&name, *name) are not "
                            "allowed: write the value out where it is used")
        return yaml.compose(text, Loader=YAML_LOADER)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        # problem/context only: str(exc) would quote the offending line of the file.
        raise error(f"{source}:{line}: invalid YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise error(f"{source}:1: invalid YAML: {type(exc).__name__}") from None


def parse_config(text: str, source: str, expected_name: str | None = None) -> ProviderConfig:
    """Validate one configuration file's text. `source` names the file in error messages;
    `expected_name` (the file name without .yaml), when given, must equal `name:`."""
    root = compose_yaml(text, source, ConfigError)
    if root is None:
        raise ConfigError(f"{source}:1: empty file; expected a mapping with at least name and region")
    return _Reader(source).config(root, expected_name)


class _Dumper(yaml.SafeDumper):
    """Tuples (host and origin lists) as flow sequences, everything else in block style,
    list items indented under their key as in the documented example."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


_Dumper.add_representer(
    tuple, lambda dumper, data: dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)
)


def dump_config(config: ProviderConfig) -> str:
    """The configuration as YAML in the documented shape, keys in a stable order."""
    schema = schema_for(config.provider)
    credentials: dict[str, Any] = {"source": config.credentials_source}
    if config.aws_profile is not None:
        credentials["profile"] = config.aws_profile
    credentials.update(_dumped(config, schema.of("credentials")))
    secrets = []
    for m in config.secrets:
        entry: dict[str, Any] = {"alias": m.alias, **({"secret_id": m.secret_id} if schema.secret_id else {}), "mode": m.mode}
        if m.hosts is not None:
            entry["hosts"] = tuple(m.hosts)
        if m.origins:
            entry["origins"] = tuple(m.origins)
        entry.update(_dumped(m, schema.of("secret")))
        if m.refresh is not None:
            entry["refresh"] = format_duration(m.refresh)
        if m.refresh_on is not None:
            entry["refresh_on"] = list(m.refresh_on)
        secrets.append(entry)
    data = {
        "name": config.name,
        "display_name": config.display_name,
        "provider": config.provider,
        **_dumped(config, schema.of("top")),
        "credentials": credentials,
        "hosts": tuple(config.hosts),
        **({"refresh": format_duration(config.refresh)} if config.refresh else {}),
        **({"refresh_on": list(config.refresh_on)} if config.refresh_on else {}),
        "secrets": secrets,
    }
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=4096)


def _dumped(owner: ProviderConfig | SecretMapping, fields: tuple[Field, ...]) -> dict[str, Any]:
    """A provider's own fields that are set, as the reader takes them back."""
    out: dict[str, Any] = {}
    for f in fields:
        value = owner.option(f.name) if f.name not in {a.name for a in dataclasses.fields(owner)} else getattr(owner, f.name)
        if value is not None:
            out[f.name] = format_duration(value) if f.kind == "duration" else value
    return out


# Sees a configuration about to be imported and the one it replaces; raises to refuse it.
Vet = Callable[["ProviderConfig", "ProviderConfig | None"], None]


class ConfigDirectory:
    """$VAULTPROXY_HOME/configs: one NAME.yaml per configuration."""

    def __init__(self, path: Path):
        self.path = Path(path)
        # The last file read of each name, by its stamp: a running proxy loads the active
        # configuration on every reload, and its refresher on every plan; a configuration of
        # a thousand secrets takes a tenth of a second to parse and check.
        self._loaded: dict[str, tuple[Stamp, ProviderConfig]] = {}

    def file(self, name: str) -> Path:
        """Where configuration `name` lives (whether or not it exists)."""
        # Checked here too: a name is also a path component (no "../x").
        if not NAME_RE.fullmatch(name):
            raise ConfigError(f"invalid configuration name {_shown(name)}: use 1-64 of A-Z a-z 0-9 _ -")
        return self.path / f"{name}.yaml"

    def names(self) -> list[str]:
        if not self.path.is_dir():
            return []
        return sorted(p.stem for p in self.path.glob("*.yaml") if NAME_RE.fullmatch(p.stem))

    def load(self, name: str) -> ProviderConfig:
        path = self.file(name)
        seen = stamp(path)  # before the read: a write during it shows as a change next time
        kept = self._loaded.get(name)
        if kept is not None and seen is not None and kept[0] == seen:
            return kept[1]
        try:
            text = read_yaml(path)
        except FileNotFoundError:
            raise ConfigError(f"no configuration named {name}; `vaultproxy config list` shows them") from None
        config = parse_config(text, str(path), expected_name=name)
        if seen is not None:
            self._loaded[name] = (seen, config)
        return config

    def load_all(self) -> list[ProviderConfig]:
        return [self.load(name) for name in self.names()]

    def save(self, config: ProviderConfig) -> Path:
        """Write the configuration, re-validated first so that no invalid file is ever written
        (a ProviderConfig built in code could hold, say, a bad alias)."""
        path = self.file(config.name)
        text = dump_config(config)
        parse_config(text, str(path), expected_name=config.name)
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        replace_file(path, text.encode("utf-8"), mode=0o644)
        return path

    def remove(self, name: str) -> None:
        path = self.file(name)
        try:
            path.unlink()
        except FileNotFoundError:
            raise ConfigError(f"no configuration named {name}; `vaultproxy config list` shows them") from None
        fsync_dir(self.path)

    def import_file(self, path: Path, *, replace: bool = False, vet: Vet | None = None) -> ProviderConfig:
        """Validate a configuration file from anywhere (its name comes from `name:`) and save it
        under that name. A configuration of the same name is refused unless `replace`: its
        endpoint and secret list would be lost without a word. `vet` sees what is about to be
        saved, and the configuration it replaces (None: none, or one whose file does not
        load), and may refuse it: the file is read once, so what was vetted is what is saved."""
        config = read_config(path)
        exists = config.name in self.names()
        if exists and not replace:
            raise ConfigError(
                f"configuration {config.name} already exists: `vaultproxy config import {path} --replace` replaces its "
                f"file (its keys in the vault stay), or `vaultproxy config export {config.name}` first to keep a copy"
            )
        if vet is not None:
            vet(config, self.load_valid(config.name) if exists else None)
        self.save(config)
        return config

    def load_valid(self, name: str) -> ProviderConfig | None:
        """Configuration `name`; None when its file is missing or does not validate."""
        try:
            return self.load(name)
        except ConfigError:
            return None


def read_config(path: Path) -> ProviderConfig:
    """Validate a configuration file from anywhere (a shared one: its name comes from `name:`)."""
    try:
        text = read_yaml(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {getattr(exc, 'strerror', None) or type(exc).__name__}") from None
    return parse_config(text, str(path))
