// openapi_lint: is gateway-http/openapi.yaml a valid, complete OpenAPI 3.1
// document, and does it follow paygate's own rules?
//
//   node lint.mjs SPEC REDOCLY_CONFIG
//
// 1. Redocly CLI `lint` with redocly.yaml (ruleset recommended-strict: the
//    OpenAPI 3.1 structure, $refs, operation ids, summaries, tags, unused
//    components, ... every problem is an error). Offline: no telemetry, no
//    update check.
// 2. paygate's rules, which no generic linter knows (gateway.c, sse.c):
//    - every response documents the X-Request-Id header, required;
//    - every 401 documents WWW-Authenticate; every 429 and 503 documents
//      Retry-After, except /readyz (a probe: gateway.c sends none there);
//    - every 4xx/5xx body is the Error schema;
//    - an operation that needs a token documents 401; one that takes a
//      JSON body documents 413 and 415; one that calls a service (x-rpc)
//      documents 400, 429, 500, 503 and 504; one with an Idempotency-Key
//      header requires it and documents 409.
// Exit status 0 when both pass, 1 otherwise.
import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import path from 'node:path';

import { deref, loadSpec, needsAuth, operations, parametersOf } from './spec.mjs';

const [specPath, configPath] = process.argv.slice(2);
if (!specPath || !configPath) {
  console.error('usage: node lint.mjs SPEC REDOCLY_CONFIG');
  process.exit(2);
}

// ---- 1. Redocly ------------------------------------------------------------
const require = createRequire(import.meta.url);
const redocly = path.join(path.dirname(require.resolve('@redocly/cli/package.json')), 'bin/cli.js');
console.log(`== redocly lint ${specPath}`);
const lint = spawnSync(
  process.execPath,
  [redocly, 'lint', '--config', configPath, '--format', 'stylish', specPath],
  {
    stdio: 'inherit',
    env: {
      ...process.env,
      REDOCLY_TELEMETRY: 'off',
      REDOCLY_SUPPRESS_UPDATE_NOTICE: 'true',
      REDOCLY_SUPPRESS_NOTIFICATIONS: 'true',
      NO_COLOR: '1',
    },
  },
);
const redoclyOk = lint.status === 0;
console.log(redoclyOk ? 'redocly: no problems' : `redocly: exit status ${lint.status}`);

// ---- 2. paygate's rules -------------------------------------------------------
const spec = loadSpec(specPath);
const problems = [];
const errorSchema = '#/components/schemas/Error';

function headerNames(response) {
  return Object.keys(response.headers ?? {}).map((h) => h.toLowerCase());
}

function requiredHeader(spec, response, name) {
  const entry = Object.entries(response.headers ?? {}).find(
    ([h]) => h.toLowerCase() === name.toLowerCase(),
  );
  return entry !== undefined && deref(spec, entry[1]).required === true;
}

let checked = 0;
for (const { method, path: route, op, item } of operations(spec)) {
  const where = `${method} ${route}`;
  const responses = op.responses ?? {};
  for (const [status, raw] of Object.entries(responses)) {
    const response = deref(spec, raw);
    checked++;
    if (!requiredHeader(spec, response, 'X-Request-Id')) {
      problems.push(`${where} ${status}: no required X-Request-Id header`);
    }
    if (status === '401' && !requiredHeader(spec, response, 'WWW-Authenticate')) {
      problems.push(`${where} 401: no required WWW-Authenticate header`);
    }
    if ((status === '429' || status === '503') && route !== '/readyz') {
      if (!requiredHeader(spec, response, 'Retry-After')) {
        problems.push(`${where} ${status}: no required Retry-After header`);
      }
    }
    if (route === '/readyz' && headerNames(response).includes('retry-after')) {
      problems.push(`${where} ${status}: documents Retry-After, which gateway.c does not send`);
    }
    if (/^[45]/.test(status)) {
      const schema = response.content?.['application/json']?.schema;
      if (!schema || schema.$ref !== errorSchema) {
        problems.push(`${where} ${status}: the body is not ${errorSchema}`);
      }
    }
  }
  const has = (status) => Object.hasOwn(responses, status);
  if (needsAuth(spec, op) && !has('401')) problems.push(`${where}: needs a token but has no 401`);
  if (op.requestBody) {
    for (const status of ['413', '415']) {
      if (!has(status)) problems.push(`${where}: takes a body but has no ${status}`);
    }
  }
  if (op['x-rpc']) {
    for (const status of ['400', '429', '500', '503', '504']) {
      if (!has(status)) problems.push(`${where}: calls ${op['x-rpc']} but has no ${status}`);
    }
  }
  const key = parametersOf(spec, item, op).find(
    (p) => p.in === 'header' && p.name.toLowerCase() === 'idempotency-key',
  );
  if (key) {
    if (key.required !== true) problems.push(`${where}: Idempotency-Key is not required`);
    if (!has('409')) problems.push(`${where}: takes an Idempotency-Key but has no 409`);
  }
}

console.log(`\n== paygate rules (${operations(spec).length} operations, ${checked} responses)`);
for (const p of problems) console.log(`  ${p}`);
console.log(problems.length === 0 ? 'paygate rules: no problems' : `${problems.length} problems`);

const failed = (redoclyOk ? 0 : 1) + (problems.length === 0 ? 0 : 1);
console.log(`\n${2 - failed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
