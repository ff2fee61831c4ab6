import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startIdp } from '../test-support/helpers.mjs';

let idp;
before(async () => { idp = await startIdp(); });
after(async () => { await idp?.stop(); });

test('the ready line is the first stdout line and names the issuer and port', () => {
  assert.equal(idp.ready, true);
  assert.equal(idp.issuer, `http://127.0.0.1:${idp.port}`);
  assert.ok(idp.port > 0);
});

test('the discovery document advertises the endpoints and features Sekisho relies on', async () => {
  const res = await fetch(`${idp.issuer}/.well-known/openid-configuration`, { signal: AbortSignal.timeout(5000) });
  assert.equal(res.status, 200);
  const d = await res.json();
  assert.equal(d.issuer, idp.issuer);
  for (const ep of ['authorization_endpoint', 'token_endpoint', 'userinfo_endpoint', 'jwks_uri',
    'end_session_endpoint', 'device_authorization_endpoint', 'revocation_endpoint', 'introspection_endpoint']) {
    assert.ok(d[ep]?.startsWith(`${idp.issuer}/`), `${ep} = ${d[ep]}`);
  }
  assert.ok(d.code_challenge_methods_supported.includes('S256'));
  assert.equal(d.backchannel_logout_supported, true);
  assert.equal(d.backchannel_logout_session_supported, true);
  for (const s of ['openid', 'email', 'profile', 'groups', 'offline_access']) {
    assert.ok(d.scopes_supported.includes(s), `scope ${s}`);
  }
  for (const c of ['sub', 'email', 'email_verified', 'name', 'groups', 'hd']) {
    assert.ok(d.claims_supported.includes(c), `claim ${c}`);
  }
  assert.ok(d.grant_types_supported.includes('urn:ietf:params:oauth:grant-type:device_code'));
  assert.ok(d.grant_types_supported.includes('refresh_token'));
});

test('the JWKS publishes exactly the public signing key', async () => {
  const { keys } = await (await fetch(`${idp.issuer}/jwks`)).json();
  assert.equal(keys.length, 1);
  assert.equal(keys[0].alg, 'RS256');
  assert.equal(keys[0].d, undefined, 'private part must not leak');
});

test('the dev admin endpoints answer on loopback', async () => {
  const health = await (await fetch(`${idp.issuer}/__dev/health`)).json();
  assert.deepEqual(health, { ok: true, issuer: idp.issuer });
  const users = await (await fetch(`${idp.issuer}/__dev/users`)).json();
  assert.deepEqual(users.map((u) => u.email).sort(), [
    'alice@uniqe.example', 'bob@uniqe.example', 'carol@elsewhere.example', 'mallory@uniqe.example']);
});

test('the server prints the users on stderr and stops cleanly on SIGTERM', async () => {
  const other = await startIdp();
  assert.match(other.stderr(), /alice@uniqe\.example/);
  assert.match(other.stderr(), /mallory@uniqe\.example .*NOT verified/);
  assert.equal(other.stdout().trim().split('\n').length, 1, 'stdout carries only the ready line');
  assert.equal(await other.stop(), 0);
});
