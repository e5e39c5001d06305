"""An addon that does nothing, shaped like vaultproxy's: the same hooks, and a second part
appended to the end of the chain in `running()`.

Loaded with `mitmdump -s` as configuration e of bench/proxy.py, it measures what mitmproxy
charges any such addon for dispatching its hooks, so that the cost of vaultproxy's own work
can be told apart from the cost of being an addon at all.
"""

from mitmproxy import ctx


class Last:
    def next_layer(self, nextlayer):
        pass

    def requestheaders(self, flow):
        pass

    def request(self, flow):
        pass

    def websocket_message(self, flow):
        pass


class First:
    def __init__(self):
        self.last = Last()

    def running(self):
        ctx.master.addons.add(self.last)

    def client_connected(self, client):
        pass

    def http_connect(self, flow):
        pass

    def tls_start_server(self, tls):
        pass

    def requestheaders(self, flow):
        pass

    def responseheaders(self, flow):
        pass

    def response(self, flow):
        pass

    def error(self, flow):
        pass

    def websocket_message(self, flow):
        pass

    def websocket_end(self, flow):
        pass


addons = [First()]
