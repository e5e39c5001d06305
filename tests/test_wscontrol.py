"""A WebSocket's control frames toward the client (vaultproxy/wscontrol.py), without I/O."""

from __future__ import annotations

import wsproto.events

from vaultcore.redaction import Redactor
from vaultproxy import responses, wscontrol

VALUE = b"sk_live_Zq9Ctl"
REDACTOR = Redactor([(b"<<vault:ctl>>", VALUE)])


def clean(data: bytes) -> bytes:
    return responses.cleaned(data, REDACTOR)


def test_pings_and_pongs_are_cleaned() -> None:
    for kind in (wsproto.events.Ping, wsproto.events.Pong):
        event = wscontrol.cleaned(kind(payload=b"echo " + VALUE + b" <<vault:planted>>"), clean)
        assert isinstance(event, kind) and event.payload == b"echo <<vault:ctl>> <<blocked-vault:planted>>"


def test_a_close_reason_is_cleaned_and_cut_to_what_a_frame_holds() -> None:
    event = wscontrol.cleaned(wsproto.events.CloseConnection(4000, "<<vault:planted>>" * 8), clean)
    assert isinstance(event, wsproto.events.CloseConnection) and event.code == 4000
    assert len(event.reason.encode()) <= wscontrol.CLOSE_REASON_MAX and "<<vault:" not in event.reason
    ping = wscontrol.cleaned(wsproto.events.Ping(payload=VALUE * 9), clean)
    assert isinstance(ping, wsproto.events.Ping) and len(ping.payload) <= wscontrol.PAYLOAD_MAX and VALUE not in ping.payload


def test_other_events_and_empty_frames_pass_as_they_are() -> None:
    for event in (wsproto.events.TextMessage("<<vault:planted>>"), wsproto.events.Ping(), wsproto.events.CloseConnection(1000)):
        assert wscontrol.cleaned(event, clean) is event
