// openid-client (on oauth4webapi) through pkce-proxy, against the legacy Authlib server.
//
// RFC 8414 discovery through the proxy, authorization code + PKCE S256 for the public client,
// state checked by the library (expectedState) and by hand, protected resource, refresh, and
// a wrong verifier that the library must surface as invalid_grant.
//
// Prints RESULT|<suite>|<check>|PASS or FAIL|<detail> lines; exits 1 on any failure.
// Usage: node client.mjs PROXY_URL LEGACY_URL

import * as client from 'openid-client';

const [proxy, legacy] = process.argv.slice(2).map((u) => u.replace(/\/$/, ''));
if (!proxy || !legacy) {
  console.error('usage: node client.mjs PROXY_URL LEGACY_URL');
  process.exit(2);
}
const CALLBACK = 'http://127.0.0.1:9/callback';
const SUITE = 'node-openid-client';
const results = [];

function record(suite, name, ok, detail = '') {
  results.push(ok);
  const d = String(detail).replace(/[|\n]/g, ' ').slice(0, 300);
  console.log(`RESULT|${suite}|${name}|${ok ? 'PASS' : 'FAIL'}|${d}`);
}

async function check(suite, name, fn) {
  try {
    record(suite, name, true, (await fn()) ?? '');
  } catch (e) {
    record(suite, name, false, `${e?.name}: ${e?.message}${e?.error ? ` error=${e.error}` : ''}`);
  }
}

function expect(cond, msg) {
  if (!cond) throw new Error(msg);
}

// A minimal browser: manual redirects, a cookie jar, the legacy sign-in form.
async function browse(url) {
  const jar = new Map();
  const cookieHeader = () => [...jar].map(([k, v]) => `${k}=${v}`).join('; ');
  const keep = (res) => {
    for (const c of res.headers.getSetCookie()) {
      const [pair] = c.split(';');
      const i = pair.indexOf('=');
      jar.set(pair.slice(0, i).trim(), pair.slice(i + 1).trim());
    }
  };
  for (let hop = 0; hop < 10; hop++) {
    const res = await fetch(url, {
      redirect: 'manual',
      headers: { cookie: cookieHeader() },
      signal: AbortSignal.timeout(10_000),
    });
    keep(res);
    const loc = res.headers.get('location');
    if (res.status >= 300 && res.status < 400 && loc) {
      const next = new URL(loc, url).href;
      if (next.startsWith(CALLBACK)) return new URL(next);
      url = next;
      continue;
    }
    const body = await res.text();
    if (res.status === 200 && new URL(url).pathname === '/login') {
      const m = body.match(/name="next" value="([^"]*)"/);
      expect(m, 'login form without next');
      const next = m[1].replace(/&amp;/g, '&').replace(/&#39;/g, "'").replace(/&quot;/g, '"')
        .replace(/&lt;/g, '<').replace(/&gt;/g, '>');
      const post = await fetch(new URL('/login', url), {
        method: 'POST',
        redirect: 'manual',
        headers: { cookie: cookieHeader(), 'content-type': 'application/x-www-form-urlencoded' },
        body: new URLSearchParams({ next, username: 'alice', password: 'wonderland' }),
        signal: AbortSignal.timeout(10_000),
      });
      keep(post);
      expect(post.status === 302, `sign-in answered ${post.status}`);
      url = new URL(post.headers.get('location'), url).href;
      continue;
    }
    throw new Error(`browser stopped at ${res.status}: ${body.slice(0, 200)}`);
  }
  throw new Error('too many redirects');
}

const opts = { execute: [client.allowInsecureRequests], algorithm: 'oauth2' };

async function startFlow(config) {
  const verifier = client.randomPKCECodeVerifier();
  const challenge = await client.calculatePKCECodeChallenge(verifier);
  const state = client.randomState();
  const url = client.buildAuthorizationUrl(config, {
    redirect_uri: CALLBACK,
    scope: 'profile',
    code_challenge: challenge,
    code_challenge_method: 'S256',
    state,
  });
  const cb = await browse(url.href);
  return { verifier, state, cb };
}

let config;
await check(SUITE, 'RFC 8414 discovery via proxy: supportsPKCE(S256)', async () => {
  const direct = await client.discovery(new URL(legacy), 'public-app', undefined, client.None(), opts);
  config = await client.discovery(new URL(proxy), 'public-app', undefined, client.None(), opts);
  const meta = config.serverMetadata();
  expect(meta.issuer === proxy, `issuer ${meta.issuer}`);
  expect(!direct.serverMetadata().supportsPKCE(), 'legacy claims PKCE?');
  expect(meta.supportsPKCE('S256'), 'proxy metadata lacks S256');
  return `legacy: supportsPKCE()=false; via proxy: ${JSON.stringify(meta.code_challenge_methods_supported)}`;
});

let flow;
let tokens;
await check(SUITE, 'authorize -> sign-in -> callback, state exact', async () => {
  expect(config, 'no discovery');
  flow = await startFlow(config);
  expect(flow.cb.searchParams.getAll('state').length === 1 &&
    flow.cb.searchParams.get('state') === flow.state, `state ${flow.state} vs ${flow.cb}`);
  return 'state round-tripped';
});

await check(SUITE, 'token exchange (pkceCodeVerifier, expectedState)', async () => {
  expect(flow, 'no flow');
  tokens = await client.authorizationCodeGrant(config, flow.cb, {
    pkceCodeVerifier: flow.verifier,
    expectedState: flow.state,
  });
  expect(tokens.access_token && tokens.refresh_token, JSON.stringify(tokens));
  return `token_type=${tokens.token_type} expires_in=${tokens.expiresIn()}`;
});

await check(SUITE, 'protected resource + refresh', async () => {
  expect(tokens, 'no tokens');
  const url = new URL(`${proxy}/api/me`);
  let res = await client.fetchProtectedResource(config, tokens.access_token, url, 'GET');
  const me = await res.json();
  expect(res.status === 200 && me.sub === 'alice', `${res.status} ${JSON.stringify(me)}`);
  const fresh = await client.refreshTokenGrant(config, tokens.refresh_token);
  expect(fresh.access_token && fresh.access_token !== tokens.access_token, 'no new token');
  res = await client.fetchProtectedResource(config, fresh.access_token, url, 'GET');
  expect(res.status === 200, `after refresh: ${res.status}`);
  return 'resource 200, refreshed, resource 200';
});

await check('attack', 'node: replay used code via the library -> invalid_grant', async () => {
  expect(tokens, 'no redeemed code');
  try {
    await client.authorizationCodeGrant(config, flow.cb, {
      pkceCodeVerifier: flow.verifier,
      expectedState: flow.state,
    });
  } catch (e) {
    expect(e.error === 'invalid_grant' && e.status === 400, `${e.name} ${e.status} ${e.error}`);
    // The legacy server (Werkzeug) names itself in Server; the proxy's own answers do not.
    const server = e.response?.headers?.get('server') ?? '';
    expect(!server.includes('Werkzeug'), `refused by the legacy server, not the proxy: ${e.error_description}`);
    return `library raised ${e.name}: 400 ${e.error} (${e.error_description})`;
  }
  throw new Error('replay redeemed!');
});

await check('attack', 'node: wrong verifier via the library -> invalid_grant', async () => {
  expect(config, 'no discovery');
  const f = await startFlow(config);
  try {
    await client.authorizationCodeGrant(config, f.cb, {
      pkceCodeVerifier: client.randomPKCECodeVerifier(),
      expectedState: f.state,
    });
  } catch (e) {
    expect(e.error === 'invalid_grant' && e.status === 400, `${e.name} ${e.status} ${e.error}`);
    // The legacy server (Werkzeug) names itself in Server; the proxy's own answers do not.
    const server = e.response?.headers?.get('server') ?? '';
    expect(!server.includes('Werkzeug'), `refused by the legacy server, not the proxy: ${e.error_description}`);
    return `library raised ${e.name}: 400 ${e.error} (${e.error_description})`;
  }
  throw new Error('wrong verifier redeemed!');
});

const failed = results.filter((ok) => !ok).length;
console.error(`node client: ${results.length - failed} passed, ${failed} failed`);
process.exit(failed || results.length === 0 ? 1 : 0);
