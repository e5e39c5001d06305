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
import logging
import math
import os
import time
import weakref
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from mitmproxy import command, connection, ctx, exceptions, http, websocket
from mitmproxy.addonmanager import Loader
from mitmproxy.flow import Error as FlowError
from mitmproxy.master import Master
from mitmproxy.net.http import url
from mitmproxy.proxy import mode_specs
from mitmproxy.proxy.layer import NextLayer
from mitmproxy.tls import TlsData

from vaultcore.auditlog import audit_path
from vaultcore.filewatch import FileWatch
from vaultcore.freshness import Signature
from vaultcore.index import MINT_NEEDED, SecretIndex
from vaultcore.oauth import TOKEN_UNAVAILABLE, Minter, MintError, credentials
from vaultcore.placeholders import Budget, Lookup, StreamSubstituter, SubstitutionError, mentions_placeholder, resolve
from vaultcore.profiles import ConfigError
from vaultcore.proxyenv import publish_proxy, runtime_record, withdraw_proxy
from vaultcore.redaction import Redactor
from vaultcore.refresher import Refresher
from vaultcore.signing import AwsCredentials, Rule, SigningError, SigV4
from vaultcore.store import VaultError, ensure_home, forget_passphrase_environment
from vaultcore.tokens import TokenSource, reserved_credentials, source_secrets
from vaultcore.vault import Snapshot, Vault, home_from_option
from vaultproxy import codings, guard, responses, rewrite, serverbytes, signing, tunnels, wscontrol
from vaultproxy.audit import RESOLVED, AuditLog, follow_console
from vaultproxy.clientgate import PROXY_MODES, ClientGate
from vaultproxy.flights import Flights, Original
from vaultproxy.options import check_choices, check_deferred, declare_options, growth_limit, stop_starting
from vaultproxy.refusal import readable_by, refusal
from vaultproxy.retry import Retrier, Stale

logger = logging.getLogger(__name__)

RELOAD_INTERVAL_SECONDS = 0.5
CA_FILE = "mitmproxy-ca-cert.pem"  # in mitmproxy's confdir
CA_WAIT_SECONDS = 30.0
LOAD_ERRORS = (VaultError, ConfigError, OSError, ValueError)

# A script reload (mitmproxy reloads a `-s` file that changed) calls the old instance's `done`,
# then loads a new one, while requests are in flight: the new one must still put their
# placeholders back, redact what their answers echo, and refuse what the old one found
# unserved. The old one leaves itself here, under its master, for the next instance loaded
# into it to take over from (`_take_over`).
_retired: weakref.WeakKeyDictionary[Master, VaultProxy] = weakref.WeakKeyDictionary()


def cut_off(flow: http.HTTPFlow, what: str, error: Exception) -> None:
    """For a response check that failed: mitmproxy only logs an exception out of a hook, and
    the flow goes on, so the response would reach the client unchecked. It is cut off instead.
    Only the exception's type is logged: its message may quote the response."""
    logger.error(f"vaultproxy: {what} failed ({type(error).__name__}); cut it off rather than pass it on unchecked")
    if flow.killable:  # not when killed already (a stream cut short)
        flow.kill()


def live(flow: http.HTTPFlow, replays: weakref.WeakSet[http.HTTPFlow]) -> bool:
    """Only live, unanswered client traffic is resolved (not flows read from a file, not
    flows another addon already answered or killed, not replays other than this proxy's own
    retries of rejected requests)."""
    return flow.live and (not flow.is_replay or flow in replays) and flow.response is None and flow.error is None


K, V, D = TypeVar("K"), TypeVar("V"), TypeVar("D")


def weakly_held(mapping: weakref.WeakKeyDictionary[K, V], key: K, default: D) -> V | D:
    """`mapping.get(key, default)` for a mapping that is nearly always empty (flows answered,
    retried or reached by a name this proxy does not serve): a lookup makes a weak reference
    of the key, about a microsecond on every request; asking for its length does not."""
    return mapping.get(key, default) if mapping else default


# UIs and options that show or record flows (and so values) before placeholders are put back.
SHOWING_UIS = {"webaddon": "mitmweb", "consoleaddon": "mitmproxy's console UI"}
SHOWING_OPTIONS = (
    ("store_streamed_bodies", True, "store_streamed_bodies would record substituted values; turn it off"),
    ("proxy_debug", True, "proxy_debug logs requests with their values; turn it off"),
    ("termlog_verbosity", "debug", "termlog_verbosity=debug logs requests with their values; use info"),
)


def check_nothing_shows_values() -> None:
    """Refuse the configurations that would show or record a value: live UIs see flows while
    their requests carry values, and debug logging prints them."""
    for name, ui in SHOWING_UIS.items():
        if ctx.master.addons.get(name) is not None:
            raise exceptions.OptionsError(
                f"vaultproxy: {ui} shows requests while they carry secret values; run vaultproxy headless "
                "(`vaultproxy start` or mitmdump) and put the UI in front: mitmweb --mode upstream:http://127.0.0.1:8080"
            )
    for name, showing, fix in SHOWING_OPTIONS:
        # Not every mitmproxy has each option (11 has no store_streamed_bodies), nor every master.
        if name in ctx.options and getattr(ctx.options, name) == showing:
            raise exceptions.OptionsError(f"vaultproxy: {fix}")


def reverse_mode_in_use() -> bool:
    return any(isinstance(mode_specs.ProxyMode.parse(spec), mode_specs.ReverseMode) for spec in ctx.options.mode)


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
        self.index = SecretIndex()  # the snapshot's, with the token sources' placeholders over it
        self.rules: tuple[Rule, ...] = ()  # signing rules (vaultproxy/signing.py)
        self.aws_credentials = AwsCredentials()  # for rules that sign with a profile's keys
        self._aws_loads: dict[tuple[AwsCredentials, SigV4], asyncio.Future[None]] = {}  # see load_aws_keys
        self.minter: Minter | None = None  # OAuth tokens (vaultcore/oauth.py), for the vault in use
        self.token_sources: dict[str, TokenSource] = {}
        self._tokens_until = math.inf  # when a token in the index is due to be minted again
        self._tokens_seen = 0  # the minter's generation the index holds
        self.flights = Flights()
        self.audit = AuditLog(None)
        self.settings = guard.Settings()
        self.substitution = Substitution(self)
        # Who may use the proxy: run in this addon's hooks, not as an addon of its own, which
        # mitmproxy would dispatch every event of every request to.
        self.gate = ClientGate()
        self.refresher: Refresher | None = None  # started in running(), for the vault in use
        self.retrier = Retrier(self)
        self._watcher: asyncio.Task | None = None
        self._announcer: asyncio.Task | None = None
        self._reloading = asyncio.Lock()
        self._failed: Signature | None = None  # what a failed reload saw: not retried until it changes
        self._failed_rules: Signature | None = None  # likewise, of the hand-edited rule files
        self._current_this_turn = False  # see is_current
        # The kernel's word on the vault's files (Linux), read by the event loop: while it has
        # told of no change, the index is current without a stat call (see is_current).
        self._file_watch: FileWatch | None = None
        self._files_changed = True
        # Reverse mode: whether this addon, not mitmproxy, rewrites Host to the target (so that
        # it sees the name the client used first), and the flows whose client used another name.
        self._rewrites_host = False
        self.unserved: weakref.WeakKeyDictionary[http.HTTPFlow, str] = weakref.WeakKeyDictionary()
        # Flows the proxy answered itself: their answers name placeholders on purpose.
        self.refused: weakref.WeakSet[http.HTTPFlow] = weakref.WeakSet()
        # The open WebSocket of each client connection, for its control frames (wscontrol).
        self.sockets: weakref.WeakKeyDictionary[connection.Client, http.HTTPFlow] = weakref.WeakKeyDictionary()
        self._running = False  # see when_running
        self._started = asyncio.Event()

    # --- options and state ---------------------------------------------------------------

    def load(self, loader: Loader) -> None:
        if (retired := _retired.pop(loader.master, None)) is not None:
            self._take_over(retired)
        declare_options(loader)
        serverbytes.install()
        try:
            check_deferred(loader.master.options)
        except exceptions.OptionsError as e:
            stop_starting(e)

    def configure(self, updated: set[str]) -> None:
        """A bad option (or a vault that cannot be opened) stops a proxy that is starting; a
        running one refuses the change and keeps its settings (mitmproxy rolls it back)."""
        try:
            self._configure(updated)
        except exceptions.OptionsError as e:
            if not self._running:
                stop_starting(e)
            raise

    def _configure(self, updated: set[str]) -> None:
        check_nothing_shows_values()
        check_choices(ctx.options)
        max_growth = growth_limit(ctx.options)
        self.settings = guard.Settings(
            keep_unknown=ctx.options.vault_on_missing == "keep", allow_plaintext=ctx.options.vault_allow_plaintext,
            verify_upstream=not ctx.options.ssl_insecure, max_growth=max_growth,
            redact_responses=ctx.options.vault_redact_responses, stream_large_bodies=ctx.options.stream_large_bodies,
        )
        if "termlog_verbosity" in updated:
            follow_console(ctx.options.termlog_verbosity)
        if {"mode", "keep_host_header"} & updated and not self._rewrites_host and reverse_mode_in_use() and not ctx.options.keep_host_header:
            # mitmproxy would replace the client's Host with the target's before any hook sees it.
            self._rewrites_host = True
            ctx.options.update(keep_host_header=True)
        if "vault_home" in updated or self.vault is None:
            home = home_from_option(ctx.options.vault_home)
            vault = Vault(home)
            try:
                snapshot = vault.snapshot()
                ensure_home(home)  # an empty vault's may not exist: the proxy writes its audit log and record there
            except LOAD_ERRORS as e:
                raise exceptions.OptionsError(f"vaultproxy: cannot load the vault: {e}") from None
            forget_passphrase_environment()  # derived now: nothing the proxy starts may inherit it
            if self._running:  # a running proxy given another home records itself there instead
                self._withdraw()
            self.vault, self._failed, self.minter = vault, None, Minter(vault)
            self._use(snapshot)
            if self._running:
                self._start_refresher()
                self._publish()
            logger.info(f"vaultproxy: {len(snapshot.index)} keys from {home}")
        assert self.minter is not None
        # The token endpoint is verified as upstreams are.
        self.minter.verify = False if ctx.options.ssl_insecure else ctx.options.ssl_verify_upstream_trusted_ca or True
        path = audit_path(self.vault.home, ctx.options.vault_audit_log)
        if path != self.audit.path:  # the log a reload's new instance was handed is kept open
            audit = AuditLog(path)
            try:
                audit.open()  # a log it cannot write loses every record: no start (or no change)
            except OSError as e:
                raise exceptions.OptionsError(f"vaultproxy: cannot write the audit log {audit.path}: {e.strerror}") from None
            self.audit.close()
            self.audit = audit

    def running(self) -> None:
        try:
            self.gate.running()
            ctx.master.addons.add(self.substitution)
            self._running = True
        finally:
            self._started.set()  # the requests that came meanwhile go on (or are dropped: _after_start)
        wscontrol.install(self.control_frame_cleaner)
        self._start_refresher()
        self._watch_files()
        self._watcher = asyncio.get_running_loop().create_task(self._watch())
        self._announcer = asyncio.get_running_loop().create_task(self._announce())

    def when_running(self, hook: Callable[[http.HTTPFlow], None], flow: http.HTTPFlow) -> Awaitable[None] | None:
        """mitmproxy listens before it runs the addons' `running` hooks, one after another: a
        request that comes in between would go on before this one has read the proxy credential
        and put Substitution at the end of the chain. Such a request waits (mitmproxy's dispatch
        goes on through the chain as it is then, Substitution included)."""
        if self._running:
            hook(flow)
            return None
        return self._after_start(hook, flow)

    async def _after_start(self, hook: Callable[[http.HTTPFlow], None], flow: http.HTTPFlow) -> None:
        """A script reload meanwhile (mitmproxy removes the old script's addon by building a
        new chain) means the dispatch goes on through a chain without Substitution, or that
        this instance was retired before it ran: the request is dropped, never sent unresolved."""
        chain = ctx.master.addons.chain
        await self._started.wait()
        if self._running and ctx.master.addons.chain is chain:
            hook(flow)
            return
        logger.warning(f"vaultproxy: dropped a request to {flow.request.host} that came while the proxy started: a script was reloaded meanwhile")
        if flow.killable:
            flow.kill()

    def done(self) -> None:
        # Runs before save's `done`, which writes the flows still open: as placeholders.
        self.flights.restore_all()
        # A request this instance holds (for a reload, a token, AWS keys) goes on with it.
        _retired[ctx.master] = self
        self._started.set()  # one that waits for a start that will not come is dropped
        wscontrol.install(None)
        # Written out, not closed: a reload's next instance writes on in it (after a rotation
        # its path may not open again); the process's exit closes it.
        self.audit.flush()
        if self.refresher:
            self.refresher.stop()
        for task in (self._watcher, self._announcer):
            if task:
                task.cancel()
        self._unwatch_files()
        # On a script reload a new instance adds its own part: take this one out of the chain.
        with contextlib.suppress(exceptions.AddonManagerError):
            ctx.master.addons.remove(self.substitution)
        self._withdraw()

    def _withdraw(self) -> None:
        """Take this proxy's credential and record out of its home (it stops, or moves to
        another): the credential opens nothing after."""
        if self.vault is None or self.gate.credential is None:
            return
        try:
            withdraw_proxy(self.vault.home, self.gate.credential)
        except VaultError as e:
            logger.warning(f"vaultproxy: {e}: this proxy's credential and record stay in {self.vault.home}")

    def _take_over(self, retired: VaultProxy) -> None:
        """What the instance a script reload retired knew of the flows in flight, and the
        option it set for itself (Host, in reverse mode: see _configure). And what makes it the
        same proxy to its clients and its owner: the credential they were given, and the audit
        log it has open."""
        self.flights, self.unserved, self.refused, self.sockets = retired.flights, retired.unserved, retired.refused, retired.sockets
        self.retrier.replays, self.retrier.overlays = retired.retrier.replays, retired.retrier.overlays
        self._rewrites_host = retired._rewrites_host
        self.gate.credential, self.audit = retired.gate.credential, retired.audit

    def _start_refresher(self) -> None:
        """Auto-refresh (and refetch on rejection) for the vault in use, on threads of its own."""
        assert self.vault is not None
        if self.refresher:
            self.refresher.stop()
        self.refresher = Refresher(self.vault)
        self.refresher.start()

    async def _announce(self) -> None:
        """Write proxy.json once mitmproxy's CA exists: on a first start mitmproxy 12 creates
        it after this addon is running, and `vaultproxy env` must not find a proxy whose CA
        clients cannot trust yet."""
        ca = Path(ctx.options.confdir).expanduser() / CA_FILE
        for _ in range(int(CA_WAIT_SECONDS / 0.05)):
            if ca.is_file():
                break
            await asyncio.sleep(0.05)
        # Off the event loop: publishing waits for the record lock (vaultcore.proxyenv), which
        # another proxy for the home holds for two file operations, or a stuck process longer.
        await asyncio.to_thread(self._publish_record, self._runtime_record())

    def _publish(self) -> None:
        """The credential and the record that `vaultproxy env` hands clients, in the proxy's home."""
        self._publish_record(self._runtime_record())

    def _publish_record(self, record: dict[str, Any]) -> None:
        assert self.vault is not None and self.gate.credential is not None
        try:
            publish_proxy(self.vault.home, self.gate.credential, record)
        except VaultError as e:
            logger.error(f"vaultproxy: {e}: `vaultproxy env` cannot point clients here, and those that must present the proxy credential are refused")

    def _runtime_record(self) -> dict[str, Any]:
        """What tells the CLI (`env`, `exec`, `status`, `stop`, `log`) where this proxy listens,
        where its CA is, since when, and with which vault_* options."""
        host, port = ctx.options.listen_host or "127.0.0.1", ctx.options.listen_port
        proxyserver = ctx.master.addons.get("proxyserver")
        if proxyserver and proxyserver.listen_addrs():  # the real port, also for --listen-port 0
            # Clients are pointed at it as an HTTP proxy: a regular (or upstream) mode's
            # listener, before a SOCKS5 or reverse one that happens to come first.
            http_proxies = [a for server in proxyserver.servers if isinstance(server.mode, PROXY_MODES) for a in server.listen_addrs]
            host, port = (http_proxies or proxyserver.listen_addrs())[0][:2]
        options = {name: getattr(ctx.options, name) for name in ctx.options.keys() if name.startswith("vault_")}
        return runtime_record(host, port, os.path.expanduser(ctx.options.confdir), options)

    # --- live reload ---------------------------------------------------------------------

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(RELOAD_INTERVAL_SECONDS)
            try:
                self.audit_abandoned()
            except Exception as e:  # in a try of its own: neither it nor a reload may stop the other
                logger.warning(f"vaultproxy: checking for abandoned uploads failed ({type(e).__name__})")
            try:
                self._see_again()
                await self.reload_if_changed(rules=True)
            except Exception as e:  # the watcher must outlive any one bad reload
                logger.warning(f"vaultproxy: reload failed, keeping the last good state ({type(e).__name__})")

    def audit_abandoned(self) -> None:
        """Streamed uploads answered early, then abandoned by their client: no hook tells of
        them, but the values they used went upstream all the same."""
        for flow in self.flights.abandoned():
            self.substitution.audit_stream(flow)
            self.flights.forget_answered(flow)

    def _watch_files(self) -> None:
        """Have the event loop read the kernel's events about the vault's files (where
        inotify works; elsewhere is_current asks with stat calls)."""
        assert self.snapshot is not None
        try:
            self._file_watch = FileWatch()
            self._file_watch.watch(self.snapshot.signature.paths)
        except OSError as e:
            self._file_watch = None
            logger.debug(f"vaultproxy: no file watch ({e}); the vault's files are checked before each request")
            return
        asyncio.get_running_loop().add_reader(self._file_watch.fd, self._read_file_events)

    def _see_again(self) -> None:
        """A watch gone blind (the home moved away: nothing watches where it would come back)
        is made again, here every half second; once it sees again, the stamps are checked once
        for what changed while it could not (meanwhile every turn checked them)."""
        if self._file_watch is not None and self._file_watch.blind:
            assert self.snapshot is not None
            self._file_watch.watch(self.snapshot.signature.paths)
            self._files_changed = True

    def _read_file_events(self) -> None:
        assert self._file_watch is not None
        if self._file_watch.changed():
            self._files_changed = True

    def _unwatch_files(self) -> None:
        if self._file_watch is not None:
            with contextlib.suppress(RuntimeError, ValueError):  # the loop may be closed already
                asyncio.get_running_loop().remove_reader(self._file_watch.fd)
            self._file_watch.close()
            self._file_watch = None
            self._files_changed = True  # from now on the stamps tell

    def is_current(self) -> bool:
        """Whether the index is what the vault's files say, or they have not changed since a
        reload of them failed.

        With a file watch (Linux): current while the kernel has told of no change since the
        last check. The kernel queued the event inside the CLI's write, before the client that
        waited for the CLI could send its request. The event loop reads the watch in a reader
        callback, which runs in the turn of every poll that finds it readable; the request's
        bytes are read by a callback of that poll or a later one, which only wakes the
        connection's task (call_soon), and the hooks run in that task (mitmproxy 12 starts hook
        tasks eagerly, inside it): a turn later at the earliest, after the watch was read. A
        reported change is confirmed by the stamps.

        Without one (a few stat calls): a "current" answer also serves every later request
        until the event loop next polls for I/O: a request handled until then was read at
        that poll or before, and so was sent before the answer was taken. (Each stat is a
        system call, a few µs.)"""
        assert self.snapshot is not None
        if self._tokens_until <= time.time():  # a token is due: its placeholder now asks for a mint
            self._overlay_tokens()
        if self._current_this_turn or not self._files_changed:
            return True
        watched = self._file_watch is not None and not self._file_watch.blind
        if watched:
            self._files_changed = False  # an event from here on is seen again
        current = not self.snapshot.is_stale() or (self._failed is not None and not self._failed.is_stale())
        if watched:
            self._files_changed = self._files_changed or not current
        elif current:
            with contextlib.suppress(RuntimeError):  # no event loop (tests, benchmarks): every call checks
                asyncio.get_running_loop().call_soon(self._end_turn)
                self._current_this_turn = True
        return current

    def _rules_changed(self) -> bool:
        assert self.snapshot is not None
        return self.snapshot.rules_stale() and (self._failed_rules is None or self._failed_rules.is_stale())

    def _end_turn(self) -> None:
        self._current_this_turn = False

    def when_current(self, then: Callable[[], Awaitable[None] | None]) -> Awaitable[None] | None:
        """Run `then` against an index that includes every write made before this request
        arrived: a CLI change is in force for the next request. When the files changed, the
        hook returns the awaitable and mitmproxy holds just this flow while a worker reloads
        (likewise while `then` waits for a token to be minted)."""
        if self.is_current():
            return then()
        return self._reload_then(then)

    async def _reload_then(self, then: Callable[[], Awaitable[None] | None]) -> None:
        await self.reload_if_changed()
        if (waiting := then()) is not None:
            await waiting

    async def reload_if_changed(self, *, rules: bool = False) -> None:
        """`rules`: also when only the hand-edited rule files (signing.yaml, tokens.yaml)
        changed, which the watcher checks every half second instead of every turn: two stat
        calls fewer for the requests."""
        assert self.vault is not None and self.snapshot is not None
        if self._file_watch is not None:
            # A write this proxy's own threads just made (a refetch, a rotated refresh token)
            # is queued in the watch, and the loop may not have read it yet.
            self._read_file_events()
        async with self._reloading:  # one reload, however many requests wait for it
            if self.is_current() and not (rules and self._rules_changed()):
                return
            attempt, rules_attempt = self.snapshot.signature.restamped(), self.snapshot.rules_signature.restamped()
            try:
                snapshot = await asyncio.to_thread(self.vault.snapshot, self.snapshot)
            except LOAD_ERRORS as e:
                self._failed, self._failed_rules = attempt, rules_attempt
                logger.warning(f"vaultproxy: reload failed, keeping the last good state: {e}")
                return
            self._failed = self._failed_rules = None
            self._use(snapshot)
            if self.refresher:
                self.refresher.wake()  # a configuration's refresh settings may have changed
            if snapshot.config_error:
                kept = "its secrets keep the last good mappings" if snapshot.config else "no provider secrets until it is fixed"
                logger.warning(f"vaultproxy: reloaded, {len(snapshot.index)} keys; {snapshot.config_error} ({kept})")
            else:
                logger.info(f"vaultproxy: reloaded, {len(snapshot.index)} keys")

    @command.command("vault.reload")
    def reload(self) -> None:
        """Reload the vault now (it also reloads by itself when vault.enc, the configurations,
        signing.yaml or tokens.yaml change)."""
        assert self.vault is not None
        try:
            self._use(self.vault.snapshot(self.snapshot))
        except LOAD_ERRORS as e:
            raise exceptions.CommandError(f"reload failed, keeping the last good state: {e}") from None

    def _use(self, snapshot: Snapshot) -> None:
        if snapshot.signing != self.rules:  # a profile's keys are read again after signing.yaml changes
            self.aws_credentials = AwsCredentials()
        if self._file_watch is not None and (self.snapshot is None or snapshot.signature.paths != self.snapshot.signature.paths):
            self._file_watch.watch(snapshot.signature.paths)  # another configuration is active
        # Checked once with the stamps: a snapshot may be older than the last one checked (the
        # vault.reload command runs beside a reload), and a watch may have gone blind.
        self._files_changed = True
        self.snapshot, self.rules = snapshot, snapshot.signing
        self.token_sources = {source.name: source for source in snapshot.tokens}
        for name in [name for name in self.token_sources if name in snapshot.index]:
            logger.warning(f"vaultproxy: <<vault:{name}>> is the token source {name!r} of tokens.yaml, not the vault key of that name; rename one")
        self._overlay_tokens()
        if snapshot.signing_error:
            logger.warning(f"vaultproxy: {snapshot.signing_error} (signing keeps its last good rules)")
        if snapshot.tokens_error:
            logger.warning(f"vaultproxy: {snapshot.tokens_error} (tokens keep their last good sources)")

    # --- OAuth tokens (vaultcore/tokens.py, vaultcore/oauth.py) --------------------------------

    def _overlay_tokens(self) -> None:
        """The index requests resolve from: the snapshot's, with each token source's
        placeholders over it, holding its token while that is usable (else they ask for a mint),
        and its credentials refused (the minter reads them from the snapshot's)."""
        assert self.snapshot is not None and self.minter is not None
        if not self.token_sources:
            self.index, self._tokens_until = self.snapshot.index, math.inf
            return
        now, self._tokens_seen = time.time(), self.minter.generation
        held = {name: self.minter.token(source, now) for name, source in self.token_sources.items()}
        self.index = self.snapshot.index.overlaid([
            *reserved_credentials(self.token_sources.values(), self.snapshot.index),
            *(secret for name, source in self.token_sources.items() for secret in source_secrets(source, held[name])),
        ])
        self._tokens_until = min((token.renew_at for token in held.values() if token), default=math.inf)

    async def mint(self, key: str, *, rejected: str | None = None) -> None:
        """Mint the token whose placeholder is `key` (one request in flight per source,
        however many flows wait), or raise the SubstitutionError to answer with. `rejected`:
        the access token an API refused, which is not used again."""
        assert self.minter is not None
        source = self.token_sources.get(key.partition(".")[0])
        if source is None:  # tokens.yaml changed under the request
            raise SubstitutionError(TOKEN_UNAVAILABLE, key, f"{key!r} is no longer a token source in tokens.yaml")
        await self.reload_if_changed()  # a refresh token the server rotated is read from the vault
        assert self.snapshot is not None
        values = credentials(
            source, self.snapshot.index, allow_plaintext=self.settings.allow_plaintext, verified=self.settings.verify_upstream,
        )
        try:
            await asyncio.wrap_future(self.minter.mint(source, values, rejected=rejected))
        except MintError as e:
            raise e.refusal() from None
        if self._tokens_seen != self.minter.generation:
            self._overlay_tokens()

    def load_aws_keys(self, aws: AwsCredentials, method: SigV4) -> asyncio.Future[None]:
        """`aws.load(method)` on a worker thread, one in flight however many requests wait for
        it: each waiting on a thread of its own, a burst would fill the default thread pool,
        and the vault's reloads would queue behind them while the keys load (which may take as
        long as SSO or a credential_process does)."""
        loading = self._aws_loads.get((aws, method))
        if loading is None:
            loading = self._aws_loads[aws, method] = asyncio.ensure_future(asyncio.to_thread(aws.load, method))
            loading.add_done_callback(lambda _: self._aws_loads.pop((aws, method), None))
        return asyncio.shield(loading)  # a waiter cancelled (its client gone) cancels no other's

    def index_for(self, flow: http.HTTPFlow) -> SecretIndex:
        """The index `flow` resolves from: the vault's, or for a retry with a rotation's
        pending version, the vault's with that version laid over it."""
        return weakly_held(self.retrier.overlays, flow, self.index)

    @command.command("vault.status")
    def status(self) -> Sequence[str]:
        """Keys, their sources and hosts; never values."""
        lines = [f"{s.key}\t{s.source}\t{','.join(s.hosts) or '(no hosts rule)'}" for s in self.index.secrets()]
        lines += [f"{key}\tlocal\toverridden by duplicate key in {source}" for key, source in self.index.shadowed.items()]
        return lines

    # --- who may use the proxy (vaultproxy.clientgate) ----------------------------------------

    def client_connected(self, client: connection.Client) -> None:
        self.gate.client_connected(client)

    def http_connect(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        return self.when_running(self.gate.http_connect, flow)

    # --- reverse mode: the name the client used ----------------------------------------------

    def tls_start_server(self, tls: TlsData) -> None:
        """A reverse proxy's upstream connection is named after its target, as mitmproxy names
        it unless keep_host_header is on; this addon turns that on to read the client's Host,
        and mitmproxy's TLS setup (next in the chain) would send the client's own name."""
        mode, server = tls.context.client.proxy_mode, tls.conn
        if self._rewrites_host and isinstance(mode, mode_specs.ReverseMode) and server.sni is None and server.address == mode.address:
            server.sni = mode.address[0]

    def requestheaders(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        return self.when_running(self._requestheaders, flow)

    def _requestheaders(self, flow: http.HTTPFlow) -> None:
        """A client the gate does not let in is answered (or cut off) here. A page whose name
        was rebound to this reverse proxy's address talks to it as to its own origin: only a
        client that names the proxy itself gets secrets. (A retry repeats a request that was
        served, its Host already the target's.) Where Brotli cannot be bounded (mitmproxy 11),
        servers are asked for no br: the proxy would withhold it (vaultproxy/codings.py)."""
        self.gate.requestheaders(flow)
        if not codings.BROTLI_BOUNDED and (accepted := flow.request.headers.get("accept-encoding")) is not None:
            if (asked := codings.accepting_no_brotli(accepted)) != accepted:
                flow.request.headers["accept-encoding"] = asked
        if not isinstance(flow.client_conn.proxy_mode, mode_specs.ReverseMode) or flow in self.retrier.replays:
            return
        claimed = flow.request.host_header or ""
        if not guard.client_named_proxy(flow, claimed, tuple(ctx.options.vault_served_names)):
            self.unserved[flow] = claimed
        if self._rewrites_host:  # as mitmproxy does when keep_host_header is off
            server = flow.server_conn
            flow.request.host_header = url.hostport("https" if server.tls else "http", *server.address)

    # --- putting placeholders back, and what comes back ----------------------------------

    def _redactor_of(self, used: Original | None) -> Redactor | None:
        """The redactor of the values a request used so far: those of a body still streaming
        too (an upstream may answer before it ends); and of the signatures the proxy added."""
        if used is None or not self.settings.redact_responses:
            return None
        return responses.redactor_for(used.uses(), used.signatures)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        self.flights.restore(flow)
        response = flow.response
        assert response is not None
        if self._refused(flow):
            return
        try:
            redactor = self._redactor_of(self.flights.used(flow))
            responses.clean_head(response, redactor)
            responses.transfer_codings_as_content(flow)
            # mitmproxy may start streaming only past stream_large_bodies (a replay's answer is
            # never streamed: retry.WholeAnswers)
            if not response.stream and self.settings.stream_large_bodies and responses.streams_late(flow) and flow not in self.retrier.replays:
                response.stream = True
            if response.stream is True:
                response.stream = responses.stream_filter(flow, redactor)
        except Exception as e:
            cut_off(flow, "checking a response's head", e)

    def _refused(self, flow: http.HTTPFlow) -> bool:
        """Whether the proxy answered `flow` itself (looked up only when it answered any flow
        still alive: a WeakSet lookup makes a weak reference)."""
        return bool(self.refused) and flow in self.refused

    def response(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        if flow.error is not None:  # killed while its answer streamed: no other hook will audit it
            self.substitution.audit_stream(flow)
        used = self.flights.finish(flow)
        if used and (stale := self.retrier.candidates(flow, used)):
            return self._retry_then_clean(flow, used, stale)
        self._clean(flow, used)
        return None

    async def _retry_then_clean(self, flow: http.HTTPFlow, used: Original, stale: Stale) -> None:
        if not await self.retrier.retry(flow, used, stale):
            self._clean(flow, used)  # the replay's answer was cleaned on its own way

    def _clean(self, flow: http.HTTPFlow, used: Original | None) -> None:
        if flow.websocket is not None:
            # the handshake's values and signature may come back in messages
            if used is not None:
                self.flights.add_websocket_keys(flow, used.keys, used.index)
                self.flights.add_websocket_signatures(flow, used.signatures)
            self.sockets[flow.client_conn] = flow
            return
        response = flow.response
        if response is None or self._refused(flow):
            return
        try:
            if (refused := tunnels.upgrade_refused(flow)) is not None:
                flow.response = refused
                return
            redactor = self._redactor_of(used)
            responses.clean_trailers(response, redactor)
            if not response.stream:
                responses.clean_body(response, redactor)
        except codings.Undecodable as e:
            logger.warning(f"vaultproxy: withheld a response from {flow.request.host}: {e}, so its body could not be checked")
            flow.response = responses.withheld(e)
        except Exception as e:
            cut_off(flow, "checking a response", e)

    def error(self, flow: http.HTTPFlow) -> None:
        self.flights.restore(flow)  # first: whatever fails below, the request holds placeholders
        self.substitution.audit_stream(flow)  # a streamed request cut short is audited too
        used = self.flights.finish(flow)
        self._clean_error(flow, used)
        self.flights.end_websocket(flow)

    def _clean_error(self, flow: http.HTTPFlow, used: Original | None) -> None:
        """mitmproxy's error messages may quote what the upstream sent ("Bad HTTP response
        line: b'...'"), which may echo the request, values and all, or hold a placeholder. The
        message goes to whatever records the flow and, as the body of a 502, to the client:
        one that had to be cleaned goes to neither. The flow is marked killed instead (mitmproxy
        then cuts the client's request off with no answer), and the cleaned message is logged.
        So is every HTTP/2 connection's error, logged without its details: every stream on the
        connection gets it, and what it quotes may be another stream's value, in forms no check
        finds (serverbytes.connection_error)."""
        if flow.error is None:
            return
        message = flow.error.msg
        if (connection_error := serverbytes.connection_error(message)) is not None:
            shown = serverbytes.details_left_out(connection_error)
        else:
            redactor = self._redactor_of(used)
            literals_cleaned = serverbytes.cleaned_literals(message, lambda data: responses.cleaned(data, redactor))
            text = literals_cleaned.encode("utf-8", "backslashreplace")
            if (clean := responses.cleaned(text, redactor)) is text and literals_cleaned is message:
                return
            shown = clean.decode("utf-8", "replace")
        logger.warning(f"vaultproxy: {flow.request.host}: {shown} (the client gets no answer: it would quote this)")
        flow.error = FlowError(FlowError.KILLED_MESSAGE)

    def _websocket_redactor(self, flow: http.HTTPFlow | None) -> Redactor | None:
        if flow is None or not self.settings.redact_responses:
            return None
        return responses.redactor_across(self.flights.websocket_keys(flow), self.flights.websocket_signatures(flow))

    def websocket_message(self, flow: http.HTTPFlow) -> None:
        self.flights.restore_messages(flow)
        assert flow.websocket is not None
        message = flow.websocket.messages[-1]
        if not message.from_client:
            try:
                message.content = responses.cleaned(message.content, self._websocket_redactor(flow))
            except Exception as e:
                cut_off(flow, "checking a WebSocket message", e)

    def control_frame_cleaner(self, client: connection.Client) -> Callable[[bytes], bytes]:
        """How the control frames toward `client` are cleaned (wscontrol): as its socket's messages."""
        redactor = self._websocket_redactor(self.sockets.get(client))
        return lambda data: responses.cleaned(data, redactor)

    def websocket_end(self, flow: http.HTTPFlow) -> None:
        assert flow.websocket is not None
        if flow.websocket.close_reason and not flow.websocket.closed_by_client:  # cleaned as wscontrol cleans it for the client
            flow.websocket.close_reason = self.control_frame_cleaner(flow.client_conn)(flow.websocket.close_reason.encode()).decode("utf-8", "replace")
        self.flights.end_websocket(flow)


class Substitution:
    """The substituting part; appended last to the addon chain by `VaultProxy.running`."""

    def __init__(self, proxy: VaultProxy):
        self.proxy = proxy
        self.scopes = guard.Scopes()
        # A streamed request's tokens that could not be minted ahead of its body: (code, message).
        # Not the exception: its traceback's frames would hold the flow, and the key with it.
        self.mints_failed: weakref.WeakKeyDictionary[http.HTTPFlow, dict[str, tuple[str, str]]] = weakref.WeakKeyDictionary()

    def next_layer(self, nextlayer: NextLayer) -> None:
        """Here, after mitmproxy's NextLayer addon has chosen: see vaultproxy/tunnels.py."""
        if (decider := ctx.master.addons.get("nextlayer")) is not None:
            tunnels.read_as_the_client_speaks(nextlayer, decider)

    def requestheaders(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        if not live(flow, self.proxy.retrier.replays):
            return None
        if rewrite.streams_late(flow.request, self.proxy.settings.stream_large_bodies):
            flow.request.stream = True
        # A streamed request's headers leave right after this hook: resolve them now.
        return self._resolve(flow, streamed=True) if flow.request.stream else None

    def request(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        if flow.request.stream:  # the end of a streamed body, possibly after an early response
            if flow.live and not flow.is_replay:
                self.audit_stream(flow)
                self.proxy.flights.forget_answered(flow)
            return None
        return self._resolve(flow, streamed=False) if live(flow, self.proxy.retrier.replays) else None

    def _resolve(self, flow: http.HTTPFlow, *, streamed: bool) -> Awaitable[None] | None:
        """Requests that hold no placeholder pass at once; the others wait for a current index."""
        request = flow.request
        stream_body = streamed and rewrite.streamable(request)
        try:
            body = None if streamed else rewrite.decoded_body(request)
        except SubstitutionError as e:
            self._refuse(flow, e, request.path, streamed=streamed)
            return None
        plan = rewrite.plan(request, body)
        rules = self.proxy.rules
        rule = signing.rule_for(rules, request)
        if plan is None and not stream_body and rule is None:
            rewrite.drop_header(request, signing.MARKER)  # a marker no rule for this host took
            return None
        return self.proxy.when_current(
            lambda: self._substitute_and_sign(flow, plan, (rules, rule), streamed=streamed, stream_body=stream_body)
        )

    def _substitute_and_sign(
        self, flow: http.HTTPFlow, plan: rewrite.Plan | None, signer: tuple[tuple[Rule, ...], Rule | None], *,
        streamed: bool, stream_body: bool, minted: frozenset[str] = frozenset(),
    ) -> Awaitable[None] | None:
        """`signer`: the rule that signs the request, chosen under those rules (substituting
        changes neither the host nor which headers the request has). `minted`: the token
        sources minted (or tried, ahead of a streamed body) for this request so far."""
        if stream_body and (due := self._tokens_due(flow, plan, minted)):
            return self._mint_ahead(
                flow, due, lambda: self._substitute_and_sign(flow, plan, signer, streamed=streamed, stream_body=True, minted=minted | due),
            )
        try:
            if (plan is not None or stream_body) and not self._substitute(flow, plan, streamed=streamed, stream_body=stream_body):
                return None
        except SubstitutionError as e:  # a token to mint first (_substitute refuses all else)
            return self._mint_then(
                e, minted, lambda error: self._refuse(flow, error, flow.request.path, streamed=streamed),
                lambda minted: self._substitute_and_sign(flow, plan, signer, streamed=streamed, stream_body=stream_body, minted=minted),
            )
        rules, rule = signer
        if rules is not self.proxy.rules:  # reloaded while the request waited: the rules now in force
            rule = signing.rule_for(self.proxy.rules, flow.request)
        if rule is None:
            rewrite.drop_header(flow.request, signing.MARKER)  # a marker no rule for this host took
        elif not self.proxy.aws_credentials.ready(rule.method):
            return self._load_then_sign(flow, rule, streamed=streamed)
        else:
            self._sign(flow, rule, self.proxy.aws_credentials, streamed=streamed)
        return None

    async def _load_then_sign(self, flow: http.HTTPFlow, rule: Rule, *, streamed: bool) -> None:
        """Load a profile's (or the default chain's) keys on a worker thread, then sign with
        them (the same keys, should a reload replace the proxy's meanwhile)."""
        aws = self.proxy.aws_credentials
        try:
            signing.check_aws_source(rule, self._lookup_for(flow))  # a request refused anyway loads nothing
            await self.proxy.load_aws_keys(aws, rule.method)
        except SubstitutionError as e:
            self._refuse(flow, e, self.proxy.flights.original_path(flow), streamed=streamed)
            return
        except SigningError as e:
            self._refuse(flow, signing.cannot_sign(rule, e), self.proxy.flights.original_path(flow), streamed=streamed)
            return
        self._sign(flow, rule, aws, streamed=streamed)

    def _tokens_due(self, flow: http.HTTPFlow, plan: rewrite.Plan | None, minted: frozenset[str]) -> frozenset[str]:
        """The token sources to mint before a streamed body starts: those due that it could use
        (not those of `minted`, tried already). The body is resolved as it leaves, when no mint
        can hold the request any more, so a token asked for there would stay a literal
        placeholder. Each token key is asked for as any placeholder is (its hosts and origins,
        then the request's own checks), so a hostile page or host causes no mint, and only
        once the head would pass: a request refused anyway causes none either.

        Every key asked for and granted is kept by the request's Scope (guard.Scope.value),
        which its body resolves from: the body carries the tokens held when its head left,
        however long it streams, whether they were minted for it or before."""
        sources = self.proxy.token_sources.values()
        if not sources or rewrite.streamed_framing(flow.request, flow.server_conn) is None:
            return frozenset()  # no source; or a body whose length must not change takes no value
        try:
            lookup, _, _ = self._resolve_head(flow, plan)  # as _substitute does next, which refuses or mints for it
        except SubstitutionError:
            return frozenset()
        due: set[str] = set()
        for source in sources:
            for key in source.keys():
                try:
                    lookup(key)
                except SubstitutionError as e:
                    if e.code == MINT_NEEDED and source.name not in minted:
                        due.add(source.name)
        return frozenset(due)

    async def _mint_ahead(self, flow: http.HTTPFlow, due: frozenset[str], then: Callable[[], Awaitable[None] | None]) -> None:
        """Mint `due`, side by side (the head waits for the slowest, not for their sum), then
        `then`. A mint that fails refuses nothing: the body may not use that token, and where
        it does, its placeholder stays literal and is logged and audited as a refused key in
        a streamed body is."""
        await asyncio.gather(*(self._mint_for_body(flow, name) for name in sorted(due)))
        if (waiting := then()) is not None:
            await waiting

    async def _mint_for_body(self, flow: http.HTTPFlow, name: str) -> None:
        try:
            await self.proxy.mint(name)
        except SubstitutionError as e:  # its message names keys and hosts, never a value
            logger.warning(f"vaultproxy: could not mint token {name!r} ahead of a streamed body to {flow.request.host}: {e}")
            self.mints_failed.setdefault(flow, {})[name] = (e.code, e.message)
        except Exception as e:  # as for any mint; the request goes on
            logger.exception(f"vaultproxy: minting token {name!r} ahead of a streamed body to {flow.request.host} failed unexpectedly")
            self.mints_failed.setdefault(flow, {})[name] = (TOKEN_UNAVAILABLE, f"token {name!r} could not be minted ({type(e).__name__})")

    async def _mint_then(
        self, needed: SubstitutionError, minted: frozenset[str],
        refuse: Callable[[SubstitutionError], None], again: Callable[[frozenset[str]], Awaitable[None] | None],
    ) -> None:
        """Mint the token a placeholder asked for (MINT_NEEDED), then resolve again; or refuse.
        Nothing of the request changed before: a refusal leaves it as it came."""
        name = needed.key.partition(".")[0]
        try:
            if name in minted:
                raise SubstitutionError(
                    TOKEN_UNAVAILABLE, needed.key, f"token {name!r} was due again as soon as it was minted: its lifetime is too short",
                )
            await self.proxy.mint(needed.key)
        except SubstitutionError as e:
            refuse(e)
            return
        except Exception as e:  # an exception out of an async hook would let the request through
            logger.exception(f"vaultproxy: minting token {name!r} failed unexpectedly")
            refuse(SubstitutionError(TOKEN_UNAVAILABLE, needed.key, f"token {name!r} could not be minted ({type(e).__name__})"))
            return
        if (waiting := again(minted | {name})) is not None:
            await waiting

    def _sign(self, flow: http.HTTPFlow, rule: Rule, aws: AwsCredentials, *, streamed: bool) -> None:
        """Sign last: a signature covers the request exactly as it leaves."""
        request, proxy = flow.request, self.proxy
        path = proxy.flights.original_path(flow)
        try:
            change = signing.signature(rule, request, self._lookup_for(flow), aws, streamed=streamed)
        except SubstitutionError as e:
            self._refuse(flow, e, path, streamed=streamed)
            return
        except Exception as e:  # out of the hook, mitmproxy would log it and send the request unsigned
            logger.error(f"vaultproxy: signing with rule {rule.name!r} failed ({type(e).__name__})")  # its text may quote a key
            self._refuse(flow, signing.cannot_sign(rule, SigningError(f"it failed ({type(e).__name__})")), path, streamed=streamed)
            return
        proxy.flights.remember(flow, change, proxy.index_for(flow), signatures=signing.signatures(rule, change))
        proxy.audit.record(request, path, rule.names(), f"signed:{rule.name}")
        change.apply(request)

    def _substitute(self, flow: http.HTTPFlow, plan: rewrite.Plan | None, *, streamed: bool, stream_body: bool) -> bool:
        """Resolve the request's placeholders; False when it was refused."""
        request, proxy = flow.request, self.proxy
        original_path = request.path
        try:
            lookup, budget, change = self._resolve_head(flow, plan)
        except SubstitutionError as e:
            if e.code == MINT_NEEDED:
                raise
            self._refuse(flow, e, original_path, streamed=streamed)
            return False
        proxy.flights.remember(flow, change, proxy.index_for(flow), streamed_body=stream_body)
        if stream_body:
            framing = rewrite.streamed_framing(request, flow.server_conn)
            body_lookup = lookup if framing else unframeable
            substituter = StreamSubstituter(
                rewrite.body_context(request.headers.get("content-type", "")), self._literal_on_refusal(flow, body_lookup), budget,
            )
            proxy.flights.track_stream(flow, substituter)
            change.apply(request)
            rewrite.prepare_streamed_body(request, substituter, framing)
        elif change.keys:
            proxy.audit.record(request, original_path, change.keys, RESOLVED)
            change.apply(request)
        return True

    def _resolve_head(self, flow: http.HTTPFlow, plan: rewrite.Plan | None) -> tuple[guard.RequestLookup, Budget, rewrite.Rewrite]:
        """The request's lookup, its growth budget, and its URL and header fields resolved
        (not applied yet); SubstitutionError when refused."""
        lookup, budget = self._lookup_for(flow), Budget(self.proxy.settings.max_growth)
        return lookup, budget, rewrite.rewrite_request(flow.request, plan, lookup, budget) if plan else rewrite.Rewrite()

    def _lookup_for(self, flow: http.HTTPFlow) -> guard.RequestLookup:
        proxy = self.proxy
        return guard.lookup_for(flow, self.scopes, proxy.index_for(flow), proxy.settings, unserved=weakly_held(proxy.unserved, flow, None))

    def _literal_on_refusal(self, flow: http.HTTPFlow, lookup: Lookup) -> Lookup:
        """For a streamed body, whose start has already left: a refused key stays a literal
        placeholder (the secret is not sent) and the refusal is logged and audited."""

        def stream_lookup(key: str) -> str | bytes | None:
            try:
                return lookup(key)
            except SubstitutionError as e:
                if e.code == MINT_NEEDED:  # an internal code: say why there is no token
                    e = self._no_token(flow, key)
                logger.warning(f"vaultproxy: left {key!r} unresolved in a streamed body to {flow.request.host}: {e}")
                self.proxy.flights.add_refusal(flow, e)
                return None

        return stream_lookup

    def _no_token(self, flow: http.HTTPFlow, key: str) -> SubstitutionError:
        """Why a streamed body has no token for `key`: its mint ahead of the body failed, or
        the token was due when the body reached it (one that lived too short to be held,
        say: the next request mints it)."""
        name = key.partition(".")[0]  # a source's name holds no dot
        due = (TOKEN_UNAVAILABLE, f"token {name!r} was due, and a streamed body cannot wait for a mint")
        code, message = weakly_held(self.mints_failed, flow, {}).get(name, due)
        return SubstitutionError(code, key, message)

    def audit_stream(self, flow: http.HTTPFlow) -> None:
        """Once per streamed request, at the end of its body or when it fails."""
        if not flow.request.stream or not self.proxy.flights.take_audit(flow):
            return
        keys, refusals = self.proxy.flights.stream_outcome(flow)
        if keys or refusals:
            outcome = f"refused:{refusals[0].code}" if refusals else RESOLVED
            self.proxy.audit.record(flow.request, self.proxy.flights.original_path(flow), keys + [e.key for e in refusals], outcome)

    def _refuse(self, flow: http.HTTPFlow, error: SubstitutionError, path: str, *, streamed: bool) -> None:
        request = flow.request
        self.proxy.audit.refused(request, path, error)
        if streamed:
            # mitmproxy cannot answer a request whose body it streams: it refuses to stream with
            # a response set, and streams anyway once the body outgrows stream_large_bodies.
            # The connection is closed instead; the log says why.
            flow.kill()
        else:
            flow.response = refusal(error, readable_by(request, error, self.proxy.index))
            self.proxy.refused.add(flow)

    def websocket_message(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        assert flow.websocket is not None
        message = flow.websocket.messages[-1]
        if not message.from_client or not flow.live or not mentions_placeholder(message.content):
            return None
        return self.proxy.when_current(lambda: self._substitute_message(flow, message))

    def _substitute_message(
        self, flow: http.HTTPFlow, message: websocket.WebSocketMessage, minted: frozenset[str] = frozenset(),
    ) -> Awaitable[None] | None:
        proxy = self.proxy
        try:
            content, keys = resolve(
                message.content, rewrite.websocket_context(message), self._lookup_for(flow), Budget(proxy.settings.max_growth),
            )
        except SubstitutionError as e:
            if e.code == MINT_NEEDED:
                return self._mint_then(
                    e, minted, lambda error: self._drop_message(flow, message, error),
                    lambda minted: self._substitute_message(flow, message, minted),
                )
            self._drop_message(flow, message, e)
            return None
        if keys:
            proxy.flights.remember_message(flow, message, keys, proxy.index)
            proxy.audit.record(flow.request, flow.request.path, keys, RESOLVED)
            message.content = content
        return None

    def _drop_message(self, flow: http.HTTPFlow, message: websocket.WebSocketMessage, error: SubstitutionError) -> None:
        self.proxy.audit.refused(flow.request, flow.request.path, error, f"dropped a WebSocket message: {error}")
        message.drop()
