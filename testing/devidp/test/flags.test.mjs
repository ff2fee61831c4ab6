import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import {
  startIdp, CookieJar, authorize, tokenRequest, verifyJwt, REDIRECT_URI,
} from '../test-support/helpers.mjs';

function code(idp, r) {
  return tokenRequest(idp.issuer, {
    grant_type: 'authorization_code', code: r.code, redirect_uri: REDIRECT_URI, code_verifier: r.verifier,
  });
}

test('--users, --id-token-alg and --id-token-ttl change users, signing and ID token lifetime', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'devidp-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const usersFile = path.join(dir, 'users.json');
  fs.writeFileSync(usersFile, JSON.stringify([
    { sub: 'u-42', email: 'dave@uniqe.example', password: 'hunter2', name: 'Dave', groups: ['ops'], hd: 'uniqe.example' },
  ]));
  const idp = await startIdp(['--users', usersFile, '--id-token-alg', 'ES256', '--id-token-ttl', '120']);
  t.after(() => idp.stop());

  const r = await authorize(idp.issuer, new CookieJar(), { username: 'dave@uniqe.example', password: 'hunter2' });
  const tok = await code(idp, r);
  assert.equal(tok.status, 200, JSON.stringify(tok.json));
  const claims = await verifyJwt(tok.json.id_token, `${idp.issuer}/jwks`);
  assert.equal(claims.sub, 'u-42');
  assert.deepEqual(claims.groups, ['ops']);
  assert.equal(claims.exp - claims.iat, 120);
  await assert.rejects(authorize(idp.issuer, new CookieJar(), { username: 'alice@uniqe.example' }), /no redirect to client/);
});

test('--strict-offline-access only honours offline_access together with prompt=consent', async (t) => {
  const idp = await startIdp(['--strict-offline-access']);
  t.after(() => idp.stop());
  const plain = await code(idp, await authorize(idp.issuer, new CookieJar(), { scope: 'openid offline_access' }));
  assert.equal(plain.json.refresh_token, undefined);
  const consent = await code(idp, await authorize(idp.issuer, new CookieJar(), {
    scope: 'openid offline_access', extra: { prompt: 'consent' },
  }));
  assert.ok(consent.json.refresh_token);
});

test('a bad flag makes the server exit with status 2 and a usage message', async () => {
  await assert.rejects(startIdp(['--no-such-flag']), /exited early \(2\)[\s\S]*usage:/);
});
