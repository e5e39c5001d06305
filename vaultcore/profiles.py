"""YAML provider configurations: schema, load, validate, write.

A configuration file (`$VAULTPROXY_HOME/configs/NAME.yaml`) is meant to be shared: it says
which secrets to fetch from where and where each may be sent, never credentials or values.
Files are written by hand, so every validation error names the file, the line and the field,
and unknown fields are errors rather than silently ignored typos. The `check_*` functions
validate one value for the reader here and for the CLI, which names its flag instead.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

# libyaml's loader where PyYAML was built with it: same nodes and marks, several times faster
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

from vaultcore.atomic import fsync_dir, replace_file
from vaultcore.hostrules import normalise_host_rule, parse_host_rule, parse_origin_rule
from vaultcore.placeholders import KEY_RE

MODES = ("plaintext", "json")
SOURCES = ("static", "profile", "default")
PROVIDERS = ("aws",)
NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
# Loose on purpose (Secrets Manager-compatible endpoints use their own region names): it only
# has to catch "US East 1"-style typos.
REGION_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
URL_RE = re.compile(r"https?://\S+")
# Keys that mean someone pasted credentials or a value into a shareable file.
CREDENTIAL_KEYS = frozenset(
    {"access_key_id", "secret_access_key", "aws_secret_access_key", "session_token", "value", "password"}
)

TOP_FIELDS = ("name", "display_name", "provider", "region", "credentials", "endpoint_url", "hosts", "secrets")
CREDENTIAL_FIELDS = ("source", "profile")
SECRET_FIELDS = ("alias", "secret_id", "mode", "hosts", "origins", "version_stage")

_STR = "tag:yaml.org,2002:str"
_NULL = "tag:yaml.org,2002:null"


@dataclass(frozen=True)
class SecretMapping:
    """One Secrets Manager secret under the alias placeholders use (`<<vault:alias>>`)."""

    alias: str
    secret_id: str
    mode: str = "plaintext"
    hosts: tuple[str, ...] | None = None  # None: the configuration's default hosts
    origins: tuple[str, ...] = ()
    version_stage: str | None = None


@dataclass(frozen=True)
class ProviderConfig:
    name: str
    display_name: str
    region: str
    provider: str = "aws"
    credentials_source: str = "static"
    aws_profile: str | None = None
    endpoint_url: str | None = None
    hosts: tuple[str, ...] = ()
    secrets: tuple[SecretMapping, ...] = ()

    def mapping(self, alias: str) -> SecretMapping | None:
        return next((m for m in self.secrets if m.alias == alias), None)

    def hosts_for(self, mapping: SecretMapping) -> tuple[str, ...]:
        return self.hosts if mapping.hosts is None else mapping.hosts

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
check_endpoint_url = _matching(URL_RE, "must be an http:// or https:// URL")


def check_alias(value: str) -> str:
    if not KEY_RE.fullmatch(value) or "." in value:
        raise ValueError(f"must be 1-256 of A-Z a-z 0-9 _ - / with no '.' (dots name JSON fields) (got {_shown(value)})")
    return value


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
    return value


def check_origin(value: str) -> str:
    """An origins rule that a browser's Origin can match: scheme://host[:port], or null."""
    parse_origin_rule(value)
    return value


class ConfigError(ValueError):
    """A configuration that cannot be used. The message names the file, the line and the field:
    "configs/prod.yaml:7: secrets[1].mode: must be one of plaintext, json (got 'jsn')"."""


class _Reader:
    """Turns a composed YAML node tree into a ProviderConfig, checking each node where it is,
    so an error can point at its line."""

    def __init__(self, source: str):
        self.source = source

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
            path = f"{field}.{key}" if field else str(key)
            if key not in allowed:
                raise self.error(key_node, path, f"unknown field; valid fields: {', '.join(allowed)}")
            if key in entries:
                raise self.error(key_node, path, "appears twice")
            entries[key] = (key_node, value_node)
        return entries

    def string(self, node: yaml.Node, field: str, check: Check | None = None) -> str:
        if not (isinstance(node, yaml.ScalarNode) and node.tag == _STR) or not node.value:
            raise self.error(node, field, f"must be a non-empty string (got {_kind(node)})")
        try:
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

    def strings(self, node: yaml.Node, field: str, check: Check) -> tuple[str, ...]:
        if not isinstance(node, yaml.SequenceNode):
            raise self.error(node, field, f"must be a list, e.g. [\"api.example.com\"] (got {_kind(node)})")
        return tuple(self.string(item, f"{field}[{i}]", check) for i, item in enumerate(node.value))

    def refuse_credentials(self, node: yaml.Node, field: str, name: str) -> None:
        """Refuse a file that holds anything that looks like a credential or a value, wherever
        it is: such a file must not be shared, and the value would not be used anyway."""
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else ""
                path = f"{field}.{key}" if field else str(key)
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
        top = self.fields(root, "", TOP_FIELDS)
        for required in ("name", "region"):
            if required not in top:
                raise self.error(root, required, "missing (required)")
        name_node = top["name"][1]
        name = self.string(name_node, "name", check_name)
        if expected_name is not None and name != expected_name:
            raise self.error(name_node, "name", f"must match the file name {expected_name}.yaml (got {_shown(name)})")
        source, profile = self.credentials(top.get("credentials"))
        hosts = self.strings(top["hosts"][1], "hosts", check_host) if "hosts" in top else ()
        secrets = self.secrets(top["secrets"][1]) if "secrets" in top else ()
        return ProviderConfig(
            name=name,
            display_name=self.optional_string(_value(top, "display_name"), "display_name") or name,
            region=self.string(top["region"][1], "region", check_region),
            provider=self.choice(top["provider"][1], "provider", PROVIDERS) if "provider" in top else "aws",
            credentials_source=source,
            aws_profile=profile,
            endpoint_url=self.optional_string(_value(top, "endpoint_url"), "endpoint_url", check_endpoint_url),
            hosts=hosts,
            secrets=secrets,
        )

    def credentials(self, entry: tuple[yaml.Node, yaml.Node] | None) -> tuple[str, str | None]:
        if entry is None:
            return "static", None
        fields = self.fields(entry[1], "credentials", CREDENTIAL_FIELDS)
        source = self.choice(fields["source"][1], "credentials.source", SOURCES) if "source" in fields else "static"
        profile = self.optional_string(_value(fields, "profile"), "credentials.profile")
        if source == "profile" and profile is None:
            raise self.error(entry[1], "credentials.profile", "required with source: profile (an AWS CLI profile name)")
        if source != "profile" and profile is not None:
            raise self.error(fields["profile"][0], "credentials.profile", f"only used with source: profile (source is {source})")
        return source, profile

    def secrets(self, node: yaml.Node) -> tuple[SecretMapping, ...]:
        if not isinstance(node, yaml.SequenceNode):
            raise self.error(node, "secrets", f"must be a list of mappings with alias and secret_id (got {_kind(node)})")
        mappings: list[SecretMapping] = []
        for i, item in enumerate(node.value):
            field = f"secrets[{i}]"
            entries = self.fields(item, field, SECRET_FIELDS)
            for required in ("alias", "secret_id"):
                if required not in entries:
                    raise self.error(item, f"{field}.{required}", "missing (required)")
            alias_node = entries["alias"][1]
            alias = self.string(alias_node, f"{field}.alias", check_alias)
            if any(m.alias == alias for m in mappings):
                raise self.error(alias_node, f"{field}.alias", f"{_shown(alias)} is already used by another secret")
            mappings.append(SecretMapping(
                alias=alias,
                secret_id=self.string(entries["secret_id"][1], f"{field}.secret_id"),
                mode=self.choice(entries["mode"][1], f"{field}.mode", MODES) if "mode" in entries else "plaintext",
                hosts=self.strings(entries["hosts"][1], f"{field}.hosts", check_host) if "hosts" in entries else None,
                origins=self.strings(entries["origins"][1], f"{field}.origins", check_origin) if "origins" in entries else (),
                version_stage=self.optional_string(_value(entries, "version_stage"), f"{field}.version_stage"),
            ))
        return tuple(mappings)


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


def _name_hint(root: yaml.Node, expected_name: str | None) -> str:
    """The configuration's name for the set-credentials hint, when it is already readable."""
    if isinstance(root, yaml.MappingNode):
        for key_node, value_node in root.value:
            if key_node.value == "name" and isinstance(value_node, yaml.ScalarNode) and NAME_RE.fullmatch(value_node.value):
                return value_node.value
    return expected_name or "NAME"


def parse_config(text: str, source: str, expected_name: str | None = None) -> ProviderConfig:
    """Validate one configuration file's text. `source` names the file in error messages;
    `expected_name` (the file name without .yaml), when given, must equal `name:`."""
    try:
        # compose, not safe_load: the node tree keeps each value's line for error messages.
        root = yaml.compose(text, Loader=YAML_LOADER)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        # problem/context only: str(exc) would quote the offending line of the file.
        raise ConfigError(f"{source}:{line}: invalid YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}:1: invalid YAML: {type(exc).__name__}") from None
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
    credentials: dict[str, Any] = {"source": config.credentials_source}
    if config.aws_profile is not None:
        credentials["profile"] = config.aws_profile
    secrets = []
    for m in config.secrets:
        entry: dict[str, Any] = {"alias": m.alias, "secret_id": m.secret_id, "mode": m.mode}
        if m.hosts is not None:
            entry["hosts"] = tuple(m.hosts)
        if m.origins:
            entry["origins"] = tuple(m.origins)
        if m.version_stage is not None:
            entry["version_stage"] = m.version_stage
        secrets.append(entry)
    data = {
        "name": config.name,
        "display_name": config.display_name,
        "provider": config.provider,
        "region": config.region,
        "credentials": credentials,
        "endpoint_url": config.endpoint_url,
        "hosts": tuple(config.hosts),
        "secrets": secrets,
    }
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=4096)


class ConfigDirectory:
    """$VAULTPROXY_HOME/configs: one NAME.yaml per configuration."""

    def __init__(self, path: Path):
        self.path = Path(path)

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
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"no configuration named {name}; `vaultproxy config list` shows them") from None
        return parse_config(text, str(path), expected_name=name)

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

    def import_file(self, path: Path, *, replace: bool = False) -> ProviderConfig:
        """Validate a configuration file from anywhere (its name comes from `name:`) and save it
        under that name. A configuration of the same name is refused unless `replace`: its
        endpoint and secret list would be lost without a word."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read: {getattr(exc, 'strerror', None) or type(exc).__name__}") from None
        config = parse_config(text, str(path))
        if not replace and config.name in self.names():
            raise ConfigError(
                f"configuration {config.name} already exists: `vaultproxy config import {path} --replace` replaces its "
                f"file (its keys in the vault stay), or `vaultproxy config export {config.name}` first to keep a copy"
            )
        self.save(config)
        return config
