// The real OpenID Provider that headgate's integration tests sign in against: npm `oidc-provider` (pinned by
// package.json + package-lock.json), configured per test by one JSON document in the IDP_CONFIG environment
// variable. See README.md beside this file for the schema and for what it prints.
//
// Listens on 127.0.0.1 only; the only outgoing requests it can make (back-channel logout) are restricted to
// loopback addresses. Prints `READY <issuer>` once listening, then one JSON line per event.

import crypto from 'node:crypto';
import http from 'node:http';
import { Provider } from 'oidc-provider';

function out(obj) {
  process.stdout.write(`${JSON.stringify(obj)}\n`);
}

function fail(message) {
  process.stderr.write(`test IdP: ${message}\n`);
  process.exit(2);
}

let cfg;
try {
  cfg = JSON.parse(process.env.IDP_CONFIG || '{}');
} catch (e) {
  fail(`IDP_CONFIG is not valid JSON: ${e.message}`);
}

const STANDARD_CLAIMS = {
  openid: ['sub'],
  email: ['email', 'email_verified'],
  profile: [
    'name', 'given_name', 'family_name', 'middle_name', 'nickname', 'preferred_username', 'profile',
    'picture', 'website', 'gender', 'birthdate', 'zoneinfo', 'locale', 'updated_at',
  ],
  groups: ['groups'],
};

const LOOPBACK_HOSTS = new Set(['127.0.0.1', 'localhost', '[::1]', '::1']);
function isLoopbackUrl(u) {
  try {
    const url = new URL(u);
    return LOOPBACK_HOSTS.has(url.hostname) || /^127\.\d+\.\d+\.\d+$/.test(url.hostname);
  } catch {
    return false;
  }
}

const html = (s) => String(s ?? '').replace(/[&<>"']/g, (c) => ({
  '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;',
}[c]));

function page(title, body) {
  return `<!DOCTYPE html>
<html>
<head><meta charset="utf-8"><title>${html(title)}</title></head>
<body>
<h1>${html(title)}</h1>
${body}
</body>
</html>
`;
}

async function readForm(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 64 * 1024) throw new Error('form too large');
    chunks.push(chunk);
  }
  return Object.fromEntries(new URLSearchParams(Buffer.concat(chunks).toString('utf8')));
}

// ---- users ---------------------------------------------------------------------------------------------------
const USER_KEYS = new Set(['login', 'password', 'sub', 'claims']);
const users = (cfg.users ?? [
  {
    login: 'alice',
    password: 'alice-password',
    sub: 'alice-sub',
    claims: {
      email: 'alice@example.com', email_verified: true, name: 'Alice Example', preferred_username: 'alice',
    },
  },
]).map((u, i) => {
  if (!u.login || !u.sub) fail(`users[${i}] needs "login" and "sub"`);
  const claims = { ...(u.claims ?? {}) };
  for (const [k, v] of Object.entries(u)) {
    if (!USER_KEYS.has(k)) claims[k] = v; // top-level extra keys are claims too
  }
  delete claims.sub;
  return {
    login: u.login, password: u.password, sub: u.sub, claims,
  };
});
const userBySub = new Map(users.map((u) => [u.sub, u]));
const userByLogin = new Map(users.map((u) => [u.login, u]));

// Which scope releases which claim: the standard mapping, every claim a user has that no scope names goes with
// `profile`, and `IDP_CONFIG.claims` (scope -> claim names) adds to or replaces entries.
const claimsConfig = { ...STANDARD_CLAIMS };
{
  const known = new Set(Object.values(STANDARD_CLAIMS).flat());
  const extra = new Set();
  for (const u of users) for (const k of Object.keys(u.claims)) if (!known.has(k)) extra.add(k);
  // `groups` also goes with `profile`, so the usual `openid email profile` request sees it.
  claimsConfig.profile = [...claimsConfig.profile, 'groups', ...extra];
  for (const [scope, names] of Object.entries(cfg.claims ?? {})) claimsConfig[scope] = names;
  Object.assign(claimsConfig, {
    acr: null, sid: null, auth_time: null, iss: null,
  });
}

// ---- clients -------------------------------------------------------------------------------------------------
const pkceOverride = new Map();
const clients = (cfg.clients ?? [
  {
    client_id: 'headgate',
    client_secret: 'headgate-test-secret',
    redirect_uris: ['http://127.0.0.1/callback'],
  },
]).map((c, i) => {
  if (!c.client_id || !c.client_secret) fail(`clients[${i}] needs "client_id" and "client_secret"`);
  if (!Array.isArray(c.redirect_uris) || c.redirect_uris.length === 0) fail(`clients[${i}] needs "redirect_uris"`);
  if (c.backchannel_logout_uri && !isLoopbackUrl(c.backchannel_logout_uri)) {
    fail(`clients[${i}].backchannel_logout_uri must be a loopback URL (the test IdP never leaves this machine)`);
  }
  const client = {
    client_id: c.client_id,
    client_secret: c.client_secret,
    redirect_uris: c.redirect_uris,
    response_types: ['code'],
    grant_types: ['authorization_code', 'refresh_token'],
    token_endpoint_auth_method: c.token_endpoint_auth_method ?? 'client_secret_basic',
    id_token_signed_response_alg: c.id_token_signed_response_alg ?? 'RS256',
  };
  if (c.post_logout_redirect_uris?.length) client.post_logout_redirect_uris = c.post_logout_redirect_uris;
  if (c.backchannel_logout_uri) client.backchannel_logout_uri = c.backchannel_logout_uri;
  if (c.backchannel_logout_session_required !== undefined) {
    client.backchannel_logout_session_required = c.backchannel_logout_session_required;
  }
  if (typeof c.pkce_required === 'boolean') pkceOverride.set(c.client_id, c.pkce_required);
  return client;
});

// ---- keys ----------------------------------------------------------------------------------------------------
function signingKeys() {
  const rsa = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' });
  const ec = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ format: 'jwk' });
  return [
    {
      ...rsa, kid: `rsa-${crypto.randomBytes(6).toString('hex')}`, alg: 'RS256', use: 'sig',
    },
    {
      ...ec, kid: `ec-${crypto.randomBytes(6).toString('hex')}`, alg: 'ES256', use: 'sig',
    },
  ];
}

// ---- start: listen first (port 0 = any free port), then build the provider for the issuer we now know ------------
const server = http.createServer();
server.listen(cfg.port ?? 0, '127.0.0.1', () => {
  const { port } = server.address();
  const issuer = (cfg.issuer ?? `http://127.0.0.1:${port}${cfg.issuer_path ?? ''}`).replace(/\/$/, '');
  const prefix = new URL(issuer).pathname.replace(/\/$/, '');
  const provider = buildProvider(issuer, prefix);
  const callback = provider.callback();

  server.on('request', (req, res) => {
    if (prefix) {
      const u = req.url;
      if (!(u === prefix || u.startsWith(`${prefix}/`) || u.startsWith(`${prefix}?`))) {
        res.statusCode = 404;
        res.end('not found (outside the issuer path)\n');
        out({
          event: 'request', method: req.method, path: u, status: 404,
        });
        return;
      }
      req.originalUrl = u;
      req.url = u.slice(prefix.length) || '/';
    }
    callback(req, res);
  });
  process.stdout.write(`READY ${issuer}\n`);
});
server.on('error', (e) => fail(`cannot listen: ${e.message}`));

function shutdown(signal) {
  out({ event: 'shutdown', signal });
  server.close(() => process.exit(0));
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 1000).unref();
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));

function buildProvider(issuer, prefix) {
  const interactionPath = (uid) => `${prefix}/interaction/${uid}`;

  const configuration = {
    clients,
    jwks: { keys: signingKeys() },
    cookies: { keys: [crypto.randomBytes(32).toString('hex')] },
    claims: claimsConfig,
    // true: with response_type=code the ID token carries only the claims of the `openid` scope (sub, ...) and the
    // profile/email claims come from userinfo; false: the ID token carries every claim the scopes grant.
    conformIdTokenClaims: !(cfg.claims_in_id_token ?? true),
    pkce: {
      required: (_ctx, client) => pkceOverride.get(client.clientId) ?? (cfg.pkce_required ?? true),
    },
    // A refresh token for every client allowed the refresh_token grant, offline_access or not (without
    // offline_access it dies with the IdP session).
    issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
    ttl: {
      AccessToken: 3600,
      AuthorizationCode: 60,
      IdToken: 3600,
      RefreshToken: 86400,
      Interaction: 3600,
      Session: 86400,
      Grant: 86400,
      ...(cfg.ttl ?? {}),
    },
    findAccount: async (_ctx, sub) => {
      const user = userBySub.get(sub);
      if (!user) return undefined;
      return {
        accountId: sub,
        claims: async () => ({ sub, ...user.claims }),
      };
    },
    interactions: { url: (_ctx, interaction) => interactionPath(interaction.uid) },
    features: {
      devInteractions: { enabled: false },
      claimsParameter: { enabled: true },
      backchannelLogout: { enabled: true },
      revocation: { enabled: true },
      introspection: { enabled: true },
      userinfo: { enabled: true },
      rpInitiatedLogout: {
        enabled: true,
        logoutSource: async (ctx, form) => {
          const withButtons = form.replace(
            '</form>',
            '<button type="submit" name="logout" value="yes">Yes, sign me out</button>'
            + '<button type="submit">No, stay signed in</button></form>',
          );
          ctx.type = 'html';
          ctx.body = page('Sign out', `<p>Do you want to sign out from ${html(ctx.host)}?</p>\n${withButtons}`);
        },
        postLogoutSuccessSource: async (ctx) => {
          ctx.type = 'html';
          ctx.body = page('Signed out', '<p>You are signed out.</p>');
        },
      },
    },
    clientBasedCORS: () => true,
    renderError: async (ctx, outParams) => {
      ctx.type = 'html';
      const rows = Object.entries(outParams).map(([k, v]) => `<p><b>${html(k)}</b>: <span class="${html(k)}">${html(v)}</span></p>`);
      ctx.body = page('Error', rows.join('\n'));
    },
    // The only outgoing requests: back-channel logout. Loopback only (the built-in SSRF guard refuses loopback,
    // so it is replaced by this stricter one).
    fetch: async (url, options) => {
      if (!isLoopbackUrl(url)) throw new Error(`test IdP refuses to reach ${url}: loopback only`);
      const { dispatcher: _ignored, ...rest } = options;
      const body = rest.body instanceof URLSearchParams ? rest.body : undefined;
      const logoutToken = body?.get('logout_token');
      if (logoutToken) out({ event: 'issued', kind: 'logout_token', value: logoutToken });
      return globalThis.fetch(url, rest);
    },
  };

  const provider = new Provider(issuer, configuration);

  // ---- events --------------------------------------------------------------------------------------------------
  const errorEvents = [
    'server_error', 'authorization.error', 'grant.error', 'userinfo.error', 'jwks.error', 'discovery.error',
    'end_session.error', 'end_session_confirm.error', 'end_session_success.error', 'revocation.error',
    'introspection.error', 'registration_create.error', 'backchannel.error',
  ];
  for (const name of errorEvents) {
    provider.on(name, (...args) => {
      const err = args.find((a) => a instanceof Error);
      const line = {
        event: name,
        error: err?.error ?? err?.name,
        error_description: err?.error_description,
        error_detail: err?.error_detail,
        message: err?.message,
      };
      if (name === 'server_error') line.stack = err?.stack;
      if (name === 'backchannel.error') {
        const client = args.find((a) => a?.clientId);
        line.client_id = client?.clientId;
      }
      out(line);
    });
  }
  provider.on('backchannel.success', (client, accountId, sid) => out({
    event: 'backchannel.success', client_id: client.clientId, sub: accountId, sid,
  }));
  provider.on('end_session.success', () => out({ event: 'end_session.success' }));
  provider.on('grant.revoked', (_ctx, grantId) => out({ event: 'grant.revoked', grant_id: grantId }));
  provider.on('interaction.ended', () => out({ event: 'interaction.ended' }));

  // ---- request log, issued tokens, JWKS without `alg` (runs around every route) -------------------------------
  provider.use(async (ctx, next) => {
    await next();
    out({
      event: 'request', method: ctx.method, path: `${prefix}${ctx.path}`, status: ctx.status,
    });

    const body = ctx.body;
    if (body && typeof body === 'object' && !Buffer.isBuffer(body) && typeof body.pipe !== 'function') {
      for (const kind of ['id_token', 'access_token', 'refresh_token']) {
        if (typeof body[kind] === 'string') out({ event: 'issued', kind, value: body[kind] });
      }
      if (cfg.jwks_strip_alg && ctx.path === '/jwks' && Array.isArray(body.keys)) {
        ctx.body = { keys: body.keys.map(({ alg: _alg, ...k }) => k) };
        ctx.type = 'application/jwk-set+json; charset=utf-8';
      }
    }
    const location = ctx.response.get('location');
    if (location) {
      try {
        const u = new URL(location, issuer);
        const params = new URLSearchParams(u.hash.slice(1));
        const code = u.searchParams.get('code') ?? params.get('code');
        if (code) out({ event: 'issued', kind: 'authorization_code', value: code });
      } catch { /* not a URL */ }
    }
    if (typeof body === 'string' && ctx.response.type === 'text/html') {
      const m = body.match(/name="code" value="([^"]+)"/); // form_post response mode
      if (m) out({ event: 'issued', kind: 'authorization_code', value: m[1] });
    }
  });

  // ---- a client authenticates only with the method it is registered for ---------------------------------------
  // oidc-provider treats client_secret_basic and client_secret_post as interchangeable; real IdPs (and what
  // headgate's fallback logic must cope with) accept only one. The body is read here and handed on as `req.body`.
  const authMethodOf = new Map(clients.map((c) => [c.client_id, c.token_endpoint_auth_method]));
  const clientAuthRoutes = new Set(['/token', '/token/revocation', '/token/introspection']);
  provider.use(async (ctx, next) => {
    if (ctx.method !== 'POST' || !clientAuthRoutes.has(ctx.path) || !ctx.is('application/x-www-form-urlencoded')) {
      return next();
    }
    const chunks = [];
    let size = 0;
    for await (const chunk of ctx.req) {
      size += chunk.length;
      if (size > 56 * 1024) break;
      chunks.push(chunk);
    }
    const raw = Buffer.concat(chunks).toString('utf8');
    ctx.req.body = raw;
    const form = new URLSearchParams(raw);
    const authz = ctx.get('authorization');
    let used;
    let clientId = form.get('client_id') ?? undefined;
    if (/^basic /i.test(authz)) {
      used = 'client_secret_basic';
      try {
        const decoded = Buffer.from(authz.slice(6).trim(), 'base64').toString('utf8');
        clientId = decodeURIComponent(decoded.slice(0, decoded.indexOf(':')).replace(/\+/g, '%20'));
      } catch { /* oidc-provider reports the bad header */ }
    } else if (form.has('client_secret')) {
      used = 'client_secret_post';
    }
    const registered = authMethodOf.get(clientId);
    if (used && registered && used !== registered) {
      const detail = `client ${clientId} is registered for ${registered}, the request used ${used}`;
      out({
        event: 'grant.error', error: 'invalid_client', error_description: 'client authentication failed', error_detail: detail,
      });
      ctx.status = 401;
      if (used === 'client_secret_basic') ctx.set('www-authenticate', 'Basic realm="test-idp"');
      ctx.set('cache-control', 'no-store');
      ctx.body = { error: 'invalid_client', error_description: 'client authentication failed' };
      return undefined;
    }
    return next();
  });

  // ---- the sign-in and consent pages --------------------------------------------------------------------------
  provider.use(async (ctx, next) => {
    const m = ctx.path.match(/^\/interaction\/([^/]+)(?:\/(login|confirm|abort))?$/);
    if (!m) return next();
    const [, uid, action] = m;
    ctx.set('cache-control', 'no-store');

    let details;
    try {
      details = await provider.interactionDetails(ctx.req, ctx.res);
    } catch (e) {
      out({ event: 'interaction.error', message: e.message });
      ctx.status = 400;
      ctx.type = 'html';
      ctx.body = page('Error', `<p class="error">${html(e.message)}</p>`);
      return undefined;
    }
    if (details.uid !== uid) {
      ctx.status = 400;
      ctx.type = 'html';
      ctx.body = page('Error', '<p class="error">interaction mismatch</p>');
      return undefined;
    }
    const {
      prompt, params, session, grantId,
    } = details;
    const finish = async (result, merge) => {
      const returnTo = await provider.interactionResult(ctx.req, ctx.res, result, { mergeWithLastSubmission: merge });
      ctx.status = 303;
      ctx.redirect(returnTo);
    };

    const loginPage = (error, login) => {
      ctx.type = 'html';
      ctx.body = page('Sign in', `${error ? `<p class="error">${html(error)}</p>\n` : ''}<p>to continue to ${html(params.client_id)}</p>
<form method="post" action="${html(interactionPath(uid))}/login">
  <input type="hidden" name="uid" value="${html(uid)}">
  <label>Login <input type="text" name="login" value="${html(login ?? params.login_hint ?? '')}" autofocus></label>
  <label>Password <input type="password" name="password"></label>
  <button type="submit" name="submit" value="login">Sign in</button>
</form>
<p><a href="${html(interactionPath(uid))}/abort">Cancel</a></p>`);
    };

    if (ctx.method === 'GET' && action === undefined) {
      if (prompt.name === 'login') {
        loginPage();
      } else if (prompt.name === 'consent') {
        const scopes = (prompt.details.missingOIDCScope ?? []).filter((s) => s !== 'openid');
        ctx.type = 'html';
        ctx.body = page('Authorize', `<p>${html(params.client_id)} asks for: ${html(scopes.join(' ') || 'your identity')}</p>
<form method="post" action="${html(interactionPath(uid))}/confirm">
  <input type="hidden" name="uid" value="${html(uid)}">
  <button type="submit" name="decision" value="allow">Allow</button>
  <button type="submit" name="decision" value="deny">Deny</button>
</form>`);
      } else {
        ctx.status = 501;
        ctx.body = `prompt ${prompt.name} not implemented`;
      }
      return undefined;
    }

    if (ctx.method === 'GET' && action === 'abort') {
      await finish({ error: 'access_denied', error_description: 'End-User aborted interaction' }, false);
      return undefined;
    }

    if (ctx.method === 'POST' && action === 'login') {
      if (prompt.name !== 'login') {
        ctx.status = 400;
        ctx.body = 'not at the login prompt';
        return undefined;
      }
      const form = await readForm(ctx.req);
      const user = userByLogin.get(form.login ?? '');
      const passwordOk = user && (user.password === undefined ? !!form.password : form.password === user.password);
      if (!user || !passwordOk) {
        out({ event: 'login.failed', login: form.login ?? '' });
        loginPage('Invalid login or password.', form.login);
        return undefined;
      }
      out({ event: 'login.success', login: user.login, sub: user.sub });
      await finish({ login: { accountId: user.sub } }, false);
      return undefined;
    }

    if (ctx.method === 'POST' && action === 'confirm') {
      if (prompt.name !== 'consent') {
        ctx.status = 400;
        ctx.body = 'not at the consent prompt';
        return undefined;
      }
      const form = await readForm(ctx.req);
      if (form.decision === 'deny') {
        await finish({ error: 'access_denied', error_description: 'End-User denied consent' }, false);
        return undefined;
      }
      const grant = grantId
        ? await provider.Grant.find(grantId)
        : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
      const d = prompt.details;
      if (d.missingOIDCScope) grant.addOIDCScope(d.missingOIDCScope.join(' '));
      if (d.missingOIDCClaims) grant.addOIDCClaims(d.missingOIDCClaims);
      if (d.missingResourceScopes) {
        for (const [indicator, scope] of Object.entries(d.missingResourceScopes)) {
          grant.addResourceScope(indicator, scope.join(' '));
        }
      }
      await finish({ consent: { grantId: await grant.save() } }, true);
      return undefined;
    }

    ctx.status = 405;
    return undefined;
  });

  return provider;
}
