"""mitmdump script for tests: answers http://environ.vaultproxy.test/ itself, with the names
(never the values) of the variables in the proxy's environment, which every process the
proxy starts inherits.

Loaded with MitmdumpProcess(args=["-s", str(ENVIRON_SCRIPT)]).
"""

import os

from mitmproxy import http

HOST = "environ.vaultproxy.test"


class EnvironNames:
    def request(self, flow: http.HTTPFlow) -> None:
        if flow.request.pretty_host == HOST:
            flow.response = http.Response.make(200, "\n".join(sorted(os.environ)).encode())


addons = [EnvironNames()]
