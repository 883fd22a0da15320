// openapi_routes: do the gateway's routes table and the spec describe the
// same API?
//
//   node routes.mjs SPEC ROUTES_DUMP_BINARY
//
// ROUTES_DUMP_BINARY (routes_dump.c) prints the compiled routes table
// (routes_v1), the gateway's built-in endpoints and the protobuf messages
// of every route. Checked, in both directions:
//   - the same (method, path) pairs: every route is in the spec and every
//     operation of the spec is a route;
//   - per route: x-rpc names its service.method; a token is required
//     exactly when the route has auth; the documented 2xx is the route's
//     success status and the only one; Idempotency-Key is a required header
//     exactly when the route takes one; the query parameters are the
//     route's; the path parameters are the template's; a request body is
//     documented exactly when the route takes one;
//   - the request body schema has exactly the request message's fields
//     that are not bound to the path, a header or the query (and a route
//     without a body binds them all), each with its JSON type;
//   - the success schema has exactly the reply message's fields, all
//     required (proto3 JSON carries every field), with their JSON types,
//     int64/int32 formats and enum value names, nested messages included.
// Exit status 0 when all agree, 1 otherwise.
import { execFileSync } from 'node:child_process';

import { deref, loadSpec, needsAuth, operations, parametersOf } from './spec.mjs';

const [specPath, dumpBinary] = process.argv.slice(2);
if (!specPath || !dumpBinary) {
  console.error('usage: node routes.mjs SPEC ROUTES_DUMP_BINARY');
  process.exit(2);
}

const spec = loadSpec(specPath);
const table = JSON.parse(execFileSync(dumpBinary, { encoding: 'utf8' }));
const problems = [];
const key = (method, path) => `${method} ${path}`;

// ---- the same routes, both ways ---------------------------------------------
const specOps = new Map(operations(spec).map((o) => [key(o.method, o.path), o]));
const tableRoutes = new Map();
for (const r of table.routes) tableRoutes.set(key(r.method, r.path), { ...r, builtin: false });
for (const r of table.builtin) tableRoutes.set(key(r.method, r.path), { ...r, builtin: true });

for (const k of tableRoutes.keys()) {
  if (!specOps.has(k)) problems.push(`${k}: served by the gateway but missing from the spec`);
}
for (const k of specOps.keys()) {
  if (!tableRoutes.has(k)) problems.push(`${k}: in the spec but not a route of the gateway`);
}

// ---- schemas against messages -----------------------------------------------
const INT_FORMATS = {
  int32: 'int32', sint32: 'int32', sfixed32: 'int32',
  int64: 'int64', sint64: 'int64', sfixed64: 'int64',
  uint32: 'int64', fixed32: 'int64', uint64: 'int64', fixed64: 'int64',
};

// The JSON type a schema declares (following $ref; const/enum alone count).
function schemaType(schema) {
  const s = deref(spec, schema);
  if (s.type) return s.type;
  if (s.const !== undefined) return typeof s.const;
  return undefined;
}

// Compares schema 's' (an object schema) with the message's 'fields'.
// 'bound' lists fields that must not appear (they come from elsewhere).
function compareMessage(where, schemaRef, messageName, { bound = [], reply = false } = {}) {
  const s = deref(spec, schemaRef);
  const fields = table.messages[messageName];
  if (!fields) {
    problems.push(`${where}: message ${messageName} not described by routes_dump`);
    return;
  }
  if (s.type !== 'object') problems.push(`${where}: schema is not an object (${messageName})`);
  if (s.additionalProperties !== false) {
    problems.push(`${where}: additionalProperties must be false (unknown fields are refused)`);
  }
  const props = s.properties ?? {};
  const expected = fields.filter((f) => !bound.includes(f.name));
  for (const f of expected) {
    if (!Object.hasOwn(props, f.name)) {
      problems.push(`${where}: ${messageName}.${f.name} is missing from the schema`);
    }
  }
  for (const name of Object.keys(props)) {
    if (!expected.some((f) => f.name === name)) {
      problems.push(
        `${where}: property "${name}" is ${bound.includes(name) ? 'bound to the path, a header or the query' : `not a field of ${messageName}`}`,
      );
    }
  }
  if (reply) {
    const required = new Set(s.required ?? []);
    for (const f of expected) {
      if (!required.has(f.name)) problems.push(`${where}: reply field "${f.name}" is not required`);
    }
  }
  for (const f of expected) {
    if (!Object.hasOwn(props, f.name)) continue;
    compareField(`${where}.${f.name}`, props[f.name], f, reply);
  }
}

function compareField(where, schemaRef, field, reply) {
  let s = deref(spec, schemaRef);
  if (field.repeated) {
    if (s.type !== 'array') {
      problems.push(`${where}: repeated field, schema type is ${s.type}`);
      return;
    }
    s = deref(spec, s.items ?? {});
  }
  const type = schemaType(s);
  if (type !== field.json_type) {
    problems.push(`${where}: ${field.proto_type} is JSON ${field.json_type}, schema says ${type}`);
    return;
  }
  const format = INT_FORMATS[field.proto_type];
  if (format && s.format !== format) {
    problems.push(`${where}: ${field.proto_type} wants format ${format}, schema has ${s.format}`);
  }
  if (field.proto_type === 'enum') {
    const named = field.enum_values.filter((v) => !v.endsWith('_UNSPECIFIED'));
    const documented = s.enum ?? (s.const !== undefined ? [s.const] : undefined);
    if (!documented) {
      problems.push(`${where}: enum ${field.enum} without enum values in the schema`);
    } else {
      for (const v of documented) {
        if (!field.enum_values.includes(v)) problems.push(`${where}: "${v}" is not a value of ${field.enum}`);
      }
      // A reply may carry any named value but UNSPECIFIED.
      if (reply) {
        for (const v of named) {
          if (!documented.includes(v)) problems.push(`${where}: ${field.enum} value ${v} not documented`);
        }
      }
    }
  }
  if (field.proto_type === 'message') compareMessage(where, s, field.message, { reply });
}

// ---- per route -------------------------------------------------------------------
for (const [k, route] of tableRoutes) {
  const found = specOps.get(k);
  if (!found) continue;
  const { op, item } = found;
  const where = k;
  if (needsAuth(spec, op) !== route.auth) {
    problems.push(`${where}: the route ${route.auth ? 'needs' : 'does not need'} a token; the spec disagrees`);
  }
  const successes = Object.keys(op.responses ?? {}).filter((s) => /^2/.test(s));
  if (route.builtin) {
    if (op['x-rpc']) problems.push(`${where}: a built-in endpoint has x-rpc`);
    if (successes.join() !== '200') problems.push(`${where}: documents ${successes} instead of 200`);
    continue;
  }
  const rpc = `${route.service}.${route.rpc}`;
  if (op['x-rpc'] !== rpc) problems.push(`${where}: x-rpc is ${op['x-rpc']}, the route calls ${rpc}`);
  if (successes.join() !== String(route.success_status)) {
    problems.push(`${where}: documents ${successes.join(', ') || 'no 2xx'}, the route answers ${route.success_status}`);
  }

  const params = parametersOf(spec, item, op);
  const named = (where_) => params.filter((p) => p.in === where_).map((p) => p.name);
  const idem = params.find((p) => p.in === 'header' && p.name.toLowerCase() === 'idempotency-key');
  if (Boolean(idem) !== Boolean(route.idempotency_field)) {
    problems.push(`${where}: Idempotency-Key ${route.idempotency_field ? 'missing' : 'documented but not taken'}`);
  }
  const query = named('query');
  for (const q of route.query_fields) {
    if (!query.includes(q)) problems.push(`${where}: query parameter "${q}" not documented`);
  }
  for (const q of query) {
    if (!route.query_fields.includes(q)) problems.push(`${where}: query parameter "${q}" is refused by the gateway`);
  }
  const pathParams = named('path');
  if (pathParams.join() !== route.path_params.join()) {
    problems.push(`${where}: path parameters [${pathParams}] differ from the template's [${route.path_params}]`);
  }
  for (const p of params.filter((x) => x.in === 'path')) {
    if (p.required !== true) problems.push(`${where}: path parameter "${p.name}" not required`);
  }

  const bound = [
    ...route.path_params,
    ...route.query_fields,
    ...(route.idempotency_field ? [route.idempotency_field] : []),
  ];
  if (Boolean(op.requestBody) !== route.has_body) {
    problems.push(`${where}: request body ${route.has_body ? 'missing from the spec' : 'documented but refused'}`);
  }
  if (op.requestBody) {
    const body = deref(spec, op.requestBody);
    const schema = body.content?.['application/json']?.schema;
    if (!schema) problems.push(`${where}: request body is not application/json`);
    else compareMessage(`${where} request`, schema, route.request, { bound });
  } else {
    // Everything the request message has must come from the path or query.
    for (const f of table.messages[route.request] ?? []) {
      if (!bound.includes(f.name)) {
        problems.push(`${where}: ${route.request}.${f.name} cannot be sent (no body, not bound)`);
      }
    }
  }

  const success = deref(spec, op.responses?.[String(route.success_status)] ?? {});
  const schema = success.content?.['application/json']?.schema;
  if (!schema) problems.push(`${where}: ${route.success_status} has no application/json schema`);
  else compareMessage(`${where} ${route.success_status}`, schema, route.reply, { reply: true });
}

console.log(
  `routes table: ${table.routes.length} routes + ${table.builtin.length} built-in; ` +
    `spec: ${specOps.size} operations`,
);
for (const k of [...tableRoutes.keys()].sort()) {
  const r = tableRoutes.get(k);
  console.log(`  ${specOps.has(k) ? 'ok ' : '-- '} ${k.padEnd(42)} ${r.builtin ? '(built-in)' : `${r.service}.${r.rpc}`}`);
}
for (const p of problems) console.log(`PROBLEM ${p}`);
console.log(`\n${problems.length === 0 ? 1 : 0} passed, ${problems.length === 0 ? 0 : 1} failed` +
  ` (${problems.length} problems)`);
process.exit(problems.length === 0 ? 0 : 1);
