-- wrk script for bench/proxy.py: absolute-form requests through a forward proxy.
-- wrk's URL is the proxy; the request line names the upstream, as a client configured
-- with HTTP_PROXY sends it. Set by the bench in the environment:
--   BENCH_TARGET   the upstream URL (request line), e.g. http://127.0.0.1:PORT/
--   BENCH_HOST     its Host header (vaultproxy only resolves when Host agrees with the target)
--   BENCH_HEADERS  extra header lines, "Name: value" separated by newlines

wrk.path = os.getenv("BENCH_TARGET")
wrk.headers["Host"] = os.getenv("BENCH_HOST")
for line in string.gmatch(os.getenv("BENCH_HEADERS") or "", "[^\n]+") do
  local name, value = string.match(line, "^([^:]+):%s*(.*)$")
  wrk.headers[name] = value
end

-- One machine-readable line, the same as bench/loadgen.py prints.
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests": %d, "duration_us": %d, "errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, "p50_us": %.1f, "p99_us": %.1f}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
