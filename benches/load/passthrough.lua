-- wrk script: a plain GET of a static, non-OAuth path (the URL given to wrk), checked.
--
-- A response counts as served when it is 200 with exactly the body the test upstream
-- returns (LOAD_STATIC_BODY, default "hello from upstream\n"); anything else counts as
-- unmatched. done() prints a summary and one machine-readable line starting with "RESULT".

local expected = os.getenv("LOAD_STATIC_BODY")
if expected == nil or expected == "" then expected = "hello from upstream\n" end

local threads = {}
function setup(thread)
  threads[#threads + 1] = thread
end

ok, bad = 0, 0
samples = {}

function response(status, headers, body)
  if status == 200 and body == expected then
    ok = ok + 1
  else
    bad = bad + 1
    if #samples < 5 then
      samples[#samples + 1] = string.format("status=%d body=%s", status, (body or ""):sub(1, 200))
    end
  end
end

function done(summary, latency, requests)
  local total_ok, total_bad, all = 0, 0, {}
  for _, t in ipairs(threads) do
    total_ok = total_ok + (t:get("ok") or 0)
    total_bad = total_bad + (t:get("bad") or 0)
    for _, s in ipairs(t:get("samples") or {}) do all[#all + 1] = s end
  end
  local secs = summary.duration / 1e6
  local e = summary.errors
  local sock = e.connect + e.read + e.write + e.timeout
  local rate = total_ok / secs
  io.write(string.format("requests: %d served, %d unmatched; %.1f/s; latency p50 %.2f ms, p99 %.2f ms\n",
    total_ok, total_bad, rate, latency:percentile(50) / 1e3, latency:percentile(99) / 1e3))
  io.write(string.format("socket errors: connect %d, read %d, write %d, timeout %d\n",
    e.connect, e.read, e.write, e.timeout))
  for i = 1, math.min(#all, 5) do io.write("  sample: " .. all[i] .. "\n") end
  io.write(string.format(
    "RESULT scenario=passthrough rate=%.1f completed=%d refused=%d started=%d duration_us=%d "
    .. "p50_us=%.0f p99_us=%.0f req_p50_us=%.0f req_p99_us=%.0f requests=%d socket_errors=%d reasons=-\n",
    rate, total_ok, total_bad, total_ok + total_bad, summary.duration,
    latency:percentile(50), latency:percentile(99), latency:percentile(50), latency:percentile(99),
    summary.requests, sock))
end
