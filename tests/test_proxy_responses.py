"""End to end: what comes back from upstream.

- A server that holds no secret plants placeholders (a redirect's Location, a Refresh header,
  a page or JSON body): curl -L and python-requests follow or re-send them, and the allowed
  host must never receive the value.
- Redaction is on by default: a server echoing the values a request used, in the encodings
  servers use (JSON escapes, percent-encoding, base64, HTML entities), in headers and bodies,
  whole or streamed in small pieces (a value split across chunks, server-sent events,
  gzip), shows the client and the flow file only placeholders.
"""

from __future__ import annotations

import base64
import gzip
import html
import json
import re
import subprocess
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
from mitmproxy import io

from tests.support.env import child_env
from tests.support.net import LOOPBACK
from tests.support.proxy import CLIENT_TIMEOUT, EXAMPLE_HOSTS, MitmdumpProcess, StartProxy
from tests.support.upstream import RecordedRequest, RecordingUpstream, Reply
from vaultcore.vault import Vault

TOKEN = "sk_live_Zq9Rsp"
VALUE = TOKEN + "Echo/+&<'\"é ok"  # characters every encoding below changes
PLANTED = "%3C%3Cvault%3Arsp.tok%3E%3E"


def forms_of(value: str) -> dict[str, str]:
    """How servers echo a value (what the response must not show)."""
    return {
        "json": json.dumps(value)[1:-1],
        "json-utf8": json.dumps(value, ensure_ascii=False)[1:-1],
        "json-go": json.dumps(value, ensure_ascii=False)[1:-1].replace("<", "\\u003c").replace("&", "\\u0026"),
        "json-php": json.dumps(value)[1:-1].replace("/", "\\/"),
        "percent": quote(value, safe=""),
        "percent-lower": re.sub("%[0-9A-F]{2}", lambda m: m[0].lower(), quote(value, safe="")),
        "form": quote_plus(value),
        "base64": base64.b64encode(value.encode()).decode(),
        "base64url": base64.urlsafe_b64encode(value.encode()).decode().rstrip("="),
        "html": html.escape(value),
    }


def leaked(data: bytes) -> list[str]:
    text = data.decode("utf-8", "replace")
    found = [name for name, form in forms_of(VALUE).items() if form in text]
    return found + (["token"] if TOKEN in text else [])


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("vault-home")
    Vault(home).set("rsp.tok", VALUE, hosts=[LOOPBACK, "api.example.com"])
    return home


# Shared by the tests that need no other options: none changes the vault or the proxy, and
# each has upstreams of its own.
@pytest.fixture(scope="module")
def proxy(module_mitmdump: StartProxy, home: Path) -> MitmdumpProcess:
    return module_mitmdump(options={"vault_home": str(home)}, hosts=EXAMPLE_HOSTS)


@pytest.fixture(scope="module")
def streaming_proxy(module_mitmdump: StartProxy, home: Path) -> MitmdumpProcess:
    return module_mitmdump(options={"vault_home": str(home), "stream_large_bodies": "64"})


# --- placeholders a server plants ---------------------------------------------------------------


def planting_routes(target: RecordingUpstream) -> dict[str, Reply]:
    url = f"{target.url_for('api.example.com')}/spent"
    return {
        "/redirect-percent": Reply(status=302, body=b"", headers=(("Location", f"{url}?t={PLANTED}"),)),
        "/redirect-literal": Reply(status=302, body=b"", headers=(("Location", f"{url}?t=<<vault:rsp.tok>>"),)),
        "/redirect-double": Reply(status=302, body=b"", headers=(("Location", f"{url}?t={PLANTED.replace('%', '%25')}"),)),
        "/refresh": Reply(status=200, body=b"", headers=(("Refresh", f"0; url={url}?t={PLANTED}"),)),
    }


@pytest.mark.parametrize("route", ["/redirect-percent", "/redirect-literal", "/redirect-double", "/refresh"])
def test_a_planted_redirect_never_comes_back_resolved(
    proxy: MitmdumpProcess, tls_upstream: RecordingUpstream, route: str
) -> None:
    with RecordingUpstream(routes=planting_routes(tls_upstream)) as hostile:
        url = f"{hostile.url_for('127.0.0.1')}{route}"
        with proxy.requests_session() as session:
            response = session.get(url, timeout=CLIENT_TIMEOUT)
            location = response.history[0].headers["Location"] if response.history else response.headers["Refresh"]
            if route == "/refresh":  # a client that acts on Refresh requests what it names
                session.get(location.split("url=", 1)[1], timeout=CLIENT_TIMEOUT)
        followed = subprocess.run(
            ["curl", "-sS", "-L", "--proxy", proxy.url, "--noproxy", "", "--cacert", str(proxy.ca_path), url],
            capture_output=True, env=child_env(), timeout=CLIENT_TIMEOUT, check=False,
        )
    assert followed.returncode == 0, followed.stderr
    assert "vault" in location and "blocked-vault" in location
    assert len(tls_upstream.requests) == (1 if route == "/refresh" else 2), "the clients followed"  # curl ignores Refresh
    assert leaked(tls_upstream.all_bytes()) == []


def test_placeholders_planted_in_bodies_are_neutralised(proxy: MitmdumpProcess, upstream: RecordingUpstream) -> None:
    """A page or an API answer that an agent reads and acts on: every spelling a client decodes."""
    planted = {
        "/json": (json.dumps({"next": "call /x?t=<<vault:rsp.tok>>"}).replace("<", "\\u003c").encode(), False),
        "/html": (b"<a href='/x?t=&lt;&lt;vault:rsp.tok&gt;&gt;'>next</a>", False),
        "/gzip": (b"token: <<vault:rsp.tok>>", True),
    }
    for path, (body, compressed) in planted.items():
        upstream.route(path, Reply(body=body, gzip=compressed, headers=(("Content-Type", "text/html"),)))
    with proxy.requests_session() as session:
        for path in planted:
            text = session.get(f"{upstream.url}{path}", timeout=CLIENT_TIMEOUT).text
            decoded = html.unescape(json.loads(text)["next"] if path == "/json" else text)
            assert "<<vault:" not in decoded and "blocked-vault:rsp.tok" in decoded, (path, text)


# --- echoed values ------------------------------------------------------------------------------


def received_value(request: RecordedRequest) -> str:
    """The X-Token header as sent (UTF-8; the recorder decodes header bytes as latin-1)."""
    return (request.header("x-token") or "").encode("latin-1").decode("utf-8")


def echo_every_form(request: RecordedRequest) -> tuple[list[tuple[str, str]], bytes]:
    """A server that reflects the X-Token it received in its headers and, in every encoding,
    in its body."""
    value = received_value(request)
    forms = forms_of(value)
    headers = [("Location", f"/next?t={forms['percent']}"), ("Set-Cookie", f"t={forms['base64url']}"), ("X-Echo", value.encode().decode("latin-1"))]
    return headers, "".join(f"{name}: {form}\n" for name, form in forms.items()).encode()


def test_echoed_values_are_redacted_by_default(mitmdump: StartProxy, home: Path, upstream: RecordingUpstream, tmp_path: Path) -> None:
    upstream.route("/echo", Reply(respond=echo_every_form, headers=(("Content-Type", "application/json"),)))
    flows = tmp_path / "flows"
    proxy = mitmdump(options={"vault_home": str(home), "flow_detail": 4}, args=["-w", str(flows)])
    with proxy.requests_session() as session:
        response = session.get(f"{upstream.url}/echo", headers={"X-Token": "<<vault:rsp.tok>>"}, timeout=CLIENT_TIMEOUT)
    assert upstream.requests[-1].header("x-token") == VALUE.encode().decode("latin-1")  # the value went out
    received = b"".join(f"{k}: {v}\n".encode("utf-8", "surrogateescape") for k, v in response.headers.items()) + response.content
    assert leaked(received) == []
    assert response.headers["X-Echo"] == "<<vault:rsp.tok>>"
    assert response.content.count(b"<<vault:rsp.tok>>") >= len(forms_of(VALUE))
    proxy.stop()
    assert leaked(flows.read_bytes()) == [] and leaked(proxy.output().encode()) == []
    with flows.open("rb") as f:
        (flow,) = list(io.FlowReader(f).stream())
    assert leaked(flow.response.content or b"") == []


@pytest.mark.parametrize("kind", ["plain", "sse", "gzip"])
def test_streamed_echoes_split_across_chunks_are_redacted(
    streaming_proxy: MitmdumpProcess, upstream: RecordingUpstream, kind: str
) -> None:
    """The response arrives in 7-byte pieces, so every value straddles chunk boundaries."""

    def respond(request: RecordedRequest) -> tuple[list[tuple[str, str]], bytes]:
        value = received_value(request)
        body = b"".join(f"data: {value} {form}\n\n".encode() for form in forms_of(value).values())
        return [], gzip.compress(body) if kind == "gzip" else body

    content_type = "text/event-stream" if kind == "sse" else "text/plain"
    headers = (("Content-Type", content_type), *((("Content-Encoding", "gzip"),) if kind == "gzip" else ()))
    upstream.route("/stream", Reply(respond=respond, headers=headers, trickle=7))
    with streaming_proxy.requests_session() as session:
        response = session.get(f"{upstream.url}/stream", headers={"X-Token": "<<vault:rsp.tok>>"}, timeout=CLIENT_TIMEOUT)
    assert response.status_code == 200
    assert leaked(response.content) == []
    assert response.content.count(b"<<vault:rsp.tok>>") == 2 * len(forms_of(VALUE))


def test_redaction_can_be_turned_off(mitmdump: StartProxy, home: Path, upstream: RecordingUpstream) -> None:
    upstream.route("/echo", Reply(respond=echo_every_form))
    proxy: MitmdumpProcess = mitmdump(options={"vault_home": str(home), "vault_redact_responses": False})
    with proxy.requests_session() as session:
        response = session.get(f"{upstream.url}/echo", headers={"X-Token": "<<vault:rsp.tok>>"}, timeout=CLIENT_TIMEOUT)
    assert "json" in leaked(response.content)


def test_responses_to_requests_without_secrets_are_left_alone(proxy: MitmdumpProcess, upstream: RecordingUpstream) -> None:
    body = b"binary \x00\xff payload " * 1000
    upstream.route("/plain", Reply(body=body, gzip=True, headers=(("Content-Type", "application/octet-stream"),)))
    with proxy.requests_session() as session:
        response = session.get(f"{upstream.url}/plain", timeout=CLIENT_TIMEOUT)
    assert response.content == body and response.headers["Content-Encoding"] == "gzip"
