"""mitmdump -s addon/vaultproxy_addon.py

A shim: the addon's code lives in the importable `vaultproxy` package, because mitmproxy's
script loader does not register script modules (which breaks dataclasses and postponed
annotations in them). VaultProxy runs the client gate first in its own hooks: a request the
gate refuses is answered before anything else sees it, and so is never resolved.
"""

from vaultproxy.addon import VaultProxy

addons = [VaultProxy()]
