// A legacy OAuth 2.0 server on Express 4, without PKCE: the kind pkce-proxy sits in front of.
// Query strings and form bodies go through qs (extended), JSON bodies are parsed too (as
// express-generator apps do), and the token endpoint reads {...req.query, ...req.body}.
//   node server.js [PORT]   prints "listening on 127.0.0.1:PORT"
'use strict';
const crypto = require('crypto');
const express = require('express');

const app = express();
app.set('query parser', 'extended');
app.use(express.urlencoded({ extended: true }));
app.use(express.json());

const codes = {};            // code -> {client_id, redirect_uri, used}
const seen = { token_requests: 0, redeemed: [] };

app.get('/authorize', (req, res) => {   // auto-approves: no login page
  const { response_type, client_id, redirect_uri, state } = req.query;
  if (response_type !== 'code' || !client_id || !redirect_uri) {
    return res.status(400).json({ error: 'invalid_request' });
  }
  const code = crypto.randomBytes(16).toString('hex');
  codes[code] = { client_id, redirect_uri, used: false };
  const to = new URL(redirect_uri);
  to.searchParams.set('code', code);
  if (state !== undefined) to.searchParams.set('state', state);
  res.redirect(302, to.toString());
});

app.post('/token', (req, res) => {
  seen.token_requests += 1;
  const p = { ...req.query, ...req.body };
  const entry = codes[p.code];
  if (p.grant_type !== 'authorization_code') {
    return res.status(400).json({ error: 'unsupported_grant_type' });
  }
  if (!entry || entry.used || entry.client_id !== p.client_id) {
    return res.status(400).json({ error: 'invalid_grant' });
  }
  entry.used = true;
  seen.redeemed.push(String(p.code));
  res.set('Cache-Control', 'no-store');
  res.json({ access_token: crypto.randomBytes(16).toString('hex'), token_type: 'Bearer', expires_in: 3600 });
});

app.get('/_seen', (req, res) => res.json(seen));

const server = app.listen(Number(process.argv[2] || 0), '127.0.0.1', () => {
  console.log(`listening on 127.0.0.1:${server.address().port}`);
});
process.on('SIGTERM', () => process.exit(0));
