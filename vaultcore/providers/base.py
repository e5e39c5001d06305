"""The provider interface: what the vault hands a provider, what it hands back, and how a
configuration finds its provider. Plain data, no SDK.

Kept apart from `aws.py` so that the CLI and the proxy load boto3 only when they actually
talk to AWS (importing it is most of a CLI command's start-up time).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from vaultcore.profiles import ProviderConfig, SecretMapping

# configuration `provider:` -> the module that implements Provider for it
PROVIDER_MODULES = {"aws": "vaultcore.providers.aws"}


@dataclass(frozen=True)
class StaticCredentials:
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
    def from_dict(cls, d: dict[str, Any]) -> StaticCredentials:
        for key in ("access_key_id", "secret_access_key"):
            if not isinstance(d.get(key), str) or not d[key]:
                raise ValueError(f"stored AWS credentials lack {key}")
        token = d.get("session_token")
        if token is not None and not isinstance(token, str):
            raise ValueError("stored AWS session_token is not a string")
        return cls(d["access_key_id"], d["secret_access_key"], token or None)


@dataclass(frozen=True)
class Identity:
    account: str
    arn: str
    user_id: str


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
    """What a secrets provider module offers the vault (`aws.py` is the one there is)."""

    def test_connection(self, config: ProviderConfig, credentials: StaticCredentials | None) -> Identity: ...

    def region_problem(self, config: ProviderConfig) -> str | None:
        """Why the configuration's region looks wrong (for a warning), or None."""
        ...

    def fetch(
        self,
        config: ProviderConfig,
        mappings: Sequence[SecretMapping],
        credentials: StaticCredentials | None,
        *,
        use_batch: bool = True,
        progress: Callable[[int, int], None] | None = None,
    ) -> dict[str, FetchResult]: ...


def provider_for(config: ProviderConfig) -> Provider:
    """The provider module of a configuration, imported on first use."""
    if config.provider not in PROVIDER_MODULES:
        raise ProviderError("unknown_provider", f"configuration {config.name}: unknown provider {config.provider!r}")
    module: Provider = importlib.import_module(PROVIDER_MODULES[config.provider])  # type: ignore[assignment]
    return module
