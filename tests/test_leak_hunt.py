"""Leak hunt: a whole session with distinctive secret values, then every byte the product
wrote or printed is searched for them, in every encoding a value can take on its way.

The only places a value may appear are the bytes the allowed upstreams received (and the
WebSocket messages a non-echoing upstream recorded). Everything else is hunted: what the
proxy and each CLI run printed, the audit log, the `-w` flow file (raw and parsed, decoded
bodies and WebSocket messages included), the HAR export, the vault files, every file under
the test's temp dirs, the argv and environment of every child process, the responses the
clients got, and all bytes a forbidden upstream received. Secrets used only in refused
requests (and the AWS secret access keys) may appear nowhere at all.

The hunt (tests/support/leaks.py) is generic: a walk that reports every hit with its location
and a masked excerpt; `test_hunt_finds_planted_values` proves it finds what it looks for.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import json
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
import requests
from mitmproxy import http, io
from mitmproxy.test import tflow

from tests.support.cli import start_cli
from tests.support.leaks import (
    Exposure,
    Needle,
    fail_on,
    hunt_bytes,
    hunt_flow_file,
    hunt_paths,
    leak_value,
    mask,
    needles_for,
)
from tests.support.moto import MotoServer
from tests.support.net import LOOPBACK, POLL_INTERVAL, free_port
from tests.support.proxy import EXAMPLE_HOSTS, MitmdumpProcess, StartProxy
from tests.support.tls import TLSMaterial
from tests.support.upstream import RecordingUpstream, Reply, WebSocketMessage, WebSocketUpstream
from vaultcore.vault import Vault

TIMEOUT = 60
CLI_ATTEMPTS = 5  # a CLI run that ends before its /proc entries are read runs again (all are idempotent)
CLI_WORKERS = 4
BURST_WORKERS = 8
STREAM_THRESHOLD = "64k"  # bodies above this are streamed by mitmproxy (stream_large_bodies)
REFUSED = "/refused/"  # the path prefix of every request the proxy must refuse
QUIET = "quiet"  # the WebSocket upstream leaves messages starting with this unanswered


@dataclass
class Cli:
    """Runs `python -m vaultcore.cli` as a child with its own HOME, records what it printed
    and its /proc argv and environment (read while it runs)."""

    vault_home: Path
    home: Path
    exposure: Exposure
    needles: list[Needle]
    runs: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __call__(self, *args: str, stdin: bytes = b"", expect: int | None = 0) -> str:
        """Run and return stdout; `expect` is the exit status (None: not checked)."""
        where = f"cli {' '.join(args)}"
        for _ in range(CLI_ATTEMPTS):
            # stdin stays open until after /proc is read: a command that reads it waits there.
            process = start_cli(self.vault_home, *args, user_home=self.home)
            # Right after exec the new command line is briefly empty: poll while it runs.
            seen = False
            while not seen and process.poll() is None:
                seen = self.exposure.record_process(where, process.pid, b"vaultcore.cli")
                time.sleep(POLL_INTERVAL)  # leave the CPU to the child
            stdout, stderr = process.communicate(stdin, timeout=TIMEOUT)
            with self._lock:  # runs may be concurrent (see `many`)
                self.runs += 1
                run = self.runs
            self.exposure.add(f"{where} #{run}: stdout", stdout)
            self.exposure.add(f"{where} #{run}: stderr", stderr)
            if seen:
                break
        else:
            pytest.fail(f"{where} always ended before its /proc entries could be read")
        assert expect in (None, process.returncode), f"{where}: exit {process.returncode}\n{mask(stderr, self.needles)}"
        return stdout.decode()

    def many(self, runs: Iterable[tuple[tuple[str, ...], dict[str, Any]]]) -> list[str]:
        """Independent runs ((args, kwargs) each) side by side: each CLI run is mostly
        interpreter start-up, and the suite must stay fast."""
        with ThreadPoolExecutor(max_workers=CLI_WORKERS) as pool:
            return list(pool.map(lambda run: self(*run[0], **run[1]), runs))


def ack_unless_quiet(message: WebSocketMessage, count: int) -> str | None:
    """The WebSocket upstream's answer: "ack", never the message (an echo would carry the value
    back into the flow's server messages: legitimate, but it would blind the hunt there)."""
    return None if str(message).startswith(QUIET) else "ack"


# --- the hunt finds what it looks for --------------------------------------------------------


def test_hunt_finds_planted_values(tmp_path: Path) -> None:
    token, value = leak_value(' "q"&a=b/c+d\\é')
    needles = needles_for("planted", value, token)
    nested = tmp_path / "a" / "b"
    nested.mkdir(parents=True)
    plants = {
        nested / "raw.txt": b"before " + value.encode() + b" after",
        tmp_path / "percent.txt": b"q=" + quote(value, safe="").encode(),
        tmp_path / "json.txt": json.dumps({"v": value}).encode(),
        tmp_path / "clean.txt": b"nothing to see " + token[:-1].encode(),
        **{tmp_path / f"b64-{shift}.txt": base64.b64encode(b"x" * shift + value.encode() + b"tail") for shift in range(3)},
        tmp_path / "b64url.txt": base64.urlsafe_b64encode(b"\xfb\xff" + token.encode()),
        tmp_path / "hex.txt": binascii.hexlify(b"#" + token.encode()),
    }
    for path, data in plants.items():
        path.write_bytes(data)
    # A flow file whose request body is gzip-compressed: the raw file hides the value.
    flow = tflow.tflow(resp=True)
    flow.request.headers["content-encoding"] = "gzip"
    flow.request.content = json.dumps({"pw": value}).encode()
    flows = tmp_path / "flows.bin"
    with flows.open("wb") as f:
        io.FlowWriter(f).add(flow)

    found = {hit.where for hit in hunt_paths([tmp_path], needles)}
    assert found == {str(path) for path in plants if path.name != "clean.txt"}
    assert not hunt_bytes("raw flow file", flows.read_bytes(), needles)
    flow_hits = hunt_flow_file(flows, needles)
    assert {hit.where for hit in flow_hits} == {f"{flows} flow 0 (http) decoded request body"}
    assert all(value not in str(hit) and token not in str(hit) for hit in flow_hits), "excerpts are masked"
    exposure = Exposure()
    exposure.add("stdout of something", b"the value is " + value.encode())
    assert [hit.where for hit in exposure.hunt(needles) if hit.needle.form == "raw"] == ["stdout of something"]


# --- the session -------------------------------------------------------------------------------


@dataclass
class Secrets:
    """The session's secrets: name -> (token, value). `sent` ones may reach the allowed
    upstreams; the others are only ever refused and may appear nowhere."""

    values: dict[str, tuple[str, str | bytes]]
    sent: set[str]

    def value(self, name: str) -> str | bytes:
        return self.values[name][1]

    def raw(self, name: str) -> bytes:
        value = self.value(name)
        return value if isinstance(value, bytes) else value.encode()

    def token(self, name: str) -> str:
        return self.values[name][0]

    def needles(self, names: Iterable[str] | None = None) -> list[Needle]:
        chosen = self.values if names is None else {n: self.values[n] for n in names}
        return [needle for name, (token, value) in chosen.items() for needle in needles_for(name, value, token)]


def make_secrets() -> Secrets:
    values: dict[str, tuple[str, str | bytes]] = {}
    for name, extra in (
        ("api_token", ""), ("tricky", ' "q"&a=b/c+d\\é%25;x'), ("h2_token", ""), ("ws_token", ""),
        ("stream_token", ""), ("guarded", ""), ("nohosts", ""), ("crlf", "\r\nX-Injected: 1"),
        ("db.user", ""), ("db.password", ' "pw"\\'), ("db.conn.token", ""), ("db.hosts.1", ""),
        ("aws_plain", ""), ("aws_secret_key", "/k+Y"), ("broken_secret_key", "/k+Z"),
    ):
        values[name] = leak_value(extra)
    for name in ("blob", "aws_binary"):
        token, _ = leak_value()
        values[name] = (token, b"\x89\xff\x00" + token.encode() + b"\x80\xfe")
    sent = set(values) - {"guarded", "nohosts", "crlf", "aws_secret_key", "broken_secret_key"}
    return Secrets(values, sent)


def db_secret(s: Secrets) -> str:
    """The moto JSON secret: nested object, array, number, bool."""
    return json.dumps({
        "user": s.value("db.user"), "password": s.value("db.password"),
        "conn": {"host": "db.internal", "token": s.value("db.conn.token")},
        "hosts": ["h0.internal", s.value("db.hosts.1")], "port": 5432, "enabled": True,
    })


HOSTS = f"api.example.com,{LOOPBACK}"


def set_up_vault(cli: Cli, moto: MotoServer, s: Secrets) -> None:
    """Local secrets, a configuration on moto with a JSON, a plaintext and a binary secret
    (fetched), and a second configuration whose endpoint is a closed port."""
    cli.many(
        (("local", "set", name, *(("--hosts", HOSTS) if name != "nohosts" else ())), {"stdin": s.raw(name)})
        for name in ("api_token", "tricky", "h2_token", "ws_token", "stream_token", "guarded", "crlf", "blob", "nohosts")
    )

    client = moto.client()
    client.create_secret(Name="prod/db", SecretString=db_secret(s))
    client.create_secret(Name="prod/plain", SecretString=s.value("aws_plain"))
    client.create_secret(Name="prod/binary", SecretBinary=s.value("aws_binary"))
    keys = f"FAKEVAULTPROXYTEST01\n{s.value('aws_secret_key')}\n".encode()
    cli("config", "add", "prod", "--region", "us-east-1", "--endpoint-url", moto.endpoint_url,
        "--source", "static", "--hosts", HOSTS, stdin=keys)
    for alias, secret_id, mode in (("db", "prod/db", "json"), ("aws_plain", "prod/plain", "plaintext"),
                                   ("aws_binary", "prod/binary", "plaintext")):
        cli("secret", "add", alias, "--secret-id", secret_id, "--mode", mode)
    assert "fetched 3 of 3" in cli("secret", "fetch", "db", "aws_plain", "aws_binary")

    # A fetch that fails: the endpoint is a port nobody listens on.
    closed = f"http://{LOOPBACK}:{free_port()}"
    broken_keys = f"FAKEVAULTPROXYTEST02\n{s.value('broken_secret_key')}\n".encode()
    cli("config", "add", "broken", "--region", "us-east-1", "--endpoint-url", closed, "--source", "static",
        "--hosts", HOSTS, stdin=broken_keys, expect=None)  # saved even though its test fails
    cli("secret", "add", "gone", "--secret-id", "prod/gone", "--config", "broken")
    cli("secret", "fetch", "gone", "--config", "broken", expect=1)


@dataclass
class Upstreams:
    http: RecordingUpstream  # plain HTTP on loopback: may receive secrets
    https: RecordingUpstream  # api.example.com: may receive secrets
    forbidden: RecordingUpstream  # other.example.com: must receive no value
    ws: WebSocketUpstream  # may receive secrets

    def allowed_bytes(self) -> bytes:
        messages = [m if isinstance(m, bytes) else m.encode() for m in self.ws.messages]
        handshakes = [f"{k}: {v}".encode() for handshake in self.ws.handshakes for k, v in handshake.headers]
        return b"\n".join([self.http.all_bytes(), self.https.all_bytes(), *messages, *handshakes])


def check_refused(response: Any, status: int, code: str, needles: list[Needle]) -> None:
    got = (response.status_code, response.headers.get("x-vaultproxy-error"))
    assert got == (status, code), mask(response.content, needles)


def drive_traffic(proxy: MitmdumpProcess, up: Upstreams, exposure: Exposure, needles: list[Needle]) -> None:
    """HTTP, HTTPS, HTTP/2 and WebSocket requests that resolve, and one request per refusal."""
    api = up.https.url_for("api.example.com")
    loop = up.http.url
    responses: list[tuple[str, Any]] = []
    with proxy.requests_session() as session:

        def send(method: str, url: str, **kwargs: Any) -> Any:
            response = session.request(method, url, timeout=TIMEOUT, **kwargs)
            responses.append((f"{method} {url}", response))
            return response

        # Resolved: URL, headers and bodies (JSON, form, gzip-compressed, streamed).
        assert send("GET", f"{loop}/http/query?t=<<vault:api_token>>&d=<<vault:db.hosts.1>>&x=<<vault:tricky>>",
                    headers={"X-Tricky": "<<vault:tricky>>"}).status_code == 200
        json_body = b'{"pw": "<<vault:db.password>>", "t": "<<vault:tricky>>"}'
        assert send("POST", f"{loop}/http/json", data=json_body,
                    headers={"Content-Type": "application/json"}).status_code == 200
        assert send("POST", f"{loop}/http/form", data=b"a=<<vault:tricky>>&b=1",
                    headers={"Content-Type": "application/x-www-form-urlencoded"}).status_code == 200
        assert send("POST", f"{loop}/http/gzip", data=gzip.compress(json_body),
                    headers={"Content-Type": "application/json", "Content-Encoding": "gzip"}).status_code == 200
        big = b"a" * 100_000 + b"<<vault:stream_token>>" + b"z" * 100_000
        assert send("POST", f"{loop}/http/stream", data=big, headers={"Content-Type": "text/plain"}).status_code == 200
        assert send("GET", f"{api}/https/headers", headers={
            "Authorization": "Bearer <<vault:db.conn.token>>", "X-Blob": "<<vault:blob|base64>>",
            "X-Aws": "<<vault:aws_plain>>", "X-Aws-Binary": "<<vault:aws_binary|base64>>", "X-User": "<<vault:db.user>>",
        }).status_code == 200

        # Resolved, sent, and then the upstream fails: the flow ends in `error`, not `response`.
        up.http.route("/http/reset", Reply(behaviour="reset"))
        up.http.route("/http/malformed", Reply(behaviour="malformed"))
        for failure in ("reset", "malformed"):
            assert send("GET", f"{loop}/http/{failure}?t=<<vault:api_token>>",
                        headers={"X-Fail": "<<vault:db.user>>"}).status_code == 502

        # Refused: nothing of these may reach any upstream.
        check_refused(send("GET", f"{api}{REFUSED}unknown", headers={
            "X-Guarded": "<<vault:guarded>>", "X-Unknown": "<<vault:no_such_key>>"}), 400, "unknown_key", needles)
        check_refused(send("GET", f"{up.forbidden.url_for('other.example.com')}{REFUSED}host?g=<<vault:guarded>>"),
                      403, "host_not_allowed", needles)
        check_refused(send("GET", f"{api}{REFUSED}crlf", headers={"X-Crlf": "<<vault:crlf>>"}), 400, "illegal_value", needles)
        check_refused(send("GET", f"{api}{REFUSED}mismatch", headers={
            "Host": f"other.example.com:{up.https.port}", "X-Guarded": "<<vault:guarded>>"}), 403, "host_mismatch", needles)
        check_refused(send("GET", f"{up.http.url_for('api.example.com')}{REFUSED}plaintext?g=<<vault:guarded>>"),
                      403, "plaintext_not_allowed", needles)
        check_refused(send("POST", f"{api}{REFUSED}origin", data=b'{"g": "<<vault:guarded>>"}', headers={
            "Origin": "https://evil.example", "Content-Type": "application/json"}), 403, "origin_not_allowed", needles)
        check_refused(send("GET", f"{api}{REFUSED}nohosts", headers={"X-N": "<<vault:nohosts>>"}), 403, "no_hosts_rule", needles)

    with proxy.httpx_client(http2=True) as client:
        response = client.get(f"{api}/h2/<<vault:h2_token>>?u=<<vault:db.user>>", headers={"X-H2": "<<vault:h2_token>>"})
        assert (response.status_code, response.http_version) == (200, "HTTP/2")
        responses.append(("HTTP/2 GET", response))
        refused = client.get(f"{api}{REFUSED}h2", headers={"X-Guarded": "<<vault:guarded>>", "Origin": "https://evil.example"})
        assert (refused.http_version, refused.headers.get("x-vaultproxy-error")) == ("HTTP/2", "origin_not_allowed")
        responses.append(("HTTP/2 refused", refused))

    ws_url = f"ws://{LOOPBACK}:{up.ws.port}/ws"
    with proxy.websocket(ws_url, additional_headers={"X-Ws": "<<vault:ws_token>>"}) as ws:
        ws.send('{"token": "<<vault:ws_token>>", "pw": "<<vault:db.password>>"}')
        ws.send("raw <<vault:api_token>>")
        ws.send("refused <<vault:no_such_key>> <<vault:guarded>>")  # dropped by the proxy
        ws.send("last")
        replies = [ws.recv(timeout=TIMEOUT) for _ in range(3)]
    assert replies == ["ack"] * 3
    with proxy.websocket(ws_url, origin="https://evil.example") as ws:  # a web page's socket
        ws.send("page <<vault:guarded>>")
        ws.send("after")
        assert ws.recv(timeout=TIMEOUT) == "ack"

    for label, response in responses:
        head = f"{response.status_code} {list(response.headers.items())}".encode()
        exposure.add(f"client response {label}", head + b"\n" + response.content)


def burst(proxy: MitmdumpProcess, up: Upstreams, size: int) -> None:
    """Resolved and refused requests in parallel: the proxy puts placeholders back per flow,
    so concurrent flows must never be left with their own values, or get another's parts."""
    api = up.https.url_for("api.example.com")

    def one(i: int) -> tuple[int, int]:
        with proxy.requests_session() as session:
            resolved = session.post(f"{api}/burst/{i}?t=<<vault:api_token>>", data=b'{"pw": "<<vault:db.password>>"}',
                                    headers={"X-H": "<<vault:h2_token>>", "Content-Type": "application/json"}, timeout=TIMEOUT)
            refused = session.get(f"{api}{REFUSED}burst/{i}", headers={"X-G": "<<vault:guarded>>", "Origin": "https://evil.example"},
                                  timeout=TIMEOUT)
            return resolved.status_code, refused.status_code

    with ThreadPoolExecutor(max_workers=BURST_WORKERS) as pool:
        assert set(pool.map(one, range(size))) == {(200, 403)}


def check_allowed_traffic(up: Upstreams, s: Secrets) -> None:
    """The hunt is only meaningful if values did go out: each sent secret reached an allowed
    upstream in the form its context gives it, and no refused request arrived anywhere.
    (Comparisons are computed first: pytest would print the values of a failing `in`.)"""
    (gzipped,) = [r for r in up.http.requests if r.path == "/http/gzip"]
    (streamed,) = [r for r in up.http.requests if r.path == "/http/stream"]
    where = {"allowed upstreams": up.allowed_bytes(), "gzip body": gzip.decompress(gzipped.body), "streamed body": streamed.body}
    expected = [("allowed upstreams", name, s.token(name).encode()) for name in s.sent - {"blob", "aws_binary", "stream_token"}]
    expected += [("allowed upstreams", name, base64.b64encode(s.raw(name))) for name in ("blob", "aws_binary")]
    expected += [
        ("allowed upstreams", "tricky in the URL", quote(s.raw("tricky"), safe="").encode()),
        ("allowed upstreams", "tricky in a form", quote_plus(s.raw("tricky"), safe="").encode()),
        ("allowed upstreams", "tricky in JSON", json.dumps(s.value("tricky"), ensure_ascii=False)[1:-1].encode()),
        ("gzip body", "db.password in JSON", json.dumps(s.value("db.password"), ensure_ascii=False)[1:-1].encode()),
        ("streamed body", "stream_token", b"a" + s.raw("stream_token") + b"z"),
    ]
    missing = [f"{what} in {place}" for place, what, data in expected if data not in where[place]]
    assert not missing, f"never resolved: {missing}"
    arrived = [r.target for server in (up.http, up.https, up.forbidden) for r in server.requests]
    refused_arrived = sum(target.startswith(REFUSED) for target in arrived)
    assert not refused_arrived, f"{refused_arrived} refused requests reached an upstream"
    ws_ok = "after" in up.ws.messages and not any("vault:" in str(m) for m in up.ws.messages)
    assert ws_ok, "the WebSocket upstream got every message but the refused ones, resolved"


@pytest.mark.parametrize("burst_size", [8, pytest.param(400, marks=pytest.mark.stress)])
def test_no_secret_leaks_anywhere(
    burst_size: int,
    mitmdump: StartProxy,
    moto: MotoServer,
    upstream: RecordingUpstream,
    tls_upstream: RecordingUpstream,
    vault_home: Path,
    isolated_home: Path,
    tmp_path: Path,
    tls_material: TLSMaterial,
) -> None:
    """Set up, use and inspect the vault through the CLI and the proxy, then hunt."""
    s = make_secrets()
    exposure = Exposure()
    cli_home = tmp_path / "cli-home"
    cli_home.mkdir()
    cli = Cli(vault_home, cli_home, exposure, s.needles())
    set_up_vault(cli, moto, s)

    flows_path, har_path = tmp_path / "flows.mitm", tmp_path / "flows.har"
    with RecordingUpstream(tls=tls_material) as forbidden, WebSocketUpstream(answer=ack_unless_quiet) as ws:
        up = Upstreams(upstream, tls_upstream, forbidden, ws)
        proxy = mitmdump(
            env={"VAULTPROXY_HOME": str(vault_home)},
            hosts=EXAMPLE_HOSTS,
            args=["-w", str(flows_path)],
            options={
                "hardump": str(har_path), "flow_detail": 4,  # termlog_verbosity=debug is refused: it logs values
                "connection_strategy": "lazy", "stream_large_bodies": STREAM_THRESHOLD,
            },
        )
        assert exposure.record_process("mitmdump", proxy.pid, b"mitmdump")

        drive_traffic(proxy, up, exposure, s.needles())
        burst(proxy, up, burst_size)
        # The CLI against the running proxy: listings, a dry run, the client environment.
        cli.many([
            *(((args, {}) for args in (("status",), ("status", "--json"), ("secret", "list", "--json"),
              ("local", "list", "--json"), ("config", "list", "--json"), ("config", "export", "prod"), ("env",)))),
            (("resolve", "Bearer <<vault:api_token>> <<vault:db.password>>", "--host", "api.example.com"), {}),
            (("resolve", "<<vault:guarded>>", "--host", "other.example.com", "--json"), {"expect": 1}),
        ])
        assert exposure.record_process("mitmdump (end)", proxy.pid, b"mitmdump")
        proxy.stop()  # mitmdump writes the HAR file and closes the flow file on exit
        check_allowed_traffic(up, s)
        exposure.add("forbidden upstream (all bytes received)", forbidden.all_bytes())

    # The hunt is not vacuous: the dumper printed the requests, the files hold every flow.
    dumped = "<<vault:db.conn.token>>" in proxy.output()
    assert dumped, "mitmdump printed the requests' headers (with the placeholders back)"
    with flows_path.open("rb") as f:
        saved = list(io.FlowReader(f).stream())
    assert len(saved) >= 19 + 2 * burst_size, len(saved)
    failed = [f for f in saved if isinstance(f, http.HTTPFlow) and f.error and f.request.headers.get("x-fail") == "<<vault:db.user>>"]
    assert len(failed) == 2, "the flows that ended in an error were saved with their placeholders back"
    assert len(json.loads(har_path.read_text())["log"]["entries"]) >= 17 + 2 * burst_size
    assert (vault_home / "vault.enc.bak").is_file() and (vault_home / "audit.log").is_file()
    assert cli.runs >= 25

    needles = s.needles()
    hits = exposure.hunt(needles)
    hits += hunt_paths([tmp_path, proxy.workdir, isolated_home], needles)
    hits += hunt_flow_file(flows_path, needles)
    # Secrets that were only ever refused must not even have reached an allowed upstream.
    hits += hunt_bytes("allowed upstreams (refused secrets only)", up.allowed_bytes(), s.needles(set(s.values) - s.sent))
    fail_on(hits)


def test_flows_in_flight_when_the_proxy_stops(
    mitmdump: StartProxy, upstream: RecordingUpstream, vault_home: Path, tmp_path: Path
) -> None:
    """mitmproxy's save addon (`-w`) also writes, at shutdown, the flows still open then: a
    request sent upstream and waiting for its answer, a WebSocket whose last message went
    out resolved. Those flows must show placeholders as well."""
    token, value = leak_value()
    Vault(vault_home).set("inflight", value, [LOOPBACK])
    needles = needles_for("inflight", value, token)
    upstream.route("/hang", Reply(behaviour="hang"))
    flows_path = tmp_path / "flows.mitm"
    with WebSocketUpstream(answer=ack_unless_quiet) as ws, ThreadPoolExecutor(max_workers=1) as pool:
        proxy = mitmdump(env={"VAULTPROXY_HOME": str(vault_home)}, args=["-w", str(flows_path)])
        with proxy.requests_session() as session:
            waiting = pool.submit(session.get, f"{upstream.url}/hang?k=<<vault:inflight>>",
                                  headers={"X-Key": "<<vault:inflight>>"}, timeout=TIMEOUT)
            upstream.wait_for(1)
            with proxy.websocket(f"ws://{LOOPBACK}:{ws.port}/ws") as connection:
                connection.send(f"{QUIET} <<vault:inflight>>")
                ws.wait_for(1, TIMEOUT)
                proxy.stop()
            with pytest.raises(requests.ConnectionError):  # the proxy went away mid-request
                waiting.result(TIMEOUT)
    sent = [token.encode() in upstream.all_bytes(), token in str(ws.messages)]
    assert sent == [True, True], "both went out resolved before the proxy stopped"

    with flows_path.open("rb") as f:
        saved = {flow.request.path.split("?")[0] for flow in io.FlowReader(f).stream() if isinstance(flow, http.HTTPFlow)}
    assert saved == {"/hang", "/ws"}, "mitmdump saved both open flows at shutdown"
    fail_on(hunt_bytes(str(flows_path), flows_path.read_bytes(), needles) + hunt_flow_file(flows_path, needles))
