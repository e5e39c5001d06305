"""mitmdump script for tests: resolve test host names (api.example.com, ...) to loopback.

Loaded by MitmdumpProcess(hosts=...). It wraps socket.getaddrinfo inside the mitmdump
process only, so mitmproxy and the vaultproxy addon still see the real name everywhere
(server address, SNI, Host header, host binding) while the TCP connection goes to
127.0.0.1. Tests never need /etc/hosts or DNS.
"""

import fnmatch
import socket
from collections.abc import Sequence

from mitmproxy import ctx

_system_getaddrinfo = socket.getaddrinfo


def _resolver(rules):
    """A getaddrinfo that answers names matching a rule's glob with the rule's address."""

    def getaddrinfo(host, port, *args, **kwargs):
        name = host.decode("idna") if isinstance(host, bytes) else host
        for pattern, address in rules:
            if name is not None and fnmatch.fnmatch(name.lower(), pattern):
                return _system_getaddrinfo(address, port, *args, **kwargs)
        return _system_getaddrinfo(host, port, *args, **kwargs)

    return getaddrinfo


class HostsOverride:
    def load(self, loader):
        loader.add_option(
            "test_hosts", Sequence[str], [],
            "Tests only: PATTERN=ADDRESS entries; host names matching the glob PATTERN connect to ADDRESS.",
        )

    def configure(self, updated):
        if "test_hosts" in updated:
            rules = []
            for entry in ctx.options.test_hosts:
                pattern, _, address = entry.partition("=")
                rules.append((pattern.lower(), address))
            socket.getaddrinfo = _resolver(rules)

    def done(self):
        socket.getaddrinfo = _system_getaddrinfo


addons = [HostsOverride()]
