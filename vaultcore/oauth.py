"""Minting OAuth 2.0 access tokens for the token sources of tokens.yaml (vaultcore/tokens.py).

The grants are authlib's (its requests client, loaded at the first mint): client credentials,
and refresh token, where a refresh token the server rotates is written to the vault before
the new access token is handed out, so that a crash between the two loses nothing.

`Minter.mint` runs one token request per source at a time, on a thread of its own, however
many requests wait for it (they share its future; the proxy's event loop never blocks). A
failure is kept, and answered at once, for a backoff (`schedule.backoff`): a revoked client
costs the token endpoint one request per backoff, not one per API request. A change to the
source or to its credentials ends the backoff at once. A token an API rejects is replaced at
most once per REJECTION_WINDOW_SECONDS, as a provider secret is refetched: an API that
rejects every token cannot make the proxy hammer the token endpoint. Each source's state
(when minted, until when, the last error; never a value) goes to token-status.json for
`status`.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import html
import json
import logging
import math
import re
import threading
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Protocol
from urllib.parse import quote, quote_plus, unquote

from vaultcore.atomic import replace_file
from vaultcore.index import LOCAL_SOURCE, SecretIndex
from vaultcore.peertext import quoted
from vaultcore.placeholders import SubstitutionError
from vaultcore.redaction import Redactor
from vaultcore.refresher import REJECTION_WINDOW_SECONDS
from vaultcore.schedule import backoff
from vaultcore.store import VaultError
from vaultcore.tokens import Token, TokenSource

logger = logging.getLogger(__name__)

TOKEN_STATUS_FILE = "token-status.json"
TIMEOUT_SECONDS = 10.0  # each connect and read (requests has no deadline for a whole request)
# The longest a token request may keep its waiters: a server that sends a byte now and then
# never trips the per-read timeout. A later answer is still kept (and a rotation stored).
MINT_DEADLINE_SECONDS = 30.0
# What a token endpoint's answer may be: a token response is a few kilobytes (a JWT with many
# claims a few more); past these it is refused, not read into memory or the index whole.
MAX_ANSWER_BYTES = 1024 * 1024
MAX_TOKEN_CHARS = 64 * 1024
READ_STEP_BYTES = 16 * 1024  # of the answer, compressed: at most some 16 MB decoded at once
MAX_LIFETIME_SECONDS = 365 * 24 * 3600.0  # a longer expires_in is taken as this: minted again within a year
MESSAGE_LIMIT = 500  # characters of a failed mint's reason: the server's words, mostly
# What the proxy answers when it cannot get a token: the token endpoint said no (502, its
# answer is the problem), or could not be asked or made no sense (503, try again later).
TOKEN_REFUSED = "token_refused"
TOKEN_UNAVAILABLE = "token_unavailable"
BACKOFF_TTL = 60.0  # backoff from 5 s, doubling (schedule.backoff)
# In place of a token endpoint's words that still show part of a credential once every whole
# form of it is cut (`cleaned`).
NOT_SHOWN = "(the token endpoint's answer quotes a credential: not shown)"
WINDOW = 8  # characters of a credential (or all of a shorter one) that, seen, hide the words
MIN_CREDENTIAL = 4  # shorter values are no secret, and would shred every message


def credentials(source: TokenSource, index: SecretIndex, *, allow_plaintext: bool, verified: bool) -> dict[str, str]:
    """The values of the source's client secret and refresh token, each checked as for a
    request to the token endpoint (its hosts rule, plain HTTP); a refusal names the source."""
    endpoint = source.endpoint(verified=verified)
    values: dict[str, str] = {}
    for key in source.credential_keys():
        try:
            secret = index.check(key, endpoint, allow_plaintext=allow_plaintext)
        except SubstitutionError as e:
            raise SubstitutionError(e.code, source.name, f"token {source.name!r} cannot be minted: {e.message}") from None
        if not isinstance(secret.value, str):
            raise SubstitutionError(TOKEN_UNAVAILABLE, source.name, f"token {source.name!r}: {key!r} is binary; a credential is text")
        if key == source.refresh_token and secret.source != LOCAL_SOURCE:
            raise SubstitutionError(
                TOKEN_UNAVAILABLE, source.name,
                f"token {source.name!r}: its refresh token {key!r} must be a local secret, which the proxy rewrites "
                f"when the server rotates it: `vaultproxy secret move-to-local {key.split('.', 1)[0]}`",
            )
        values[key] = secret.value
    return values


class MintError(Exception):
    """A token that could not be minted; never carries a credential."""

    def __init__(self, source: str, code: str, message: str) -> None:
        super().__init__(source, code, message)
        self.source, self.code, self.message = source, code, message

    def __str__(self) -> str:
        return self.message

    def refusal(self) -> SubstitutionError:
        return SubstitutionError(self.code, self.source, self.message)


def request_token(source: TokenSource, values: Mapping[str, str], *, verify: bool | str = True) -> tuple[Token, str | None]:
    """One token request with authlib: the token, and the refresh token the server rotated
    to (None when it did not)."""
    import requests
    from authlib.integrations.requests_client import OAuth2Session, OAuthError

    session = OAuth2Session(
        source.client_id, values[source.client_secret], token_endpoint_auth_method=source.auth_method, scope=source.scope,
    )
    session.trust_env = False  # no proxy from the environment (it may be this very proxy), no .netrc
    extra = {"audience": source.audience} if source.audience else {}
    # Never redirected: a 307 would resend the credentials to wherever it points, past their
    # hosts rule. A redirect is answered as what it is: no token response.
    fail = _failing(source, values)
    request: dict[str, Any] = {
        "timeout": TIMEOUT_SECONDS, "verify": verify, "allow_redirects": False,
        "stream": True, "hooks": {"response": functools.partial(_read_bounded, fail=fail)},
    }
    started = time.time()
    given = values[source.refresh_token] if source.refresh_token else None
    try:
        if source.grant == "refresh_token":
            reply = session.refresh_token(source.token_url, refresh_token=given, **request, **extra)
        else:
            reply = session.fetch_token(source.token_url, grant_type="client_credentials", **request, **extra)
    except OAuthError as e:  # the error code goes with the proxy's words, the description is `told`
        raise fail(TOKEN_REFUSED, f"the token endpoint refused: {e.error}", getattr(e, "description", None) or None) from None
    except requests.RequestException as e:  # its text may quote the server (a bad status line)
        raise fail(TOKEN_UNAVAILABLE, f"the token endpoint could not be asked: {type(e).__name__}", str(e) or None) from None
    except ValueError:  # not JSON, not a JSON object, a redirect
        raise fail(TOKEN_UNAVAILABLE, "the token endpoint's answer is not a token response") from None
    finally:
        session.close()
    return _token(reply, started, fail), _rotated(reply, given)


def _read_bounded(response: Any, *args: Any, fail: Fail, **kwargs: Any) -> Any:
    """requests' response hook, on a streamed response: its body read up to MAX_ANSWER_BYTES
    (decoded), where authlib then finds it. A longer answer is no token response, and a
    hostile endpoint's endless one would hold the proxy's memory. Read in steps of
    READ_STEP_BYTES: urllib3 before 2.6 decodes all it reads at once, and one read of a
    megabyte of gzip could make gigabytes."""
    chunks, size = [], 0
    while chunk := response.raw.read(READ_STEP_BYTES, decode_content=True):
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            response.close()
            raise fail(TOKEN_UNAVAILABLE, f"the token endpoint's answer is larger than {MAX_ANSWER_BYTES // 1024} KiB")
        chunks.append(chunk)
    response._content = b"".join(chunks)  # as requests keeps a body it read itself
    return response


class Fail(Protocol):
    def __call__(self, code: str, message: str, told: str | None = None) -> MintError: ...


def _failing(source: TokenSource, values: Mapping[str, str]) -> Fail:
    """A MintError maker for one source whose message (the client's refusal, the log,
    token-status.json) is `cleaned`, whatever the server or a library put into it: `message`,
    the proxy's words (with the server's error code), then ` (told)`, what the server (or a
    library quoting it) said, when there is that."""

    def fail(code: str, message: str, told: str | None = None) -> MintError:
        return MintError(source.name, code, f"token {source.name!r} cannot be minted: {cleaned(source, values, message, told)}")

    return fail


def cleaned(source: TokenSource, values: Mapping[str, str], text: str, told: str | None = None) -> str:
    """`text` and then ` (told)`, a token endpoint's words (or a library's, which may quote
    them), fit to show wherever a failed mint goes: every credential the token request sent
    (`_sent`) cut out, in every form a server may echo it in (vaultcore.redaction), as
    `[redacted KEY]`; then quoted (vaultcore.peertext). A server that quotes the request it
    refuses hands back the refresh token percent-encoded, as the form body had it, and the
    client secret in the Basic header's base64: cutting the raw values only left those. Quoted
    after the credentials are out: cut first, a credential could be left in part.

    Fail safe: a server may also quote a credential in part (a body cut short), split across
    lines or encoded in a way no form covers (percent-encoded twice, `\\u`-escaped, hex). When
    what would be shown still shows any WINDOW characters of one (`_shows`), `told` is not
    shown at all: NOT_SHOWN stands in its place; and nothing of `text` either when that shows
    one (its error code is the server's too; without `told`, all of it may be)."""
    credentials = {key: value for key, value in values.items() if len(value) >= MIN_CREDENTIAL}
    basics = _basic_credentials(source, values)
    redactor, pieces = Redactor(_sent(source, credentials, basics)), _pieces(credentials.values(), basics)

    def fit(words: str) -> str | None:
        # surrogatepass: a JSON error may hold a lone surrogate (quoted escapes it).
        redacted = redactor.redact(words.encode("utf-8", "surrogatepass")).decode("utf-8", "surrogatepass")
        shown = quoted(redacted, MESSAGE_LIMIT)
        return None if _shows(pieces, redacted[:MESSAGE_LIMIT], shown) else shown

    if told is not None and (whole := fit(f"{text} ({told})")) is not None:
        return whole
    if (own := fit(text)) is not None:
        return own if told is None else f"{own} {NOT_SHOWN}"
    return NOT_SHOWN


def _sent(source: TokenSource, credentials: Mapping[str, str], basics: Iterable[str | bytes]) -> list[tuple[bytes, str | bytes]]:
    """(what to show, what went on the wire) for a Redactor, which knows the forms of each:
    each credential value and each spelling of the Basic credential."""
    shown = f"[redacted Basic credential of {source.client_secret}]".encode()
    return [(f"[redacted {key}]".encode(), value) for key, value in credentials.items()] + [(shown, basic) for basic in basics]


def _basic_credentials(source: TokenSource, values: Mapping[str, str]) -> list[str | bytes]:
    """The Basic credential, `client_id:client_secret` (in base64 in the header), which is no
    form of the secret: the bytes authlib sends (latin-1, by its own
    `encode_client_secret_basic`; a Redactor given the text would look for the base64 of its
    UTF-8, which differs for any non-ASCII character), the UTF-8 text, and both quoted first,
    as RFC 6749 §2.3.1 says and authlib 1.3.0 and 1.3.1 (pyproject allows them) did."""
    secret = values.get(source.client_secret)
    if not secret:
        return []
    wire = _authlib_basic(source.client_id, secret)
    return ([wire] if wire is not None else []) + [f"{encode(source.client_id)}:{encode(secret)}" for encode in (str, quote, quote_plus)]


def _authlib_basic(client_id: str, secret: str) -> bytes | None:
    """What authlib's client base64-encodes into its Basic header for these; None when it
    cannot encode them (a character beyond latin-1: it sends no request then)."""
    from authlib.oauth2.auth import encode_client_secret_basic

    try:
        _, headers, _ = encode_client_secret_basic(SimpleNamespace(client_id=client_id, client_secret=secret), "POST", "", {}, "")
        return base64.b64decode(headers["Authorization"].split(None, 1)[1])
    except (ValueError, KeyError, IndexError):  # UnicodeEncodeError; or a header of another shape
        return None


@dataclass(frozen=True)
class _Pieces:
    """What `_shows` looks for: WINDOW-character runs of each credential (all of one that
    is shorter), as sent and as a reader sees it; and of the lower-case hex of its bytes."""

    text: frozenset[str]
    hex: frozenset[str]


def _windows(value: str) -> set[str]:
    if len(value) < MIN_CREDENTIAL:
        return set()
    return {value} if len(value) <= WINDOW else {value[i:i + WINDOW] for i in range(len(value) - WINDOW + 1)}


def _base64_inside(raw: bytes) -> set[str]:
    """WINDOW-character runs of `raw`'s base64 (standard and URL-safe) wherever it starts in
    a larger blob (at each of the three byte offsets), less the characters at each end that
    the bytes around it change: a server may show a whole request in base64 (an AWS Lambda's
    echoed event)."""
    runs: set[str] = set()
    for offset in range(3):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            runs |= _windows(encode(bytes(offset) + raw).decode("ascii")[4:-4])
    return runs


def _pieces(credentials: Iterable[str], basics: Iterable[str | bytes]) -> _Pieces:
    """Each credential value, squeezed as `_readings` squeezes text and with `+` for a space
    (a form body), and as it went on the wire (raw, or percent-encoded in the form body)
    inside base64; and for each spelling of the Basic credential the base64 the header held."""
    text: set[str] = set()
    hexes: set[str] = set()
    for basic in basics:
        raw = basic.encode("utf-8") if isinstance(basic, str) else basic
        for encoded in (base64.b64encode(raw), base64.urlsafe_b64encode(raw)):
            text |= _windows(encoded.decode("ascii"))
        hexes |= _windows(raw.hex())
    for value in credentials:
        for form in (value, _squeezed(value), value.replace(" ", "+")):
            text |= _windows(form)
        for wire in {value, quote(value, safe=""), quote_plus(value)}:
            text |= _base64_inside(wire.encode("utf-8", "surrogatepass"))
        for encoding in ("utf-8", "latin-1"):
            try:
                hexes |= _windows(value.encode(encoding, "surrogatepass").hex())
            except UnicodeError:
                pass
    return _Pieces(frozenset(text), frozenset(hexes))


# A JSON or Python escape: \uXXXX, \xXX, or a character after a backslash.
_ESCAPE = re.compile(r"\\(?:u([0-9a-fA-F]{4})|x([0-9a-fA-F]{2})|(.))", re.DOTALL)
_SHORT_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "b": "\b", "f": "\f"}


def _unescaped(text: str) -> str:
    return _ESCAPE.sub(lambda m: chr(int(m[1] or m[2], 16)) if m[1] or m[2] else _SHORT_ESCAPES.get(m[3], m[3]), text)


def _squeezed(text: str) -> str:
    """`text` without whitespace, line breaks or invisible characters: a credential split
    across lines reads whole."""
    return "".join(c for c in text if c.isprintable() and not c.isspace())


def _readings(text: str) -> set[str]:
    """`text`, and what it reads as once squeezed (before and after), percent-decoded, JSON
    (`\\uXXXX`) and HTML unescaped, in any order, up to three steps."""
    layer = {text, _squeezed(text)}
    seen = set(layer)
    for _ in range(3):
        layer = {decode(reading) for reading in layer for decode in (unquote, _unescaped, html.unescape)} - seen
        seen |= layer
    return seen | {_squeezed(reading) for reading in seen}


def _shows(pieces: _Pieces, text: str, *shown: str) -> bool:
    """Whether `text` (or as it reads, `_readings`), or any of `shown` as it is, holds a
    piece of a credential."""
    readings = _readings(text) | set(shown)
    return any(piece in reading for reading in readings for piece in pieces.text) or any(
        piece in reading.lower() for reading in readings for piece in pieces.hex
    )


def _token(reply: Mapping[str, Any], started: float, fail: Fail) -> Token:
    access = reply.get("access_token")
    if not isinstance(access, str) or not access:
        raise fail(TOKEN_UNAVAILABLE, "the token endpoint's answer holds no access_token")
    kind = str(reply.get("token_type") or "Bearer")
    for name, text in (("access_token", access), ("token_type", kind), ("refresh_token", reply.get("refresh_token"))):
        if isinstance(text, str) and len(text) > MAX_TOKEN_CHARS:
            raise fail(TOKEN_UNAVAILABLE, f"the token endpoint's {name} is longer than {MAX_TOKEN_CHARS // 1024} Ki characters")
    try:
        expires_in = float(reply["expires_in"]) if reply.get("expires_in") is not None else None
    except (TypeError, ValueError):
        raise fail(TOKEN_UNAVAILABLE, "the token endpoint's expires_in is not a number") from None
    if expires_in is not None and (math.isnan(expires_in) or expires_in < 1):
        raise fail(TOKEN_UNAVAILABLE, f"the token endpoint issued a token that expires at once (expires_in {expires_in:g})")
    if expires_in is not None:
        expires_in = min(expires_in, MAX_LIFETIME_SECONDS)  # 1e308 would be past any date the status can write
    scope = reply.get("scope")
    # RFC 6750's scheme is case-insensitive; some servers say "bearer", some APIs want "Bearer".
    return Token.issued(access, "Bearer" if kind.lower() == "bearer" else kind, expires_in, started, scope if isinstance(scope, str) else None)


def _rotated(reply: Mapping[str, Any], given: str | None) -> str | None:
    new = reply.get("refresh_token")
    return new if given is not None and isinstance(new, str) and new and new != given else None


def _fingerprint(source: TokenSource, values: Mapping[str, str]) -> str:
    """What an attempt was made with, without keeping the values."""
    return hashlib.sha256(json.dumps([repr(source), sorted(values.items())]).encode()).hexdigest()


@dataclass
class _State:
    source: TokenSource | None = None  # the source as it was when `token` was minted
    token: Token | None = None
    minted_at: float | None = None
    running: Future[Token] | None = None
    replaced_rejected_at: float = -math.inf  # when a rejected token was last replaced
    # The last rotation (old refresh token, new one): used in place of the old one while the
    # proxy's index still shows it (before its reload, or when storing the new one failed),
    # for the server has revoked it.
    rotation: tuple[str, str] | None = None
    attempt: str = ""  # the fingerprint of the last failed attempt
    failures: int = 0
    failed_at: float = 0.0
    error: MintError | None = None


class Minter:
    """The proxy's tokens: minted on demand, one request in flight per source."""

    def __init__(self, vault: Any, *, verify: bool | str = True) -> None:
        self.vault = vault  # a vaultcore.vault.Vault: where rotated refresh tokens go
        self.verify = verify
        self.generation = 0  # grows with every token minted: the proxy rebuilds its index then
        self._states: dict[str, _State] = {}
        self._lock = threading.Lock()
        self._status_lock = threading.Lock()  # one writer of token-status.json at a time, newest last

    def token(self, source: TokenSource, at: float | None = None) -> Token | None:
        """The source's token if one minted with its current settings is still usable."""
        state = self._states.get(source.name)
        at = time.time() if at is None else at
        if state is None or state.token is None or state.source != source or not state.token.usable(at):
            return None
        return state.token

    def mint(self, source: TokenSource, values: Mapping[str, str], *, rejected: str | None = None) -> Future[Token]:
        """A usable token for `source`: the one held, the mint under way, or a new mint.
        `rejected`: an access token the API refused, replaced unless one was replaced in the
        last REJECTION_WINDOW_SECONDS."""
        with self._lock:
            state = self._states.setdefault(source.name, _State())
            if state.running is not None:
                return state.running
            if source.refresh_token and state.rotation and values.get(source.refresh_token) == state.rotation[0]:
                values = {**values, source.refresh_token: state.rotation[1]}
            fingerprint = _fingerprint(source, values)
            held = self.token(source)
            if held is not None and held.access_token != rejected:
                return _done(held)
            if held is not None and time.time() < state.replaced_rejected_at + REJECTION_WINDOW_SECONDS:
                return _done(held)  # rejected again so soon: the API's trouble, not the token's
            if state.error is not None and state.attempt == fingerprint and time.time() < state.failed_at + backoff(state.failures, BACKOFF_TTL):
                return _done(error=state.error)
            if held is not None:
                state.replaced_rejected_at = time.time()
            state.running = future = Future()
            future.set_running_or_notify_cancel()  # shared by every waiter: one giving up cancels it for none
        deadline = threading.Timer(MINT_DEADLINE_SECONDS, self._give_up, args=(source, fingerprint, future))
        deadline.daemon = True
        threading.Thread(
            target=self._run, args=(source, dict(values), fingerprint, future, deadline), name=f"vaultproxy-mint-{source.name}", daemon=True,
        ).start()
        deadline.start()  # cancelled by the mint's end, even one that came first
        return future

    def _give_up(self, source: TokenSource, fingerprint: str, future: Future[Token]) -> None:
        """At the deadline of a mint still under way: its waiters get token_unavailable. For
        client credentials the next attempt (after the backoff, or at once with another
        credential) is a new request; a refresh token still in flight is never sent again
        beside itself (servers that detect reuse revoke the whole grant): until that request
        ends, the source answers with this error at once."""
        error = MintError(source.name, TOKEN_UNAVAILABLE, f"token {source.name!r}: the token endpoint did not answer within {MINT_DEADLINE_SECONDS:g} s")
        if not self._failed(source, fingerprint, error, future, still_running=bool(source.refresh_token)):
            return
        try:
            self._write_status()
        finally:  # the waiters are answered, whatever the status file does
            _settle(future, error)

    def _run(self, source: TokenSource, values: dict[str, str], fingerprint: str, future: Future[Token], deadline: threading.Timer) -> None:
        outcome: Token | MintError
        try:
            token, rotated = request_token(source, values, verify=self.verify)
            if rotated is not None:
                assert source.refresh_token is not None
                with self._lock:
                    self._states[source.name].rotation = (values[source.refresh_token], rotated)
                fingerprint = _fingerprint(source, {**values, source.refresh_token: rotated})  # what the next attempt sends
                self._store_rotated(source, rotated, values)
        except MintError as e:
            outcome = e
            self._failed(source, fingerprint, e, future)
        except Exception as e:  # a bug must not leave every waiter hanging
            logger.exception(f"vaultproxy: minting token {source.name!r} failed unexpectedly")
            outcome = MintError(source.name, TOKEN_UNAVAILABLE, f"token {source.name!r}: {type(e).__name__}")
            self._failed(source, fingerprint, outcome, future)
        else:
            with self._lock:
                state = self._states[source.name]
                if state.running in (future, None):  # else a newer mint, begun after the deadline, answers
                    state.source, state.token, state.minted_at = source, token, time.time()
                    state.running, state.error, state.failures = None, None, 0
                    self.generation += 1
            logger.info(f"vaultproxy: minted token {source.name!r}" + ("" if math.isinf(token.expires_at) else f", valid for {token.expires_at - token.issued_at:.0f} s"))
            outcome = token
        deadline.cancel()
        try:
            self._write_status()  # before any waiter wakes: `status` says what the client is about to be told
        finally:  # the waiters are answered, whatever the status file does
            _settle(future, outcome)

    def _store_rotated(self, source: TokenSource, rotated: str, values: Mapping[str, str]) -> None:
        """Before the new access token goes out: a crash after this keeps the refresh token
        the server now expects."""
        assert source.refresh_token is not None
        try:
            self.vault.set(source.refresh_token, rotated)
        except (VaultError, OSError) as e:
            raise _failing(source, {**values, f"new {source.refresh_token}": rotated})(
                TOKEN_UNAVAILABLE,
                f"the server rotated the refresh token, and storing the new one failed ({e}): it is kept in this proxy's "
                "memory only, and the next mint uses it",
            ) from None
        logger.info(f"vaultproxy: token {source.name!r}: the server rotated the refresh token; stored in {source.refresh_token!r}")

    def _failed(self, source: TokenSource, fingerprint: str, error: MintError, future: Future[Token], *, still_running: bool = False) -> bool:
        """Count the failure of the mint `future` stands for; False when it was counted
        already (given up at its deadline) or that mint is over. `still_running`: the
        request goes on, and no other may start beside it."""
        with self._lock:
            state = self._states[source.name]
            if state.running is not future:
                return False
            state.running = future if still_running else None
            if future.done():  # given up at its deadline, and counted then
                return False
            state.failures = state.failures + 1 if state.attempt == fingerprint else 1
            state.attempt, state.failed_at, state.error = fingerprint, time.time(), error
        logger.warning(f"vaultproxy: {error}")
        return True

    def status(self) -> dict[str, dict[str, Any]]:
        """Each source's state, without values: what token-status.json holds."""
        with self._lock:
            return {
                name: {
                    "minted_at": _iso(state.minted_at),
                    "expires_at": _iso(state.token.expires_at) if state.token and not math.isinf(state.token.expires_at) else None,
                    "scope": state.token.scope if state.token else None,
                    "error": str(state.error) if state.error else None,
                    "error_code": state.error.code if state.error else None,
                    "failed_at": _iso(state.failed_at) if state.error else None,
                    "failures": state.failures,
                }
                for name, state in self._states.items()
            }

    def _write_status(self) -> None:
        try:
            with self._status_lock:
                replace_file(self.vault.home / TOKEN_STATUS_FILE, json.dumps(self.status(), indent=1).encode())
        except OSError as e:
            logger.warning(f"vaultproxy: cannot write {TOKEN_STATUS_FILE}: {e.strerror}")


def read_status(home: Path) -> dict[str, dict[str, Any]]:
    """What the proxy last wrote of its tokens (empty when it never minted one)."""
    try:
        data = json.loads((home / TOKEN_STATUS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _iso(at: float | None) -> str | None:
    return datetime.fromtimestamp(at, timezone.utc).isoformat(timespec="seconds") if at else None


def _settle(future: Future[Token], outcome: Token | MintError) -> None:
    """Answer the waiters, unless the deadline (or the mint itself) answered them first."""
    try:
        if isinstance(outcome, MintError):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
    except InvalidStateError:
        pass


def _done(token: Token | None = None, *, error: BaseException | None = None) -> Future[Token]:
    future: Future[Token] = Future()
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(token)  # type: ignore[arg-type]
    return future
