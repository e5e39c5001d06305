"""The provider interface: what the vault hands a provider, what it hands back, and how a
configuration finds its provider. Plain data, no SDK.

Each provider is one module named in PROVIDER_MODULES. Importing it must stay cheap (its
SDK, if any, is imported inside the functions that talk to the service): the configuration
reader imports it for its SCHEMA on every command, and only a fetch or a test should pay
for boto3.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from vaultcore.profiles import ProviderConfig, SecretMapping

# configuration `provider:` -> the module that implements Provider for it
PROVIDER_MODULES = {
    "aws": "vaultcore.providers.aws",
    "ssm": "vaultcore.providers.ssm",
    "vault": "vaultcore.providers.vault",
    "command": "vaultcore.providers.command",
}


@dataclass(frozen=True)
class Field:
    """A field a provider adds to the configuration file: one of its own settings (`where`
    "top"), a credentials setting ("credentials", next to `source`) or a per-secret one
    ("secret"). The reader checks it by `kind` and names the file, line and field on error;
    the CLI offers it as `--NAME` (underscores as dashes) on `config add` or `secret add`.

    kind: "string" (`check` may refine it), "choice" (one of `choices`), "integer" (at least
    `minimum`, or one of `choices`), "duration" (like `refresh`, in seconds) or "strings" (a
    non-empty list, e.g. an argv)."""

    name: str
    help: str
    where: str = "top"
    kind: str = "string"
    choices: tuple[str, ...] = ()
    check: Callable[[str], str] | None = None
    minimum: int = 1
    required: bool = False
    identity: bool = True  # per secret: a change means another secret (its cached value is dropped)
    # top or credentials: it decides where kept credentials are sent or whom they log in to;
    # a change keeps them from use until they are set again (see configurations.destination)
    destination: bool = False


@dataclass(frozen=True)
class Problem:
    """What a provider's cross-field check found: the dotted field ("secrets[1].field") and why."""

    field: str
    message: str


@dataclass(frozen=True)
class Schema:
    """What a provider adds to the common configuration schema (vaultcore/profiles.py)."""

    fields: tuple[Field, ...] = ()
    sources: tuple[str, ...] = ("static", "default")  # credentials.source; the first is the default
    credentials: str = "credentials"  # what `source: static` keeps in the vault, for messages: "AWS keys"
    secret_id: str | None = "the secret's id"  # what `secret_id` names; None: mappings take none
    location: str | None = None  # the top field listings show to tell configurations apart
    rotation_stage: str | None = None  # the version stage a rotation stages first (see Vault.fetch_pending)
    validate: Callable[[ProviderConfig], Problem | None] | None = None

    def of(self, where: str) -> tuple[Field, ...]:
        return tuple(f for f in self.fields if f.where == where)


@dataclass(frozen=True)
class Prompt:
    """One credential the CLI asks for (`config add`, `config set-credentials`): on a terminal
    with `label` (hidden when `secret`), else one line of stdin, in order."""

    key: str
    label: str
    noun: str  # for "an access key id and a secret access key are both needed"
    secret: bool = True
    required: bool = True


@dataclass(frozen=True)
class StaticCredentials:
    """AWS access keys kept in the vault (providers aws and ssm)."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, str | None]:
        return {
            "access_key_id": self.access_key_id,
            "secret_access_key": self.secret_access_key,
            "session_token": self.session_token,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StaticCredentials:
        for key in ("access_key_id", "secret_access_key"):
            if not isinstance(d.get(key), str) or not d[key]:
                raise ValueError(f"stored AWS credentials lack {key}")
        token = d.get("session_token")
        if token is not None and not isinstance(token, str):
            raise ValueError("stored AWS session_token is not a string")
        return cls(d["access_key_id"], d["secret_access_key"], token or None)


@dataclass(frozen=True)
class Identity:
    """Who a configuration's credentials are: `arn` the principal, `account` where it lives
    (named by `scope`, e.g. "account" for AWS, "namespace" for Vault)."""

    account: str
    arn: str
    user_id: str
    scope: str = "account"


@dataclass(frozen=True)
class FetchResult:
    alias: str
    value: str | bytes | None = field(default=None, repr=False)
    version_id: str | None = None
    error: str | None = None
    error_code: str | None = None


class ProviderError(Exception):
    """A failure of the whole configuration (credentials, endpoint), with a stable `code`."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


class Provider(Protocol):
    """What a secrets provider module offers (aws.py, ssm.py, vault.py, command.py)."""

    SCHEMA: Schema

    def credential_prompts(self, config: ProviderConfig) -> tuple[Prompt, ...]:
        """What `config set-credentials` asks for; () when the provider keeps none in the vault."""
        ...

    def credentials_from_dict(self, stored: Mapping[str, Any]) -> Any:
        """The credentials kept in the vault (as `credential_prompts` collected them), checked:
        an object with `to_dict()`. ValueError names what is missing, never a value."""
        ...

    def credentials_origin(self, config: ProviderConfig) -> str:
        """Where credentials come from when the vault keeps none, e.g. "AWS profile 'team'"."""
        ...

    def test_connection(self, config: ProviderConfig, credentials: Any) -> Identity: ...

    def config_warning(self, config: ProviderConfig) -> str | None:
        """What looks wrong with a configuration that still validates (for a warning), or None."""
        ...

    def fetch(
        self,
        config: ProviderConfig,
        mappings: Sequence[SecretMapping],
        credentials: Any,
        *,
        use_batch: bool = True,
        progress: Callable[[int, int], None] | None = None,
    ) -> dict[str, FetchResult]: ...


def provider_module(name: str) -> Provider:
    """The module of provider `name` (one of PROVIDER_MODULES), imported on first use."""
    module: Provider = importlib.import_module(PROVIDER_MODULES[name])  # type: ignore[assignment]
    return module


def provider_for(config: ProviderConfig) -> Provider:
    """The provider module of a configuration, imported on first use."""
    if config.provider not in PROVIDER_MODULES:
        raise ProviderError("unknown_provider", f"configuration {config.name}: unknown provider {config.provider!r}")
    return provider_module(config.provider)


def schema_for(provider: str) -> Schema:
    return provider_module(provider).SCHEMA

