"""Refresh and retry on rejection.

When an upstream answers a request that used provider secrets with a status their
configuration lists in `refresh_on` (401, 403), the credential may have been rotated since
it was fetched. The proxy then fetches those secrets again (one fetch in flight per secret,
at most one per secret in a short window, see `vaultcore.refresher`) and, if the vault now
holds another value for a key the request used, sends the request once more through the
whole addon chain (mitmproxy's own replay machinery, so every check applies again); the
client gets the replay's answer. Otherwise the client gets the original rejection.

While AWS rotates a secret, the new version is staged AWSPENDING before it becomes
AWSCURRENT, and the service behind the API may accept it first. So the current version
always goes out first; a rejection refetches it, and a changed current version wins; when
it has not changed but a pending version exists, the request is retried once with that.
AWSPREVIOUS is only ever sent through a mapping's `version_stage`.

An OAuth access token the proxy minted (vaultcore/oauth.py) is rejected the same way: a status
its token source lists in `refresh_on` (401 by default) mints a new token, unless another
request already did, and the request is sent once more with it.

Only a request whose body the proxy holds can be sent again: streamed requests, and
WebSocket (and other upgrade) handshakes, pass their rejection on. A replay's answer is held
whole (`WholeAnswers`) and redacted for the values of both requests, and it takes the route
the rejected request took (the mode of the listener it came in on, `route_of`), whatever
mode is listed first.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mitmproxy import ctx, http
from mitmproxy.addons.clientplayback import ReplayHandler
from mitmproxy.options import Options
from mitmproxy.proxy.mode_specs import ProxyMode, UpstreamMode

from vaultcore.index import LOCAL_SOURCE, SecretIndex
from vaultcore.placeholders import SubstitutionError
from vaultcore.profiles import REFRESH_STATUSES, ProviderConfig
from vaultcore.refresher import CURRENT, PENDING, Stage
from vaultcore.tokens import TokenSource

if TYPE_CHECKING:
    from vaultproxy.addon import VaultProxy
    from vaultproxy.flights import Original

logger = logging.getLogger(__name__)


def rejected_aliases(flow: http.HTTPFlow, keys: list[str], index: SecretIndex, config: ProviderConfig | None) -> list[str]:
    """The provider aliases among the keys `flow` used whose mapping asks for a refetch on
    the status the upstream answered with."""
    if config is None or flow.response is None:
        return []
    status = flow.response.status_code
    aliases: list[str] = []
    for key in keys:
        secret = index.get(key)
        mapping = config.mapping(key.split(".", 1)[0])
        if secret is None or secret.source == LOCAL_SOURCE or mapping is None:
            continue
        if status in config.refresh_on_for(mapping) and mapping.alias not in aliases:
            aliases.append(mapping.alias)
    return aliases


def rejected_tokens(flow: http.HTTPFlow, keys: list[str], sources: Mapping[str, TokenSource]) -> list[str]:
    """The token sources whose access token `flow` sent, when the upstream's status is one
    the source mints a new token on."""
    status = flow.response.status_code if flow.response else 0
    return [key for key in keys if key in sources and status in sources[key].refresh_on]


@dataclass(frozen=True)
class Stale:
    """What a rejected request used that may be out of date: provider aliases to fetch again,
    and token sources to mint again."""

    aliases: list[str]
    tokens: list[str]

    def __bool__(self) -> bool:
        return bool(self.aliases or self.tokens)


def changed(keys: list[str], used: SecretIndex, current: SecretIndex) -> bool:
    """Whether the vault now gives another value for any key the request used."""
    for key in keys:
        before, now = used.get(key), current.get(key)
        if before is not None and now is not None and before.value != now.value:
            return True
    return False


def route_of(mode: ProxyMode) -> list[str]:
    """`--mode` as a replay of a request that came in on a listener of `mode` is to read it.

    mitmproxy's replay (ReplayHandler) routes by the first mode only: through its upstream
    proxy when that mode is `upstream:`, else straight to the request's host and port. With
    several listeners, a request from one that is not the first would be sent again along
    another route than the one it took, and than the one the plaintext rule judged (guard.py
    reads the listener's mode). Spelled from the parsed mode, as `upstream:` in lower case,
    which mitmproxy's replay compares literally."""
    return [f"upstream:{mode.data}"] if isinstance(mode, UpstreamMode) else [mode.full_spec]


class WholeAnswers:
    """The proxy's options as a replay of `flow` reads them, but that it streams no answer:
    mitmproxy's replay keeps nothing of a streamed body, so the client would get the answer
    empty. (It is held whole, as every answer is unless stream_large_bodies is set.) And with
    `mode` the mode of the listener `flow` came in on (`route_of`), so that the replay takes
    the route the request took."""

    def __init__(self, options: Options, flow: http.HTTPFlow) -> None:
        self._options = options
        self._mode = route_of(flow.client_conn.proxy_mode)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # not an option (and `_options` itself, before it is set: copy.copy)
            raise AttributeError(name)
        if name == "mode":
            return list(self._mode)
        return None if name == "stream_large_bodies" else getattr(self._options, name)


class Retrier:
    def __init__(self, proxy: VaultProxy):
        self.proxy = proxy
        # Flows this proxy sends again: they are resolved like live ones (see `addon.live`),
        # and never retried a second time; those sent with a rotation's pending version
        # resolve from the current index with that version's keys laid over it.
        self.replays: weakref.WeakSet[http.HTTPFlow] = weakref.WeakSet()
        self.overlays: weakref.WeakKeyDictionary[http.HTTPFlow, SecretIndex] = weakref.WeakKeyDictionary()

    def candidates(self, flow: http.HTTPFlow, used: Original | None) -> Stale | None:
        """What to fetch or mint again before retrying `flow`; None when it is not retried."""
        if flow.response is None or flow.response.status_code not in REFRESH_STATUSES:
            return None  # almost every response: decided by one comparison
        # A handshake (WebSocket or another upgrade): mitmproxy decides what follows it from the
        # first answer, so a replay's 101 would leave the client with a raw relay.
        if used is None or used.index is None or flow in self.replays or "upgrade" in flow.request.headers:
            return None
        if flow.request.stream or flow.response.stream or flow.request.raw_content is None:
            return None
        snapshot = self.proxy.snapshot
        stale = Stale(
            rejected_aliases(flow, used.keys, used.index, snapshot.config if snapshot else None),
            rejected_tokens(flow, used.keys, self.proxy.token_sources),
        )
        return stale or None

    async def retry(self, flow: http.HTTPFlow, used: Original, stale: Stale) -> bool:
        """Fetch or mint what `stale` names and, if a value `flow` used changed, send it again;
        True when the client is to get the replay's answer (now in `flow.response`)."""
        proxy = self.proxy
        assert proxy.refresher is not None and proxy.snapshot is not None and used.index is not None
        status = flow.response.status_code if flow.response else 0
        name = proxy.snapshot.config.name if proxy.snapshot.config else ""
        if stale.aliases:
            await self._refetch(name, stale.aliases, CURRENT, status)
        for token in stale.tokens:
            await self._mint(token, used.index, status)
        await proxy.reload_if_changed()
        replay = flow.copy()
        replay.response, replay.error, replay.is_replay = None, None, "request"
        if changed(used.keys, used.index, proxy.index):
            outcome = f"retried_after_{status}"
        else:
            if not stale.aliases:
                return False
            await self._refetch(name, stale.aliases, PENDING, status)
            pending = proxy.refresher.pending(name, stale.aliases)
            overlay = proxy.index.overlaid(pending.values())
            if not pending or not changed(used.keys, used.index, overlay):
                return False
            self.overlays[replay] = overlay
            outcome = f"retried_after_{status}_with_pending"
        self.replays.add(replay)
        proxy.flights.replaying(replay, used)
        proxy.audit.record(flow.request, flow.request.path, used.keys, outcome)
        await ReplayHandler(replay, WholeAnswers(ctx.options, replay)).replay()  # type: ignore[arg-type]
        if replay.response is None:
            logger.warning(f"vaultproxy: the retry of a request to {flow.request.host} failed: {replay.error}")
            return False
        flow.response = replay.response
        return True

    async def _mint(self, token: str, used: SecretIndex, status: int) -> None:
        """A new token in place of the one the upstream rejected (unless one is already)."""
        sent = used.get(token)
        try:
            await self.proxy.mint(token, rejected=sent.value if sent and isinstance(sent.value, str) else None)
        except SubstitutionError as e:
            logger.warning(f"vaultproxy: minting token {token!r} again after a {status} failed: {e}")

    async def _refetch(self, name: str, aliases: list[str], stage: Stage, status: int) -> None:
        assert self.proxy.refresher is not None
        fetches = self.proxy.refresher.refetch_rejected(name, aliases, stage)
        for outcome in await asyncio.gather(*(asyncio.wrap_future(f) for f in fetches), return_exceptions=True):
            if isinstance(outcome, BaseException):
                logger.warning(f"vaultproxy: fetching {', '.join(aliases)} ({stage}) again after a {status} failed: {outcome}")
