"""Load: many concurrent clients through one proxy, while the vault changes under it.

Each client owns one secret and sends it, as a placeholder, in a header, the query and a JSON
body; meanwhile a loop of real CLI processes rewrites *other* secrets, so the proxy reloads its
index again and again mid-traffic. Every request must reach the upstream exactly once, carrying
exactly its own value in all three places: no cross-talk, nothing unresolved, no errors, no
value in the proxy's output, and no write lost.
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.support.net import LOOPBACK, wait_until
from tests.support.cli import run_cli
from tests.support.proxy import StartProxy, audit_lines
from tests.support.upstream import RecordedRequest, RecordingUpstream, Reply
from vaultcore.vault import Vault

HOST = LOOPBACK
WAIT = 120.0
RELOADED = "vaultproxy: reloaded"
OTHER_KEYS = 5


@dataclass
class Writer:
    """Rewrites `other-N` secrets with the real CLI, one process after another, until stopped."""

    home: Path
    stop: threading.Event = field(default_factory=threading.Event)
    first_write: threading.Event = field(default_factory=threading.Event)
    last_values: dict[str, str] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    writes: int = 0

    def run(self) -> None:
        while not self.stop.is_set():
            key, value = f"other-{self.writes % OTHER_KEYS}", f"FAKE-other-{self.writes}-{uuid.uuid4().hex}"
            result = run_cli(self.home, "local", "set", key, "--hosts", HOST, stdin=value.encode(), timeout=WAIT)
            if result.returncode != 0:
                self.failures.append(result.stderr.decode(errors="replace"))
            else:
                self.last_values[key] = value
                self.writes += 1
                self.first_write.set()


def secret_value(client: int) -> str:
    """Distinctive, and full of characters each context must escape differently."""
    return f'FAKE-load-{client}-{uuid.uuid4().hex} "quoted" & a=b+c/d\\e %41 ü'


def check_request(request: RecordedRequest, values: dict[str, str]) -> str:
    """The request's id, after checking it carries exactly its own client's value everywhere."""
    request_id = request.header("x-request-id")
    assert request_id is not None
    client = int(request_id.split("-")[0][1:])
    value = values[f"load-{client}"]
    assert dict(request.headers)[b"X-Secret"] == value.encode()
    assert parse_qs(urlsplit(request.target).query)["s"] == [value]
    assert request.json() == {"id": request_id, "s": value}
    raw = request.raw
    assert b"<<vault:" not in raw and b"%3cvault" not in raw.lower(), f"{request_id} went out unresolved"
    foreign = [key for key, other in values.items() if key != f"load-{client}" and other.encode() in raw]
    assert not foreign, f"{request_id} carries the values of {foreign}"
    return request_id


def run_load(home: Path, mitmdump: StartProxy, upstream: RecordingUpstream, clients: int, per_client: int) -> None:
    values = {f"load-{i}": secret_value(i) for i in range(clients)}
    vault = Vault(home)
    for key, value in values.items():
        vault.set(key, value, hosts=[HOST])
    proxy = mitmdump(env={"VAULTPROXY_HOME": str(home)})
    url = upstream.url + "/echo"
    # Once set, clients stop after their quota; until then they go on, so that the load
    # certainly spans reloads of the proxy's index.
    enough = threading.Event()
    sent: list[str] = []
    sent_lock = threading.Lock()

    def client(i: int) -> None:
        placeholder = f"<<vault:load-{i}>>"
        with proxy.requests_session() as session:
            n = 0
            while n < per_client or not enough.is_set():
                request_id = f"c{i}-r{n}"
                answer = session.post(
                    url, params={"s": placeholder, "id": request_id},
                    headers={"X-Request-Id": request_id, "X-Secret": placeholder},
                    json={"id": request_id, "s": placeholder}, timeout=WAIT,
                )
                assert answer.status_code == 200, f"{request_id}: {answer.status_code} {answer.text[:300]}"
                # The echo of its own value, redacted to its own placeholder (another's would show).
                assert answer.json() == {"id": request_id, "s": placeholder}
                with sent_lock:
                    sent.append(request_id)
                n += 1

    writer = Writer(home)
    writing = threading.Thread(target=writer.run, name="cli-writer")
    writing.start()
    try:
        assert writer.first_write.wait(WAIT), "the CLI writer never completed a write"
        reloads = proxy.output().count(RELOADED)
        with ThreadPoolExecutor(clients, thread_name_prefix="load-client") as pool:
            futures = [pool.submit(client, i) for i in range(clients)]
            try:
                # Two more reloads: at least one began and ended while requests were in flight.
                wait_until(lambda: proxy.output().count(RELOADED) >= reloads + 2 or all(f.done() for f in futures),
                           WAIT, "the proxy to reload during the load")
            finally:
                enough.set()
            for future in futures:
                future.result()
    finally:
        writer.stop.set()
        writing.join()

    assert not writer.failures, writer.failures[0]
    assert len(sent) >= clients * per_client
    received = upstream.wait_for(len(sent), WAIT)
    ids = Counter(check_request(request, values) for request in received)
    assert ids == Counter(sent), "requests lost or duplicated on the way"

    audit = audit_lines(home, count=len(sent))
    assert Counter(line["outcome"] for line in audit) == {"resolved": len(sent)}
    flow_line = f"POST {upstream.url}/echo?"
    wait_until(lambda: proxy.output().count(flow_line) >= len(sent), WAIT, "the proxy to show every flow")
    output = proxy.output()
    assert not [key for key, value in values.items() if value in output], "a value reached the proxy's output"
    state = Vault(home).state()["local"]
    assert {key: state[key]["value"] for key in writer.last_values} == writer.last_values, "a CLI write was lost"
    assert {key: state[key]["value"] for key in values} == values


@pytest.fixture
def echo_upstream() -> Iterator[RecordingUpstream]:
    with RecordingUpstream(routes={"/echo": Reply(echo=True)}) as server:
        yield server


def test_concurrent_clients_get_exactly_their_own_values(
    vault_home: Path, mitmdump: StartProxy, echo_upstream: RecordingUpstream
) -> None:
    run_load(vault_home, mitmdump, echo_upstream, clients=10, per_client=10)


@pytest.mark.stress
def test_1000_requests_from_50_clients_get_exactly_their_own_values(
    vault_home: Path, mitmdump: StartProxy, echo_upstream: RecordingUpstream
) -> None:
    run_load(vault_home, mitmdump, echo_upstream, clients=50, per_client=20)
