"""mitmdump -s addon/vaultproxy_addon.py

A shim: the addon's code lives in the importable `vaultproxy` package, because mitmproxy's
script loader does not register script modules (which breaks dataclasses and postponed
annotations in them). The client gate comes first: a request it refuses is already answered
when VaultProxy sees it, and so is never resolved.
"""

from vaultproxy.addon import VaultProxy
from vaultproxy.clientgate import ClientGate

addons = [ClientGate(), VaultProxy()]
