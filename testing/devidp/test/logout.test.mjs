import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startIdp, startReceiver, CookieJar, request, browse, scrapeForm, authorize, tokenRequest,
  verifyJwt, decodeJwt, REDIRECT_URI, POST_LOGOUT_URI, CLIENT_ID,
} from '../test-support/helpers.mjs';

const BACKCHANNEL_EVENT = 'http://schemas.openid.net/event/backchannel-logout';

let idp;
let receiver;
before(async () => {
  receiver = await startReceiver();
  idp = await startIdp(['--backchannel-logout-uri', receiver.url]);
});
after(async () => {
  await idp?.stop();
  await receiver?.close();
});

async function login(jar, username) {
  const r = await authorize(idp.issuer, jar, { username, scope: 'openid email groups offline_access' });
  const t = await tokenRequest(idp.issuer, {
    grant_type: 'authorization_code', code: r.code, redirect_uri: REDIRECT_URI, code_verifier: r.verifier,
  });
  assert.equal(t.status, 200, JSON.stringify(t.json));
  return t.json;
}

async function checkLogoutToken(entry, { sub, sid }) {
  assert.equal(entry.method, 'POST');
  assert.match(entry.contentType, /application\/x-www-form-urlencoded/);
  const claims = await verifyJwt(entry.form.logout_token, `${idp.issuer}/jwks`);
  assert.equal(decodeJwt(entry.form.logout_token).header.typ, 'logout+jwt');
  assert.equal(claims.iss, idp.issuer);
  assert.equal(claims.aud, CLIENT_ID);
  assert.equal(claims.sub, sub);
  assert.equal(claims.sid, sid);
  assert.ok(claims.jti && claims.iat);
  assert.deepEqual(claims.events, { [BACKCHANNEL_EVENT]: {} });
  assert.equal(claims.nonce, undefined);
}

test('RP-initiated logout with id_token_hint ends the session, redirects back and sends a back-channel logout token', async () => {
  const jar = new CookieJar();
  const tokens = await login(jar, 'alice@uniqe.example');
  const { sid, sub } = decodeJwt(tokens.id_token).payload;
  assert.ok(sid, 'ID token carries sid when the client requires back-channel sessions');

  const q = new URLSearchParams({
    id_token_hint: tokens.id_token, post_logout_redirect_uri: POST_LOGOUT_URI, state: 'bye',
  });
  const page = await request(jar, `${idp.issuer}/session/end?${q}`);
  assert.equal(page.status, 200);
  assert.match(page.text, /id="logout"/);
  const form = scrapeForm(page.text, page.url, 'op.logoutForm');
  const done = await browse(jar, form.action, { method: 'POST', form: { ...form.fields, logout: 'yes' }, stopAt: POST_LOGOUT_URI });
  assert.ok(done.final, `expected a redirect to ${POST_LOGOUT_URI}, got ${done.status}`);
  assert.equal(new URL(done.final).searchParams.get('state'), 'bye');

  const entry = await receiver.waitFor((e) => decodeJwt(e.form.logout_token).payload.sid === sid);
  await checkLogoutToken(entry, { sub, sid });

  // offline_access grants outlive an IdP logout (oidc-provider marks them persistsLogout):
  // the refresh token still works; reacting to the back-channel logout is the RP's job.
  // The browser, though, must log in again.
  const rt = await tokenRequest(idp.issuer, { grant_type: 'refresh_token', refresh_token: tokens.refresh_token });
  assert.equal(rt.status, 200, JSON.stringify(rt.json));
  const again = await browse(jar, `${idp.issuer}/auth?${new URLSearchParams({
    client_id: CLIENT_ID, response_type: 'code', redirect_uri: REDIRECT_URI, scope: 'openid',
    code_challenge: 'E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM', code_challenge_method: 'S256',
  })}`);
  assert.match(again.text, /id="login-form"/);
});

test('the dev logout endpoint ends all sessions of a user and sends back-channel logout for each', async () => {
  const jarA = new CookieJar();
  const jarB = new CookieJar();
  const t1 = await login(jarA, 'bob@uniqe.example');
  const t2 = await login(jarB, 'bob@uniqe.example');
  const other = await login(new CookieJar(), 'carol@elsewhere.example');
  const sid1 = decodeJwt(t1.id_token).payload.sid;
  const sid2 = decodeJwt(t2.id_token).payload.sid;
  assert.notEqual(sid1, sid2);

  const res = await fetch(`${idp.issuer}/__dev/logout?sub=bob`, { method: 'POST', signal: AbortSignal.timeout(10000) });
  assert.equal(res.status, 200);
  const out = await res.json();
  assert.equal(out.sessions, 2);
  assert.deepEqual(out.backchannel.map((b) => b.ok), [true, true]);

  for (const sid of [sid1, sid2]) {
    const entry = await receiver.waitFor((e) => decodeJwt(e.form.logout_token).payload.sid === sid);
    await checkLogoutToken(entry, { sub: 'bob', sid });
  }
  for (const t of [t1, t2]) {
    const rt = await tokenRequest(idp.issuer, { grant_type: 'refresh_token', refresh_token: t.refresh_token });
    assert.equal(rt.json.error, 'invalid_grant');
  }
  const carol = await tokenRequest(idp.issuer, { grant_type: 'refresh_token', refresh_token: other.refresh_token });
  assert.equal(carol.status, 200, 'other users keep their sessions');

  const byEmail = await fetch(`${idp.issuer}/__dev/logout?email=carol@elsewhere.example`, { method: 'POST' });
  assert.equal((await byEmail.json()).sessions, 1);
});

test('the logout confirmation page submits itself for browsers', async () => {
  const jar = new CookieJar();
  const tokens = await login(jar, 'carol@elsewhere.example');
  const page = await request(jar, `${idp.issuer}/session/end?${new URLSearchParams({ id_token_hint: tokens.id_token })}`);
  assert.match(page.text, /<script>document\.getElementById\('logout'\)\.click\(\);<\/script>/);
  const form = scrapeForm(page.text, page.url, 'op.logoutForm');
  const done = await browse(jar, form.action, { method: 'POST', form: { ...form.fields, logout: 'yes' }, stopAt: null });
  assert.match(done.text, /id="logged-out"/);
});

test('RP-initiated logout revokes the tokens of grants without offline_access', async () => {
  const jar = new CookieJar();
  const r = await authorize(idp.issuer, jar, { username: 'alice@uniqe.example', scope: 'openid email' });
  const t = await tokenRequest(idp.issuer, {
    grant_type: 'authorization_code', code: r.code, redirect_uri: REDIRECT_URI, code_verifier: r.verifier,
  });
  const me = () => fetch(`${idp.issuer}/me`, { headers: { authorization: `Bearer ${t.json.access_token}` } });
  assert.equal((await me()).status, 200);
  const page = await request(jar, `${idp.issuer}/session/end?${new URLSearchParams({ id_token_hint: t.json.id_token })}`);
  const form = scrapeForm(page.text, page.url, 'op.logoutForm');
  await browse(jar, form.action, { method: 'POST', form: { ...form.fields, logout: 'yes' }, stopAt: null });
  assert.equal((await me()).status, 401);
});
