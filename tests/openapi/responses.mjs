// openapi_responses: do real responses match gateway-http/openapi.yaml?
//
//   node responses.mjs --spec SPEC --gateway-src DIR --log-dir DIR
//                      --bin paygate-broker=PATH ... --bin paygate-gateway=PATH
//
// Starts the whole system (system.mjs: every process, a scratch database,
// Redis, an event bus) and drives it over HTTP through a flow that calls
// every operation of the spec at least once: two users register and log in,
// top up, create, list, read and cancel orders, pay, are refused, refund,
// read their transactions and notifications, and one follows the
// notification stream. Errors on purpose: 400 (bad JSON, unknown and bound
// fields, a missing Idempotency-Key, an unknown query parameter), 401 (no,
// bad token; wrong password), 402 (insufficient funds), 404 (unknown ids,
// another user's order, an unknown path), 405, 409 (email taken, key
// reused, order not payable or cancellable, refund too large), 413, 415,
// 429 (one email's login attempts over the limit), and, with the
// transaction service stopped, 503 (and /readyz 503).
//
// Every response is checked against the spec: its status is documented for
// the operation; each documented required header is present and valid
// (X-Request-Id always, WWW-Authenticate, Retry-After); the Content-Type is
// the documented one; the JSON body validates against the schema for that
// route and status (Ajv, JSON Schema 2020-12, formats checked); each SSE
// event's data validates against the stream's x-event-data-schema. At the
// end every operation must have had a documented 2xx response.
//
// GET /openapi.yaml must serve the spec file byte for byte; GET /metrics
// must be the Prometheus text format (text/plain).
import { readFileSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { parseArgs } from 'node:util';

import { System, uncleanNote } from './system.mjs';
import {
  deref,
  describeErrors,
  loadSpec,
  operations,
  schemaValidator,
} from './spec.mjs';

const { values: args } = parseArgs({
  options: {
    spec: { type: 'string' },
    'gateway-src': { type: 'string' },
    'log-dir': { type: 'string', default: '.' },
    bin: { type: 'string', multiple: true, default: [] },
  },
});
if (!args.spec || !args['gateway-src']) {
  console.error('usage: node responses.mjs --spec SPEC --gateway-src DIR --log-dir DIR --bin NAME=PATH...');
  process.exit(2);
}
// --bin paygate-NAME=PATH: the binary of process NAME.
const bins = Object.fromEntries(
  args.bin.map((b) => [b.slice(0, b.indexOf('=')).replace(/^paygate-/, ''), b.slice(b.indexOf('=') + 1)]),
);

const specText = readFileSync(args.spec, 'utf8');
const spec = loadSpec(args.spec);
const validatorFor = schemaValidator(spec);
const ops = operations(spec);
const errorSchema = { $ref: '#/components/schemas/Error' };

const problems = [];
const notes = [];
const coverage = new Map(ops.map((o) => [`${o.method} ${o.path}`, new Set()]));
const statusesSeen = new Set();
let checks = 0;

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const LOGIN_EMAIL_BURST = 3; // logins per email before 429 (the flow makes at most 2 per email)

// ---- checking one response against the spec -----------------------------------

// The spec operation for 'method' and a concrete 'urlPath' (templates match
// one segment per {param}; a literal segment wins over a parameter).
function findOperation(method, urlPath) {
  const segments = urlPath.split('?')[0].split('/');
  let best = null;
  for (const o of ops) {
    if (o.method !== method) continue;
    const t = o.path.split('/');
    if (t.length !== segments.length) continue;
    let literal = 0;
    const ok = t.every((part, i) => {
      if (/^\{.+\}$/.test(part)) return segments[i] !== '';
      if (part === segments[i]) literal++;
      return part === segments[i];
    });
    if (ok && (!best || literal > best.literal)) best = { ...o, literal };
  }
  return best;
}

function checkHeaders(where, responseSpec, headers) {
  for (const [name, raw] of Object.entries(responseSpec.headers ?? {})) {
    const h = deref(spec, raw);
    const value = headers.get(name);
    if (value === null) {
      if (h.required) problems.push(`${where}: header ${name} missing`);
      continue;
    }
    const schema = deref(spec, h.schema ?? {});
    const parsed = schema.type === 'integer' && /^-?\d+$/.test(value) ? Number(value) : value;
    const validate = validatorFor(h.schema ?? {});
    if (!validate(parsed)) {
      problems.push(`${where}: header ${name}: ${JSON.stringify(value)} ${describeErrors(validate.errors).join('; ')}`);
    }
  }
}

function validateJson(where, schema, body) {
  const validate = validatorFor(schema);
  checks++;
  if (!validate(body)) {
    for (const e of describeErrors(validate.errors)) problems.push(`${where}: ${e}`);
    problems.push(`${where}: body was ${JSON.stringify(body).slice(0, 600)}`);
    return false;
  }
  return true;
}

// Checks response 'r' of 'method' 'urlPath' against the spec; records coverage.
function checkResponse(method, urlPath, r) {
  const where = `${method} ${urlPath} -> ${r.status}`;
  statusesSeen.add(r.status);
  if (!r.headers.get('x-request-id')) problems.push(`${where}: no X-Request-Id`);
  const found = findOperation(method, urlPath);
  if (!found) {
    // Not an operation (unknown path, other method): still an Error body.
    if (r.status !== 404 && r.status !== 405) problems.push(`${where}: not an operation of the spec`);
    if (r.status === 405 && !r.headers.get('allow')) problems.push(`${where}: 405 without Allow`);
    validateJson(where, errorSchema, r.json);
    return;
  }
  const opKey = `${found.method} ${found.path}`;
  const responseSpec = deref(spec, found.op.responses?.[String(r.status)]);
  if (!responseSpec) {
    problems.push(`${where}: status ${r.status} is not documented for ${opKey} ` +
      `(documented: ${Object.keys(found.op.responses).join(', ')}); body ${r.text.slice(0, 300)}`);
    return;
  }
  checkHeaders(where, responseSpec, r.headers);
  if (!responseSpec.content) {
    if (r.text !== '') problems.push(`${where}: documented without a body, got ${r.text.slice(0, 100)}`);
    coverage.get(opKey).add(r.status);
    return;
  }
  const contentType = (r.headers.get('content-type') ?? '').split(';')[0].trim();
  const media = responseSpec.content?.[contentType];
  if (!media) {
    problems.push(`${where}: Content-Type ${contentType} is not documented (${Object.keys(responseSpec.content ?? {})})`);
    return;
  }
  if (contentType === 'application/json') {
    if (r.json === undefined) {
      problems.push(`${where}: body is not JSON: ${r.text.slice(0, 200)}`);
      return;
    }
    if (!validateJson(where, media.schema, r.json)) return;
  }
  coverage.get(opKey).add(r.status);
}

// ---- the HTTP client -----------------------------------------------------------------

let baseUrl = '';

// Calls the API and checks the response. 'opts': token, json (a body to
// send as JSON), raw (a body sent as is), contentType, key (Idempotency-Key),
// headers (more request headers), expect (the status the flow wants; a
// mismatch is a problem), code (the error code it wants).
async function api(method, urlPath, opts = {}) {
  const headers = { 'X-Request-Id': `oa-${++api.counter}`, ...opts.headers };
  if (opts.token) headers.Authorization = `Bearer ${opts.token}`;
  if (opts.key) headers['Idempotency-Key'] = opts.key;
  let body;
  if (opts.json !== undefined) {
    body = JSON.stringify(opts.json);
    headers['Content-Type'] = 'application/json';
  } else if (opts.raw !== undefined) {
    body = opts.raw;
    headers['Content-Type'] = opts.contentType ?? 'application/json';
  }
  const res = await fetch(`${baseUrl}${urlPath}`, { method, headers, body, signal: AbortSignal.timeout(20000) });
  const text = await res.text();
  let json;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  const r = { status: res.status, headers: res.headers, text, json };
  checkResponse(method, urlPath, r);
  if (opts.expect !== undefined && r.status !== opts.expect) {
    problems.push(`${method} ${urlPath}: wanted ${opts.expect}, got ${r.status}: ${text.slice(0, 300)}`);
  }
  if (opts.code !== undefined && r.json?.error?.code !== opts.code) {
    problems.push(`${method} ${urlPath}: wanted error code ${opts.code}, got ${r.json?.error?.code}`);
  }
  return r;
}
api.counter = 0;

// Calls until 'done(r)' or 'timeoutMs' passes; returns the last response.
async function poll(method, urlPath, opts, done, timeoutMs = 30000) {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const r = await api(method, urlPath, opts);
    if (done(r) || Date.now() > until) return r;
    await sleep(250);
  }
}

// Opens the SSE stream; events arrive in 'stream.events' ({event, id, data}).
function openStream(token) {
  const url = new URL(`${baseUrl}/v1/notifications/stream`);
  const stream = { events: [], status: 0, headers: null, buffer: '', comments: 0 };
  stream.ready = new Promise((resolve, reject) => {
    stream.request = http.get(url, { headers: { Authorization: `Bearer ${token}`, 'X-Request-Id': 'oa-stream' } }, (res) => {
      stream.status = res.statusCode;
      stream.headers = new Headers(Object.entries(res.headers).map(([k, v]) => [k, String(v)]));
      res.setEncoding('utf8');
      res.on('data', (chunk) => {
        stream.buffer += chunk;
        let end;
        while ((end = stream.buffer.indexOf('\n\n')) >= 0) {
          const block = stream.buffer.slice(0, end);
          stream.buffer = stream.buffer.slice(end + 2);
          const event = {};
          for (const line of block.split('\n')) {
            if (line.startsWith(':')) stream.comments++;
            const m = /^([a-z]+): ?(.*)$/.exec(line);
            if (m) event[m[1]] = m[2];
          }
          if (event.event || event.data) stream.events.push(event);
        }
      });
      res.on('error', () => {});
      resolve();
    });
    stream.request.on('error', (err) => (stream.status ? undefined : reject(err)));
  });
  return stream;
}

// Checks the open stream's head and every event so far against the spec.
function checkStream(stream) {
  const where = `GET /v1/notifications/stream -> ${stream.status}`;
  const found = findOperation('GET', '/v1/notifications/stream');
  const responseSpec = deref(spec, found.op.responses[String(stream.status)]);
  statusesSeen.add(stream.status);
  if (!responseSpec) {
    problems.push(`${where}: status not documented`);
    return;
  }
  checkHeaders(where, responseSpec, stream.headers);
  const contentType = (stream.headers.get('content-type') ?? '').split(';')[0].trim();
  const media = responseSpec.content?.[contentType];
  if (!media) {
    problems.push(`${where}: Content-Type ${contentType} not documented`);
    return;
  }
  const dataSchema = media['x-event-data-schema'];
  if (!dataSchema) problems.push(`${where}: no x-event-data-schema documented`);
  for (const e of stream.events) {
    if (e.event !== 'notification') problems.push(`${where}: event "${e.event}" is not "notification"`);
    let data;
    try {
      data = JSON.parse(e.data);
    } catch {
      problems.push(`${where}: data is not JSON: ${e.data}`);
      continue;
    }
    if (dataSchema) validateJson(`${where} event ${e.id}`, dataSchema, data);
    if (data.id !== e.id) problems.push(`${where}: event id ${e.id} is not the notification's ${data.id}`);
  }
  coverage.get('GET /v1/notifications/stream').add(stream.status);
}

// ---- the flow ------------------------------------------------------------------------

async function flow(system) {
  const run = Date.now().toString(36);
  const asha = { email: `asha.${run}@example.com`, password: 'Openapi-Passw0rd-1', name: 'Asha' };
  const bala = { email: `bala.${run}@example.com`, password: 'Openapi-Passw0rd-2', name: 'Bala' };
  const missingOrder = `ord_${'0'.repeat(24)}`;

  // probes and this description
  await api('GET', '/healthz', { expect: 200 });
  await api('GET', '/readyz', { expect: 200 });
  const specResponse = await api('GET', '/openapi.yaml');
  if (specResponse.status === 200) {
    if (specResponse.text !== specText) problems.push('GET /openapi.yaml: the body is not gateway-http/openapi.yaml');
    const etag = specResponse.headers.get('etag');
    await api('GET', '/openapi.yaml', { headers: { 'If-None-Match': etag }, expect: 304 });
  } else {
    problems.push(`GET /openapi.yaml: wanted 200, got ${specResponse.status}`);
  }

  const metrics = await api('GET', '/metrics', { expect: 200 });
  if (!/^# TYPE paygate_gateway_requests_total counter$/m.test(metrics.text)) {
    problems.push('GET /metrics: no paygate_gateway_requests_total family');
  }

  // users
  const a = await api('POST', '/v1/users', { json: asha, expect: 201 });
  await api('POST', '/v1/users', { json: asha, expect: 409, code: 'email_taken' });
  await api('POST', '/v1/users', { raw: '{"email": ', expect: 400, code: 'invalid_json' });
  const unknown = await api('POST', '/v1/users', { json: { ...bala, nickname: 'b' }, expect: 400 });
  if (unknown.json?.error?.field !== 'nickname') problems.push('unknown field: error.field is not "nickname"');
  await api('POST', '/v1/users', { raw: JSON.stringify(bala), contentType: 'text/plain', expect: 415 });
  await api('POST', '/v1/users', { json: bala, expect: 201 });
  const login = await api('POST', '/v1/auth/login', { json: { email: asha.email, password: asha.password }, expect: 200 });
  await api('POST', '/v1/auth/login', { json: { email: asha.email, password: 'wrong-password' }, expect: 401, code: 'invalid_credentials' });
  const tokenA = login.json?.access_token;
  const tokenB = (await api('POST', '/v1/auth/login', { json: { email: bala.email, password: bala.password }, expect: 200 })).json?.access_token;
  if (!tokenA || !tokenB) throw new Error('no access tokens: cannot go on');

  // wallet
  await api('GET', '/v1/wallet', { expect: 401, code: 'unauthenticated' });
  await api('GET', '/v1/wallet', { token: `${tokenA}x`, expect: 401 });
  const wallet = await api('GET', '/v1/wallet', { token: tokenA, expect: 200 });
  if (wallet.json?.balance !== 0 || wallet.json?.user_id !== a.json?.id) problems.push('a new wallet is not 0 for its user');

  const stream = openStream(tokenA);
  await stream.ready;
  await api('GET', '/v1/notifications/stream', { expect: 401 });

  await api('POST', '/v1/wallet/topups', { token: tokenA, json: { amount: 100000 }, expect: 400, code: 'idempotency_key_required' });
  await api('POST', '/v1/wallet/topups', { token: tokenA, key: 'k', json: { amount: 1, idempotency_key: 'k' }, expect: 400 });
  const top = await api('POST', '/v1/wallet/topups', { token: tokenA, key: `top-${run}`, json: { amount: 100000 }, expect: 201 });
  const again = await api('POST', '/v1/wallet/topups', { token: tokenA, key: `top-${run}`, json: { amount: 100000 }, expect: 201 });
  if (again.json?.id !== top.json?.id) problems.push('a replayed top-up is not the first one');
  await api('POST', '/v1/wallet/topups', { token: tokenA, key: `top-${run}`, json: { amount: 5 }, expect: 409, code: 'idempotency_key_reused' });

  // orders
  const o1 = (await api('POST', '/v1/orders', { token: tokenA, json: { amount: 30000, receipt: 'r-1', description: 'tea' }, expect: 201 })).json;
  const o2 = (await api('POST', '/v1/orders', { token: tokenA, json: { amount: 500000, currency: 'INR' }, expect: 201 })).json;
  const o3 = (await api('POST', '/v1/orders', { token: tokenA, json: { amount: 1000 }, expect: 201 })).json;
  await api('POST', '/v1/orders', { token: tokenA, json: { amount: 'ten' }, expect: 400 });
  await api('POST', '/v1/orders', { token: tokenA, json: { amount: 0 }, expect: 400 });
  await api('POST', '/v1/orders', { token: tokenA, json: { amount: 1, description: 'x'.repeat(70000) }, expect: 413 });
  const page = await api('GET', '/v1/orders?limit=1', { token: tokenA, expect: 200 });
  if (page.json?.has_more !== true || page.json?.data?.length !== 1) problems.push('GET /v1/orders?limit=1: not one page of more');
  await api('GET', `/v1/orders?limit=2&starting_after=${page.json?.data?.[0]?.id}`, { token: tokenA, expect: 200 });
  await api('GET', '/v1/orders', { token: tokenA, expect: 200 });
  await api('GET', '/v1/orders?colour=red', { token: tokenA, expect: 400 });
  await api('GET', `/v1/orders/${o1.id}`, { token: tokenA, expect: 200 });
  await api('GET', `/v1/orders/${missingOrder}`, { token: tokenA, expect: 404 });
  await api('GET', `/v1/orders/${o1.id}`, { token: tokenB, expect: 404 });
  await api('POST', `/v1/orders/${o3.id}/cancel`, { token: tokenA, expect: 200 });
  const cancelled = await api('POST', `/v1/orders/${o3.id}/cancel`, { token: tokenA, json: {}, expect: 200 });
  if (cancelled.json?.status !== 'CANCELLED') problems.push('a cancelled order is not CANCELLED');
  await api('POST', `/v1/orders/${o3.id}/cancel`, { token: tokenA, json: { id: o3.id }, expect: 400 });

  // payments
  await api('POST', '/v1/payments', { token: tokenA, json: { order_id: o1.id }, expect: 400, code: 'idempotency_key_required' });
  const pay = await api('POST', '/v1/payments', { token: tokenA, key: `pay-${run}`, json: { order_id: o1.id }, expect: 201 });
  const replay = await api('POST', '/v1/payments', { token: tokenA, key: `pay-${run}`, json: { order_id: o1.id }, expect: 201 });
  if (replay.json?.id !== pay.json?.id) problems.push('a replayed payment is not the first one');
  await api('POST', '/v1/payments', { token: tokenA, key: `pay2-${run}`, json: { order_id: o1.id }, expect: 409, code: 'order_not_payable' });
  const poor = await api('POST', '/v1/payments', { token: tokenA, key: `pay3-${run}`, json: { order_id: o2.id }, expect: 402, code: 'insufficient_funds' });
  if (!poor.json?.error?.payment_id) problems.push('402: no payment_id in the error');
  await api('POST', '/v1/payments', { token: tokenA, key: `pay4-${run}`, json: { order_id: missingOrder }, expect: 404 });
  await api('POST', `/v1/orders/${o1.id}/cancel`, { token: tokenA, expect: 409, code: 'order_not_cancellable' });
  await api('GET', '/v1/payments', { token: tokenA, expect: 200 });
  await api('GET', '/v1/payments?limit=1', { token: tokenA, expect: 200 });
  const payment = await api('GET', `/v1/payments/${pay.json?.id}`, { token: tokenA, expect: 200 });
  if (payment.json?.status !== 'SUCCEEDED') problems.push('the payment did not succeed');
  await api('GET', `/v1/payments/${poor.json?.error?.payment_id}`, { token: tokenA, expect: 200 });
  await api('GET', `/v1/payments/pay_${'0'.repeat(24)}`, { token: tokenA, expect: 404 });

  // refunds
  const refundPath = `/v1/payments/${pay.json?.id}/refunds`;
  await api('POST', refundPath, { token: tokenA, key: `ref-${run}`, json: { amount: 10000 }, expect: 201 });
  await api('POST', refundPath, { token: tokenA, key: `ref2-${run}`, json: { amount: 25000 }, expect: 409, code: 'refund_exceeds_payment' });
  await api('POST', refundPath, { token: tokenA, key: `ref3-${run}`, json: { payment_id: 'x' }, expect: 400 });
  await api('POST', refundPath, { token: tokenA, key: `ref4-${run}`, expect: 201 });
  await api('POST', `/v1/payments/pay_${'0'.repeat(24)}/refunds`, { token: tokenA, key: `ref5-${run}`, expect: 404 });

  // history
  const txns = await poll('GET', '/v1/transactions', { token: tokenA, expect: 200 },
    (r) => (r.json?.data ?? []).filter((t) => t.type === 'PAYMENT' || t.type === 'REFUND').length >= 3);
  const txn = txns.json?.data?.[0];
  if (!txn) problems.push('no transactions recorded');
  else await api('GET', `/v1/transactions/${txn.id}`, { token: tokenA, expect: 200 });
  await api('GET', '/v1/transactions?limit=1', { token: tokenA, expect: 200 });
  await api('GET', '/v1/transactions?limit=1000', { token: tokenA, expect: 400 });
  await api('GET', `/v1/transactions/txn_${'0'.repeat(24)}`, { token: tokenA, expect: 404 });
  await poll('GET', '/v1/notifications', { token: tokenA, expect: 200 }, (r) => (r.json?.data ?? []).length >= 4);
  await api('GET', '/v1/notifications?limit=1', { token: tokenA, expect: 200 });
  await api('GET', '/v1/notifications?limit=x', { token: tokenA, expect: 400 });
  await api('GET', '/v1/notifications', { token: tokenB, expect: 200 });

  // the stream saw the same notifications
  const until = Date.now() + 20000;
  while (!stream.events.some((e) => /payment\.succeeded/.test(e.data ?? '')) && Date.now() < until) await sleep(200);
  if (!stream.events.some((e) => /payment\.succeeded/.test(e.data ?? ''))) problems.push('the stream had no payment.succeeded');
  stream.request.destroy();
  checkStream(stream);

  // not operations: another method, an unknown path
  await api('POST', '/v1/wallet', { token: tokenA, json: {}, expect: 405 });
  await api('DELETE', '/v1/notifications/stream', { token: tokenA, expect: 405 });
  await api('GET', '/v1/nothing-here', { token: tokenA, expect: 404 });

  // a service down: 503 with Retry-After, and /readyz says which
  // 429: guessing one account's password is limited per email
  const guessed = { email: `guessed.${run}@example.com`, password: 'not-the-password' };
  for (let i = 0; i < LOGIN_EMAIL_BURST; i++) {
    await api('POST', '/v1/auth/login', { json: guessed, expect: 401, code: 'invalid_credentials' });
  }
  const limited = await api('POST', '/v1/auth/login', { json: guessed, expect: 429, code: 'rate_limited' });
  if (limited.json?.error?.limit !== 'login_email') problems.push('429: error.limit is not login_email');

  const note = uncleanNote('transaction', await system.stopProcess('transaction'));
  if (note) notes.push(note);
  await api('GET', '/v1/transactions', { token: tokenA, expect: 503 });
  const ready = await api('GET', '/readyz', { expect: 503, code: 'not_ready' });
  if (!(ready.json?.error?.missing_services ?? []).includes('transaction')) {
    problems.push('/readyz 503 does not name the transaction service');
  }
}

// ---- main ------------------------------------------------------------------------

const system = new System({
  bins,
  logDir: args['log-dir'],
  prefix: 'openapi',
  env: {
    PAYGATE_GATEWAY_OPENAPI_FILE: path.resolve(args.spec),
    // The flow registers and logs in more often than the production
    // defaults allow one address; only the per-email login limit stays on
    // (tight), so that a real 429 is checked against the spec.
    PAYGATE_GATEWAY_RATE_ADDRESS_PER_MIN: '0',
    PAYGATE_GATEWAY_RATE_USER_PER_MIN: '0',
    PAYGATE_GATEWAY_RATE_REGISTER_ADDRESS_PER_MIN: '0',
    PAYGATE_GATEWAY_RATE_LOGIN_ADDRESS_PER_MIN: '0',
    PAYGATE_GATEWAY_RATE_PAYMENT_USER_PER_MIN: '0',
    PAYGATE_GATEWAY_RATE_LOGIN_EMAIL_PER_MIN: '1',
    PAYGATE_GATEWAY_RATE_LOGIN_EMAIL_BURST: String(LOGIN_EMAIL_BURST),
  },
});
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => {
    system.killAll();
    process.exit(1);
  });
}

let crashed = null;
try {
  // A schema Ajv cannot compile is the spec's fault: say so before starting.
  for (const name of Object.keys(spec.components?.schemas ?? {})) {
    validatorFor({ $ref: `#/components/schemas/${name}` });
  }
  await system.start();
  baseUrl = system.baseUrl;
  console.log(`system up: ${baseUrl}, broker ${system.brokerEndpoint}, logs in ${args['log-dir']}`);
  await flow(system);
} catch (err) {
  crashed = err;
} finally {
  for (const n of (await system.stop()).notes) notes.push(n);
}

console.log(`\n${checks} bodies validated; statuses seen: ${[...statusesSeen].sort().join(', ')}`);
for (const [op, statuses] of coverage) {
  const list = [...statuses].sort();
  console.log(`  ${list.some((s) => s < 300) ? 'ok ' : '-- '} ${op.padEnd(44)} ${list.join(', ')}`);
  if (!list.some((s) => s >= 200 && s < 300)) problems.push(`${op}: no documented 2xx response was seen`);
}
for (const s of [400, 401, 402, 404, 409]) {
  if (!statusesSeen.has(s)) problems.push(`no ${s} response was seen`);
}
if (crashed) problems.push(`the flow stopped: ${crashed.stack ?? crashed}`);
for (const n of notes) console.log(`NOTE ${n}`);
for (const p of problems) console.log(`PROBLEM ${p}`);
const ok = problems.length === 0;
console.log(`\n${ok ? 1 : 0} passed, ${ok ? 0 : 1} failed (${problems.length} problems)`);
process.exit(ok ? 0 : 1);
