"""mitmdump script for tests: connect named hosts, on any port, to loopback stand-ins.

`--set test_stand_ins=NAME=ADDRESS:PORT` (one per name): every connection the proxy makes to
NAME, on whatever port the client asked for (443 for https://NAME/), goes to ADDRESS:PORT
instead. With `--set test_stand_ins_only=true`, any other name (but localhost and loopback
addresses) resolves to nothing: a proxy under test never reaches past the machine. Like hosts_addon.py it wraps socket.getaddrinfo inside the mitmdump process only:
mitmproxy and the vaultproxy addon still see NAME and the client's port everywhere (server
address, SNI, Host header, host binding). hosts_addon keeps the port, which a loopback server
cannot have when the URL says 443; this one does not.
"""

import ipaddress
import socket
from collections.abc import Sequence

from mitmproxy import ctx

_system_getaddrinfo = socket.getaddrinfo


def _parse(entry):
    name, _, target = entry.partition("=")
    address, _, port = target.rpartition(":")
    if not (name and address and port.isdigit()):
        raise ValueError(f"test_stand_ins: {entry!r} is not NAME=ADDRESS:PORT")
    return name.lower().rstrip("."), (address, int(port))


def _local(name):
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _resolver(stand_ins, only):
    def getaddrinfo(host, port, *args, **kwargs):
        name = host.decode("idna") if isinstance(host, bytes) else host
        name = (name or "").lower().rstrip(".")
        target = stand_ins.get(name)
        if target is not None:
            return _system_getaddrinfo(target[0], target[1], *args, **kwargs)
        if only and not _local(name):
            raise socket.gaierror(socket.EAI_NONAME, f"{name} has no stand-in (test_stand_ins_only)")
        return _system_getaddrinfo(host, port, *args, **kwargs)

    return getaddrinfo


class StandIns:
    def load(self, loader):
        loader.add_option(
            "test_stand_ins", Sequence[str], [],
            "Tests only: NAME=ADDRESS:PORT entries; connections to NAME (any port) go to ADDRESS:PORT.",
        )
        loader.add_option(
            "test_stand_ins_only", bool, False,
            "Tests only: names without a stand-in (but localhost and loopback addresses) resolve to nothing.",
        )

    def configure(self, updated):
        if "test_stand_ins" in updated or "test_stand_ins_only" in updated:
            stand_ins = dict(_parse(entry) for entry in ctx.options.test_stand_ins)
            socket.getaddrinfo = _resolver(stand_ins, ctx.options.test_stand_ins_only)

    def done(self):
        socket.getaddrinfo = _system_getaddrinfo


addons = [StandIns()]
