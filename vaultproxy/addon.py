"""The vaultproxy mitmproxy addon: a thin adapter over vaultcore.

Two parts, because mitmproxy runs addons in chain order and the two jobs need opposite ends:

- `VaultProxy` sits where it is loaded (`-s` scripts run mid-chain, before save, HAR export
  and the dumper). It owns the options, the vault index and its live reload, and puts
  placeholders back once a request has gone upstream (`responseheaders`, `error`,
  `websocket_end`), so everything after it records placeholders only.
- `Substitution` is appended to the very end of the chain in `running()`, so that whatever
  other addons add (modify_headers, map_remote, modify_body) is resolved too, and so that the
  host it checks is the host mitmproxy will really connect to.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from urllib.parse import quote

from mitmproxy import command, ctx, exceptions, http
from mitmproxy.addonmanager import Loader

from vaultcore.atomic import replace_file
from vaultcore.index import POLICY_CODES, SecretIndex
from vaultcore.placeholders import MARKER, Lookup, StreamSubstituter, SubstitutionError, substitute
from vaultcore.profiles import ConfigError
from vaultcore.proxyenv import RUNTIME_FILE
from vaultcore.store import VaultError
from vaultcore.vault import Snapshot, Vault, default_home
from vaultproxy import guard, rewrite
from vaultproxy.audit import AuditLog
from vaultproxy.flights import Flights

logger = logging.getLogger(__name__)

RELOAD_INTERVAL_SECONDS = 0.5
LOAD_ERRORS = (VaultError, ConfigError, OSError, ValueError)


def live(flow: http.HTTPFlow) -> bool:
    """Only live, unanswered client traffic is resolved (not replays, not flows read from a
    file, not flows another addon already answered or killed)."""
    return flow.live and not flow.is_replay and flow.response is None and flow.error is None


def refusal(error: SubstitutionError) -> http.Response:
    """The proxy's own answer to a request it will not send: the key and the fix, no value."""
    status = 403 if error.code in POLICY_CODES else 400
    return http.Response.make(
        status,
        f"vaultproxy refused this request: {error}\n".encode(),
        {"Content-Type": "text/plain; charset=utf-8", "X-Vaultproxy-Error": error.code},
    )


def unframeable(key: str) -> None:
    """The body lookup of a streamed body whose length must not change (see
    rewrite.streamed_framing): every placeholder in it stays literal, and says why."""
    raise SubstitutionError(
        "unframeable_stream", key,
        f"{key!r} stays unresolved in this streamed HTTP/2 body: the upstream's protocol was not known when "
        "it started, so its length could not change (raise stream_large_bodies, or use connection_strategy=eager)",
    )


class VaultProxy:
    def __init__(self) -> None:
        self.vault: Vault | None = None
        self.snapshot: Snapshot | None = None
        self.index = SecretIndex()
        self.flights = Flights()
        self.audit = AuditLog(None)
        self.substitution = Substitution(self)
        self._watcher: asyncio.Task | None = None
        self._failed_signature: object = None

    # --- options and state ---------------------------------------------------------------

    def load(self, loader: Loader) -> None:
        loader.add_option("vault_home", str, "", "Vault home directory (default: $VAULTPROXY_HOME or the user config dir).")
        loader.add_option(
            "vault_on_missing", str, "block",
            "What to do with a placeholder whose key is unknown: block the request, or keep the placeholder as it is.",
            choices=("block", "keep"),
        )
        loader.add_option("vault_allow_plaintext", bool, False, "Send secrets to non-loopback hosts over plain HTTP.")
        loader.add_option("vault_redact_responses", bool, False, "Show placeholders instead of injected values that a response echoes back.")
        loader.add_option("vault_audit_log", str, "", 'Audit log path (default: audit.log in the vault home; "off" to disable).')

    def configure(self, updated: set[str]) -> None:
        # mitmproxy 11 has no store_streamed_bodies (it never records streamed bodies).
        if "store_streamed_bodies" in ctx.options and ctx.options.store_streamed_bodies:
            raise exceptions.OptionsError(
                "vaultproxy: store_streamed_bodies would record substituted values; turn it off"
            )
        if "vault_home" in updated or self.vault is None:
            home = Path(ctx.options.vault_home).expanduser() if ctx.options.vault_home else default_home()
            vault = Vault(home)
            try:
                snapshot = vault.snapshot()
            except LOAD_ERRORS as e:
                raise exceptions.OptionsError(f"vaultproxy: cannot load the vault: {e}") from None
            self.vault = vault
            self._use(snapshot)
            logger.info(f"vaultproxy: {len(snapshot.index)} keys from {home}")
        if "vault_audit_log" in updated or "vault_home" in updated or self.audit.path is None:
            setting = ctx.options.vault_audit_log
            self.audit.close()
            self.audit = AuditLog(None if setting == "off" else Path(setting).expanduser() if setting else self.vault.home / "audit.log")

    def running(self) -> None:
        ctx.master.addons.add(self.substitution)
        self._write_runtime_info()
        self._watcher = asyncio.get_running_loop().create_task(self._watch())

    def done(self) -> None:
        # Runs before save's `done`, which writes the flows still open: as placeholders.
        self.flights.restore_all()
        self.audit.close()
        if self._watcher:
            self._watcher.cancel()
        # On a script reload a new instance adds its own part: take this one out of the chain.
        with contextlib.suppress(exceptions.AddonManagerError):
            ctx.master.addons.remove(self.substitution)
        if self.vault:
            with contextlib.suppress(OSError):
                (self.vault.home / RUNTIME_FILE).unlink()

    def _write_runtime_info(self) -> None:
        """Tell `vaultproxy env` / `exec` where this proxy listens and where its CA is."""
        assert self.vault is not None
        host, port = ctx.options.listen_host or "127.0.0.1", ctx.options.listen_port
        proxyserver = ctx.master.addons.get("proxyserver")
        if proxyserver and proxyserver.listen_addrs():  # the real port, also for --listen-port 0
            host, port = proxyserver.listen_addrs()[0][:2]
        info = {"host": host, "port": port, "confdir": os.path.expanduser(ctx.options.confdir), "pid": os.getpid()}
        try:
            self.vault.home.mkdir(mode=0o700, parents=True, exist_ok=True)
            # Atomically: `vaultproxy env` may read it at any moment, and a half-written file
            # would send clients to the default address.
            replace_file(self.vault.home / RUNTIME_FILE, json.dumps(info).encode())
        except OSError as e:
            logger.warning(f"vaultproxy: cannot write {RUNTIME_FILE}: {e.strerror}")

    # --- live reload ---------------------------------------------------------------------

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(RELOAD_INTERVAL_SECONDS)
            try:
                await self.reload_if_changed()
            except Exception as e:  # the watcher must outlive any one bad reload
                logger.warning(f"vaultproxy: reload failed, keeping the last good state ({type(e).__name__})")

    async def reload_if_changed(self) -> None:
        assert self.vault is not None and self.snapshot is not None
        try:
            signature = self.vault.signature()
        except LOAD_ERRORS:
            return
        if signature in (self.snapshot.signature, self._failed_signature):
            return
        try:
            snapshot = await asyncio.to_thread(self.vault.snapshot)
        except LOAD_ERRORS as e:
            self._failed_signature = signature
            logger.warning(f"vaultproxy: reload failed, keeping the last good state: {e}")
            return
        self._use(snapshot)
        self._failed_signature = None
        logger.info(f"vaultproxy: reloaded, {len(snapshot.index)} keys")

    @command.command("vault.reload")
    def reload(self) -> None:
        """Reload the vault now (it also reloads by itself when vault.enc changes)."""
        assert self.vault is not None
        try:
            self._use(self.vault.snapshot())
        except LOAD_ERRORS as e:
            raise exceptions.CommandError(f"reload failed, keeping the last good state: {e}") from None

    def _use(self, snapshot: Snapshot) -> None:
        self.snapshot, self.index = snapshot, snapshot.index

    @command.command("vault.status")
    def status(self) -> Sequence[str]:
        """Keys, their sources and hosts; never values."""
        lines = [f"{s.key}\t{s.source}\t{','.join(s.hosts) or '(no hosts rule)'}" for s in self.index.secrets()]
        lines += [f"{key}\tlocal\toverridden by duplicate key in {source}" for key, source in self.index.shadowed.items()]
        return lines

    # --- putting placeholders back --------------------------------------------------------

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        # A streamed upload can get its response before it has finished: restoring its
        # headers then would change the framing of the chunks still to come.
        if flow.request.timestamp_end is not None:
            self.flights.restore(flow)

    def response(self, flow: http.HTTPFlow) -> None:
        keys = self.flights.finish(flow)
        if flow.websocket is not None:
            self.flights.add_websocket_keys(flow, keys)  # the handshake's values may come back in messages
        elif keys and ctx.options.vault_redact_responses and flow.response and not flow.response.stream:
            content = flow.response.get_content(strict=False)
            if content and (redacted := self.redact(content, keys)) != content:
                flow.response.content = redacted

    def error(self, flow: http.HTTPFlow) -> None:
        self.flights.finish(flow)
        self.flights.end_websocket(flow)

    def websocket_message(self, flow: http.HTTPFlow) -> None:
        self.flights.restore_messages(flow)
        assert flow.websocket is not None
        message = flow.websocket.messages[-1]
        keys = self.flights.websocket_keys(flow)
        if keys and not message.from_client and ctx.options.vault_redact_responses:
            message.content = self.redact(message.content, keys)

    def websocket_end(self, flow: http.HTTPFlow) -> None:
        self.flights.end_websocket(flow)

    def redact(self, content: bytes, keys: Iterable[str]) -> bytes:
        """`content` with every injected value it echoes (as sent, or JSON- or
        percent-escaped) shown as its placeholder."""
        for key in keys:
            secret = self.index.get(key)
            if secret is None:
                continue
            placeholder = f"<<vault:{key}>>".encode()
            value = secret.value if isinstance(secret.value, bytes) else secret.value.encode()
            forms = {value}
            if isinstance(secret.value, str):
                forms |= {json.dumps(secret.value, ensure_ascii=False)[1:-1].encode(), quote(secret.value, safe="").encode()}
            for form in sorted(forms, key=len, reverse=True):
                content = content.replace(form, placeholder)
        return content


class Substitution:
    """The substituting part; appended last to the addon chain by `VaultProxy.running`."""

    def __init__(self, proxy: VaultProxy):
        self.proxy = proxy

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if not live(flow):
            return
        if rewrite.streams_late(flow.request, ctx.options.stream_large_bodies):
            flow.request.stream = True
        # A streamed request's headers leave right after this hook: resolve them now.
        if flow.request.stream:
            self._resolve(flow, streamed=True)

    def request(self, flow: http.HTTPFlow) -> None:
        if not live(flow):
            return
        if flow.request.stream:
            self._audit_stream(flow)
        else:
            self._resolve(flow, streamed=False)

    def _resolve(self, flow: http.HTTPFlow, *, streamed: bool) -> None:
        request, proxy = flow.request, self.proxy
        stream_body = streamed and rewrite.streamable(request)
        original_path = request.path
        try:
            body = None if streamed else rewrite.decoded_body(request)
            if not (rewrite.head_has_placeholder(request) or rewrite.body_has_placeholder(request, body) or stream_body):
                return
            lookup = self._lookup_for(request)
            change = rewrite.rewrite_request(request, lookup, body)
        except SubstitutionError as e:
            self._refuse(flow, e, original_path, streamed=streamed)
            return
        proxy.flights.remember(flow, change, streamed_body=stream_body)
        if stream_body:
            framing = rewrite.streamed_framing(request, flow.server_conn)
            body_lookup = lookup if framing else unframeable
            substituter = StreamSubstituter(rewrite.body_context(request.headers.get("content-type", "")), self._literal_on_refusal(flow, body_lookup))
            proxy.flights.track_stream(flow, substituter)
            change.apply(request)
            rewrite.prepare_streamed_body(request, substituter, framing)
        elif change.keys:
            proxy.audit.record(request, original_path, change.keys, "resolved")
            change.apply(request)

    def _lookup_for(self, request: http.Request) -> Lookup:
        return guard.lookup_for(
            request, self.proxy.index,
            keep_unknown=ctx.options.vault_on_missing == "keep", allow_plaintext=ctx.options.vault_allow_plaintext,
        )

    def _literal_on_refusal(self, flow: http.HTTPFlow, lookup: Lookup) -> Lookup:
        """For a streamed body, whose start has already left: a refused key stays a literal
        placeholder (the secret is not sent) and the refusal is logged and audited."""

        def stream_lookup(key: str) -> str | bytes | None:
            try:
                return lookup(key)
            except SubstitutionError as e:
                logger.warning(f"vaultproxy: left {key!r} unresolved in a streamed body to {flow.request.host}: {e}")
                self.proxy.flights.add_refusal(flow, e)
                return None

        return stream_lookup

    def _audit_stream(self, flow: http.HTTPFlow) -> None:
        keys, refusals = self.proxy.flights.stream_outcome(flow)
        if keys or refusals:
            outcome = f"refused:{refusals[0].code}" if refusals else "resolved"
            self.proxy.audit.record(flow.request, self.proxy.flights.original_path(flow), keys + [e.key for e in refusals], outcome)

    def _refuse(self, flow: http.HTTPFlow, error: SubstitutionError, path: str, *, streamed: bool) -> None:
        request = flow.request
        logger.warning(f"vaultproxy: refused {request.method} {request.host}{path.split('?', 1)[0]}: {error}")
        self.proxy.audit.record(request, path, [error.key] if error.key else [], f"refused:{error.code}")
        if streamed:
            # mitmproxy cannot answer a request whose body it streams: it refuses to stream with
            # a response set, and streams anyway once the body outgrows stream_large_bodies.
            # The connection is closed instead; the log says why.
            flow.kill()
        else:
            flow.response = refusal(error)

    def websocket_message(self, flow: http.HTTPFlow) -> None:
        assert flow.websocket is not None
        message = flow.websocket.messages[-1]
        if not message.from_client or not flow.live or MARKER not in message.content:
            return
        proxy = self.proxy
        try:
            content, keys = substitute(message.content, rewrite.websocket_context(message), self._lookup_for(flow.request))
        except SubstitutionError as e:
            logger.warning(f"vaultproxy: dropped a WebSocket message to {flow.request.host}: {e}")
            proxy.audit.record(flow.request, flow.request.path, [e.key] if e.key else [], f"refused:{e.code}")
            message.drop()
            return
        if keys:
            proxy.flights.remember_message(flow, message, keys)
            proxy.audit.record(flow.request, flow.request.path, keys, "resolved")
            message.content = content
