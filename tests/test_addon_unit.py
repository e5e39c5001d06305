"""In-process tests of the addon (mitmproxy's taddons and tflow) for what an end-to-end test
cannot reach or cannot observe without timing: the `vault.reload` and `vault.status`
commands, a failed reload logged once, the guards that skip flows which are not live, and
the framing decisions for streamed bodies toward upstreams the harness cannot provide
(HTTP/2 servers, connections already made).
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest
from mitmproxy import connection, exceptions, http
from mitmproxy import flow as flow_module
from mitmproxy.addons import proxyserver
from mitmproxy.test import taddons, tflow, tutils

from vaultcore.index import Secret, SecretIndex
from vaultcore.placeholders import Context, StreamSubstituter, SubstitutionError
from vaultcore.vault import Snapshot, Vault
from vaultproxy import responses, rewrite, signing
from vaultproxy.addon import VaultProxy
from vaultproxy.flights import Flights
from vaultproxy.rewrite import Rewrite
from vaultproxy.audit import FLUSH_SECONDS, RESOLVED, AuditLog

VALUE = "sk_live_Zq9Unit"
HOST = "api.example.com"


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "vault-home"
    Vault(home).set("unit.k", VALUE, hosts=[HOST])
    return home


@pytest.fixture
def addon() -> VaultProxy:
    return VaultProxy()


@pytest.fixture
def tctx(addon: VaultProxy, home: Path) -> Iterator[taddons.context]:
    """The addon loaded beside mitmproxy's proxyserver (which owns stream_large_bodies)."""
    with taddons.context(proxyserver.Proxyserver(), addon) as context:
        context.configure(addon, vault_home=str(home))
        yield context


def request_flow(**headers: str) -> http.HTTPFlow:
    """A live HTTPS request to HOST, as mitmproxy hands it to the hooks."""
    request = tutils.treq(host=HOST, port=443, scheme=b"https", headers=http.Headers(**headers), content=b"")
    flow = tflow.tflow(req=request)
    flow.server_conn.sni = HOST  # tflow's connection names "address"
    return flow


# --- commands -------------------------------------------------------------------------------


def test_commands_are_registered(tctx: taddons.context) -> None:
    assert {"vault.reload", "vault.status"} <= set(tctx.master.commands.commands)


def test_vault_reload_picks_up_a_change_now(tctx: taddons.context, addon: VaultProxy, home: Path) -> None:
    Vault(home).set("unit.new", "sk_live_Zq9UnitNew", hosts=[HOST])
    assert "unit.new" not in addon.index
    tctx.master.commands.call("vault.reload")
    assert "unit.new" in addon.index


def test_vault_reload_of_a_bad_file_keeps_the_last_good_state(tctx: taddons.context, addon: VaultProxy, home: Path) -> None:
    (home / "vault.enc").write_bytes(b"garbage")
    with pytest.raises(exceptions.CommandError, match="reload failed, keeping the last good state: .* is not a vaultproxy vault"):
        tctx.master.commands.call("vault.reload")
    assert addon.index.get("unit.k") is not None


def test_vault_status_lists_keys_sources_and_shadowing_never_values(tctx: taddons.context, addon: VaultProxy) -> None:
    provider = Secret("shared", "sk_live_Zq9UnitAws", hosts=("*.example.com",), source="aws:production")
    local = [Secret("shared", "sk_live_Zq9UnitShadowed", hosts=(HOST,)), Secret("bare", "sk_live_Zq9UnitBare")]
    addon._use(Snapshot(SecretIndex([provider], local), signature=()))
    lines = tctx.master.commands.call("vault.status")
    assert lines == [
        "shared\taws:production\t*.example.com",
        "bare\tlocal\t(no hosts rule)",
        "shared\tlocal\toverridden by duplicate key in aws:production",
    ]
    assert "sk_live" not in "\n".join(lines)


# --- live reload ----------------------------------------------------------------------------


def test_a_bad_file_is_reported_once_and_a_good_one_reloads(
    tctx: taddons.context, addon: VaultProxy, home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = (home / "vault.enc").read_bytes()
    (home / "vault.enc").write_bytes(b"garbage")
    run = tctx.master.event_loop.run_until_complete
    with caplog.at_level(logging.WARNING, logger="vaultproxy.addon"):
        run(addon.reload_if_changed())
        run(addon.reload_if_changed())  # the same bad file: not read (and reported) again
    assert [r.getMessage() for r in caplog.records].count(
        f"vaultproxy: reload failed, keeping the last good state: {home / 'vault.enc'} is not a vaultproxy vault"
    ) == 1
    assert addon.index.get("unit.k") is not None
    (home / "vault.enc").write_bytes(good)
    Vault(home).set("unit.fixed", "sk_live_Zq9UnitFixed", hosts=[HOST])
    run(addon.reload_if_changed())
    assert "unit.fixed" in addon.index
    assert "sk_live" not in caplog.text


def test_one_current_answer_serves_the_rest_of_the_event_loops_turn(tctx: taddons.context, addon: VaultProxy, home: Path) -> None:
    # Every request handled before the loop polls again was read before the answer was taken.
    async def turn() -> tuple[bool, bool]:
        assert addon.is_current()
        Vault(home).set("unit.later", "sk_live_Zq9UnitLater", hosts=[HOST])
        in_this_turn = addon.is_current()
        await asyncio.sleep(0)
        return in_this_turn, addon.is_current()

    assert tctx.master.event_loop.run_until_complete(turn()) == (True, False)


def test_an_older_snapshot_installed_last_is_checked_again_not_trusted_to_the_watch(
    tctx: taddons.context, addon: VaultProxy, home: Path,
) -> None:
    """A reload that finishes after a newer one (the vault.reload command ran beside it)
    installs the older snapshot; the file watch has nothing new to say, so the stamps must."""

    async def reloads_out_of_order() -> tuple[bool, bool]:
        addon.running()  # the file watch, read by this loop
        try:
            older = addon.vault.snapshot()
            Vault(home).unset("unit.k")  # what `local unset` writes
            tctx.master.commands.call("vault.reload")
            await asyncio.sleep(0.1)  # the loop reads the watch's event
            newest_current = addon.is_current() and "unit.k" not in addon.index
            addon._use(older)  # the slower reload, finishing last
            return newest_current, addon.is_current()
        finally:
            addon.done()

    assert tctx.master.event_loop.run_until_complete(reloads_out_of_order()) == (True, False)


def test_a_home_moved_away_and_back_is_watched_again(tctx: taddons.context, addon: VaultProxy, home: Path) -> None:
    """Moved away, the home leaves the watch blind (nothing watches where it would come
    back), and the proxy checks the stamps every turn meanwhile. Once it is back, the kernel
    watches it again: a change made then is told by the watch, not found by a stat."""

    async def away_and_back() -> tuple[bool, bool, bool, bool]:
        addon.running()
        try:
            watch = addon._file_watch
            assert watch is not None
            os.rename(home, home.with_name("away"))
            await asyncio.sleep(0.1)  # the loop reads the watch's event
            blind_while_away = watch.blind
            os.rename(home.with_name("away"), home)
            for _ in range(30):  # the reload watcher's interval is half a second
                if not watch.blind:
                    break
                await asyncio.sleep(0.1)
            assert addon.is_current()  # one check with the stamps after the watch came back
            Vault(home).set("unit.back", "sk_live_Zq9UnitBack", hosts=[HOST])
            await asyncio.sleep(0.1)
            return blind_while_away, watch.blind, addon._files_changed, addon.is_current()
        finally:
            addon.done()

    assert tctx.master.event_loop.run_until_complete(away_and_back()) == (True, False, True, False)


# --- what is decided once, and what every request checks again --------------------------------


def test_a_header_resolved_before_still_gets_each_requests_own_checks(tctx: taddons.context, addon: VaultProxy) -> None:
    first = request_flow(x_key="<<vault:unit.k>>")
    addon.substitution.request(first)
    assert first.request.headers["x-key"] == VALUE
    lying = request_flow(x_key="<<vault:unit.k>>", host="evil.example.net")  # the same value, kept from the first
    addon.substitution.request(lying)
    assert lying.response is not None and lying.response.headers["X-Vaultproxy-Error"] == "host_mismatch"
    assert lying.request.headers["x-key"] == "<<vault:unit.k>>"


def test_a_refused_key_is_refused_again(tctx: taddons.context, addon: VaultProxy) -> None:
    for _ in range(2):
        flow = request_flow(x_key="<<vault:unit.nope>>")
        addon.substitution.request(flow)
        assert flow.response is not None and flow.response.headers["X-Vaultproxy-Error"] == "unknown_key"


def test_the_growth_budget_holds_for_a_header_resolved_before(tctx: taddons.context, addon: VaultProxy, home: Path) -> None:
    Vault(home).set("unit.mid", "sk_live_" + "M" * 25, hosts=[HOST])  # 15 bytes longer than its placeholder
    tctx.configure(addon, vault_max_growth="20")
    for headers, refused in [({"x_key": "<<vault:unit.mid>>"}, None), ({"x_key": "<<vault:unit.mid>>", "x_other": "<<vault:unit.mid>>"}, "too_large")] * 2:
        flow = request_flow(**headers)
        if (reloading := addon.substitution.request(flow)) is not None:  # the vault changed: reloaded first
            tctx.master.event_loop.run_until_complete(reloading)
        assert (flow.response.headers["X-Vaultproxy-Error"] if flow.response else None) == refused


# --- the audit log's buffer -------------------------------------------------------------------


def audit_paths(log: Path) -> list[str]:
    return [json.loads(line)["path"] for line in log.read_text().splitlines()] if log.exists() else []


def test_the_audit_log_writes_within_the_flush_interval_a_refusal_at_once_and_all_on_close(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    audit = AuditLog(log)
    request = tutils.treq()

    async def requests() -> list[list[str]]:
        seen = []
        audit.record(request, "/a", ["k"], RESOLVED)
        audit.record(request, "/b", ["k"], RESOLVED)
        await asyncio.sleep(0)  # not at every turn of the event loop: that cost a write and a stat each
        seen.append(audit_paths(log))
        await asyncio.sleep(FLUSH_SECONDS * 1.5)
        seen.append(audit_paths(log))
        audit.record(request, "/c", ["k"], RESOLVED)
        audit.refused(request, "/d", SubstitutionError("unknown_key", "k", "unknown key 'k'"))  # answered at once: written at once
        seen.append(audit_paths(log))
        audit.record(request, "/e", ["k"], RESOLVED)
        audit.close()  # a clean stop loses nothing
        seen.append(audit_paths(log))
        await asyncio.sleep(FLUSH_SECONDS * 1.5)  # the timer of /e finds nothing left to write
        seen.append(audit_paths(log))
        return seen

    everything = ["/a", "/b", "/c", "/d", "/e"]
    assert asyncio.run(requests()) == [[], ["/a", "/b"], ["/a", "/b", "/c", "/d"], everything, everything]


# --- hook guards ----------------------------------------------------------------------------


def not_live(flow: http.HTTPFlow) -> None:
    flow.live = False  # read from a file


def replayed(flow: http.HTTPFlow) -> None:
    flow.is_replay = "request"


def answered_by_another_addon(flow: http.HTTPFlow) -> None:
    flow.response = tutils.tresp()


def test_a_script_reload_hands_the_requests_in_flight_to_the_next_instance_of_that_master(home: Path) -> None:
    """mitmproxy calls the retired instance's `done`, then loads the new one into the same master."""
    retired, successor, stranger = VaultProxy(), VaultProxy(), VaultProxy()
    with taddons.context(proxyserver.Proxyserver(), retired) as context:
        context.configure(retired, vault_home=str(home))
        in_flight = retired.flights
        context.master.addons.remove(retired)
        with taddons.context(stranger):  # another master, loaded meanwhile
            assert stranger.flights is not in_flight
        context.master.addons.register(successor)
        assert successor.flights is in_flight
        assert successor.unserved is retired.unserved and successor.refused is retired.refused
        assert successor.retrier.replays is retired.retrier.replays and successor.retrier.overlays is retired.retrier.overlays


def test_a_request_changed_again_after_a_retiring_instance_restored_it_is_restored_again() -> None:
    """A reload retires the instance (which restores every request in flight) while one waits
    for AWS keys; the retired instance then signs it: what signing added must come off too."""
    flights = Flights()
    flow = request_flow(x_key="<<vault:unit.k>>")
    resolved = Rewrite(fields=((b"x-key", VALUE.encode()),), keys=["unit.k"])
    flights.remember(flow, resolved, SecretIndex())
    resolved.apply(flow.request)
    flights.restore_all()
    assert flow.request.headers["x-key"] == "<<vault:unit.k>>"
    signed = Rewrite(fields=(*flow.request.headers.fields, (b"x-amz-security-token", b"SESSION")))
    flights.remember(flow, signed, SecretIndex())
    signed.apply(flow.request)
    flights.restore(flow)
    assert "x-amz-security-token" not in flow.request.headers and flow.request.headers["x-key"] == "<<vault:unit.k>>"
    assert flights.used(flow).keys == ["unit.k"]


def test_a_websocket_keeps_an_index_only_for_a_value_it_had_not_carried() -> None:
    """Each reload (and each token renewal) makes a new index of every secret: a socket open
    for days keeps only those that gave one of its keys another value."""
    flights, flow = Flights(), request_flow()

    def index(value: str) -> SecretIndex:
        return SecretIndex(local_secrets=[Secret("unit.k", value, (HOST,)), Secret("unit.other", "FAKE-other", (HOST,))])

    first, reloaded, rotated = index(VALUE), index(VALUE), index(VALUE + "Rotated")
    for each in (first, reloaded, rotated):
        flights.add_websocket_keys(flow, ["unit.k"], each)
    flights.add_websocket_keys(flow, ["unit.other"], reloaded)  # a key first carried later
    assert flights.websocket_keys(flow) == {first: {"unit.k", "unit.other"}, rotated: {"unit.k"}}


@pytest.mark.parametrize("make", [not_live, replayed, answered_by_another_addon])
def test_flows_that_are_not_live_client_traffic_are_never_resolved(tctx: taddons.context, addon: VaultProxy, make) -> None:
    flow = request_flow(x_key="<<vault:unit.k>>")
    make(flow)
    response = flow.response
    addon.substitution.requestheaders(flow)
    addon.substitution.request(flow)
    assert flow.request.headers["x-key"] == "<<vault:unit.k>>"
    assert flow.response is response


def test_live_flow_is_resolved(tctx: taddons.context, addon: VaultProxy) -> None:
    # The counterpart of the test above: the same flow, live, is resolved.
    flow = request_flow(x_key="<<vault:unit.k>>")
    addon.substitution.requestheaders(flow)
    addon.substitution.request(flow)
    assert flow.request.headers["x-key"] == VALUE


def test_a_failed_mint_ahead_of_a_body_keeps_nothing_that_holds_its_flow(tctx: taddons.context, addon: VaultProxy, home: Path) -> None:
    """Why a streamed body got no token is kept per flow, weakly: it must not hold the flow (a
    kept exception would, through its traceback's frames), or each such upload would leak."""
    token_url = f"https://auth.{HOST}/oauth/token"
    (home / "tokens.yaml").write_text(json.dumps({"tokens": [
        {"name": "billing", "hosts": [HOST], "token_url": token_url, "client_id": "unit", "client_secret": "billing.client_secret"},
    ]}))
    tctx.master.commands.call("vault.reload")
    flow = request_flow()
    asyncio.run(addon.substitution._mint_for_body(flow, "billing"))  # no client secret: refused before any request
    assert addon.substitution._no_token(flow, "billing").code == "unknown_key"
    kept = weakref.ref(flow)
    del flow
    gc.collect()
    assert kept() is None and not addon.substitution.mints_failed


def test_a_mint_ahead_that_fails_unexpectedly_is_the_reason_the_body_is_given(
    tctx: taddons.context, addon: VaultProxy, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A body whose token's mint ahead of it raised (a bug: nothing expected) says so where its
    placeholder stays literal; only a body whose token nothing tried to mint is told it was due."""

    async def broken(key: str, **_: object) -> None:  # what no real mint is expected to do
        raise RuntimeError("unexpected")

    monkeypatch.setattr(addon, "mint", broken)
    flow, untried = request_flow(), request_flow()
    asyncio.run(addon.substitution._mint_for_body(flow, "billing"))
    error = addon.substitution._no_token(flow, "billing.token_type")
    assert (error.code, error.key, error.message) == ("token_unavailable", "billing.token_type", "token 'billing' could not be minted (RuntimeError)")
    assert addon.substitution._no_token(untried, "billing").message == "token 'billing' was due, and a streamed body cannot wait for a mint"


def test_a_signing_rule_that_fails_unexpectedly_refuses_the_request(
    tctx: taddons.context, addon: VaultProxy, home: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A review's: an exception out of signing (a template that failed on every request, before
    templates were checked for format specs) left the hook, and mitmproxy sent the request on
    unsigned. It is refused instead, saying only the exception's type (its text may quote a key)."""
    (home / "signing.yaml").write_text(json.dumps({"rules": [
        {"name": "hooks", "hosts": [HOST], "hmac": {"key": "unit.k", "header": "X-Sig"}},
    ]}))
    tctx.master.commands.call("vault.reload")

    def broken(*args: object, **kwargs: object) -> dict[str, str]:  # what no real rule is expected to do
        raise ValueError(f"quoting {VALUE}")

    monkeypatch.setattr(signing, "hmac_headers", broken)
    flow = request_flow()
    addon.substitution.requestheaders(flow)
    addon.substitution.request(flow)
    assert flow.response is not None and flow.response.status_code == 400
    assert flow.response.headers["X-Vaultproxy-Error"] == "cannot_sign" and b"ValueError" in flow.response.content
    assert VALUE.encode() not in flow.response.content and "X-Sig" not in flow.request.headers


# --- what comes back ---------------------------------------------------------------------------


def answered(flow: http.HTTPFlow, response: http.Response, addon: VaultProxy) -> http.HTTPFlow:
    """`flow` after its response passed the addon's response hooks."""
    flow.response = response
    addon.responseheaders(flow)
    addon.response(flow)
    return flow


def test_trailers_are_cleaned(tctx: taddons.context, addon: VaultProxy) -> None:
    """HTTP/2 and 3 upstreams may send trailers after the body: they are checked like headers."""
    flow = request_flow(x_key="<<vault:unit.k>>")
    addon.substitution.request(flow)
    response = http.Response.make(200, b"ok")
    response.trailers = http.Headers(x_echo=f"{VALUE} <<vault:unit.planted>>")
    assert answered(flow, response, addon).response.trailers["x-echo"] == "<<vault:unit.k>> <<blocked-vault:unit.planted>>"


def failed(flow: http.HTTPFlow, message: str, addon: VaultProxy) -> http.HTTPFlow:
    """`flow` after mitmproxy's error `message` passed the addon's error hook."""
    flow.error = flow_module.Error(message)
    addon.error(flow)
    return flow


@pytest.mark.parametrize("message", [
    # h2's message for a refused header value (another stream's, maybe)
    f"HTTP/2 protocol error: Received header value surrounded by whitespace {(' ' + VALUE).encode()!r}",
    # int() on :status: Python cuts the repr at 200 characters, and so its closing quote
    f"Invalid HTTP/2 response headers: invalid literal for int() with base 10: {(('x' * 180) + VALUE).encode()!r}"[:268],
    "HTTP/2 protocol error: Conflicting content-length headers: 1234 and 4111111111111111",  # bare digits
    # a GOAWAY's first 20 bytes of debug data, in hex; an unknown error code, in digits
    f"HTTP/2 connection closed: <ConnectionTerminated error_code:ErrorCodes.NO_ERROR, last_stream_id:0, additional_data:{VALUE.encode()[:20].hex()}>",
    "HTTP/2 connection closed: <ConnectionTerminated error_code:4111111111, last_stream_id:0, additional_data:None>",
])
def test_an_http2_connections_error_is_passed_on_to_no_client(tctx: taddons.context, addon: VaultProxy, message: str) -> None:
    """mitmproxy closes an HTTP/2 upstream connection on a protocol error (or a GOAWAY) and
    gives every open stream on it the same message, which may quote what another stream
    carried, in forms no check of this stream's values finds. A stream that used no secret had
    it recorded and shown as its 502."""
    quiet = request_flow()
    addon.substitution.request(quiet)
    assert failed(quiet, message, addon).error.msg == flow_module.Error.KILLED_MESSAGE


def test_an_error_that_quotes_nothing_is_passed_on(tctx: taddons.context, addon: VaultProxy) -> None:
    flow = request_flow(x_key="<<vault:unit.k>>")
    addon.substitution.request(flow)
    message = f"Server connection to ('{HOST}', 443) failed: Connection refused"
    assert failed(flow, message, addon).error.msg == message


def test_an_answer_before_a_streamed_body_ends_redacts_what_the_body_used(tctx: taddons.context, addon: VaultProxy) -> None:
    """An upstream may answer (400 "bad key: ...") while the body still streams: the values the
    body has used so far are redacted too, not only the head's."""
    tctx.configure(addon, stream_large_bodies="1k")
    flow = request_flow(content_type="application/json", transfer_encoding="chunked")
    addon.substitution.requestheaders(flow)
    assert callable(flow.request.stream)
    assert flow.request.stream(b'{"key": "<<vault:unit.k>>", ') == [f'{{"key": "{VALUE}", '.encode()]
    response = answered(flow, http.Response.make(400, f"bad key: {VALUE}".encode()), addon).response
    assert response.content == b"bad key: <<vault:unit.k>>"


def test_an_upload_answered_early_is_audited_and_forgotten_once_its_client_hangs_up(
    tctx: taddons.context, addon: VaultProxy, tmp_path: Path,
) -> None:
    """mitmproxy fires no hook for a body abandoned after its answer, only marks the flow no
    longer live: the watcher's sweep audits it and lets go of the flow (each such upload would
    leak otherwise). One still going is left alone."""
    audit = tmp_path / "audit.log"
    tctx.configure(addon, stream_large_bodies="1k", vault_audit_log=str(audit))
    flows = [request_flow(x_key="<<vault:unit.k>>", transfer_encoding="chunked") for _ in range(2)]
    for flow in flows:
        flow.request.timestamp_end = None  # its body still streaming
        addon.substitution.requestheaders(flow)
        answered(flow, http.Response.make(401, b"no"), addon)
    abandoned, going_on = flows
    abandoned.live = False
    addon.audit_abandoned()
    assert addon.flights.used(abandoned) is None and addon.flights.used(going_on) is not None
    addon.audit.close()
    (line,) = [json.loads(line) for line in audit.read_text().splitlines()]
    assert line["keys"] == ["unit.k"] and line["outcome"] == RESOLVED
    kept = weakref.ref(abandoned)
    del abandoned, flows, flow
    gc.collect()
    assert kept() is None


def test_an_upload_whose_streamed_answer_was_cut_off_is_still_audited(
    tctx: taddons.context, addon: VaultProxy, tmp_path: Path,
) -> None:
    """A streamed answer that stops decoding kills the flow, which ends it with no error hook
    and no longer live (so neither the body's end nor the sweep audits it): the response hook
    must, before it forgets the flow."""
    audit = tmp_path / "audit.log"
    tctx.configure(addon, stream_large_bodies="1k", vault_audit_log=str(audit))
    flow = request_flow(x_key="<<vault:unit.k>>", transfer_encoding="chunked")
    flow.request.timestamp_end = None  # its body still streaming
    addon.substitution.requestheaders(flow)
    flow.response = http.Response.make(200, b"", {"content-encoding": "gzip"})
    flow.response.stream = True
    addon.responseheaders(flow)
    flow.response.stream(b"not gzip at all")  # the filter cuts it, and kills the flow
    assert flow.error is not None and not flow.live
    addon.response(flow)
    addon.audit.close()
    (line,) = [json.loads(line) for line in audit.read_text().splitlines()]
    assert line["keys"] == ["unit.k"] and line["outcome"] == RESOLVED
    assert addon.flights.used(flow) is None


def test_a_response_whose_check_fails_is_cut_off(
    tctx: taddons.context, addon: VaultProxy, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """mitmproxy only logs an exception out of a hook and passes the response on: a check that
    fails (a bug; nothing expected raises) must cut the flow off instead."""

    def broken(*_: object) -> None:
        raise RuntimeError(VALUE)  # the message is not logged: it may quote the response

    monkeypatch.setattr(responses, "clean_body", broken)
    flow = answered(request_flow(), http.Response.make(200, b"ok"), addon)
    assert flow.error is not None and flow.error.msg == flow.error.KILLED_MESSAGE
    assert "checking a response failed (RuntimeError)" in caplog.text and VALUE not in caplog.text


# --- streaming decisions --------------------------------------------------------------------


def test_chunked_request_is_streamed_from_its_headers(tctx: taddons.context, addon: VaultProxy) -> None:
    tctx.configure(addon, stream_large_bodies="1k")
    flow = request_flow(x_key="<<vault:unit.k>>", transfer_encoding="chunked")
    addon.substitution.requestheaders(flow)
    assert callable(flow.request.stream)
    assert flow.request.headers["x-key"] == VALUE  # the head is resolved before it leaves


def test_chunked_request_is_not_streamed_without_stream_large_bodies(tctx: taddons.context, addon: VaultProxy) -> None:
    flow = request_flow(x_key="<<vault:unit.k>>", transfer_encoding="chunked")
    addon.substitution.requestheaders(flow)
    assert not flow.request.stream
    assert flow.request.headers["x-key"] == "<<vault:unit.k>>"  # resolved later, in `request`


def server(alpn: bytes | None, *, connected: bool) -> connection.Server:
    conn = tflow.tserver_conn()
    conn.alpn = alpn
    conn.state = connection.ConnectionState.OPEN if connected else connection.ConnectionState.CLOSED
    return conn


@pytest.mark.parametrize(
    ("http_version", "scheme", "upstream", "framing"),
    [
        ("HTTP/1.1", "https", server(None, connected=False), "chunked"),
        ("HTTP/1.1", "https", server(b"h2", connected=True), "chunked"),  # HTTP/2 drops the header itself
        ("HTTP/2.0", "http", server(None, connected=False), "chunked"),  # plain-text upstreams get HTTP/1
        ("HTTP/2.0", "https", server(b"h2", connected=True), "frames"),
        ("HTTP/2.0", "https", server(b"http/1.1", connected=True), "chunked"),
        ("HTTP/2.0", "https", server(None, connected=False), None),  # not known before the body starts
    ],
)
def test_streamed_framing_follows_the_upstreams_protocol(
    http_version: str, scheme: str, upstream: connection.Server, framing: str | None
) -> None:
    request = tutils.treq(http_version=http_version.encode(), scheme=scheme.encode())
    assert rewrite.streamed_framing(request, upstream) == framing


@pytest.mark.parametrize(
    ("framing", "content_length", "transfer_encoding"),
    [("chunked", None, "chunked"), ("frames", None, None), (None, "7", None)],
)
def test_prepare_streamed_body_reframes_as_told(
    framing: str | None, content_length: str | None, transfer_encoding: str | None
) -> None:
    request = tutils.treq()  # content-length: 7
    rewrite.prepare_streamed_body(request, StreamSubstituter(Context.RAW, lambda key: None), framing)
    assert request.headers.get("content-length") == content_length
    assert request.headers.get("transfer-encoding") == transfer_encoding


def test_drop_header_takes_every_spelling_and_nothing_else() -> None:
    request = tutils.treq(headers=http.Headers([
        (b"x-VAULTPROXY-sign", b"a"), (b"X-Vaultproxy-Signs", b"kept"), (b"Accept", b"*/*"), (b"X-Vaultproxy-Sign", b"b"),
    ]))
    rewrite.drop_header(request, "X-Vaultproxy-Sign")
    assert request.headers.fields == ((b"X-Vaultproxy-Signs", b"kept"), (b"Accept", b"*/*"))
    rewrite.drop_header(request, "X-Vaultproxy-Sign")  # none left: nothing changes
    assert len(request.headers.fields) == 2


def test_streamed_chunks_are_never_empty() -> None:
    # mitmproxy frames an empty chunk as "0\r\n\r\n", which would end a chunked body early.
    request = tutils.treq()
    rewrite.prepare_streamed_body(request, StreamSubstituter(Context.RAW, lambda key: VALUE), "chunked")
    assert callable(request.stream)
    pieces = [request.stream(chunk) for chunk in (b"a <<vau", b"lt:", b"unit.k", b">> b <<", b"")]
    assert pieces == [[b"a "], [], [], [VALUE.encode() + b" b "], [b"<<"]]
