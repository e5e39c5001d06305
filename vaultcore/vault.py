"""The facade: local secrets, provider configurations, fetches and the resolution index.

Everything the CLI, the proxy and library users do goes through `Vault`. It owns the shape
of the decrypted state (the store only encrypts a JSON document):

    {"local":   {KEY: {"value", "binary", "hosts", "origins", "updated_at"}},
     "active_config": NAME | None,
     "configs": {NAME: {"credentials": {...}, "error", "error_code", "last_fetched",
                        "cache": {ALIAS: {"secret_id", "version_stage", "value", "binary",
                                          "version_id", "fetched_at", "error", "error_code"}}}}}

Values of binary secrets are kept base64-encoded with `"binary": true`. Configurations
themselves (what to fetch, for which hosts) live in shareable YAML files beside the vault.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from vaultcore import placeholders
from vaultcore.freshness import Signature
from vaultcore.index import LOCAL_SOURCE, Destination, Secret, SecretIndex
from vaultcore.placeholders import KEY_RE, Context
from vaultcore.profiles import ConfigDirectory, ConfigError, ProviderConfig, SecretMapping
from vaultcore.providers.base import FetchResult, Identity, ProviderError, StaticCredentials, provider_for
from vaultcore.store import State, Store, VaultError

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


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def pack_value(value: str | bytes) -> dict[str, Any]:
    if isinstance(value, bytes):
        return {"value": base64.b64encode(value).decode("ascii"), "binary": True}
    return {"value": value, "binary": False}


def unpack_value(entry: dict[str, Any]) -> str | bytes:
    return base64.b64decode(entry["value"]) if entry.get("binary") else entry["value"]


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


def cached(mapping: SecretMapping, cache: dict[str, Any]) -> dict[str, Any]:
    """A mapping's cache entry; empty when the alias was last fetched from another secret or
    version stage (its mapping was changed since, by `secret add`, an import or an edit):
    that value must not go out under the alias any more."""
    entry = cache.get(mapping.alias) or {}
    if (entry.get("secret_id"), entry.get("version_stage")) != (mapping.secret_id, mapping.version_stage):
        return {}
    return entry


def provider_secrets(config: ProviderConfig, cache: dict[str, Any]) -> list[Secret]:
    """The keys a configuration's cached values resolve: an alias, and for JSON secrets
    its dot keys. A mapping never fetched resolves nothing."""
    secrets: list[Secret] = []
    source = f"{config.provider}:{config.name}"
    for mapping in config.secrets:
        entry = cached(mapping, cache)
        if entry.get("value") is None:
            continue
        value = unpack_value(entry)
        hosts, origins = config.hosts_for(mapping), mapping.origins
        keys: dict[str, str | bytes] = {mapping.alias: value}
        if mapping.mode == "json" and isinstance(value, str):
            # A value fetched in plaintext mode, the file edited to json since, is no object:
            # the next fetch marks the row; until then the alias keeps its whole value.
            with contextlib.suppress(ValueError):
                keys = dict(placeholders.expand_json(mapping.alias, value))
        for key, leaf in keys.items():
            secrets.append(Secret(key, leaf, hosts, origins, source))
    return secrets


def unfetched_aliases(config: ProviderConfig, cache: dict[str, Any]) -> dict[str, str | None]:
    """The aliases with no value to resolve, each with its last fetch error (None: never
    fetched): the index names `secret fetch` as their fix."""
    return {m.alias: entry.get("error") for m in config.secrets if (entry := cached(m, cache)).get("value") is None}


@dataclass(frozen=True)
class Snapshot:
    """An index and the signature of the files it was built from; the proxy rebuilds
    when the signature changes.

    `config` is the active configuration as last loaded: it outlives a broken file, so that
    the next rebuild still applies the vault's changes to its secrets (see `Vault.snapshot`);
    `config_error` says why the file did not load."""

    index: SecretIndex
    signature: Signature
    config: ProviderConfig | None = None
    config_error: str | None = None

    def is_stale(self) -> bool:
        """Whether a file the index was built from changed since: a few stat calls, so the
        proxy can ask before each request it resolves."""
        return self.signature.is_stale()


class Vault:
    def __init__(self, home: Path | None = None, store: Store | None = None):
        self.home = home or default_home()
        self.store = store or Store(self.home)
        self.configs = ConfigDirectory(self.home / "configs")

    # --- reading ---------------------------------------------------------------------

    def state(self) -> State:
        return self.store.read()

    def signature(self) -> Signature:
        """vault.enc and the configs directory (a file renamed into it changes its mtime),
        stamped now. A snapshot adds its active configuration's file, the only other one its
        index reads: so no glob, and the proxy can check before each request."""
        return Signature.of(self.store.path, self.configs.path)

    def snapshot(self, previous: Snapshot | None = None) -> Snapshot:
        """The proxy's index. Raises only when vault.enc cannot be read: the caller keeps
        `previous` then (the CLI cannot have changed a vault it cannot read either).

        A change to the vault always takes effect, even while the active configuration's
        file is broken or missing: local secrets come from the new state, and provider
        secrets from the new state's cache through `previous`'s configuration of the same
        name, so a removed or changed value counts at once. After a switch to a broken
        configuration no provider secret resolves at all."""
        signature = self.signature()  # stamped before they are read: a change during the build is seen next time
        state = self.state()
        name = state.get("active_config")
        if not name:
            return Snapshot(self._index(state, None), signature)
        signature += Signature.of(self.configs.file(name))  # before it is read, likewise
        try:
            config, error = self._active(state), None
        except (ConfigError, VaultError) as e:
            last_good = previous.config if previous else None
            config, error = (last_good if last_good and last_good.name == name else None), str(e)
        return Snapshot(self._index(state, config), signature, config, error)

    def index(self, state: State | None = None) -> SecretIndex:
        """Raises when the active configuration's file is broken, for the CLI to say so (the
        proxy builds with `snapshot`, which keeps serving what it can)."""
        state = self.state() if state is None else state
        return self._index(state, self._active(state))

    def _index(self, state: State, config: ProviderConfig | None) -> SecretIndex:
        local = [
            Secret(key, unpack_value(e), tuple(e.get("hosts", ())), tuple(e.get("origins", ())), LOCAL_SOURCE)
            for key, e in state.get("local", {}).items()
        ]
        if config is None:
            return SecretIndex((), local)
        cache = self._config_state(state, config.name).get("cache", {})
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

    # --- configurations ----------------------------------------------------------------

    def _active(self, state: State) -> ProviderConfig | None:
        name = state.get("active_config")
        if not name:
            return None
        try:
            return self.configs.load(name)
        except ConfigError:
            if name in self.configs.names():
                raise  # the file is there but invalid: its error names the line
            raise VaultError(
                f"the active configuration {name} has no file in {self.configs.path} any more: restore it, "
                f"or `vaultproxy config use OTHER`, or `vaultproxy config remove {name}`"
            ) from None

    @staticmethod
    def _config_state(state: State, name: str) -> dict[str, Any]:
        return state.setdefault("configs", {}).setdefault(name, {})

    def active_config(self) -> ProviderConfig | None:
        return self._active(self.state())

    def config(self, name: str | None = None) -> ProviderConfig:
        """The named configuration, or the active one."""
        if name:
            return self.configs.load(name)
        active = self.active_config()
        if active is None:
            raise VaultError("no active configuration: `vaultproxy config add NAME --region R` or `vaultproxy config use NAME`")
        return active

    def add_config(self, config: ProviderConfig, credentials: StaticCredentials | None = None) -> None:
        """Save a new configuration (and its static keys); the first one becomes active.
        An existing one is refused: saving over it would drop its secret mappings."""
        if config.name in self.configs.names():
            raise VaultError(
                f"configuration {config.name} already exists: change its keys with `vaultproxy config set-credentials "
                f"{config.name}`, edit {self.configs.path / (config.name + '.yaml')}, or `vaultproxy config remove {config.name}` first"
            )
        self.configs.save(config)
        self._adopt(config.name, credentials, fresh=True)

    def import_config(self, path: Path, *, replace: bool = False) -> ProviderConfig:
        """Add a shared YAML file; static keys are set separately (`config set-credentials`).
        With `replace`, one of the same name gets the new file and keeps its keys, and the
        fetched values of the secrets whose secret id and stage are unchanged (see `cached`)."""
        config = self.configs.import_file(path, replace=replace)
        self._adopt(config.name, None)
        return config

    def _adopt(self, name: str, credentials: StaticCredentials | None, *, fresh: bool = False) -> None:
        def change(state: State) -> None:
            if fresh:  # what a removed configuration of the same name left is not this one's
                state.setdefault("configs", {}).pop(name, None)
            if credentials is not None:
                self._config_state(state, name)["credentials"] = credentials.to_dict()
            if not state.get("active_config"):
                state["active_config"] = name

        self.store.update(change)

    def use_config(self, name: str) -> None:
        self.configs.load(name)  # exists and is valid
        self.store.update(lambda state: state.update(active_config=name))

    def remove_config(self, name: str) -> None:
        """Delete a configuration with its keys and cache. One whose file no longer validates,
        or was deleted by hand while the vault still knows it, can be removed too."""
        has_file = name in self.configs.names()
        state = self.state()
        if not (has_file or name in state.get("configs", {}) or state.get("active_config") == name):
            raise ConfigError(f"no configuration named {name}; `vaultproxy config list` shows them")

        def change(state: State) -> None:
            state.get("configs", {}).pop(name, None)
            if state.get("active_config") == name:
                state["active_config"] = None

        self.store.update(change)
        if has_file:
            self.configs.remove(name)

    def set_credentials(self, name: str, credentials: StaticCredentials) -> None:
        source = self.configs.load(name).credentials_source
        if source != "static":
            raise VaultError(
                f"configuration {name} takes its credentials from the {'AWS profile' if source == 'profile' else 'default AWS chain'}, "
                f"not from keys in the vault: set `credentials: {{source: static}}` in its file first"
            )
        self.store.update(lambda state: self._config_state(state, name).update(credentials=credentials.to_dict()))

    def credentials(self, name: str, state: State | None = None) -> StaticCredentials | None:
        state = self.state() if state is None else state
        raw = state.get("configs", {}).get(name, {}).get("credentials")
        return StaticCredentials.from_dict(raw) if raw else None

    def test_config(self, name: str | None = None) -> Identity:
        """Who the configuration's credentials are. A failure is kept like a fetch's (until a
        test or a fetch succeeds), so `config list` and `status` do not say `ok` meanwhile."""
        config = self.config(name)
        try:
            identity = provider_for(config).test_connection(config, self.credentials(config.name))
        except ProviderError as e:
            self._record_test(config.name, e)
            raise
        self._record_test(config.name, None)
        return identity

    def _record_test(self, name: str, error: ProviderError | None) -> None:
        if error is None and not self.state().get("configs", {}).get(name, {}).get("error"):
            return  # nothing to clear: no write (each one makes a running proxy reload)
        message, code = (f"connection test failed: {error}", error.code) if error else (None, None)
        self.store.update(lambda state: self._config_state(state, name).update(error=message, error_code=code))

    def add_secret(self, mapping: SecretMapping, config_name: str | None = None) -> ProviderConfig:
        config = self.config(config_name).with_secret(mapping)
        self.configs.save(config)
        return config

    def remove_secret(self, alias: str, config_name: str | None = None) -> ProviderConfig:
        """Drop `alias` and its fetched value; returns the configuration it was removed from."""
        config = self.config(config_name)
        if config.mapping(alias) is None:
            raise VaultError(f"configuration {config.name!r} has no secret {alias!r}")
        self.configs.save(config.without_secret(alias))
        self.store.update(lambda state: self._config_state(state, config.name).get("cache", {}).pop(alias, None))
        return config

    # --- fetching ----------------------------------------------------------------------

    def fetch(
        self,
        aliases: Iterable[str] | None = None,
        config_name: str | None = None,
        *,
        use_batch: bool = True,
        progress: Callable[[int, int], None] | None = None,
    ) -> dict[str, FetchResult]:
        """Fetch the named aliases (all when None) and store what came back.

        The network part runs without the lock; the results are then merged into the
        freshest state. A failed secret keeps its cached value and records the error."""
        config = self.config(config_name)
        if aliases is None:
            mappings = list(config.secrets)
        else:
            mappings = []
            for alias in aliases:
                mapping = config.mapping(alias)
                if mapping is None:
                    raise VaultError(f"configuration {config.name!r} has no secret {alias!r}: `vaultproxy secret list` shows them")
                mappings.append(mapping)
        if not mappings:
            return {}
        try:
            results = provider_for(config).fetch(config, mappings, self.credentials(config.name), use_batch=use_batch, progress=progress)
        except ProviderError as e:
            results = {m.alias: FetchResult(m.alias, None, error=str(e), error_code=e.code) for m in mappings}
        results = {alias: _checked(config.mapping(alias), result) for alias, result in results.items()}
        self.store.update(lambda state: _record(self._config_state(state, config.name), config, results))
        return results

    def move_to_local(self, alias: str, config_name: str | None = None) -> list[str]:
        """Turn a fetched provider secret into local secrets (JSON secrets keep their dot
        keys) and drop it from the configuration. Returns the local keys written."""
        config = self.config(config_name)
        mapping = config.mapping(alias)
        if mapping is None:
            raise VaultError(f"configuration {config.name!r} has no secret {alias!r}")

        def change(state: State) -> list[str]:
            cache = self._config_state(state, config.name).setdefault("cache", {})
            if cached(mapping, cache).get("value") is None:
                raise VaultError(f"{alias!r} has never been fetched: `vaultproxy secret fetch {alias}` first")
            single = dataclasses.replace(config, secrets=(mapping,))
            local = state.setdefault("local", {})
            written = []
            for secret in provider_secrets(single, cache):
                local[secret.key] = {**pack_value(secret.value), "hosts": list(secret.hosts), "origins": list(secret.origins), "updated_at": now()}
                written.append(secret.key)
            del cache[alias]
            return written

        written = self.store.update(change)
        self.configs.save(config.without_secret(alias))
        return written

    # --- status --------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Everything `vaultproxy status` shows: no values."""
        state = self.state()
        broken: str | None = None
        try:
            config = self._active(state)
        except (ConfigError, VaultError) as e:  # show it, and everything else
            config, broken = None, str(e)
        config_state = state.get("configs", {}).get(config.name, {}) if config else {}
        entries = {m.alias: cached(m, config_state.get("cache", {})) for m in (config.secrets if config else ())}
        index = self._index(state, config)
        rows: list[dict[str, Any]] = []
        for secret in index.secrets():
            rows.append({"key": secret.key, "source": secret.source, "hosts": list(secret.hosts), "origins": list(secret.origins)})
        for key in sorted(index.shadowed):
            rows.append({"key": key, "source": LOCAL_SOURCE, "shadowed_by": index.shadowed[key]})
        for row in rows:
            if row["source"] != LOCAL_SOURCE:
                entry = entries.get(row["key"].split(".")[0], {})
                row.update(last_fetched=entry.get("fetched_at"), error=entry.get("error"))
        unfetched = [
            {"key": m.alias, "source": f"{config.provider}:{config.name}", "hosts": list(config.hosts_for(m)),
             "origins": list(m.origins), "last_fetched": None, "error": index.unfetched[m.alias] or "not fetched yet"}
            for m in (config.secrets if config else ())
            if m.alias in index.unfetched
        ]
        return {
            "home": str(self.home),
            "active_config": config.name if config else state.get("active_config"),
            "config_error": config_error(config, config_state) if config else broken,
            "configs": self.configs.names(),
            "keys": sorted(rows + unfetched, key=lambda r: r["key"]),
        }

    def secret_rows(self, config_name: str | None = None) -> list[dict[str, Any]]:
        """`secret list`: alias, secret id, mode, last fetched, status."""
        config = self.config(config_name)
        cache = self.state().get("configs", {}).get(config.name, {}).get("cache", {})
        rows = []
        for m in config.secrets:
            entry = cached(m, cache)
            rows.append({
                "alias": m.alias, "secret_id": m.secret_id, "mode": m.mode, "hosts": list(config.hosts_for(m)),
                "last_fetched": entry.get("fetched_at"), "version_id": entry.get("version_id"),
                "status": "error" if entry.get("error") else ("ok" if entry.get("value") is not None else "not fetched"),
                "error": entry.get("error"),
            })
        return rows


def _checked(mapping: SecretMapping | None, result: FetchResult) -> FetchResult:
    """A JSON-mode secret must hold a JSON object; otherwise the row is an error and the
    cached value stays."""
    if mapping is None or mapping.mode != "json" or result.value is None:
        return result
    try:
        if isinstance(result.value, bytes):
            raise ValueError("binary")
        placeholders.expand_json(mapping.alias, result.value)
    except ValueError:
        return FetchResult(
            result.alias, None, result.version_id,
            error=f"{mapping.secret_id} is not a JSON object, but {mapping.alias!r} is mode json: use mode plaintext",
            error_code="not_json",
        )
    return result


CONFIG_WIDE_ERRORS = frozenset({"invalid_credentials", "expired_credentials", "missing_credentials", "unreachable", "timeout"})


def _record(config_state: dict[str, Any], config: ProviderConfig, results: dict[str, FetchResult]) -> None:
    """Merge fetch results: values replace the cache, errors only mark it. Each entry notes
    what it was fetched from (see `cached`)."""
    cache = config_state.setdefault("cache", {})
    fetched_at = now()
    for alias, result in results.items():
        mapping = config.mapping(alias)
        assert mapping is not None  # results come from the configuration's own mappings
        entry = cache[alias] = cached(mapping, cache)
        entry.update(secret_id=mapping.secret_id, version_stage=mapping.version_stage)
        if result.error is None and result.value is not None:
            entry.update(pack_value(result.value), version_id=result.version_id, fetched_at=fetched_at, error=None, error_code=None)
        else:
            entry.update(error=result.error, error_code=result.error_code, error_at=fetched_at)
    failures = [r for r in results.values() if r.error_code in CONFIG_WIDE_ERRORS]
    if failures and len(failures) == len(results):
        config_state.update(error=failures[0].error, error_code=failures[0].error_code)
        return
    # The endpoint answered for at least one secret (even "access denied"): credentials and
    # network work again, so an earlier configuration-wide error is over.
    config_state.update(error=None, error_code=None)
    if any(r.error is None for r in results.values()):
        config_state["last_fetched"] = fetched_at


def config_error(config: ProviderConfig, config_state: dict[str, Any]) -> str | None:
    """What is wrong with a configuration: a credentials or network failure of its last fetch,
    else which of its secrets failed (their rows say why)."""
    if config_state.get("error"):
        return str(config_state["error"])
    cache = config_state.get("cache", {})
    failed = [m.alias for m in config.secrets if cached(m, cache).get("error")]
    if not failed:
        return None
    return f"{len(failed)} of {len(config.secrets)} secrets failed to fetch: {abbreviated(failed)} (`vaultproxy secret list` says why)"


def abbreviated(names: list[str], limit: int = 5) -> str:
    """Names for a one-line message: hundreds of secrets can fail together."""
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")

