import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startIdp, CookieJar, browse, scrapeForm, pkce, authorize, tokenRequest, verifyJwt, decodeJwt,
  REDIRECT_URI, CLIENT_ID, CLIENT_SECRET, CLI_CLIENT_ID, basicAuth,
} from '../test-support/helpers.mjs';

let idp;
before(async () => { idp = await startIdp(); });
after(async () => { await idp?.stop(); });

function authUrl(extra = {}) {
  const { challenge } = pkce();
  return `${idp.issuer}/auth?${new URLSearchParams({
    client_id: CLIENT_ID, response_type: 'code', redirect_uri: REDIRECT_URI,
    scope: 'openid email', state: 's1', code_challenge: challenge, code_challenge_method: 'S256', ...extra,
  })}`;
}

test('the login form has stable field ids and rejects a wrong password', async () => {
  const jar = new CookieJar();
  const page = await browse(jar, authUrl());
  assert.equal(page.status, 200);
  for (const id of ['username', 'password', 'login']) assert.match(page.text, new RegExp(`id="${id}"`));
  assert.doesNotMatch(page.text, /https?:\/\/(?!127\.0\.0\.1)[^"]*\.(css|js)/, 'no external assets');
  const form = scrapeForm(page.text, page.url, 'login-form');
  const bad = await browse(jar, form.action, { method: 'POST', form: { username: 'alice@uniqe.example', password: 'nope' } });
  assert.equal(bad.status, 401);
  assert.match(bad.text, /id="error"/);
  assert.equal(bad.final, undefined, 'no redirect to the client');
  const unknown = await browse(jar, form.action, { method: 'POST', form: { username: 'eve@uniqe.example', password: 'password' } });
  assert.equal(unknown.status, 401);
  // The same form still works with the right password afterwards.
  const good = await browse(jar, form.action, { method: 'POST', form: { username: 'alice@uniqe.example', password: 'password' } });
  assert.ok(good.final?.startsWith(REDIRECT_URI));
  assert.ok(new URL(good.final).searchParams.get('code'));
});

test('a full authorization-code flow with PKCE gives an ID token with email, groups and hd', async () => {
  const jar = new CookieJar();
  const r = await authorize(idp.issuer, jar, { scope: 'openid email profile groups' });
  assert.ok(r.code);
  assert.equal(r.state, r.sentState);
  assert.equal(r.iss, idp.issuer);

  const t = await tokenRequest(idp.issuer, {
    grant_type: 'authorization_code', code: r.code, redirect_uri: REDIRECT_URI, code_verifier: r.verifier,
  });
  assert.equal(t.status, 200, JSON.stringify(t.json));
  assert.equal(t.json.token_type, 'Bearer');
  assert.equal(t.json.refresh_token, undefined, 'no refresh token without offline_access');
  const claims = await verifyJwt(t.json.id_token, `${idp.issuer}/jwks`);
  assert.equal(claims.iss, idp.issuer);
  assert.equal(claims.aud, CLIENT_ID);
  assert.equal(claims.sub, 'alice');
  assert.equal(claims.nonce, r.nonce);
  assert.equal(claims.email, 'alice@uniqe.example');
  assert.equal(claims.email_verified, true);
  assert.equal(claims.name, 'Alice');
  assert.deepEqual(claims.groups, ['staff', 'admins']);
  assert.equal(claims.hd, 'uniqe.example');
  assert.ok(claims.exp - claims.iat <= 3600);

  const ui = await fetch(`${idp.issuer}/me`, { headers: { authorization: `Bearer ${t.json.access_token}` } });
  assert.equal(ui.status, 200);
  const info = await ui.json();
  assert.equal(info.sub, 'alice');
  assert.deepEqual(info.groups, ['staff', 'admins']);
  assert.equal(info.hd, 'uniqe.example');
});

test('a second authorization with the IdP session still alive skips the login form', async () => {
  const jar = new CookieJar();
  await authorize(idp.issuer, jar, { username: 'bob@uniqe.example' });
  const r = await authorize(idp.issuer, jar, { username: 'unused', password: 'unused' });
  const t = await tokenRequest(idp.issuer, {
    grant_type: 'authorization_code', code: r.code, redirect_uri: REDIRECT_URI, code_verifier: r.verifier,
  });
  assert.equal(decodeJwt(t.json.id_token).payload.sub, 'bob');
});

test('users without hd or with an unverified email get the claims they should', async () => {
  for (const [username, check] of [
    ['carol@elsewhere.example', (c) => { assert.equal(c.hd, undefined); assert.deepEqual(c.groups, []); assert.equal(c.email_verified, true); }],
    ['mallory@uniqe.example', (c) => { assert.equal(c.email_verified, false); assert.equal(c.hd, 'uniqe.example'); }],
  ]) {
    const r = await authorize(idp.issuer, new CookieJar(), { username });
    const t = await tokenRequest(idp.issuer, {
      grant_type: 'authorization_code', code: r.code, redirect_uri: REDIRECT_URI, code_verifier: r.verifier,
    });
    const { payload } = decodeJwt(t.json.id_token);
    assert.equal(payload.email, username);
    check(payload);
  }
});

test('offline_access yields a refresh token and refreshing gives new tokens', async () => {
  const r = await authorize(idp.issuer, new CookieJar(), { scope: 'openid email groups offline_access' });
  const t = await tokenRequest(idp.issuer, {
    grant_type: 'authorization_code', code: r.code, redirect_uri: REDIRECT_URI, code_verifier: r.verifier,
  });
  assert.equal(t.status, 200);
  assert.ok(t.json.refresh_token, JSON.stringify(t.json));
  assert.match(t.json.scope, /offline_access/);

  const rt = await tokenRequest(idp.issuer, { grant_type: 'refresh_token', refresh_token: t.json.refresh_token });
  assert.equal(rt.status, 200, JSON.stringify(rt.json));
  assert.ok(rt.json.access_token);
  assert.notEqual(rt.json.access_token, t.json.access_token);
  const { payload } = decodeJwt(rt.json.id_token);
  assert.equal(payload.sub, 'alice');
  assert.deepEqual(payload.groups, ['staff', 'admins']);
});

test('the token endpoint rejects a wrong PKCE verifier and a wrong client secret', async () => {
  const r = await authorize(idp.issuer, new CookieJar());
  const badSecret = await tokenRequest(idp.issuer, {
    grant_type: 'authorization_code', code: r.code, redirect_uri: REDIRECT_URI, code_verifier: r.verifier,
  }, { secret: 'wrong' });
  assert.equal(badSecret.json.error, 'invalid_client');
  const bad = await tokenRequest(idp.issuer, {
    grant_type: 'authorization_code', code: r.code, redirect_uri: REDIRECT_URI, code_verifier: pkce().verifier,
  });
  assert.equal(bad.json.error, 'invalid_grant');
});

test('an authorization request without a PKCE challenge is refused', async () => {
  const q = new URLSearchParams({
    client_id: CLIENT_ID, response_type: 'code', redirect_uri: REDIRECT_URI, scope: 'openid', state: 'x',
  });
  const res = await browse(new CookieJar(), `${idp.issuer}/auth?${q}`);
  const params = new URL(res.final).searchParams;
  assert.equal(params.get('error'), 'invalid_request');
  assert.match(params.get('error_description'), /PKCE/);
});

test('the native CLI client may use any loopback port for its redirect URI', async () => {
  const redirectUri = 'http://127.0.0.1:53682/callback';
  const r = await authorize(idp.issuer, new CookieJar(), {
    clientId: CLI_CLIENT_ID, redirectUri, scope: 'openid email groups offline_access',
  });
  assert.ok(r.code);
  const t = await tokenRequest(idp.issuer, {
    grant_type: 'authorization_code', code: r.code, redirect_uri: redirectUri, code_verifier: r.verifier,
  }, { clientId: CLI_CLIENT_ID, secret: null });
  assert.equal(t.status, 200, JSON.stringify(t.json));
  assert.ok(t.json.refresh_token);
  assert.deepEqual(decodeJwt(t.json.id_token).payload.groups, ['staff', 'admins']);
  const rt = await tokenRequest(idp.issuer, { grant_type: 'refresh_token', refresh_token: t.json.refresh_token }, { clientId: CLI_CLIENT_ID, secret: null });
  assert.equal(rt.status, 200, JSON.stringify(rt.json));
});

test('introspection and revocation work for the confidential client', async () => {
  const r = await authorize(idp.issuer, new CookieJar(), { scope: 'openid offline_access' });
  const t = await tokenRequest(idp.issuer, {
    grant_type: 'authorization_code', code: r.code, redirect_uri: REDIRECT_URI, code_verifier: r.verifier,
  });
  const auth = { authorization: basicAuth(CLIENT_ID, CLIENT_SECRET), 'content-type': 'application/x-www-form-urlencoded' };
  const intro = async (token) => (await fetch(`${idp.issuer}/token/introspection`, {
    method: 'POST', headers: auth, body: new URLSearchParams({ token }),
  })).json();
  const before = await intro(t.json.refresh_token);
  assert.equal(before.active, true);
  assert.equal(before.sub, 'alice');
  const rev = await fetch(`${idp.issuer}/token/revocation`, {
    method: 'POST', headers: auth, body: new URLSearchParams({ token: t.json.refresh_token, token_type_hint: 'refresh_token' }),
  });
  assert.equal(rev.status, 200);
  assert.equal((await intro(t.json.refresh_token)).active, false);
  const rt = await tokenRequest(idp.issuer, { grant_type: 'refresh_token', refresh_token: t.json.refresh_token });
  assert.equal(rt.json.error, 'invalid_grant');
});

test('cancelling at the login form returns access_denied to the client', async () => {
  const jar = new CookieJar();
  const page = await browse(jar, authUrl());
  const form = scrapeForm(page.text, page.url, 'abort-form');
  const res = await browse(jar, form.action, { method: 'POST', form: {} });
  assert.equal(new URL(res.final).searchParams.get('error'), 'access_denied');
});
