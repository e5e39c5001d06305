"""Provider configurations with their credentials and fetched values: the provider half of
the vault, behind `Vault`'s methods of the same names (vault.py is the facade).

Configurations themselves (what to fetch, for which hosts) are shareable YAML files
(profiles.py); what must stay secret lives in the encrypted state, per configuration:

    "configs": {NAME: {"credentials": {...}, "destination": {...}, "error", "error_code", "last_fetched",
                       "cache": {ALIAS: {"secret_id", "version_stage", "options", "value", "binary",
                                         "version_id", "fetched_at", "error", "error_code",
                                         "error_at", "failures"}}}}

Credentials are kept with their destination (see `destination`): files are shared, imported
over each other and edited by hand, and a file that names another server must not get them.
A configuration file is read and written back under the vault's lock (`Store.locked`), so that
concurrent commands lose none of each other's changes.

Nothing here knows one provider from another: each is a module behind providers/base.py's
interface, and its Schema says what this code needs to know (rotation, what a secret is, where
credentials go).
"""

from __future__ import annotations

import base64
import shlex
import contextlib
import dataclasses
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from vaultcore import placeholders, schedule
from vaultcore.index import Secret, SecretIndex
from vaultcore.profiles import ConfigDirectory, ConfigError, ProviderConfig, SecretMapping, Vet, format_duration
from vaultcore.providers.base import FetchResult, Identity, ProviderError, provider_for, schema_for
from vaultcore.store import State, Store, VaultError

CONFIG_WIDE_ERRORS = frozenset({
    "invalid_credentials", "expired_credentials", "missing_credentials", "destination_changed", "unreachable", "timeout",
})


def now() -> str:
    """The time as the vault records it; to the millisecond, so that of two fetches of one
    secret the later-started one can tell it is newer (see `_record`)."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def pack_value(value: str | bytes) -> dict[str, Any]:
    if isinstance(value, bytes):
        return {"value": base64.b64encode(value).decode("ascii"), "binary": True}
    return {"value": value, "binary": False}


def unpack_value(entry: dict[str, Any]) -> str | bytes:
    return base64.b64decode(entry["value"]) if entry.get("binary") else entry["value"]


def as_stored(value: Any) -> Any:
    """A field's value as the vault's JSON gives it back (an argv tuple is a list there)."""
    return list(value) if isinstance(value, tuple) else value


def fetched_from(config: ProviderConfig, mapping: SecretMapping) -> dict[str, Any]:
    """What a mapping is fetched from, as its cache entry records it: the secret id, the
    version stage and the provider's per-secret settings that name another secret (a Vault
    field or version, a command), not those that only change how (a timeout)."""
    identity = {f.name for f in schema_for(config.provider).of("secret") if f.identity}
    options = {key: as_stored(value) for key, value in mapping.options if key in identity}
    return {"secret_id": mapping.secret_id, "version_stage": mapping.version_stage, "options": options or None}


def destination(config: ProviderConfig) -> dict[str, Any]:
    """Where a configuration's kept credentials go: its provider, and the fields its provider
    declares as deciding where they are sent or whom they log in to (Field.destination: a
    Vault address, an AWS endpoint...). Kept beside the credentials when they are set; at
    each use the configuration must still name the same (see `moved`)."""
    fields = [f.name for f in schema_for(config.provider).fields if f.destination]
    # a field named like an attribute (region, endpoint_url) is one, the others are options
    return {"provider": config.provider, "source": config.credentials_source,
            # whose keys (only with source: profile: kept credentials were bound without it)
            **({"profile": config.aws_profile} if config.aws_profile is not None else {}),
            **{name: as_stored(getattr(config, name, None) or config.option(name)) for name in fields}}


def moved(config: ProviderConfig, bound: dict[str, Any]) -> str | None:
    """Why credentials kept for `bound` (a `destination`) may not go where `config` sends
    them, naming what changed and the fix; None when they may. An empty `bound`: nothing says
    where they belong (see `Configurations.import_file`)."""
    current = destination(config)
    if bound == current:
        return None
    kept = f"{schema_for(config.provider).credentials} kept for {config.name}"
    fix = f"they are not used until set again with `vaultproxy config set-credentials {config.name}`"
    if not bound:
        return f"{kept} are left from before its file was imported, with nothing to say where they may go: {fix}"
    return f"{kept} were set for another destination ({destination_changes(bound, current)}): {fix}"


def destination_changes(before: dict[str, Any], after: dict[str, Any]) -> str:
    """What differs between two `destination`s, e.g. `address is now https://b, not https://a`."""
    return "; ".join(
        f"{key} is now {_shown(after.get(key))}, not {_shown(before.get(key))}"
        for key in dict.fromkeys([*after, *before]) if after.get(key) != before.get(key)
    )


def keep(config_state: dict[str, Any], config: ProviderConfig, credentials: Any) -> None:
    """Keep `credentials` (the provider's object) for `config`, bound to its destination."""
    config_state.update(credentials=credentials.to_dict(), destination=destination(config))


def cached(config: ProviderConfig, mapping: SecretMapping, cache: dict[str, Any]) -> dict[str, Any]:
    """A mapping's cache entry; empty when the alias was last fetched from another secret
    (its mapping was changed since, by `secret add`, an import or an edit): that value must
    not go out under the alias any more."""
    entry = cache.get(mapping.alias) or {}
    if any(entry.get(key) != value for key, value in fetched_from(config, mapping).items()):
        return {}
    return entry


def provider_secrets(config: ProviderConfig, cache: dict[str, Any]) -> list[Secret]:
    """The keys a configuration's cached values resolve: an alias, and for JSON secrets
    its dot keys. A mapping never fetched resolves nothing."""
    secrets: list[Secret] = []
    source = f"{config.provider}:{config.name}"
    for mapping in config.secrets:
        entry = cached(config, mapping, cache)
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
    return {
        m.alias: entry.get("error") for m in config.secrets if (entry := cached(config, m, cache)).get("value") is None
    }


def state_of(state: State, name: str) -> dict[str, Any]:
    return state.setdefault("configs", {}).setdefault(name, {})


class Configurations:
    """The configuration files and, in the vault's state, their credentials and caches."""

    def __init__(self, store: Store, files: ConfigDirectory):
        self.store = store
        self.files = files

    # --- which configuration ---------------------------------------------------------------

    def active(self, state: State) -> ProviderConfig | None:
        name = state.get("active_config")
        if not name:
            return None
        try:
            return self.files.load(name)
        except ConfigError:
            if name in self.files.names():
                raise  # the file is there but invalid: its error names the line
            raise VaultError(
                f"the active configuration {name} has no file in {self.files.path} any more: restore it, "
                f"or `vaultproxy config use OTHER`, or `vaultproxy config remove {name}`"
            ) from None

    def config(self, name: str | None = None) -> ProviderConfig:
        """The named configuration, or the active one."""
        if name:
            return self.files.load(name)
        active = self.active(self.store.read())
        if active is None:
            raise VaultError("no active configuration: `vaultproxy config add NAME --provider P ...` or `vaultproxy config use NAME`")
        return active

    def add(self, config: ProviderConfig, credentials: Any = None) -> None:
        """Save a new configuration (and its credentials); the first one becomes active.
        An existing one is refused: saving over it would drop its secret mappings."""
        with self.store.locked():
            if config.name in self.files.names():
                raise VaultError(
                    f"configuration {config.name} already exists: change its credentials with `vaultproxy config set-credentials "
                    f"{config.name}`, edit {self.files.file(config.name)}, or `vaultproxy config remove {config.name}` first"
                )
            self.files.save(config)
            self._adopt(config, credentials, fresh=True)

    def import_file(self, path: Path, *, replace: bool = False, vet: Vet | None = None) -> ProviderConfig:
        """Add a shared YAML file; credentials are set separately (`config set-credentials`).
        With `replace`, one of the same name gets the new file and keeps its credentials (they
        are used only while it names the destination they were set for, see `moved`), and the
        fetched values of the secrets whose source is unchanged (see `cached`).

        Credentials kept before they were bound have no destination: the one of the file
        replaced is noted first, so the new file's is compared with it; with no file to
        replace (deleted by hand), or a broken one, nothing says where they belong, and they
        are not used until set again. `vet` may refuse the file (see ConfigDirectory.import_file)."""
        with self.store.locked():
            # the name is the file's own, known once it is read: note each unbound one's
            unbound = {name: self._destination_on_file(name) for name in _unbound(self.store.read())}
            config = self.files.import_file(path, replace=replace, vet=vet)
            self._adopt(config, None, bound_to=unbound.get(config.name))
        return config

    def _destination_on_file(self, name: str) -> dict[str, Any]:
        """The destination of configuration `name` as its file says, {} without a valid file."""
        config = self.files.load_valid(name)
        return destination(config) if config is not None else {}

    def _adopt(self, config: ProviderConfig, credentials: Any, *, fresh: bool = False,
               bound_to: dict[str, Any] | None = None) -> None:
        name = config.name

        def change(state: State) -> None:
            if fresh:  # what a removed configuration of the same name left is not this one's
                state.setdefault("configs", {}).pop(name, None)
            if credentials is not None:
                keep(state_of(state, name), config, credentials)
            if bound_to is not None:
                _bind(state_of(state, name), bound_to)
            if not state.get("active_config"):
                state["active_config"] = name

        self.store.update(change)

    def use(self, name: str) -> None:
        self.files.load(name)  # exists and is valid
        self.store.update(lambda state: state.update(active_config=name))

    def remove(self, name: str) -> None:
        """Delete a configuration with its credentials and cache. One whose file no longer
        validates, or was deleted by hand while the vault still knows it, can be removed too."""

        def change(state: State) -> None:
            state.get("configs", {}).pop(name, None)
            if state.get("active_config") == name:
                state["active_config"] = None

        with self.store.locked():
            has_file = name in self.files.names()
            state = self.store.read()
            if not (has_file or name in state.get("configs", {}) or state.get("active_config") == name):
                raise ConfigError(f"no configuration named {name}; `vaultproxy config list` shows them")
            self.store.update(change)
            if has_file:
                self.files.remove(name)

    # --- credentials -------------------------------------------------------------------------

    def credentials_target(self, name: str) -> ProviderConfig:
        """Configuration `name`, if the vault may keep credentials for it; else refused with
        where they come from instead (for the CLI, before it asks for any)."""
        config = self.files.load(name)
        provider = provider_for(config)
        if not provider.credential_prompts(config):
            raise VaultError(
                f"configuration {name} takes its credentials from {provider.credentials_origin(config)}, not from "
                f"the vault{_static_hint(config)}"
            )
        return config

    def set_credentials(self, name: str, credentials: Any) -> None:
        """Keep `credentials` (the provider's credentials object) for configuration `name`,
        bound to where its file sends them now."""
        with self.store.locked():
            config = self.credentials_target(name)
            self.store.update(lambda state: keep(state_of(state, name), config, credentials))

    def credentials(self, name: str) -> Any:
        """The credentials kept for `name` (the provider's object), None when none are."""
        config_state = self.store.read().get("configs", {}).get(name, {})
        return self._credentials(self.files.load(name), config_state) if config_state.get("credentials") else None

    def _credentials(self, config: ProviderConfig, config_state: dict[str, Any]) -> Any:
        """Unused when the configuration takes them from elsewhere. Kept ones set for another
        destination (see `moved`), or that do not fit its provider (its file was changed to
        another provider), are a clear error and never reach the provider.

        Credentials kept before they were bound have no destination: they are taken as bound
        to the configuration as it is now, and bound to it at their first use (`_stored`) or
        by an import over it (`import_file`)."""
        provider = provider_for(config)
        raw = config_state.get("credentials")
        if not raw or not provider.credential_prompts(config):
            return None
        problem = moved(config, config_state.get("destination", destination(config)))
        if problem:
            raise ProviderError("destination_changed", problem)
        try:
            return provider.credentials_from_dict(raw)
        except ValueError as e:
            raise ProviderError(
                "missing_credentials", f"{e}: set them with `vaultproxy config set-credentials {config.name}`"
            ) from None

    def _stored(self, config: ProviderConfig) -> Any:
        """The credentials to hand the provider for `config`; ones kept before they were bound
        are bound here, to where they are first used."""
        config_state = self.store.read().get("configs", {}).get(config.name, {})
        credentials = self._credentials(config, config_state)
        if credentials is not None and "destination" not in config_state:
            where = destination(config)
            self.store.update(lambda state: _bind(state.get("configs", {}).get(config.name, {}), where))
        return credentials

    def test(self, name: str | None = None) -> Identity:
        """Who the configuration's credentials are. A failure is kept like a fetch's (until a
        test or a fetch succeeds), so `config list` and `status` do not say `ok` meanwhile."""
        config = self.config(name)
        try:
            identity = provider_for(config).test_connection(config, self._stored(config))
        except ProviderError as e:
            self._record_test(config.name, e)
            raise
        self._record_test(config.name, None)
        return identity

    def _record_test(self, name: str, error: ProviderError | None) -> None:
        if error is None and not self.store.read().get("configs", {}).get(name, {}).get("error"):
            return  # nothing to clear: no write (each one makes a running proxy reload)
        message, code = (f"connection test failed: {error}", error.code) if error else (None, None)
        self.store.update(lambda state: state_of(state, name).update(error=message, error_code=code))

    # --- secrets ----------------------------------------------------------------------------

    def add_secret(self, mapping: SecretMapping, config_name: str | None = None) -> ProviderConfig:
        with self.store.locked():
            config = self.config(config_name).with_secret(mapping)
            self.files.save(config)
        return config

    def remove_secret(self, alias: str, config_name: str | None = None) -> ProviderConfig:
        """Drop `alias` and its fetched value; returns the configuration it was removed from."""
        with self.store.locked():
            config = self.config(config_name)
            if config.mapping(alias) is None:
                raise VaultError(f"configuration {config.name!r} has no secret {alias!r}")
            self.files.save(config.without_secret(alias))
            self.store.update(lambda state: state_of(state, config.name).get("cache", {}).pop(alias, None))
        return config

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
        started = now()
        try:
            results = provider_for(config).fetch(config, mappings, self._stored(config), use_batch=use_batch, progress=progress)
        except ProviderError as e:
            results = {m.alias: FetchResult(m.alias, None, error=str(e), error_code=e.code) for m in mappings}
        results = {alias: _checked(config.mapping(alias), result) for alias, result in results.items()}
        self.store.update(lambda state: _record(state_of(state, config.name), config, results, started))
        return results

    def fetch_pending(self, aliases: Iterable[str], config_name: str) -> dict[str, Secret]:
        """The keys of the version a rotation has staged (AWS's AWSPENDING) for `aliases`
        that follow the current version, without recording them: they are for one retry of a
        rejected request (see vaultproxy/retry.py), not for the cache. Aliases with no pending
        version, pinned to a stage, or of a provider without rotation stages have none."""
        config = self.config(config_name)
        stage = schema_for(config.provider).rotation_stage
        mappings = [m for alias in aliases if (m := config.mapping(alias)) is not None and m.version_stage is None]
        if stage is None or not mappings:
            return {}
        pending = [dataclasses.replace(m, version_stage=stage) for m in mappings]
        try:
            results = provider_for(config).fetch(config, pending, self._stored(config))
        except ProviderError:
            return {}
        cache = {
            m.alias: {**fetched_from(config, m), **pack_value(r.value)}
            for m in mappings if (r := _checked(m, results.get(m.alias, FetchResult(m.alias)))).value is not None
        }
        return {s.key: s for s in provider_secrets(dataclasses.replace(config, secrets=tuple(mappings)), cache)}

    def refresh_plan(self, at: float) -> tuple[str | None, list[str], float | None]:
        """For the proxy's refresher: the active configuration, its auto-refreshed aliases
        due at `at` (seconds since the epoch; with those due shortly after, to batch them),
        and when the next of the others falls due (None: none is under auto-refresh)."""
        state = self.store.read()
        config = self.active(state)
        if config is None:
            return None, [], None
        cache = state_of(state, config.name).get("cache", {})
        due: list[str] = []
        later: list[float] = []
        for mapping in config.secrets:
            ttl = config.refresh_for(mapping)
            if ttl <= 0:
                continue
            when = schedule.due_at(mapping.alias, cached(config, mapping, cache), ttl)
            if when - at <= schedule.batch_ahead(ttl):
                due.append(mapping.alias)
            else:
                later.append(when)
        return config.name, due, min(later, default=None)

    def move_to_local(self, alias: str, config_name: str | None = None) -> list[str]:
        """Turn a fetched provider secret into local secrets (JSON secrets keep their dot
        keys) and drop it from the configuration. Returns the local keys written."""
        with self.store.locked():
            return self._move_to_local(self.config(config_name), alias)

    def _move_to_local(self, config: ProviderConfig, alias: str) -> list[str]:
        mapping = config.mapping(alias)
        if mapping is None:
            raise VaultError(f"configuration {config.name!r} has no secret {alias!r}")

        def change(state: State) -> list[str]:
            cache = state_of(state, config.name).setdefault("cache", {})
            if cached(config, mapping, cache).get("value") is None:
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
        self.files.save(config.without_secret(alias))
        return written

    # --- listings ---------------------------------------------------------------------------

    def secret_rows(self, config_name: str | None = None) -> list[dict[str, Any]]:
        """`secret list`: alias, secret id, mode, last fetched, status."""
        config = self.config(config_name)
        cache = self.store.read().get("configs", {}).get(config.name, {}).get("cache", {})
        rows = []
        for m in config.secrets:
            entry = cached(config, m, cache)
            rows.append({
                "alias": m.alias, "secret_id": describe(m), "mode": m.mode, "hosts": list(config.hosts_for(m)),
                "last_fetched": entry.get("fetched_at"), "version_id": entry.get("version_id"),
                "status": "error" if entry.get("error") else ("ok" if entry.get("value") is not None else "not fetched"),
                "error": entry.get("error"), **refresh_fields(config, m, entry),
            })
        return rows


def status_rows(config: ProviderConfig, state: State, index: SecretIndex) -> list[dict[str, Any]]:
    """`vaultproxy status`'s rows for the active configuration's secrets: each key its index
    resolves with its fetch state, and the aliases with nothing to resolve yet."""
    entries = {m.alias: cached(config, m, state.get("configs", {}).get(config.name, {}).get("cache", {})) for m in config.secrets}
    source = f"{config.provider}:{config.name}"
    rows: list[dict[str, Any]] = []
    for secret in index.secrets():
        mapping = config.mapping(secret.key.split(".")[0]) if secret.source == source else None
        if mapping:
            entry = entries.get(mapping.alias, {})
            rows.append({"key": secret.key, "source": source, "hosts": list(secret.hosts), "origins": list(secret.origins),
                         "last_fetched": entry.get("fetched_at"), "error": entry.get("error"),
                         **refresh_fields(config, mapping, entry)})
    rows += [
        {"key": m.alias, "source": source, "hosts": list(config.hosts_for(m)), "origins": list(m.origins),
         "last_fetched": None, "error": index.unfetched[m.alias] or "not fetched yet", **refresh_fields(config, m, entries[m.alias])}
        for m in config.secrets if m.alias in index.unfetched
    ]
    return rows


def describe(mapping: SecretMapping) -> str:
    """What a listing shows a mapping is fetched from: its secret id, else its command."""
    command = mapping.option("command")
    return mapping.secret_id or (shlex.join(command) if command else "")


def refresh_fields(config: ProviderConfig, mapping: SecretMapping, entry: dict[str, Any]) -> dict[str, Any]:
    """What a listing shows of a secret's auto-refresh: its interval, when it is next due (a
    running proxy fetches it then), and how many fetches in a row failed."""
    ttl = config.refresh_for(mapping)
    due = schedule.due_at(mapping.alias, entry, ttl) if ttl else None
    return {
        "refresh": format_duration(ttl) if ttl else None,
        "refresh_due": datetime.fromtimestamp(due, timezone.utc).isoformat(timespec="seconds") if due else ("now" if ttl else None),
        "failures": int(entry.get("failures") or 0),
    }


def _unbound(state: State) -> list[str]:
    """The configurations whose kept credentials have no destination (kept before they were bound)."""
    return [name for name, entry in state.get("configs", {}).items() if entry.get("credentials") and "destination" not in entry]


def _bind(config_state: dict[str, Any], where: dict[str, Any]) -> None:
    """Bind credentials kept before they were bound to `where`, unless they are bound by now."""
    if config_state.get("credentials") and "destination" not in config_state:
        config_state["destination"] = where


def _shown(value: Any) -> str:
    """A destination field's value in a message (URLs, regions, paths: never secrets)."""
    return "unset" if value is None else str(value)


def _static_hint(config: ProviderConfig) -> str:
    """How a configuration comes to keep credentials in the vault, where its provider can."""
    return ": set `credentials: {source: static}` in its file first" if "static" in schema_for(config.provider).sources else ""


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
            error=f"{describe(mapping)} is not a JSON object, but {mapping.alias!r} is mode json: use mode plaintext",
            error_code="not_json",
        )
    return result


def _record(config_state: dict[str, Any], config: ProviderConfig, results: dict[str, FetchResult], started: str) -> None:
    """Merge the results of a fetch that began at `started`: values replace the cache,
    errors only mark it (and count toward the backoff, see `schedule`). Each entry notes what
    it was fetched from (see `cached`). The CLI and a proxy's refresher fetch concurrently:
    an entry already written by a fetch that began later is newer, and is kept."""
    cache = config_state.setdefault("cache", {})
    finished = now()
    for alias, result in results.items():
        mapping = config.mapping(alias)
        assert mapping is not None  # results come from the configuration's own mappings
        entry = cached(config, mapping, cache)
        succeeded = result.error is None and result.value is not None
        if _written_since(entry, started, failure=not succeeded):
            continue
        cache[alias] = entry
        entry.update(fetched_from(config, mapping))
        if succeeded:
            entry.update(pack_value(result.value), version_id=result.version_id, fetched_at=started, error=None, error_code=None, failures=0)
        else:
            entry.update(error=result.error, error_code=result.error_code, error_at=started, failures=int(entry.get("failures") or 0) + 1)
    failures = [r for r in results.values() if r.error_code in CONFIG_WIDE_ERRORS]
    if failures and len(failures) == len(results):
        config_state.update(error=failures[0].error, error_code=failures[0].error_code)
        return
    # The endpoint answered for at least one secret (even "access denied"): credentials and
    # network work again, so an earlier configuration-wide error is over.
    config_state.update(error=None, error_code=None)
    if any(r.error is None for r in results.values()):
        config_state["last_fetched"] = finished


def _written_since(entry: dict[str, Any], started: str, *, failure: bool) -> bool:
    """Whether a fetch that began after `started` already wrote `entry`: a value (newer than
    any failure) or, when what is to be recorded is a failure, a value or a failure."""
    stamps = [schedule.epoch(entry.get(f)) for f in (("fetched_at", "error_at") if failure else ("fetched_at",))]
    start = schedule.epoch(started)
    return start is not None and any(stamp is not None and stamp > start for stamp in stamps)


def config_error(config: ProviderConfig, config_state: dict[str, Any]) -> str | None:
    """What is wrong with a configuration: a credentials or network failure of its last fetch,
    else which of its secrets failed (their rows say why)."""
    if config_state.get("error"):
        return str(config_state["error"])
    cache = config_state.get("cache", {})
    failed = [m.alias for m in config.secrets if cached(config, m, cache).get("error")]
    if not failed:
        return None
    return f"{len(failed)} of {len(config.secrets)} secrets failed to fetch: {abbreviated(failed)} (`vaultproxy secret list` says why)"


def abbreviated(names: list[str], limit: int = 5) -> str:
    """Names for a one-line message: hundreds of secrets can fail together."""
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")
