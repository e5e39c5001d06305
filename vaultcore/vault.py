"""The facade: local secrets, provider configurations, fetches and the resolution index.

Everything the CLI, the proxy and library users do goes through `Vault`. It owns the shape
of the decrypted state (the store only encrypts a JSON document):

    {"local":   {KEY: {"value", "binary", "hosts", "origins", "updated_at"}},
     "active_config": NAME | None,
     "configs": {NAME: ...}}   # credentials and caches: see configurations.py

Values of binary secrets are kept base64-encoded with `"binary": true`. Local secrets and the
index are here; configurations, their credentials, fetches and caches are in
configurations.py, behind the thin delegates below.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vaultcore import placeholders
from vaultcore.configurations import (
    Configurations, config_error, now, pack_value, provider_secrets, status_rows, unfetched_aliases, unpack_value,
)
from vaultcore.freshness import Signature
from vaultcore.index import LOCAL_SOURCE, Destination, Secret, SecretIndex
from vaultcore.placeholders import KEY_RE, Context
from vaultcore.profiles import ConfigDirectory, ConfigError, ProviderConfig, SecretMapping, Vet
from vaultcore.providers.base import FetchResult, Identity
from vaultcore.signing import SIGNING_FILE, Rule, SigningError, load_rules
from vaultcore.store import State, Store, VaultError
from vaultcore.tokens import TOKENS_FILE, TokenSource, TokenSourceError, load_sources

MAX_VALUE_BYTES = 1024 * 1024
HOME_ENV = "VAULTPROXY_HOME"


def default_home() -> Path:
    """`$VAULTPROXY_HOME`, else the platform's user config directory."""
    if os.environ.get(HOME_ENV):
        return Path(os.environ[HOME_ENV]).expanduser()
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "vaultproxy"
    if sys.platform == "win32":
        return Path(os.environ.get("APPDATA", Path.home())) / "vaultproxy"
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "vaultproxy"


def home_from_option(value: str) -> Path:
    """The vault home a setting names (the proxy's `vault_home`, the CLI's `--home`): that
    directory, or the default home when it is empty."""
    return Path(value).expanduser() if value else default_home()


def validate_key(key: str) -> None:
    if not KEY_RE.fullmatch(key):
        raise VaultError(
            f"invalid key {key[:80]!r}: use 1 to 256 of A-Z a-z 0-9 _ . - / (no spaces)"
        )


def validate_value(value: str | bytes) -> None:
    size = len(value.encode() if isinstance(value, str) else value)
    if size == 0:
        raise VaultError("the value is empty; to remove a secret use `vaultproxy local unset KEY`")
    if size > MAX_VALUE_BYTES:
        raise VaultError(f"the value is {size} bytes; a secret holds at most {MAX_VALUE_BYTES} bytes (1 MiB)")


@dataclass(frozen=True)
class Snapshot:
    """An index and the signature of the files it was built from; the proxy rebuilds
    when the signature changes.

    `config` is the active configuration as last loaded: it outlives a broken file, so that
    the next rebuild still applies the vault's changes to its secrets (see `Vault.snapshot`);
    `config_error` says why the file did not load. `signing` are the signing rules
    (vaultcore/signing.py), the last good ones while signing.yaml is broken (`signing_error`);
    `tokens` the OAuth token sources of tokens.yaml (vaultcore/tokens.py), likewise. Those two
    files are edited by hand, never by the CLI: `rules_signature` stamps them for the proxy's
    watcher (in force within half a second), apart from the files checked before each request."""

    index: SecretIndex
    signature: Signature
    config: ProviderConfig | None = None
    config_error: str | None = None
    signing: tuple[Rule, ...] = ()
    signing_error: str | None = None
    tokens: tuple[TokenSource, ...] = ()
    tokens_error: str | None = None
    rules_signature: Signature = Signature((), ())

    def is_stale(self) -> bool:
        """Whether a file the index was built from changed since: a few stat calls, so the
        proxy can ask before each request it resolves."""
        return self.signature.is_stale()

    def rules_stale(self) -> bool:
        return self.rules_signature.is_stale()


class Vault:
    def __init__(self, home: Path):
        self.home = home
        self.store = Store(home)
        self.configs = ConfigDirectory(self.home / "configs")
        self.configurations = Configurations(self.store, self.configs)

    # --- reading ---------------------------------------------------------------------

    def state(self) -> State:
        return self.store.read()

    def signature(self) -> Signature:
        """vault.enc and the configs directory (a file renamed into it changes its mtime),
        stamped now: what the CLI writes. A snapshot adds its active configuration's file, the
        only other one its index reads: so no glob, and the proxy can check before each request."""
        return Signature.of(self.store.path, self.configs.path)

    def rules_signature(self) -> Signature:
        """signing.yaml and tokens.yaml, stamped now: edited by hand only."""
        return Signature.of(self.home / SIGNING_FILE, self.home / TOKENS_FILE)

    def snapshot(self, previous: Snapshot | None = None) -> Snapshot:
        """The proxy's index. Raises only when vault.enc cannot be read: the caller keeps
        `previous` then (the CLI cannot have changed a vault it cannot read either).

        A change to the vault always takes effect, even while the active configuration's
        file is broken or missing: local secrets come from the new state, and provider
        secrets from the new state's cache through `previous`'s configuration of the same
        name, so a removed or changed value counts at once. After a switch to a broken
        configuration no provider secret resolves at all."""
        signature = self.signature()  # stamped before they are read: a change during the build is seen next time
        rules_signature = self.rules_signature()
        state = self.state()
        try:
            signing, signing_error = load_rules(self.home), None
        except SigningError as e:
            signing, signing_error = (previous.signing if previous else ()), str(e)
        try:
            tokens, tokens_error = load_sources(self.home), None
        except TokenSourceError as e:
            tokens, tokens_error = (previous.tokens if previous else ()), str(e)
        rules = {
            "rules_signature": rules_signature, "signing": signing, "signing_error": signing_error, "tokens": tokens, "tokens_error": tokens_error,
        }
        name = state.get("active_config")
        if not name:
            return Snapshot(self._index(state, None), signature, **rules)
        signature += Signature.of(self.configs.file(name))  # before it is read, likewise
        try:
            config, error = self._active(state), None
        except (ConfigError, VaultError) as e:
            last_good = previous.config if previous else None
            config, error = (last_good if last_good and last_good.name == name else None), str(e)
        return Snapshot(self._index(state, config), signature, config, error, **rules)

    def index(self) -> SecretIndex:
        """Raises when the active configuration's file is broken, for the CLI to say so (the
        proxy builds with `snapshot`, which keeps serving what it can)."""
        state = self.state()
        return self._index(state, self._active(state))

    def _index(self, state: State, config: ProviderConfig | None) -> SecretIndex:
        local = [
            Secret(key, unpack_value(e), tuple(e.get("hosts", ())), tuple(e.get("origins", ())), LOCAL_SOURCE)
            for key, e in state.get("local", {}).items()
        ]
        if config is None:
            return SecretIndex((), local)
        cache = state.get("configs", {}).get(config.name, {}).get("cache", {})
        return SecretIndex(provider_secrets(config, cache), local, unfetched_aliases(config, cache))

    def keys(self) -> list[str]:
        return [s.key for s in self.index().secrets()]

    def get(self, key: str) -> str | bytes:
        """The value `key` resolves to (provider first, then local)."""
        secret = self.index().get(key)
        if secret is None:
            raise VaultError(f"unknown key {key!r}: `vaultproxy status` lists the keys")
        return secret.value

    def resolve(self, text: str, host: str, context: Context = Context.RAW, *, origin: str | None = None, scheme: str = "https") -> str:
        """Substitute `text` as the proxy would for a request to `host` (library use): a
        refused key, or text that is almost a placeholder, raises SubstitutionError."""
        lookup = self.index().lookup_for(Destination(host, scheme, origin))
        return placeholders.resolve(text, context, lookup)[0]

    # --- local secrets ---------------------------------------------------------------

    def set(self, key: str, value: str | bytes, hosts: Iterable[str] | None = None, origins: Iterable[str] | None = None) -> None:
        """Store a local secret. `hosts`/`origins` of None keep what an existing secret has."""
        validate_key(key)
        validate_value(value)
        self._write_local(key, pack_value(value), hosts, origins)

    def edit(self, key: str, hosts: Iterable[str] | None = None, origins: Iterable[str] | None = None) -> None:
        """Change where an existing local secret may go, keeping its value: nobody should have
        to type a secret again to allow one more host."""
        self._write_local(key, None, hosts, origins)

    def _write_local(
        self, key: str, packed: dict[str, Any] | None, hosts: Iterable[str] | None, origins: Iterable[str] | None,
    ) -> None:
        """`packed` None keeps the value of the existing secret `key`."""

        def change(state: State) -> None:
            self._refuse_provider_key(state, key)
            local = state.setdefault("local", {})
            if packed is None and key not in local:
                raise VaultError(f"no local secret {key!r}: store it first with `vaultproxy local set {key}`")
            old = local.get(key, {})
            local[key] = {
                **old,
                **(packed or {}),
                "hosts": list(hosts) if hosts is not None else old.get("hosts", []),
                "origins": list(origins) if origins is not None else old.get("origins", []),
                "updated_at": now(),
            }

        self.store.update(change)

    def unset(self, key: str) -> None:
        def change(state: State) -> None:
            self._refuse_provider_key(state, key)
            if key not in state.get("local", {}):
                raise VaultError(f"no local secret {key!r}: `vaultproxy local list` shows them")
            del state["local"][key]

        self.store.update(change)

    def local_secrets(self) -> list[dict[str, Any]]:
        """Local secrets without their values, for listings."""
        return [
            {"key": k, "hosts": e.get("hosts", []), "origins": e.get("origins", []), "binary": e.get("binary", False), "updated_at": e.get("updated_at")}
            for k, e in sorted(self.state().get("local", {}).items())
        ]

    def _refuse_provider_key(self, state: State, key: str) -> None:
        try:
            config = self._active(state)
        except (ConfigError, VaultError):
            return  # a broken configuration resolves nothing until fixed; local secrets stay editable
        owner = config and next((m for m in config.secrets if key == m.alias or key.startswith(m.alias + ".")), None)
        if owner:
            raise VaultError(
                f"{key!r} comes from configuration {config.name!r} ({config.provider}); change it there, "
                f"or make it local first with `vaultproxy secret move-to-local {owner.alias}`"
            )

    # --- configurations: configurations.py, through these thin delegates -------------------

    def _active(self, state: State) -> ProviderConfig | None:
        return self.configurations.active(state)

    def config(self, name: str | None = None) -> ProviderConfig:
        return self.configurations.config(name)

    def add_config(self, config: ProviderConfig, credentials: Any = None) -> None:
        self.configurations.add(config, credentials)

    def import_config(self, path: Path, *, replace: bool = False, vet: Vet | None = None) -> ProviderConfig:
        return self.configurations.import_file(path, replace=replace, vet=vet)

    def use_config(self, name: str) -> None:
        self.configurations.use(name)

    def remove_config(self, name: str) -> None:
        self.configurations.remove(name)

    def set_credentials(self, name: str, credentials: Any) -> None:
        self.configurations.set_credentials(name, credentials)

    def credentials(self, name: str) -> Any:
        return self.configurations.credentials(name)

    def test_config(self, name: str | None = None) -> Identity:
        return self.configurations.test(name)

    def add_secret(self, mapping: SecretMapping, config_name: str | None = None) -> ProviderConfig:
        return self.configurations.add_secret(mapping, config_name)

    def remove_secret(self, alias: str, config_name: str | None = None) -> ProviderConfig:
        return self.configurations.remove_secret(alias, config_name)

    def fetch(
        self,
        aliases: Iterable[str] | None = None,
        config_name: str | None = None,
        *,
        use_batch: bool = True,
        progress: Callable[[int, int], None] | None = None,
    ) -> dict[str, FetchResult]:
        return self.configurations.fetch(aliases, config_name, use_batch=use_batch, progress=progress)

    def fetch_pending(self, aliases: Iterable[str], config_name: str) -> dict[str, Secret]:
        return self.configurations.fetch_pending(aliases, config_name)

    def refresh_plan(self, at: float) -> tuple[str | None, list[str], float | None]:
        return self.configurations.refresh_plan(at)

    def move_to_local(self, alias: str, config_name: str | None = None) -> list[str]:
        return self.configurations.move_to_local(alias, config_name)

    def secret_rows(self, config_name: str | None = None) -> list[dict[str, Any]]:
        return self.configurations.secret_rows(config_name)

    # --- status --------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Everything `vaultproxy status` shows: no values."""
        state = self.state()
        broken: str | None = None
        try:
            config = self._active(state)
        except (ConfigError, VaultError) as e:  # show it, and everything else
            config, broken = None, str(e)
        index = self._index(state, config)
        rows: list[dict[str, Any]] = [
            {"key": s.key, "source": s.source, "hosts": list(s.hosts), "origins": list(s.origins)}
            for s in index.secrets() if s.source == LOCAL_SOURCE
        ]
        rows += [{"key": key, "source": LOCAL_SOURCE, "shadowed_by": index.shadowed[key]} for key in sorted(index.shadowed)]
        if config:
            rows += status_rows(config, state, index)
        tokens = self._tokens_status()
        token_names = {token["name"] for token in tokens["tokens"]}
        for row in rows:  # `<<vault:NAME>>` is the token source's: say so where the key is listed
            if row["key"] in token_names and not row.get("shadowed_by"):
                row["shadowed_by"] = f"{TOKENS_FILE} (a token source's name)"
        return {
            "home": str(self.home),
            "active_config": config.name if config else state.get("active_config"),
            "config_error": config_error(config, state.get("configs", {}).get(config.name, {})) if config else broken,
            "configs": self.configs.names(),
            "keys": sorted(rows, key=lambda r: r["key"]),
            **self._signing_status(),
            **tokens,
        }

    def _signing_status(self) -> dict[str, Any]:
        """The signing rules (names, hosts, kind), or why signing.yaml does not load."""
        try:
            rules = load_rules(self.home)
        except SigningError as e:
            return {"signing": [], "signing_error": str(e)}
        return {
            "signing": [{"name": r.name, "hosts": list(r.hosts), "kind": type(r.method).__name__.lower()} for r in rules],
            "signing_error": None,
        }

    def _tokens_status(self) -> dict[str, Any]:
        """The token sources and what the proxy last said of each (minted, until when, the
        last error), or why tokens.yaml does not load."""
        from vaultcore.oauth import read_status  # the minting code loads only where tokens are

        try:
            sources = load_sources(self.home)
        except TokenSourceError as e:
            return {"tokens": [], "tokens_error": str(e)}
        states = read_status(self.home) if sources else {}
        return {
            "tokens": [
                {"name": s.name, "grant": s.grant, "token_url": s.token_url, "hosts": list(s.hosts), **states.get(s.name, {})}
                for s in sources
            ],
            "tokens_error": None,
        }
