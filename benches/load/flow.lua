-- wrk script: full OAuth authorization-code flows with PKCE (S256), authorize -> token.
--
-- Each flow:
--   1. GET /authorize?response_type=code&client_id=..&redirect_uri=..&scope=openid
--          &state=<unique>&code_challenge=<S256>&code_challenge_method=S256
--   2. expects 302; Location must go to redirect_uri, carry `code`, and carry `state`
--      byte for byte as sent (the proxy swaps it for a handle upstream and must put it back)
--   3. POST /token  grant_type=authorization_code&code&redirect_uri&client_id&code_verifier
--   4. expects 200 with an access_token: the flow is complete
--
-- wrk gives Lua no connection identity: request() and response() run per thread, for all
-- of that thread's connections, and the next request() on a connection is not called right
-- after that connection's response(). So flows are chained per thread, not per connection:
-- a 302 puts its code on the thread's queue, and request() sends a queued token request
-- before it starts a new flow. Every flow still runs authorize -> token in order, with at
-- most one request in flight per connection (so at most CONNECTIONS flows in flight).
-- Responses identify their flow: the authorize response by its `state` (unique per flow),
-- the token response by the X-Load-Flow header the test upstream echoes (the proxies pass
-- it through). A refusal (4xx/5xx from the proxy) carries neither, and ends its flow.
--
-- Settings (environment): LOAD_PAIRS (the file from gen_pairs.py, required),
-- LOAD_CLIENT_ID, LOAD_REDIRECT_URI, LOAD_AUTHORIZE_PATH, LOAD_TOKEN_PATH, LOAD_SCOPE.
--
-- done() prints a human summary and one machine-readable line starting with "RESULT".

local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } load_timespec;
int clock_gettime(int clk_id, load_timespec *tp);
]]
local CLOCK_MONOTONIC = 1
local ts = ffi.new("load_timespec")
local function now_us()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, ts)
  return tonumber(ts.tv_sec) * 1e6 + tonumber(ts.tv_nsec) / 1e3
end

local function env(name, default)
  local v = os.getenv(name)
  if v == nil or v == "" then return default end
  return v
end

local function urlencode(s)
  return (s:gsub("[^%w%-%._~]", function(c) return string.format("%%%02X", c:byte()) end))
end

local client_id      = env("LOAD_CLIENT_ID", "load-client")
local redirect_uri   = env("LOAD_REDIRECT_URI", "https://client.example/callback")
local authorize_path = env("LOAD_AUTHORIZE_PATH", "/authorize")
local token_path     = env("LOAD_TOKEN_PATH", "/token")
local scope          = env("LOAD_SCOPE", "openid")
local pairs_file     = env("LOAD_PAIRS", nil)

-- The pairs, loaded in every Lua state (main and per thread).
local verifiers, challenges = {}, {}
do
  if pairs_file == nil then error("flow.lua: set LOAD_PAIRS to the file gen_pairs.py wrote") end
  local text = dofile(pairs_file)
  for v, c in text:gmatch("([%w%-_]+) ([%w%-_]+)") do
    verifiers[#verifiers + 1] = v
    challenges[#challenges + 1] = c
  end
  if #verifiers == 0 then error("flow.lua: no pairs in " .. pairs_file) end
end
local npairs = #verifiers

local authorize_prefix = authorize_path .. "?response_type=code&client_id=" .. urlencode(client_id)
    .. "&redirect_uri=" .. urlencode(redirect_uri) .. "&scope=" .. urlencode(scope) .. "&state="
local token_prefix = "grant_type=authorization_code&client_id=" .. urlencode(client_id)
    .. "&redirect_uri=" .. urlencode(redirect_uri) .. "&code="
local target_prefix = redirect_uri .. "?"

-- Main state: the threads, for done().
local threads = {}
function setup(thread)
  thread:set("tid", #threads + 1)
  threads[#threads + 1] = thread
end

-- Per-thread state (globals of the thread's Lua state, so thread:get can read them).
local tid, seq, next_pair, salt
local pending = {}      -- state -> { pair index, start time }   (authorize in flight)
local ready = {}        -- queue of flows whose code came back: { code, pair, state, t0 }
local ready_head, ready_tail = 1, 0
local redeeming = {}    -- state -> { t0 }                        (token in flight)
stats = {}              -- counters, read by done()
hist = {}               -- flow latency histogram: bucket -> count, read by done()
samples = {}            -- a few refused responses, for the report
local BUCKETS_PER_E = 1 / math.log(1.01)   -- 1 % wide latency buckets

local function count(name, n)
  stats[name] = (stats[name] or 0) + (n or 1)
end

local function sample(kind, status, body)
  if #samples < 5 then
    local snippet = (body or ""):sub(1, 200):gsub("%s+", " ")
    samples[#samples + 1] = string.format("%s status=%d body=%s", kind, status, snippet)
  end
end

local function refuse(reason, status, body)
  count("refused")
  count("refused_" .. reason)
  sample(reason, status or 0, body)
end

function init(args)
  tid = wrk.thread:get("tid") or 1
  seq = 0
  -- Threads start at different places in the pair list.
  next_pair = ((tid - 1) * 7919) % npairs
  salt = string.format("%08x", math.random(0, 0x7fffffff))
  stats = { started = 0, completed = 0, refused = 0 }
end

function request()
  if ready_head <= ready_tail then
    local f = ready[ready_head]
    ready[ready_head] = nil
    ready_head = ready_head + 1
    redeeming[f.state] = f.t0
    local body = token_prefix .. urlencode(f.code) .. "&code_verifier=" .. verifiers[f.pair]
    return wrk.format("POST", token_path, {
      ["Content-Type"] = "application/x-www-form-urlencoded",
      ["Accept"] = "application/json",
      ["X-Load-Flow"] = f.state,
    }, body)
  end
  seq = seq + 1
  next_pair = next_pair % npairs + 1
  -- 32 characters of [A-Za-z0-9.-]: unchanged by form encoding, so "exactly" is byte for byte.
  local state = string.format("st-%02d-%s-%016d", tid, salt, seq)
  pending[state] = { next_pair, now_us() }
  count("started")
  return wrk.format("GET", authorize_prefix .. state .. "&code_challenge=" .. challenges[next_pair]
    .. "&code_challenge_method=S256", { ["Accept"] = "application/json" })
end

function response(status, headers, body)
  if status == 302 then
    local location = headers["Location"] or headers["location"]
    if location == nil then return refuse("no_location", status, body) end
    local state = location:match("[?&#]state=([^&#]*)")
    local p = state and pending[state]
    if p == nil then
      -- No state, or not one this thread sent: it did not come back exactly.
      return refuse("state_mismatch", status, location)
    end
    pending[state] = nil
    if location:sub(1, #target_prefix) ~= target_prefix then
      return refuse("wrong_target", status, location)
    end
    local code = location:match("[?&]code=([^&#]*)")
    if code == nil or code == "" then return refuse("no_code", status, location) end
    ready_tail = ready_tail + 1
    ready[ready_tail] = { code = code, pair = p[1], state = state, t0 = p[2] }
    return
  end
  local flow = headers["X-Load-Flow"] or headers["x-load-flow"]
  local t0 = flow and redeeming[flow]
  if status == 200 and t0 ~= nil and body:find('"access_token"', 1, true) then
    redeeming[flow] = nil
    count("completed")
    local us = now_us() - t0
    if us < 1 then us = 1 end
    local b = math.floor(math.log(us) * BUCKETS_PER_E)
    hist[b] = (hist[b] or 0) + 1
    return
  end
  if t0 ~= nil then redeeming[flow] = nil end
  if status == 200 then return refuse("token_unmatched", status, body) end
  -- A refusal from the proxy (4xx/5xx) or anything else unexpected ends a flow.
  return refuse("status_" .. status, status, body)
end

local function percentile(merged, total, q)
  local keys = {}
  for k in pairs(merged) do keys[#keys + 1] = k end
  table.sort(keys)
  local want, seen = q * total, 0
  for _, k in ipairs(keys) do
    seen = seen + merged[k]
    if seen >= want then return math.exp((k + 0.5) / BUCKETS_PER_E) end
  end
  return 0
end

function done(summary, latency, requests)
  local totals, merged, hcount, all_samples = {}, {}, 0, {}
  for _, t in ipairs(threads) do
    for k, v in pairs(t:get("stats") or {}) do totals[k] = (totals[k] or 0) + v end
    for k, v in pairs(t:get("hist") or {}) do
      merged[k] = (merged[k] or 0) + v
      hcount = hcount + v
    end
    for _, s in ipairs(t:get("samples") or {}) do all_samples[#all_samples + 1] = s end
  end
  local secs = summary.duration / 1e6
  local completed, refused, started = totals.completed or 0, totals.refused or 0, totals.started or 0
  local rate = completed / secs
  local p50 = hcount > 0 and percentile(merged, hcount, 0.50) or 0
  local p99 = hcount > 0 and percentile(merged, hcount, 0.99) or 0
  local e = summary.errors
  local sock = e.connect + e.read + e.write + e.timeout
  local reasons = {}
  for k, v in pairs(totals) do
    if k:sub(1, 8) == "refused_" then reasons[#reasons + 1] = k:sub(9) .. ":" .. v end
  end
  table.sort(reasons)
  io.write(string.format(
    "flows: %d completed, %d refused/unmatched, %d started (%d still in flight at the end)\n",
    completed, refused, started, started - completed - refused))
  io.write(string.format("flows/s: %.1f   flow latency p50 %.2f ms, p99 %.2f ms (authorize sent -> token 200)\n",
    rate, p50 / 1e3, p99 / 1e3))
  io.write(string.format("HTTP requests: %d (%.1f/s), request latency p50 %.2f ms, p99 %.2f ms\n",
    summary.requests, summary.requests / secs, latency:percentile(50) / 1e3, latency:percentile(99) / 1e3))
  io.write(string.format("socket errors: connect %d, read %d, write %d, timeout %d\n",
    e.connect, e.read, e.write, e.timeout))
  if #reasons > 0 then io.write("refused/unmatched by reason: " .. table.concat(reasons, ", ") .. "\n") end
  for i = 1, math.min(#all_samples, 5) do io.write("  sample: " .. all_samples[i] .. "\n") end
  io.write(string.format(
    "RESULT scenario=flow rate=%.1f completed=%d refused=%d started=%d duration_us=%d "
    .. "p50_us=%.0f p99_us=%.0f req_p50_us=%.0f req_p99_us=%.0f requests=%d socket_errors=%d reasons=%s\n",
    rate, completed, refused, started, summary.duration, p50, p99,
    latency:percentile(50), latency:percentile(99), summary.requests, sock,
    #reasons > 0 and table.concat(reasons, ",") or "-"))
end
