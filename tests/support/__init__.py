"""Real test infrastructure for end-to-end tests; everything binds 127.0.0.1 only.

- net: free_port, wait_until (polling), wait_for_port, is_listening, listening_addresses
- env: environment isolation (no *_PROXY, AWS_*, VAULTPROXY_* leaking in), child_env
- tls: a throwaway test CA and server certificate (localhost, 127.0.0.1, *.example.com)
- upstream: RecordingUpstream (HTTP/1.1 and HTTPS, exact bytes, per-path replies,
  misbehaviours) and WebSocketUpstream (records; echoes, or answers as told)
- proxy: MitmdumpProcess (a real mitmdump subprocess) with requests/httpx/websockets
  clients forced through it, and curl()
- hosts_addon: a mitmdump script mapping test host names to loopback
- environ_addon: a mitmdump script that shows the names in the proxy's environment
- moto: MotoServer, moto's Secrets Manager/STS/IAM server mode; enforced_auth, count_operations
- cli: the `vaultproxy` command as a child process (run_cli, start_cli, run_on_terminal),
  `vaultproxy start`, and a stand-in for a running proxy (stand_in_proxy)
- leaks: the leak hunt (needles in every encoding, hunts over bytes, files, flow files, processes)
- secret_set: a module's test secrets, found by key in any output, and its shared proxy
- oauth_server: a real OAuth 2.0 authorization server (authlib on Flask) and an API that takes its tokens

The fixtures in tests/conftest.py start and stop these for each test.
"""
