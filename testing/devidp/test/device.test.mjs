import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startIdp, CookieJar, request, browse, scrapeForm, tokenRequest, decodeJwt, CLI_CLIENT_ID,
} from '../test-support/helpers.mjs';

let idp;
before(async () => { idp = await startIdp(); });
after(async () => { await idp?.stop(); });

const DEVICE_GRANT = 'urn:ietf:params:oauth:grant-type:device_code';

async function deviceAuthorization(scope) {
  const res = await fetch(`${idp.issuer}/device/auth`, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ client_id: CLI_CLIENT_ID, scope }),
    signal: AbortSignal.timeout(5000),
  });
  assert.equal(res.status, 200);
  return res.json();
}

function poll(deviceCode) {
  return tokenRequest(idp.issuer, { grant_type: DEVICE_GRANT, device_code: deviceCode }, { clientId: CLI_CLIENT_ID, secret: null });
}

// Enter the user code on the verification page, confirm, then log in through the login form.
async function approve(jar, da, { username = 'bob@uniqe.example', password = 'password' } = {}) {
  const input = await request(jar, da.verification_uri);
  assert.equal(input.status, 200);
  assert.match(input.text, /id="user_code"/);
  const inputForm = scrapeForm(input.text, input.url, 'op.deviceInputForm');
  const confirm = await request(jar, inputForm.action, { method: 'POST', form: { ...inputForm.fields, user_code: da.user_code } });
  assert.equal(confirm.status, 200, confirm.text);
  assert.match(confirm.text, /id="confirm"/);
  const confirmForm = scrapeForm(confirm.text, confirm.url, 'op.deviceConfirmForm');
  const login = await browse(jar, confirmForm.action, { method: 'POST', form: confirmForm.fields, stopAt: null });
  assert.equal(login.status, 200);
  assert.match(login.text, /id="username"/);
  assert.match(login.text, /device sign-in/);
  const loginForm = scrapeForm(login.text, login.url, 'login-form');
  return browse(jar, loginForm.action, { method: 'POST', form: { username, password }, stopAt: null });
}

test('the device flow gives the CLI tokens after the user enters the code and logs in', async () => {
  const da = await deviceAuthorization('openid email groups offline_access');
  assert.ok(da.device_code && da.user_code && da.verification_uri && da.verification_uri_complete);
  assert.equal(da.verification_uri, `${idp.issuer}/device`);
  // No interval in the response means the RFC 8628 default of 5 s; tests poll faster (no slow_down).
  assert.ok((da.interval === undefined || da.interval >= 1) && da.expires_in > 0);

  const pending = await poll(da.device_code);
  assert.equal(pending.json.error, 'authorization_pending');

  const done = await approve(new CookieJar(), da);
  assert.equal(done.status, 200);
  assert.match(done.text, /id="device-success"/);

  // Poll (bounded) for the tokens, respecting slow_down.
  let t;
  const deadline = Date.now() + 15000;
  let interval = 0;
  for (;;) {
    t = await poll(da.device_code);
    if (t.status === 200 || !['authorization_pending', 'slow_down'].includes(t.json.error)) break;
    if (t.json.error === 'slow_down') interval += 1000;
    assert.ok(Date.now() < deadline, 'device flow did not complete in time');
    await new Promise((r) => setTimeout(r, interval || 200));
  }
  assert.equal(t.status, 200, JSON.stringify(t.json));
  const { payload } = decodeJwt(t.json.id_token);
  assert.equal(payload.sub, 'bob');
  assert.equal(payload.aud, CLI_CLIENT_ID);
  assert.deepEqual(payload.groups, ['staff']);
  assert.equal(payload.hd, 'uniqe.example');
  assert.ok(t.json.refresh_token);

  const rt = await tokenRequest(idp.issuer, { grant_type: 'refresh_token', refresh_token: t.json.refresh_token }, { clientId: CLI_CLIENT_ID, secret: null });
  assert.equal(rt.status, 200, JSON.stringify(rt.json));
  assert.ok(rt.json.refresh_token, 'public client refresh tokens rotate');
});

test('a wrong password during the device flow does not approve the device', async () => {
  const da = await deviceAuthorization('openid');
  const bad = await approve(new CookieJar(), da, { password: 'wrong' });
  assert.equal(bad.status, 401);
  assert.match(bad.text, /id="error"/);
  const still = await poll(da.device_code);
  assert.equal(still.json.error, 'authorization_pending');
});

test('a wrong user code shows an error on the code page', async () => {
  const jar = new CookieJar();
  const input = await request(jar, `${idp.issuer}/device`);
  const form = scrapeForm(input.text, input.url, 'op.deviceInputForm');
  const res = await request(jar, form.action, { method: 'POST', form: { ...form.fields, user_code: 'BCDF-GHJK' } });
  assert.match(res.text, /id="error"/);
});

test('the verification_uri_complete link leads straight to the confirmation page', async () => {
  const da = await deviceAuthorization('openid');
  const jar = new CookieJar();
  const autopost = await request(jar, da.verification_uri_complete);
  assert.equal(autopost.status, 200);
  const form = scrapeForm(autopost.text, autopost.url);
  assert.equal(form.fields.user_code, da.user_code);
  const confirm = await request(jar, form.action, { method: 'POST', form: form.fields });
  assert.match(confirm.text, /id="confirm"/);
  assert.match(confirm.text, new RegExp(`id="user-code">${da.user_code}<`));
});
