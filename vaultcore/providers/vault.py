"""HashiCorp Vault and OpenBao (the same HTTP API): KV secrets engines, version 1 and 2.

A mapping's `secret_id` is a path in the KV mount (`payments/stripe`). A KV secret is an
object: with `mode: json` each of its fields is a dot key (`<<vault:stripe.api_key>>`);
`field: api_key` takes one field as the value; KV 2 may pin a `version`. Namespaces
(Enterprise, OpenBao) go in the X-Vault-Namespace header, a private CA in `ca_cert`.

Plain HTTP with the standard library, no client package: five endpoints are used (KV read in
two versions, AppRole login, token lookup-self and renew-self), each one request and one
JSON answer, and hvac would add requests and its own version drift for that.

Authentication: a token kept in the vault, or the `vault` CLI's own (VAULT_TOKEN, else
~/.vault-token); or AppRole, its role_id and secret_id kept in the vault. Tokens are held in
memory only, per process; a renewable one is renewed (renew-self) once half its TTL has
passed, and an AppRole token past its end is replaced by a new login. Vault has no batch
read: each secret is one request, a few at a time.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vaultcore.peertext import quoted
from vaultcore.profiles import ProviderConfig, SecretMapping, check_endpoint_url
from vaultcore.providers.base import FetchResult, Field, Identity, Problem, Prompt, ProviderError, Schema

TIMEOUT = 10.0
WORKERS = 4
DEFAULT_MOUNT = "secret"
DEFAULT_KV_VERSION = 2
TOKEN_FILE = ".vault-token"
EXPIRY_MARGIN = 1.0  # seconds: a token this close to its end is not used for another request


# Paths that are no KV engine's: read with the user's token, they answer with the token itself
# (auth/token/lookup-self), its policies or the server's configuration, which a secret would
# then carry to its hosts.
NOT_KV = ("auth", "sys", "identity")


def check_kv_path(path: str) -> str:
    """A KV secret's path: no `.` or `..` segment (the server would resolve it to another
    path), and none of `%`, `?`, `#`: the server decodes `%61uth` to `auth` after any check
    here, and the others would end the path."""
    if any(c in path for c in "%?#"):
        raise ValueError(f"must not hold %, ? or # (got {path!r})")
    if any(segment in (".", "..") for segment in path.strip("/").split("/")):
        raise ValueError(f"must not hold . or .. segments (got {path!r})")
    return path


def check_engine_path(path: str) -> str:
    """A path the server reads as it is (a mount; with KV 1, a mount and a secret's path): a
    KV path with no auth/, sys/ or identity/ segment anywhere, as a namespace's own paths
    follow its name (`team-a/auth/token/lookup-self`)."""
    check_kv_path(path)
    if hit := next((segment for segment in path.strip("/").split("/") if segment in NOT_KV), None):
        raise ValueError(f"must be a KV secrets engine's path, with no {hit}/ segment (got {path!r})")
    return path


def _validate(config: ProviderConfig) -> Problem | None:
    kv1 = config.option("kv_version", DEFAULT_KV_VERSION) == 1  # no data/ between the mount and the path
    for i, m in enumerate(config.secrets):
        try:
            (check_engine_path if kv1 else check_kv_path)(f"{config.option('mount', DEFAULT_MOUNT)}/{m.secret_id}")
        except ValueError as e:
            return Problem(f"secrets[{i}].secret_id", str(e))
    if config.option("method", "token") == "approle" and config.credentials_source != "static":
        return Problem("credentials.source", "AppRole's role_id and secret_id are kept in the vault: use source: static")
    if config.option("kv_version", DEFAULT_KV_VERSION) == 1:
        for i, m in enumerate(config.secrets):
            if m.option("version") is not None:
                return Problem(f"secrets[{i}].version", "KV version 1 keeps no versions: remove it, or set kv_version: 2")
    return None


SCHEMA = Schema(
    fields=(
        # Where a token goes (address; ca_cert: which server is taken for it), whom it logs in to
        # (namespace) and how (method) are destination fields; the KV mount only picks secrets there.
        Field("address", "the server's URL, e.g. https://vault.example.com:8200", check=check_endpoint_url, required=True,
              destination=True),
        Field("namespace", "a namespace (Vault Enterprise, OpenBao), e.g. team-a", destination=True),
        Field("mount", f"where the KV secrets engine is mounted, e.g. kv (default {DEFAULT_MOUNT})", check=check_engine_path),
        Field("kv_version", f"the KV engine's version, e.g. 1 (default {DEFAULT_KV_VERSION})", kind="integer", choices=("1", "2")),
        Field("ca_cert", "a PEM file of the CA that signed the server's certificate, e.g. ~/vault-ca.pem", destination=True),
        Field("method", "how to log in: token (the default) or approle", where="credentials", kind="choice",
              choices=("token", "approle"), destination=True),
        Field("field", "one field of the secret as the value, e.g. api_key (default: the whole secret, as JSON)",
              where="secret"),
        Field("version", "a KV 2 version to fetch instead of the latest, e.g. 3", where="secret", kind="integer"),
    ),
    sources=("static", "default"),
    credentials="Vault credentials",
    secret_id="the secret's path in the KV mount, e.g. payments/stripe",
    location="address",
    validate=_validate,
)


@dataclass(frozen=True)
class VaultCredentials:
    """A token, or an AppRole's role_id and secret_id, as kept in the vault."""

    token: str | None = field(default=None, repr=False)
    role_id: str | None = None
    secret_id: str | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, str]:
        return {key: value for key, value in (("token", self.token), ("role_id", self.role_id), ("secret_id", self.secret_id)) if value}


def credential_prompts(config: ProviderConfig) -> tuple[Prompt, ...]:
    if config.credentials_source != "static":
        return ()
    if config.option("method", "token") == "approle":
        return (Prompt("role_id", f"AppRole role_id for {config.name}", "a role_id", secret=False),
                Prompt("secret_id", "AppRole secret_id", "a secret_id"))
    return (Prompt("token", f"Vault token for {config.name}", "a token"),)


def credentials_from_dict(stored: Mapping[str, Any]) -> VaultCredentials:
    values = {key: stored.get(key) for key in ("token", "role_id", "secret_id")}
    if any(value is not None and not isinstance(value, str) for value in values.values()):
        raise ValueError("stored Vault credentials are not strings")
    if not (values["token"] or (values["role_id"] and values["secret_id"])):
        raise ValueError("stored Vault credentials lack a token, or an AppRole role_id and secret_id")
    return VaultCredentials(**values)


def credentials_origin(config: ProviderConfig) -> str:
    return "VAULT_TOKEN, else ~/.vault-token (as the vault and bao CLIs)"


def config_warning(config: ProviderConfig) -> str | None:
    address = config.option("address", "")
    if address.startswith("http://") and urllib.parse.urlsplit(address).hostname not in ("127.0.0.1", "localhost", "::1"):
        return f"{address} is plain HTTP: tokens and secrets cross the network unencrypted; use https://"
    return None


# --- HTTP -------------------------------------------------------------------------------------


class _Failure(Exception):
    """A failed request: (code, message), as a FetchResult or a ProviderError carries them."""

    def __init__(self, code: str, message: str, status: int | None = None):
        super().__init__(message)
        self.code, self.status = code, status


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is an error: followed, it would carry X-Vault-Token wherever it points."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _request(config: ProviderConfig, method: str, path: str, token: str | None, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """One API call; the JSON answer, or _Failure with Vault's own error text (which names
    paths and reasons, never values)."""
    url = config.option("address").rstrip("/") + "/v1/" + path
    headers = {"Content-Type": "application/json"}
    if token:
        headers["X-Vault-Token"] = token
    if config.option("namespace"):
        headers["X-Vault-Namespace"] = config.option("namespace")
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    # Straight to the server: no proxy from the environment (HTTPS_PROXY may name this very
    # proxy, or anyone's), no redirect.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirects(), urllib.request.HTTPSHandler(context=_tls(config)))
    try:
        with opener.open(request, timeout=TIMEOUT) as answer:
            raw = answer.read()
    except urllib.error.HTTPError as e:
        if 300 <= e.code < 400:
            raise _Failure("error", f"{config.option('address')} answered with a redirect (HTTP {e.code}), which is not followed: "
                                    "set address to the server itself", e.code) from None
        raise _Failure("error", _vault_errors(e), e.code) from None
    except urllib.error.URLError as e:
        if isinstance(e.reason, ssl.SSLCertVerificationError):
            raise _Failure("tls", f"the certificate of {config.option('address')} is not trusted ({e.reason.verify_message}): "
                                  "set ca_cert to the CA that signed it") from None
        if isinstance(e.reason, (TimeoutError, socket.timeout)):
            raise _Failure("timeout", f"{config.option('address')} did not answer in time") from None
        raise _Failure("unreachable", f"{config.option('address')} unreachable: {e.reason}") from None
    except (TimeoutError, socket.timeout):
        raise _Failure("timeout", f"{config.option('address')} did not answer in time") from None
    except OSError as e:
        raise _Failure("unreachable", f"{config.option('address')} unreachable: {e.strerror or type(e).__name__}") from None
    except http.client.HTTPException as e:  # a bad status line (which it quotes), an answer cut short
        raise _Failure("error", f"{config.option('address')} sent a broken HTTP answer: {quoted(str(e))}") from None
    try:
        return json.loads(raw) if raw else {}
    except ValueError:
        raise _Failure("error", f"{config.option('address')} answered something other than JSON: is it a Vault server?") from None


def _tls(config: ProviderConfig) -> ssl.SSLContext | None:
    ca_cert = config.option("ca_cert")
    if not config.option("address").startswith("https://"):
        return None
    try:
        return ssl.create_default_context(cafile=str(Path(ca_cert).expanduser()) if ca_cert else None)
    except (OSError, ssl.SSLError) as e:
        raise _Failure("tls", f"cannot read ca_cert {ca_cert}: {getattr(e, 'strerror', None) or e}") from None


def _vault_errors(e: urllib.error.HTTPError) -> str:
    try:
        errors = json.loads(e.read() or b"{}").get("errors") or []
    except (ValueError, AttributeError, OSError):
        errors = []
    said = quoted("; ".join(" ".join(str(x).split()) for x in errors))
    return f"HTTP {e.code}" + (f": {said}" if said else "")


# --- tokens -----------------------------------------------------------------------------------


@dataclass
class _Lease:
    token: str = field(repr=False)
    renew_at: float | None  # renewable: renew once half the TTL has passed
    expires_at: float | None  # None: never (a root token)
    info: dict[str, Any]


_leases: dict[str, _Lease] = {}
_leases_lock = threading.Lock()


def _hint(config: ProviderConfig) -> str:
    if config.credentials_source == "static":
        return f"set them with `vaultproxy config set-credentials {config.name}`"
    return "set VAULT_TOKEN, or log in with `vault login` / `bao login` (it writes ~/.vault-token)"


def _material(config: ProviderConfig, credentials: VaultCredentials | None) -> VaultCredentials:
    """The credentials to log in with: kept ones, or the CLI's (VAULT_TOKEN, ~/.vault-token)."""
    approle = config.option("method", "token") == "approle"
    if config.credentials_source == "static":
        if credentials is None or (approle and not credentials.role_id) or (not approle and not credentials.token):
            what = "AppRole role_id and secret_id" if approle else "Vault token"
            raise ProviderError("missing_credentials", f"configuration {config.name} has no {what}; {_hint(config)}")
        return credentials
    token = os.environ.get("VAULT_TOKEN", "").strip()
    if not token:
        try:
            token = (Path.home() / TOKEN_FILE).read_text(encoding="utf-8").strip()
        except OSError:
            token = ""
    if not token:
        raise ProviderError("missing_credentials", f"no Vault token found; {_hint(config)}")
    return VaultCredentials(token=token)


def _login(config: ProviderConfig, credentials: VaultCredentials | None) -> _Lease:
    """A token for the configuration's server: the one held, renewed when due, or a new one."""
    material = _material(config, credentials)
    key = hashlib.sha256(json.dumps([config.option("address"), config.option("namespace"), material.to_dict()]).encode()).hexdigest()
    now = time.time()
    with _leases_lock:
        lease = _leases.get(key)
    if lease and lease.renew_at is not None and now >= lease.renew_at:
        _renew(config, lease)
    if lease and (lease.expires_at is None or now < lease.expires_at - EXPIRY_MARGIN):
        return lease
    try:
        if material.role_id:
            auth = _request(config, "POST", "auth/approle/login", None,
                            {"role_id": material.role_id, "secret_id": material.secret_id})["auth"]
            token = auth["client_token"]
        else:
            token = material.token or ""
        info = _request(config, "GET", "auth/token/lookup-self", token)["data"]
    except _Failure as e:
        if e.status in (400, 401, 403):
            raise ProviderError("invalid_credentials", f"credentials rejected ({e}): {_hint(config)}") from None
        raise ProviderError(e.code, str(e)) from None
    except (KeyError, TypeError):  # an answer without "auth" or "data"
        raise ProviderError("error", f"{config.option('address')} answered a login or token lookup without its data: is it a Vault server?") from None
    ttl = int(info.get("ttl") or 0)
    lease = _Lease(token, now + ttl / 2 if info.get("renewable") and ttl else None, now + ttl if ttl else None, info)
    with _leases_lock:
        _leases[key] = lease
    return lease


def _forget(lease: _Lease) -> None:
    with _leases_lock:
        for key in [key for key, held in _leases.items() if held is lease]:
            del _leases[key]


def _renew(config: ProviderConfig, lease: _Lease) -> None:
    """renew-self; a token that can be renewed no further is used until it ends (AppRole then logs in anew)."""
    try:
        auth = _request(config, "POST", "auth/token/renew-self", lease.token, {})["auth"]
    except (_Failure, KeyError, TypeError):
        lease.renew_at = None
        return
    ttl = int(auth.get("lease_duration") or 0)
    now = time.time()
    lease.renew_at = now + ttl / 2 if auth.get("renewable") and ttl else None
    lease.expires_at = now + ttl if ttl else None


def test_connection(config: ProviderConfig, credentials: VaultCredentials | None) -> Identity:
    """Who the token is (lookup-self, which any valid token may call)."""
    info = _login(config, credentials).info
    policies = ", ".join(map(str, info.get("policies") or [])) or "none"
    return Identity(account=config.option("namespace") or "root", arn=quoted(f"{info.get('display_name') or 'token'} (policies: {policies})"),
                    user_id=quoted(str(info.get("accessor") or "")), scope="namespace")


# --- reading secrets --------------------------------------------------------------------------


def fetch(
    config: ProviderConfig,
    mappings: Sequence[SecretMapping],
    credentials: VaultCredentials | None,
    *,
    use_batch: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, FetchResult]:
    """Each mapping's value by alias; a secret that cannot be read is an error row. Raises
    ProviderError only when nothing can be tried (no token, or a rejected one)."""
    if not mappings:
        return {}
    lease = _login(config, credentials)
    token = lease.token
    reads: dict[tuple[str, int | None], Any] = {}
    with ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="vaultproxy-vault") as pool:
        for path, version in dict.fromkeys((m.secret_id, m.option("version")) for m in mappings):
            reads[(path, version)] = pool.submit(_read, config, token, path, version)
    if any(isinstance(read := future.result(), _Failure) and read.status == 403 for future in reads.values()):
        _forget(lease)  # a revoked token is refused alike: the next fetch looks it up (or logs in) again
    results: dict[str, FetchResult] = {}
    for m in mappings:
        read = reads[(m.secret_id, m.option("version"))].result()
        results[m.alias] = _failed(m, read) if isinstance(read, _Failure) else _value(m, *read)
        if progress is not None:
            progress(len(results), len(mappings))
    return results


def _read(config: ProviderConfig, token: str, path: str, version: int | None) -> tuple[dict[str, Any], str | None] | _Failure:
    """A KV secret's data and version (None for KV 1)."""
    mount = urllib.parse.quote(config.option("mount", DEFAULT_MOUNT).strip("/"))  # as the path: never read as more
    escaped = urllib.parse.quote(path.strip("/"))
    try:
        if config.option("kv_version", DEFAULT_KV_VERSION) == 1:
            return _request(config, "GET", f"{mount}/{escaped}", token).get("data") or {}, None
        query = f"?version={version}" if version is not None else ""
        answer = _request(config, "GET", f"{mount}/data/{escaped}{query}", token).get("data") or {}
    except _Failure as e:
        return e
    if answer.get("data") is None:  # a deleted or destroyed version
        return _Failure("not_found", f"version {answer.get('metadata', {}).get('version', version)} of {path} is deleted")
    return answer["data"], str(answer.get("metadata", {}).get("version") or "") or None


def _value(mapping: SecretMapping, data: dict[str, Any], version: str | None) -> FetchResult:
    name = mapping.option("field")
    if name is None:
        return FetchResult(mapping.alias, json.dumps(data), version)
    if name not in data:
        return FetchResult(mapping.alias, error=f"{mapping.secret_id} has no field {name!r} (it has: {', '.join(sorted(data)) or 'none'})",
                           error_code="not_found")
    value = data[name]
    return FetchResult(mapping.alias, value if isinstance(value, str) else json.dumps(value), version)


def _failed(mapping: SecretMapping, failure: _Failure) -> FetchResult:
    if failure.status == 404:
        return FetchResult(mapping.alias, error=f"secret not found: {mapping.secret_id}", error_code="not_found")
    if failure.status == 403:
        return FetchResult(mapping.alias, error=f"access denied to {mapping.secret_id} ({failure})", error_code="access_denied")
    return FetchResult(mapping.alias, error=str(failure), error_code=failure.code)
