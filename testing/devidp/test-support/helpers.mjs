// Shared helpers for the devidp tests: start the server as a child process, a tiny cookie jar,
// a manual-redirect browser, form scraping, PKCE and JWT helpers. fetch only, no dependencies.
import { spawn } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as http from 'node:http';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';

const SERVER = fileURLToPath(new URL('../server.mjs', import.meta.url));

export const REDIRECT_URI = 'http://127.0.0.1:9/.sekisho/callback';
export const POST_LOGOUT_URI = 'http://127.0.0.1:9/';
export const CLIENT_ID = 'sekisho';
export const CLIENT_SECRET = 'sekisho-dev-secret';
export const CLI_CLIENT_ID = 'sekisho-cli';

// Start server.mjs on port 0; resolve once the ready line is on stdout (bounded wait).
export async function startIdp(extraArgs = [], { timeoutMs = 15000 } = {}) {
  const child = spawn(process.execPath, [
    SERVER, '--port', '0', '--redirect-uri', REDIRECT_URI,
    '--post-logout-redirect-uri', POST_LOGOUT_URI, ...extraArgs,
  ], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (d) => { stderr += d; });
  let stdout = '';
  child.stdout.setEncoding('utf8');

  const ready = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`devidp not ready after ${timeoutMs} ms; stderr:\n${stderr}`));
    }, timeoutMs);
    child.stdout.on('data', (d) => {
      stdout += d;
      const nl = stdout.indexOf('\n');
      if (nl !== -1) {
        clearTimeout(timer);
        try {
          resolve(JSON.parse(stdout.slice(0, nl)));
        } catch (err) {
          child.kill('SIGKILL');
          reject(new Error(`first stdout line is not JSON: ${stdout.slice(0, nl)}`));
        }
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`devidp exited early (${code}); stderr:\n${stderr}`));
    });
  });

  return {
    ...ready,
    child,
    stderr: () => stderr,
    stdout: () => stdout,
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return child.exitCode;
      const exited = once(child, 'exit');
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
      const [code] = await exited;
      clearTimeout(timer);
      return code;
    },
  };
}

export class CookieJar {
  constructor() { this.cookies = new Map(); }

  header() {
    return [...this.cookies].map(([k, v]) => `${k}=${v}`).join('; ');
  }

  store(res) {
    for (const line of res.headers.getSetCookie()) {
      const [pair, ...attrs] = line.split(';');
      const eq = pair.indexOf('=');
      const name = pair.slice(0, eq).trim();
      const value = pair.slice(eq + 1).trim();
      const expired = attrs.some((a) => /^\s*expires=thu, 01 jan 1970/i.test(a)) || value === '';
      if (expired) this.cookies.delete(name);
      else this.cookies.set(name, value);
    }
  }
}

// One request with cookies, never following redirects.
export async function request(jar, url, { method = 'GET', form, headers = {} } = {}) {
  const h = { ...headers };
  const cookie = jar?.header();
  if (cookie) h.cookie = cookie;
  let body;
  if (form) {
    body = new URLSearchParams(form).toString();
    h['content-type'] = 'application/x-www-form-urlencoded';
  }
  const res = await fetch(url, {
    method, headers: h, body, redirect: 'manual', signal: AbortSignal.timeout(10000),
  });
  jar?.store(res);
  const text = await res.text();
  return { status: res.status, headers: res.headers, text, url, location: res.headers.get('location') };
}

// Follow redirects (bounded) like a browser would, stopping at a URL starting with stopAt.
export async function browse(jar, url, { method = 'GET', form, stopAt = REDIRECT_URI, maxHops = 10 } = {}) {
  let res = await request(jar, url, { method, form });
  for (let i = 0; i < maxHops; i++) {
    if (res.status < 300 || res.status >= 400 || !res.location) return res;
    const next = new URL(res.location, res.url).href;
    if (stopAt && next.startsWith(stopAt)) return { ...res, final: next };
    res = await request(jar, next);
  }
  throw new Error(`too many redirects, last ${res.url}`);
}

// Scrape a <form> (by id, or the first one) into { action, fields } with hidden inputs.
export function scrapeForm(html, baseUrl, id) {
  const forms = [...html.matchAll(/<form\b([^>]*)>([\s\S]*?)<\/form>/gi)];
  const m = id ? forms.find((f) => new RegExp(`id="${id.replace('.', '\\.')}"`).test(f[1])) : forms[0];
  if (!m) throw new Error(`form ${id ?? ''} not found in:\n${html}`);
  const action = /action="([^"]*)"/.exec(m[1])?.[1] ?? '';
  const fields = {};
  for (const [, attrs] of m[2].matchAll(/<input\b([^>]*)>/gi)) {
    if (!/type="hidden"/i.test(attrs)) continue;
    const name = /name="([^"]*)"/.exec(attrs)?.[1];
    const value = /value="([^"]*)"/.exec(attrs)?.[1] ?? '';
    if (name) fields[name] = value.replaceAll('&amp;', '&').replaceAll('&quot;', '"').replaceAll('&#39;', "'").replaceAll('&lt;', '<').replaceAll('&gt;', '>');
  }
  return { action: new URL(action.replaceAll('&amp;', '&'), baseUrl).href, fields };
}

export function pkce() {
  const verifier = crypto.randomBytes(32).toString('base64url');
  const challenge = crypto.createHash('sha256').update(verifier).digest('base64url');
  return { verifier, challenge };
}

export function decodeJwt(jwt) {
  const [h, p] = jwt.split('.');
  return {
    header: JSON.parse(Buffer.from(h, 'base64url').toString()),
    payload: JSON.parse(Buffer.from(p, 'base64url').toString()),
  };
}

// Verify an RS256/ES256 JWT signature against the issuer's JWKS.
export async function verifyJwt(jwt, jwksUri) {
  const { header, payload } = decodeJwt(jwt);
  const { keys } = await (await fetch(jwksUri)).json();
  const jwk = keys.find((k) => k.kid === header.kid);
  if (!jwk) throw new Error(`no key ${header.kid}`);
  const key = crypto.createPublicKey({ key: jwk, format: 'jwk' });
  const [h, p, s] = jwt.split('.');
  const data = Buffer.from(`${h}.${p}`);
  const sig = Buffer.from(s, 'base64url');
  const ok = header.alg === 'ES256'
    ? crypto.verify('sha256', data, { key, dsaEncoding: 'ieee-p1363' }, sig)
    : crypto.verify('sha256', data, key, sig);
  if (!ok) throw new Error('bad signature');
  return payload;
}

export function basicAuth(id, secret) {
  return `Basic ${Buffer.from(`${encodeURIComponent(id)}:${encodeURIComponent(secret)}`).toString('base64')}`;
}

export async function tokenRequest(issuer, form, { clientId = CLIENT_ID, secret = CLIENT_SECRET } = {}) {
  const headers = { 'content-type': 'application/x-www-form-urlencoded' };
  const body = new URLSearchParams(form);
  if (secret) headers.authorization = basicAuth(clientId, secret);
  else body.set('client_id', clientId);
  const res = await fetch(`${issuer}/token`, {
    method: 'POST', headers, body: body.toString(), signal: AbortSignal.timeout(10000),
  });
  return { status: res.status, json: await res.json() };
}

// Drive the authorization-code + PKCE flow through the real login form. Returns the
// authorization response parameters plus the verifier.
export async function authorize(issuer, jar, {
  clientId = CLIENT_ID, redirectUri = REDIRECT_URI, scope = 'openid email profile groups',
  username = 'alice@uniqe.example', password = 'password', extra = {},
} = {}) {
  const { verifier, challenge } = pkce();
  const state = crypto.randomBytes(8).toString('hex');
  const nonce = crypto.randomBytes(8).toString('hex');
  const q = new URLSearchParams({
    client_id: clientId, response_type: 'code', redirect_uri: redirectUri, scope, state, nonce,
    code_challenge: challenge, code_challenge_method: 'S256', ...extra,
  });
  let res = await browse(jar, `${issuer}/auth?${q}`, { stopAt: redirectUri });
  if (!res.final) {
    const form = scrapeForm(res.text, res.url, 'login-form');
    res = await browse(jar, form.action, { method: 'POST', form: { username, password }, stopAt: redirectUri });
  }
  if (!res.final) throw new Error(`no redirect to client; got ${res.status}:\n${res.text.slice(0, 500)}`);
  const params = Object.fromEntries(new URL(res.final).searchParams);
  return { ...params, verifier, sentState: state, nonce };
}

// A loopback receiver for back-channel logout POSTs.
export async function startReceiver() {
  const received = [];
  const waiters = [];
  const server = http.createServer((req, res) => {
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (d) => { body += d; });
    req.on('end', () => {
      const entry = {
        method: req.method, path: req.url, contentType: req.headers['content-type'], body,
        form: Object.fromEntries(new URLSearchParams(body)),
      };
      received.push(entry);
      res.writeHead(200, { 'cache-control': 'no-store' });
      res.end();
      for (const w of waiters.splice(0)) w();
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address();
  return {
    url: `http://127.0.0.1:${port}/backchannel-logout`,
    received,
    // Wait until predicate holds for some received entry (bounded).
    async waitFor(pred, timeoutMs = 5000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const hit = received.find(pred);
        if (hit) return hit;
        const left = deadline - Date.now();
        if (left <= 0) throw new Error(`nothing matching received in ${timeoutMs} ms (${received.length} received)`);
        await new Promise((resolve) => {
          const t = setTimeout(resolve, left);
          waiters.push(() => { clearTimeout(t); resolve(); });
        });
      }
    },
    close: () => new Promise((resolve) => { server.closeAllConnections(); server.close(resolve); }),
  };
}
