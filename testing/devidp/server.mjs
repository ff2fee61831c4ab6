#!/usr/bin/env node
// Sekisho development OpenID Provider.
//
// A small, real OpenID Provider (oidc-provider by panva) for Sekisho's tests and the local
// demo. Listens on loopback only, plain http. Never use it for anything real: users and
// passwords are built in, keys are generated at start, state lives in memory.
//
// stdout carries exactly one JSON line, {"ready":true,"issuer":...,"port":...}, once the
// server listens. Everything else (banner, logs, oidc-provider notices) goes to stderr.

// oidc-provider prints its notices with console.info (stdout); keep stdout for the ready line.
console.info = console.error;
console.log = console.error;

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import { parseArgs } from 'node:util';

// Signal handlers first, so a SIGTERM during start-up also ends the process cleanly.
let server;
let stopping = false;
function shutdown(signal) {
  if (stopping) return;
  stopping = true;
  process.stderr.write(`${JSON.stringify({ ts: new Date().toISOString(), level: 'info', event: 'shutdown', signal })}\n`);
  if (!server?.listening) process.exit(0);
  server.close(() => process.exit(0));
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

const USAGE = `usage: node server.mjs [flags]

  --port N                  listen port (default 0 = ephemeral; env DEVIDP_PORT)
  --host ADDR               listen address (default 127.0.0.1; env DEVIDP_HOST)
  --issuer URL              issuer (default http://<host>:<port>; env DEVIDP_ISSUER)
  --redirect-uri URI        redirect_uri of client "sekisho" (repeatable;
                            default https://auth.localhost:8443/.sekisho/callback)
  --post-logout-redirect-uri URI
                            post_logout_redirect_uri of "sekisho" (repeatable;
                            default: origin + "/" of every redirect URI)
  --backchannel-logout-uri URI
                            backchannel_logout_uri of "sekisho" (optional)
  --backchannel-logout-without-sid
                            logout tokens (and ID tokens) of "sekisho" carry no sid:
                            a logout then names only the user (sub)
  --client-secret S         secret of "sekisho" (default sekisho-dev-secret)
  --clients FILE            JSON array of oidc-provider client metadata (replaces the defaults)
  --users FILE              JSON array of users (replaces the built-in users)
  --keys FILE               JWKS JSON with private keys (default: one key generated at start)
  --id-token-alg ALG        RS256 or ES256 for the generated key and the clients (default RS256)
  --id-token-ttl SECONDS    default 3600
  --access-token-ttl SECONDS default 3600
  --refresh-token-ttl SECONDS default 86400
  --session-ttl SECONDS     default 86400
  --strict-offline-access   follow OIDC Core literally: offline_access only counts when the
                            request also has prompt=consent (default: prompt=consent is added
                            for you when offline_access is requested)
  --log-level LEVEL         quiet | info | debug (default info; env DEVIDP_LOG_LEVEL)
  --help
`;

let args;
try {
  ({ values: args } = parseArgs({
    options: {
      port: { type: 'string' },
      host: { type: 'string' },
      issuer: { type: 'string' },
      'redirect-uri': { type: 'string', multiple: true },
      'post-logout-redirect-uri': { type: 'string', multiple: true },
      'backchannel-logout-uri': { type: 'string' },
      'backchannel-logout-without-sid': { type: 'boolean' },
      'client-secret': { type: 'string' },
      clients: { type: 'string' },
      users: { type: 'string' },
      keys: { type: 'string' },
      'id-token-alg': { type: 'string' },
      'id-token-ttl': { type: 'string' },
      'access-token-ttl': { type: 'string' },
      'refresh-token-ttl': { type: 'string' },
      'session-ttl': { type: 'string' },
      'strict-offline-access': { type: 'boolean' },
      'log-level': { type: 'string' },
      help: { type: 'boolean' },
    },
    strict: true,
    allowPositionals: false,
  }));
} catch (err) {
  process.stderr.write(`${err.message}\n\n${USAGE}`);
  process.exit(2);
}
if (args.help) {
  process.stderr.write(USAGE);
  process.exit(0);
}

function die(msg) {
  process.stderr.write(`devidp: ${msg}\n`);
  process.exit(2);
}

function intFlag(name, env, dflt) {
  const raw = args[name] ?? process.env[env];
  if (raw === undefined || raw === '') return dflt;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 0) die(`--${name} must be a non-negative integer, got ${raw}`);
  return n;
}

function readJson(file, what) {
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (err) {
    return die(`cannot read ${what} from ${file}: ${err.message}`);
  }
}

const HOST = args.host ?? process.env.DEVIDP_HOST ?? '127.0.0.1';
const PORT = intFlag('port', 'DEVIDP_PORT', 0);
const ID_TOKEN_TTL = intFlag('id-token-ttl', 'DEVIDP_ID_TOKEN_TTL', 3600);
const ACCESS_TOKEN_TTL = intFlag('access-token-ttl', 'DEVIDP_ACCESS_TOKEN_TTL', 3600);
const REFRESH_TOKEN_TTL = intFlag('refresh-token-ttl', 'DEVIDP_REFRESH_TOKEN_TTL', 86400);
const SESSION_TTL = intFlag('session-ttl', 'DEVIDP_SESSION_TTL', 86400);
const ALG = args['id-token-alg'] ?? 'RS256';
if (!['RS256', 'ES256'].includes(ALG)) die('--id-token-alg must be RS256 or ES256');
const LOG_LEVELS = { quiet: 0, info: 1, debug: 2 };
const LOG_LEVEL = LOG_LEVELS[args['log-level'] ?? process.env.DEVIDP_LOG_LEVEL ?? 'info'];
if (LOG_LEVEL === undefined) die('--log-level must be quiet, info or debug');
const STRICT_OFFLINE = Boolean(args['strict-offline-access']);

// One JSON object per line on stderr. "error" lines are printed even at --log-level quiet.
function log(level, event, fields = {}) {
  const need = level === 'error' ? 0 : LOG_LEVELS[level];
  if (LOG_LEVEL < need) return;
  process.stderr.write(`${JSON.stringify({ ts: new Date().toISOString(), level, event, ...fields })}\n`);
}

// ---------------------------------------------------------------------------------------------
// Users
// ---------------------------------------------------------------------------------------------

const DEFAULT_USERS = [
  {
    sub: 'alice', email: 'alice@uniqe.example', email_verified: true, name: 'Alice',
    groups: ['staff', 'admins'], hd: 'uniqe.example', password: 'password',
  },
  {
    sub: 'bob', email: 'bob@uniqe.example', email_verified: true, name: 'Bob',
    groups: ['staff'], hd: 'uniqe.example', password: 'password',
  },
  {
    sub: 'carol', email: 'carol@elsewhere.example', email_verified: true, name: 'Carol',
    groups: [], password: 'password',
  },
  {
    sub: 'mallory', email: 'mallory@uniqe.example', email_verified: false, name: 'Mallory',
    groups: ['staff'], hd: 'uniqe.example', password: 'password',
  },
];

const users = args.users ? readJson(args.users, 'users') : DEFAULT_USERS;
if (!Array.isArray(users) || users.length === 0) die('users must be a non-empty JSON array');
const usersBySub = new Map();
const usersByEmail = new Map();
for (const u of users) {
  if (!u || typeof u.email !== 'string') die('every user needs an "email"');
  u.sub ??= u.email;
  u.password ??= 'password';
  u.email_verified ??= true;
  u.groups ??= [];
  if (usersBySub.has(u.sub)) die(`duplicate user sub ${u.sub}`);
  usersBySub.set(u.sub, u);
  usersByEmail.set(u.email.toLowerCase(), u);
}

function userClaims(u) {
  const claims = {
    sub: u.sub,
    email: u.email,
    email_verified: u.email_verified,
    groups: u.groups,
  };
  if (u.name !== undefined) claims.name = u.name;
  if (u.hd !== undefined) claims.hd = u.hd;
  return claims;
}

// ---------------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------------

const DEVICE_GRANT = 'urn:ietf:params:oauth:grant-type:device_code';

function defaultClients() {
  const redirectUris = args['redirect-uri'] ?? ['https://auth.localhost:8443/.sekisho/callback'];
  const postLogout = args['post-logout-redirect-uri']
    ?? [...new Set(redirectUris.map((u) => `${new URL(u).origin}/`))];
  const sekisho = {
    client_id: 'sekisho',
    client_name: 'Sekisho',
    client_secret: args['client-secret'] ?? 'sekisho-dev-secret',
    application_type: 'web',
    token_endpoint_auth_method: 'client_secret_basic',
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    redirect_uris: redirectUris,
    post_logout_redirect_uris: postLogout,
  };
  if (args['backchannel-logout-uri']) {
    sekisho.backchannel_logout_uri = args['backchannel-logout-uri'];
    sekisho.backchannel_logout_session_required = !args['backchannel-logout-without-sid'];
  }
  const cli = {
    client_id: 'sekisho-cli',
    client_name: 'Sekisho CLI',
    application_type: 'native',
    token_endpoint_auth_method: 'none',
    grant_types: ['authorization_code', 'refresh_token', DEVICE_GRANT],
    response_types: ['code'],
    // RFC 8252 section 7.3: any port is accepted for this loopback redirect URI.
    redirect_uris: ['http://127.0.0.1/callback'],
    post_logout_redirect_uris: ['http://127.0.0.1/logged-out'],
  };
  return [sekisho, cli];
}

const clients = args.clients ? readJson(args.clients, 'clients') : defaultClients();
if (!Array.isArray(clients)) die('clients must be a JSON array');

// ---------------------------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------------------------

function generateJwks() {
  const { privateKey } = ALG === 'ES256'
    ? crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' })
    : crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = privateKey.export({ format: 'jwk' });
  const kid = `devidp-${crypto.randomBytes(6).toString('hex')}`;
  return { keys: [{ ...jwk, kid, alg: ALG, use: 'sig' }] };
}

const jwks = args.keys ? readJson(args.keys, 'keys') : generateJwks();
if (!Array.isArray(jwks?.keys) || jwks.keys.length === 0) die('keys must be a JWKS with "keys"');

// oidc-provider is imported only now, after the key is made: with it loaded, about one start in
// twenty hung for good inside generateKeyPairSync (the process asleep, seen with Node 20 and
// OpenSSL 3), and never once without it.
const { default: Provider, errors: oidcErrors } = await import('oidc-provider');

// ---------------------------------------------------------------------------------------------
// Storage: an in-memory adapter we can enumerate (needed for POST /__dev/logout)
// ---------------------------------------------------------------------------------------------

const stores = new Map(); // model name -> Map(id -> { payload, expiresAt })

function storeFor(model) {
  let s = stores.get(model);
  if (!s) {
    s = new Map();
    stores.set(model, s);
  }
  return s;
}

function live(entry) {
  return entry && (entry.expiresAt === undefined || entry.expiresAt > Date.now());
}

class MemoryAdapter {
  constructor(model) {
    this.model = model;
    this.store = storeFor(model);
  }

  async upsert(id, payload, expiresIn) {
    this.store.set(id, {
      payload: structuredClone(payload),
      expiresAt: expiresIn ? Date.now() + expiresIn * 1000 : undefined,
    });
  }

  async find(id) {
    const e = this.store.get(id);
    if (!live(e)) {
      this.store.delete(id);
      return undefined;
    }
    return structuredClone(e.payload);
  }

  async #findBy(field, value) {
    for (const [id, e] of this.store) {
      if (live(e) && e.payload[field] === value) return this.find(id);
    }
    return undefined;
  }

  findByUid(uid) { return this.#findBy('uid', uid); }

  findByUserCode(userCode) { return this.#findBy('userCode', userCode); }

  async consume(id) {
    const e = this.store.get(id);
    if (e) e.payload.consumed = Math.floor(Date.now() / 1000);
  }

  async destroy(id) {
    this.store.delete(id);
  }

  async revokeByGrantId(grantId) {
    for (const [id, e] of this.store) {
      if (e.payload.grantId === grantId) this.store.delete(id);
    }
  }
}

// Drop expired entries now and then so a long demo run does not grow without bound.
const sweeper = setInterval(() => {
  for (const s of stores.values()) {
    for (const [id, e] of s) if (!live(e)) s.delete(id);
  }
}, 60_000);
sweeper.unref();

// ---------------------------------------------------------------------------------------------
// HTML
// ---------------------------------------------------------------------------------------------

function esc(s) {
  return String(s ?? '')
    .replaceAll('&', '&amp;').replaceAll('<', '&lt;').replaceAll('>', '&gt;')
    .replaceAll('"', '&quot;').replaceAll("'", '&#39;');
}

const CSS = `body{font-family:system-ui,sans-serif;background:#f4f4f4;margin:40px auto;max-width:420px;color:#222}
main{background:#fff;border-radius:6px;box-shadow:0 1px 3px rgba(0,0,0,.2);padding:24px 28px}
h1{font-size:1.4em;margin-top:0}label{display:block;margin:12px 0 4px}
input[type=text],input[type=password]{width:100%;box-sizing:border-box;padding:8px;font-size:1em}
button{margin-top:16px;padding:8px 16px;font-size:1em;cursor:pointer}
.error{color:#b00020;font-weight:600}.muted{color:#666;font-size:.85em}code{font-size:1.1em}
table{border-collapse:collapse;font-size:.85em}td{padding:2px 6px}`;

function page(title, body, { status = 200, script } = {}) {
  return {
    status,
    html: `<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>${esc(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>${CSS}</style></head>
<body><main>
<p class="muted">Sekisho dev IdP &mdash; not for real use</p>
${body}
</main>${script ? `<script>${script}</script>` : ''}</body></html>`,
  };
}

function userTable() {
  return `<details class="muted"><summary>Test users</summary><table>${users.map((u) => `<tr><td>${esc(u.email)}</td><td>${esc(u.password)}</td></tr>`).join('')}</table></details>`;
}

function loginPage(uid, { clientName, error, username, deviceFlow }) {
  return page('Sign in', `<h1>Sign in</h1>
<p>to continue to <strong id="client">${esc(clientName)}</strong>${deviceFlow ? ' (device sign-in)' : ''}</p>
${error ? `<p id="error" class="error" role="alert">${esc(error)}</p>` : ''}
<form id="login-form" method="post" action="/interaction/${esc(uid)}/login" autocomplete="off">
<label for="username">Email</label>
<input id="username" name="username" type="text" autocomplete="username" value="${esc(username)}" required autofocus>
<label for="password">Password</label>
<input id="password" name="password" type="password" autocomplete="current-password" required>
<button id="login" type="submit">Sign in</button>
</form>
<form id="abort-form" method="post" action="/interaction/${esc(uid)}/abort">
<button id="abort" type="submit">Cancel</button>
</form>
${userTable()}`, { status: error ? 401 : 200 });
}

function sendPage(res, { status, html }) {
  res.writeHead(status, {
    'content-type': 'text/html; charset=utf-8',
    'cache-control': 'no-store',
    'content-length': Buffer.byteLength(html),
  });
  res.end(html);
}

function sendJson(res, status, obj) {
  const body = `${JSON.stringify(obj)}\n`;
  res.writeHead(status, {
    'content-type': 'application/json',
    'cache-control': 'no-store',
    'content-length': Buffer.byteLength(body),
  });
  res.end(body);
}

async function readForm(req, limit = 64 * 1024) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > limit) throw new Error('request body too large');
    chunks.push(chunk);
  }
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

// ---------------------------------------------------------------------------------------------
// Provider
// ---------------------------------------------------------------------------------------------

// Listen first so the issuer can carry the real port when --port 0.
server = http.createServer();
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(PORT, HOST, () => {
    server.off('error', reject);
    resolve();
  });
});
const { port } = server.address();
const hostForUrl = HOST.includes(':') ? `[${HOST}]` : HOST;
const ISSUER = args.issuer ?? process.env.DEVIDP_ISSUER ?? `http://${hostForUrl}:${port}`;

const SCOPES = ['openid', 'offline_access', 'email', 'profile', 'groups'];

const configuration = {
  adapter: MemoryAdapter,
  clients,
  jwks,
  findAccount(ctx, sub) {
    const u = usersBySub.get(sub);
    if (!u) return undefined;
    return {
      accountId: u.sub,
      async claims() {
        return userClaims(u);
      },
    };
  },
  scopes: SCOPES,
  claims: {
    // hd is returned with openid alone, as Google does.
    openid: ['sub', 'hd'],
    email: ['email', 'email_verified'],
    profile: ['name'],
    groups: ['groups'],
    acr: null,
    sid: null,
    auth_time: null,
    iss: null,
  },
  // Put every granted claim into the ID token too (Sekisho reads groups from the ID token).
  conformIdTokenClaims: false,
  clientDefaults: {
    grant_types: ['authorization_code'],
    id_token_signed_response_alg: ALG,
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  },
  pkce: {
    // S256 is the only method oidc-provider v9 implements; require it for every client.
    required: () => true,
  },
  cookies: {
    keys: [crypto.randomBytes(32).toString('base64url')],
  },
  interactions: {
    url: (ctx, interaction) => `/interaction/${interaction.uid}`,
  },
  issueRefreshToken: async (ctx, client, code) => (
    client.grantTypeAllowed('refresh_token') && code.scopes.has('offline_access')
  ),
  clientBasedCORS: () => false,
  features: {
    devInteractions: { enabled: false },
    backchannelLogout: { enabled: true },
    deviceFlow: {
      enabled: true,
      charset: 'base-20',
      mask: '****-****',
      userCodeInputSource,
      userCodeConfirmSource,
      successSource,
    },
    introspection: {
      enabled: true,
      // Confidential clients may introspect any token, public ones only their own.
      allowedPolicy: async (ctx, client, token) => (
        client.clientAuthMethod !== 'none' || token.clientId === client.clientId
      ),
    },
    revocation: {
      enabled: true,
      allowedPolicy: async (ctx, client, token) => token.clientId === client.clientId,
    },
    rpInitiatedLogout: {
      enabled: true,
      logoutSource,
      postLogoutSuccessSource,
    },
    userinfo: { enabled: true },
  },
  ttl: {
    AccessToken: ACCESS_TOKEN_TTL,
    AuthorizationCode: 60,
    ClientCredentials: 600,
    DeviceCode: 600,
    Grant: Math.max(REFRESH_TOKEN_TTL, SESSION_TTL),
    IdToken: ID_TOKEN_TTL,
    Interaction: 3600,
    RefreshToken: REFRESH_TOKEN_TTL,
    Session: SESSION_TTL,
  },
  renderError,
  // oidc-provider refuses to deliver back-channel logout tokens to special-use addresses
  // (loopback included) as SSRF protection: it passes its own undici dispatcher that kills
  // such sockets. Everything here lives on 127.0.0.1, so drop that dispatcher (dev only).
  fetch: (url, options) => {
    const { dispatcher, ...rest } = options;
    return globalThis.fetch(url, rest);
  },
};

async function renderError(ctx, out, error) {
  ctx.type = 'html';
  if (error && !error.expose) log('error', 'render_error', { message: error.message });
  const rows = Object.entries(out).map(([k, v]) => `<dt>${esc(k)}</dt><dd id="${esc(k)}">${esc(v)}</dd>`).join('');
  ctx.body = page('Error', `<h1>Something went wrong</h1><dl id="error">${rows}</dl>`).html;
}

async function userCodeInputSource(ctx, form, out, err) {
  let msg = '<p>Enter the code shown on your device.</p>';
  if (err && (err.userCode || err.name === 'NoCodeError')) {
    msg = '<p id="error" class="error">The code you entered is incorrect. Try again.</p>';
  } else if (err && err.name === 'AbortedError') {
    msg = '<p id="error" class="error">The sign-in request was cancelled.</p>';
  } else if (err) {
    msg = '<p id="error" class="error">There was an error processing your request.</p>';
  }
  const f = form
    .replace('name="user_code"', 'id="user_code" name="user_code"')
    .replace('</form>', '<button id="continue" type="submit">Continue</button></form>');
  ctx.type = 'html';
  ctx.body = page('Device sign-in', `<h1>Device sign-in</h1>${msg}<label for="user_code">Code</label>${f}`).html;
}

async function userCodeConfirmSource(ctx, form, client, deviceInfo, userCode) {
  const name = client.clientName || client.clientId;
  const f = form.replace('</form>', '<button id="confirm" type="submit">Continue</button></form>');
  ctx.type = 'html';
  ctx.body = page('Confirm device', `<h1>Confirm device</h1>
<p><strong>${esc(name)}</strong> is asking to sign in. The device should show this code:</p>
<p><code id="user-code">${esc(userCode)}</code></p>
${f}
<form id="op.deviceAbortForm" method="post" action="${esc(ctx.oidc.urlFor('code_verification'))}">
${form.match(/<input type="hidden" name="xsrf"[^>]*>/)?.[0] ?? ''}
<input type="hidden" name="user_code" value="${esc(userCode)}">
<input type="hidden" name="abort" value="yes">
<button id="abort" type="submit">Abort</button></form>`).html;
}

async function successSource(ctx) {
  const name = ctx.oidc.client?.clientName || ctx.oidc.client?.clientId || 'the device';
  ctx.type = 'html';
  ctx.body = page('Signed in', `<h1 id="device-success">Signed in</h1><p>You are signed in to ${esc(name)}. You can close this page.</p>`).html;
}

async function logoutSource(ctx, form) {
  // Confirmation page for RP-initiated logout. It submits itself (logout=yes ends the whole
  // IdP session and sends back-channel logout to every client of that session); the buttons
  // are there for a browser without script and for tests that drive forms by hand.
  const f = form.replace('</form>', '<button id="logout" type="submit" name="logout" value="yes">Sign out</button></form>');
  ctx.type = 'html';
  ctx.body = page('Sign out', `<h1>Sign out</h1><p>Signing you out of the dev IdP&hellip;</p>${f}`, {
    script: "document.getElementById('logout').click();",
  }).html;
}

async function postLogoutSuccessSource(ctx) {
  ctx.type = 'html';
  ctx.body = page('Signed out', '<h1 id="logged-out">Signed out</h1><p>You are signed out of the dev IdP.</p>').html;
}

const provider = new Provider(ISSUER, configuration);

// oidc-provider checks static client metadata lazily; check it now so a bad --clients file
// fails at start rather than on the first request.
for (const c of clients) {
  try {
    if (!await provider.Client.find(String(c.client_id))) throw new Error('not found');
  } catch (err) {
    die(`invalid client ${c.client_id}: ${err.error_description ?? err.message}`);
  }
}

// offline_access: OIDC Core says it is ignored unless prompt=consent is also sent, and
// oidc-provider follows that. Relying parties are often written against IdPs that do not insist,
// so, unless --strict-offline-access, add prompt=consent to authorization requests asking for
// offline_access. Consent is granted automatically, so the user sees no extra page.
if (!STRICT_OFFLINE) {
  provider.use(async (ctx, next) => {
    if (ctx.method === 'GET' && ctx.path === '/auth') {
      const q = { ...ctx.query };
      const scopes = String(q.scope ?? '').split(' ');
      const prompts = String(q.prompt ?? '').split(' ').filter(Boolean);
      if (scopes.includes('offline_access') && !prompts.includes('consent') && !prompts.includes('none')) {
        q.prompt = [...prompts, 'consent'].join(' ');
        ctx.query = q;
      }
    }
    await next();
  });
}

// Quiet structured logs of what matters in tests.
provider.on('server_error', (ctx, err) => log('error', 'server_error', { path: ctx?.path, message: err.message, stack: LOG_LEVEL >= 2 ? err.stack : undefined }));
provider.on('authorization.error', (ctx, err) => log('info', 'authorization_error', { error: err.error, description: err.error_description, client_id: ctx.oidc?.client?.clientId }));
provider.on('grant.error', (ctx, err) => log('info', 'token_error', { error: err.error, description: err.error_description, client_id: ctx.oidc?.client?.clientId }));
provider.on('grant.success', (ctx) => log('debug', 'token_issued', { client_id: ctx.oidc.client?.clientId, grant_type: ctx.oidc.params?.grant_type }));
provider.on('end_session.success', (ctx) => log('info', 'end_session', { client_id: ctx.oidc.client?.clientId }));
provider.on('backchannel.success', (ctx, client, sub, sid) => log('info', 'backchannel_logout_sent', { client_id: client.clientId, sub, sid }));
provider.on('backchannel.error', (ctx, err, client, sub, sid) => log('error', 'backchannel_logout_failed', { client_id: client.clientId, sub, sid, message: err.message }));

// ---------------------------------------------------------------------------------------------
// Interactions (login form, automatic consent)
// ---------------------------------------------------------------------------------------------

// Grant every requested scope (our own clients only: this is a dev IdP).
async function grantAll(details, accountId) {
  const { params, prompt } = details;
  let grant;
  if (details.grantId && details.session?.accountId === accountId) {
    grant = await provider.Grant.find(details.grantId);
  }
  grant ??= new provider.Grant({ accountId, clientId: params.client_id });
  if (params.scope) grant.addOIDCScope(params.scope);
  if (prompt.details?.missingOIDCScope) grant.addOIDCScope(prompt.details.missingOIDCScope.join(' '));
  if (prompt.details?.missingOIDCClaims) grant.addOIDCClaims(prompt.details.missingOIDCClaims);
  for (const [indicator, scopes] of Object.entries(prompt.details?.missingResourceScopes ?? {})) {
    grant.addResourceScope(indicator, scopes.join(' '));
  }
  return grant.save();
}

async function clientName(clientId) {
  const client = await provider.Client.find(clientId);
  return client?.clientName || clientId;
}

async function handleInteraction(req, res, url) {
  const m = url.pathname.match(/^\/interaction\/([^/]+)(?:\/(login|abort))?$/);
  if (!m) return sendPage(res, page('Not found', '<h1>Not found</h1>', { status: 404 }));
  const [, uid, action] = m;

  let details;
  try {
    details = await provider.interactionDetails(req, res);
  } catch (err) {
    log('info', 'interaction_not_found', { message: err.message });
    return sendPage(res, page('Sign-in expired', '<h1 id="error">Sign-in session not found or expired</h1><p>Start again from the application.</p>', { status: 400 }));
  }
  if (details.uid !== uid) {
    return sendPage(res, page('Sign-in mismatch', '<h1 id="error">Sign-in session mismatch</h1>', { status: 400 }));
  }
  const { prompt, params } = details;
  const deviceFlow = Boolean(details.deviceCode);

  if (req.method === 'GET' && !action) {
    if (prompt.name === 'login') {
      return sendPage(res, loginPage(uid, {
        clientName: await clientName(params.client_id),
        username: params.login_hint ?? '',
        deviceFlow,
      }));
    }
    if (prompt.name === 'consent') {
      const grantId = await grantAll(details, details.session.accountId);
      log('debug', 'consent_auto', { client_id: params.client_id, sub: details.session.accountId });
      return provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
    }
    return sendPage(res, page('Unsupported', `<h1 id="error">Unsupported prompt ${esc(prompt.name)}</h1>`, { status: 400 }));
  }

  if (req.method === 'POST' && action === 'abort') {
    log('info', 'login_aborted', { client_id: params.client_id });
    return provider.interactionFinished(req, res, {
      error: 'access_denied',
      error_description: 'End-User aborted interaction',
    }, { mergeWithLastSubmission: false });
  }

  if (req.method === 'POST' && action === 'login') {
    if (prompt.name !== 'login') {
      return sendPage(res, page('Unexpected', '<h1 id="error">Not expecting a login now</h1>', { status: 400 }));
    }
    const form = await readForm(req);
    const username = (form.get('username') ?? '').trim();
    const password = form.get('password') ?? '';
    const user = usersByEmail.get(username.toLowerCase());
    const ok = user && crypto.timingSafeEqual(
      crypto.createHash('sha256').update(password).digest(),
      crypto.createHash('sha256').update(user.password).digest(),
    );
    if (!ok) {
      log('info', 'login_failed', { username, client_id: params.client_id });
      return sendPage(res, loginPage(uid, {
        clientName: await clientName(params.client_id),
        error: 'Invalid email or password.',
        username,
        deviceFlow,
      }));
    }
    // Log in and consent in one step: no consent page for our own clients.
    const grantId = await grantAll(details, user.sub);
    log('info', 'login', { sub: user.sub, email: user.email, client_id: params.client_id, device: deviceFlow || undefined });
    return provider.interactionFinished(req, res, {
      login: { accountId: user.sub, remember: true },
      consent: { grantId },
    }, { mergeWithLastSubmission: false });
  }

  return sendPage(res, page('Method not allowed', '<h1>Method not allowed</h1>', { status: 405 }));
}

// ---------------------------------------------------------------------------------------------
// Dev admin endpoints (loopback peers only)
// ---------------------------------------------------------------------------------------------

function isLoopback(addr) {
  return addr === '::1' || addr?.startsWith('127.') || addr?.startsWith('::ffff:127.');
}

// End every IdP session of a user: back-channel logout to each client of each session (as a
// logout at the IdP would), revoke the grants' tokens, delete the sessions.
async function logoutSub(sub) {
  const sessions = [...storeFor('Session')]
    .filter(([, e]) => live(e) && e.payload.accountId === sub);
  const backchannel = [];
  let grantsRevoked = 0;
  for (const [id, { payload }] of sessions) {
    for (const [clientId, authz] of Object.entries(payload.authorizations ?? {})) {
      const client = await provider.Client.find(clientId);
      if (client?.backchannelLogoutUri) {
        try {
          await client.backchannelLogout(sub, authz.sid);
          log('info', 'backchannel_logout_sent', { client_id: clientId, sub, sid: authz.sid, via: '__dev/logout' });
          backchannel.push({ client_id: clientId, sid: authz.sid, ok: true });
        } catch (err) {
          log('error', 'backchannel_logout_failed', { client_id: clientId, sub, sid: authz.sid, message: err.message });
          backchannel.push({ client_id: clientId, sid: authz.sid, ok: false, error: err.message });
        }
      }
      if (authz.grantId) {
        for (const s of stores.values()) {
          for (const [tid, e] of s) if (e.payload.grantId === authz.grantId) s.delete(tid);
        }
        storeFor('Grant').delete(authz.grantId);
        grantsRevoked += 1;
      }
    }
    storeFor('Session').delete(id);
  }
  log('info', 'dev_logout', { sub, sessions: sessions.length, grants_revoked: grantsRevoked });
  return { sub, sessions: sessions.length, grants_revoked: grantsRevoked, backchannel };
}

async function handleDev(req, res, url) {
  if (!isLoopback(req.socket.remoteAddress)) return sendJson(res, 403, { error: 'loopback only' });
  if (url.pathname === '/__dev/health' && req.method === 'GET') {
    return sendJson(res, 200, { ok: true, issuer: ISSUER });
  }
  if (url.pathname === '/__dev/users' && req.method === 'GET') {
    return sendJson(res, 200, users.map((u) => ({ ...userClaims(u), password: u.password })));
  }
  if (url.pathname === '/__dev/logout' && req.method === 'POST') {
    let sub = url.searchParams.get('sub');
    const email = url.searchParams.get('email');
    if (!sub && email) sub = usersByEmail.get(email.toLowerCase())?.sub;
    if (!sub) return sendJson(res, 400, { error: 'sub or email query parameter required' });
    return sendJson(res, 200, await logoutSub(sub));
  }
  return sendJson(res, 404, { error: 'not found' });
}

// ---------------------------------------------------------------------------------------------
// HTTP server
// ---------------------------------------------------------------------------------------------

const providerCallback = provider.callback();

server.on('request', async (req, res) => {
  const url = new URL(req.url, ISSUER);
  try {
    if (url.pathname.startsWith('/interaction/')) return await handleInteraction(req, res, url);
    if (url.pathname.startsWith('/__dev/')) return await handleDev(req, res, url);
    return providerCallback(req, res);
  } catch (err) {
    log('error', 'request_failed', { path: url.pathname, message: err.message, stack: LOG_LEVEL >= 2 ? err.stack : undefined });
    if (!res.headersSent) {
      if (err instanceof oidcErrors.SessionNotFound) {
        return sendPage(res, page('Error', '<h1 id="error">Session not found</h1>', { status: 400 }));
      }
      return sendPage(res, page('Error', '<h1 id="error">Internal error</h1>', { status: 500 }));
    }
    res.destroy();
    return undefined;
  }
});

// ---------------------------------------------------------------------------------------------
// Start-up banner, ready line, shutdown
// ---------------------------------------------------------------------------------------------

const banner = [
  `devidp: Sekisho development OpenID Provider (oidc-provider) — issuer ${ISSUER}`,
  `devidp: discovery ${ISSUER}/.well-known/openid-configuration`,
  'devidp: users (email / password / sub / groups):',
  ...users.map((u) => `devidp:   ${u.email} / ${u.password} / ${u.sub} / [${u.groups.join(', ')}]${u.hd ? ` hd=${u.hd}` : ''}${u.email_verified ? '' : ' (email NOT verified)'}`),
  'devidp: clients:',
  ...clients.map((c) => `devidp:   ${c.client_id} (${c.token_endpoint_auth_method ?? 'client_secret_basic'}${c.client_secret ? `, secret ${c.client_secret}` : ''}) redirect_uris=${JSON.stringify(c.redirect_uris ?? [])}${c.backchannel_logout_uri ? ` backchannel_logout_uri=${c.backchannel_logout_uri}` : ''}`),
];
process.stderr.write(`${banner.join('\n')}\n`);
process.stdout.write(`${JSON.stringify({ ready: true, issuer: ISSUER, port })}\n`);

