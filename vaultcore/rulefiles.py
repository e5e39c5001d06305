"""Files of named rules in the vault's home (signing.yaml, tokens.yaml): YAML read into
frozen dataclasses, each error naming the file, the line and the field.

The files name vault keys, never values, so they can be shared like a configuration. A file
that is missing holds no rules; one that is broken raises the caller's error type, and the
proxy keeps the last good rules while it says why.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

import yaml

from vaultcore.hostrules import normalise_host_rule, parse_origin_rule, reaches_any_host
from vaultcore.placeholders import KEY_RE
from vaultcore.profiles import check_host, check_origin, check_text, compose_yaml, field_path, read_yaml

# The entry field that lets a rule reach nearly every host (`*`), as --allow-any-host does on
# the command line: a file is shared, and such a rule is only ever written on purpose.
ANY_HOST = "allow_any_host"


class Named(Protocol):
    @property
    def name(self) -> str: ...


N = TypeVar("N", bound=Named)


class NodeReader:
    """YAML nodes to values, each error naming the file, the line and the field."""

    def __init__(self, source: str, error: type[ValueError]):
        self.source = source
        self._error = error

    def error(self, node: yaml.Node, field: str, problem: str) -> ValueError:
        return self._error(f"{self.source}:{node.start_mark.line + 1}: {field}: {problem}")

    def mapping(self, node: yaml.Node, field: str, allowed: tuple[str, ...], required: tuple[str, ...] = ()) -> dict[str, yaml.Node]:
        if not isinstance(node, yaml.MappingNode):
            raise self.error(node, field or "(top)", f"must be a mapping of {', '.join(allowed)}")
        entries: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            path = field_path(field, key)
            if key not in allowed:
                raise self.error(key_node, path, f"unknown field; valid fields: {', '.join(allowed)}")
            if key in entries:  # else the second would quietly win, below the first a reader checks
                raise self.error(key_node, path, "appears twice")
            entries[key] = value_node
        for name in required:
            if name not in entries:
                raise self.error(node, f"{field}.{name}" if field else name, "missing (required)")
        return entries

    def string(self, node: yaml.Node, field: str, check: Callable[[str], Any] | None = None, *, layout: bool = False) -> str:
        """A non-empty string without control characters (`layout`: tabs and line feeds
        allowed), which `check` accepts: listings print these files' strings."""
        if not isinstance(node, yaml.ScalarNode) or node.tag != "tag:yaml.org,2002:str" or not node.value:
            raise self.error(node, field, "must be a non-empty string")
        try:
            check_text(node.value, layout=layout)
            if check is not None:
                check(node.value)
        except ValueError as e:
            raise self.error(node, field, str(e)) from None
        return node.value

    def flag(self, node: yaml.Node, field: str) -> bool:
        if not isinstance(node, yaml.ScalarNode) or node.tag != "tag:yaml.org,2002:bool":
            raise self.error(node, field, "must be true or false")
        return bool(yaml.constructor.SafeConstructor.bool_values[node.value.lower()])

    def choice(self, node: yaml.Node, field: str, choices: Any) -> str:
        value = self.string(node, field)
        if value not in choices:
            raise self.error(node, field, f"must be one of {', '.join(choices)} (got {value!r})")
        return value

    def key(self, node: yaml.Node, field: str) -> str:
        """A vault key (never a value)."""
        return self.string(node, field, check_key)

    def strings(self, node: yaml.Node, field: str, check: Callable[[str], Any] | None = None, *, example: str) -> tuple[str, ...]:
        if not isinstance(node, yaml.SequenceNode):
            raise self.error(node, field, f"must be a list, e.g. {example}")
        return tuple(self.string(item, f"{field}[{i}]", check) for i, item in enumerate(node.value))

    def hosts(self, node: yaml.Node, field: str, *, any_host: bool = False) -> tuple[str, ...]:
        """A hosts list; one that reaches nearly every host only with `any_host` (ANY_HOST)."""
        hosts = self.strings(node, field, check_host, example='["api.example.com"]')
        if not hosts:
            raise self.error(node, field, 'must name at least one host, e.g. ["api.example.com"]')
        if not any_host:
            self._refuse_any_host(node, field, [normalise_host_rule(host) for host in hosts], "host")
        return hosts

    def origins(self, node: yaml.Node, field: str, *, any_host: bool = False) -> tuple[str, ...]:
        """An origins list (web pages), held to the hosts' rule for `*`."""
        origins = self.strings(node, field, check_origin, example='["https://app.example.com"]')
        if not any_host:
            self._refuse_any_host(node, field, [parse_origin_rule(origin) for origin in origins], "web page")
        return origins

    def _refuse_any_host(self, node: yaml.SequenceNode, field: str, canonical: list[str], what: str) -> None:
        for i, (item, rule) in enumerate(zip(node.value, canonical)):
            if reaches_any_host(rule):
                raise self.error(
                    item, f"{field}[{i}]",
                    f"{rule} matches nearly every {what}; add `{ANY_HOST}: true` to this entry if that is what you mean",
                )


def check_key(value: str) -> None:
    if not KEY_RE.fullmatch(value):
        raise ValueError(f"must be a vault key such as webhook_secret or aws.secret_access_key (got {value!r})")


def check_header(value: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+", value):
        raise ValueError(f"must be a header name such as X-Signature (got {value!r})")


def load_named(
    path: Path, top: str, read_item: Callable[[NodeReader, yaml.Node, str], N], error: type[ValueError],
) -> tuple[N, ...]:
    """The entries of the list under `top` in the file at `path` (none when it does not
    exist), each read by `read_item`; two entries may not share a name."""
    try:
        text = read_yaml(path)
    except FileNotFoundError:
        return ()
    except (OSError, UnicodeDecodeError) as e:
        raise error(f"{path}: cannot read: {getattr(e, 'strerror', None) or type(e).__name__}") from None
    return parse_named(text, str(path), top, read_item, error)


def parse_named(
    text: str, source: str, top: str, read_item: Callable[[NodeReader, yaml.Node, str], N], error: type[ValueError],
) -> tuple[N, ...]:
    root = compose_yaml(text, source, error)  # as a configuration's: no aliases, at most 1 MiB
    if root is None:
        return ()
    reader = NodeReader(source, error)
    items = reader.mapping(root, "", (top,), required=(top,))[top]
    if not isinstance(items, yaml.SequenceNode):
        raise reader.error(items, top, "must be a list")
    entries: list[N] = []
    for i, item in enumerate(items.value):
        entry = read_item(reader, item, f"{top}[{i}]")
        if any(e.name == entry.name for e in entries):
            raise reader.error(item, f"{top}[{i}].name", f"{entry.name!r} is already used by another entry")
        entries.append(entry)
    return tuple(entries)
