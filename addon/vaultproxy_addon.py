"""mitmdump -s addon/vaultproxy_addon.py

A shim: the addon's code lives in the importable `vaultproxy` package, because mitmproxy's
script loader does not register script modules (which breaks dataclasses and postponed
annotations in them).
"""

from vaultproxy.addon import VaultProxy

addons = [VaultProxy()]
