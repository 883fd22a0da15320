// spec: reading gateway-http/openapi.yaml for the checks in this folder.
//
// loadSpec parses the YAML; deref follows local $refs ("#/..."); operations
// lists every (method, path) with its operation; schemaValidator compiles a
// schema of the spec into an Ajv (JSON Schema 2020-12, the dialect of
// OpenAPI 3.1) validator, formats included (date-time, int32, int64).
import { readFileSync } from 'node:fs';

import Ajv2020 from 'ajv/dist/2020.js';
import addFormats from 'ajv-formats';
import YAML from 'yaml';

export const METHODS = ['get', 'put', 'post', 'delete', 'options', 'head', 'patch', 'trace'];

export function loadSpec(path) {
  return YAML.parse(readFileSync(path, 'utf8'));
}

// The node at local JSON pointer 'ref' ("#/components/schemas/Order").
export function pointer(spec, ref) {
  if (!ref.startsWith('#/')) throw new Error(`only local $refs are supported: ${ref}`);
  let node = spec;
  for (const raw of ref.slice(2).split('/')) {
    const key = raw.replace(/~1/g, '/').replace(/~0/g, '~');
    if (node === undefined || node === null || !(key in node)) {
      throw new Error(`$ref ${ref} does not resolve`);
    }
    node = node[key];
  }
  return node;
}

// 'node' with its $ref chain followed.
export function deref(spec, node) {
  let seen = 0;
  while (node && typeof node === 'object' && typeof node.$ref === 'string') {
    if (++seen > 32) throw new Error(`$ref loop at ${node.$ref}`);
    node = pointer(spec, node.$ref);
  }
  return node;
}

// [{method: 'GET', path, op}] for every operation of the spec.
export function operations(spec) {
  const out = [];
  for (const [path, item] of Object.entries(spec.paths ?? {})) {
    for (const method of METHODS) {
      if (item[method]) out.push({ method: method.toUpperCase(), path, op: item[method], item });
    }
  }
  return out;
}

// The parameters of an operation (path-level ones included), dereferenced.
export function parametersOf(spec, item, op) {
  const byKey = new Map();
  for (const p of [...(item.parameters ?? []), ...(op.parameters ?? [])]) {
    const param = deref(spec, p);
    byKey.set(`${param.in}:${param.name.toLowerCase()}`, param);
  }
  return [...byKey.values()];
}

// True when the operation needs a bearer token (its own security, else the
// document's; an empty list or an empty requirement means none).
export function needsAuth(spec, op) {
  const security = op.security ?? spec.security ?? [];
  return security.some((requirement) => Object.keys(requirement).length > 0);
}

// Compiles schemas of 'spec' into validators. Every $ref in the spec's
// schemas points into #/components/schemas; they are all registered once
// under one id, so a schema compiled later resolves them.
export function schemaValidator(spec) {
  const ajv = new Ajv2020({ allErrors: true, strict: true, strictTypes: false });
  addFormats(ajv);
  ajv.addFormat('int32', {
    type: 'number',
    validate: (n) => Number.isInteger(n) && n >= -2147483648 && n <= 2147483647,
  });
  ajv.addFormat('int64', { type: 'number', validate: (n) => Number.isInteger(n) });
  const rewrite = (schema) =>
    JSON.parse(
      JSON.stringify(schema).replace(/"#\/components\/schemas\//g, '"paygate-schemas#/$defs/'),
    );
  ajv.addSchema({ $id: 'paygate-schemas', $defs: rewrite(spec.components?.schemas ?? {}) });
  const cache = new Map();
  return (schema) => {
    const key = JSON.stringify(schema);
    if (!cache.has(key)) cache.set(key, ajv.compile(rewrite(schema)));
    return cache.get(key);
  };
}

// Ajv's errors as one readable line each.
export function describeErrors(errors) {
  return (errors ?? []).map((e) => {
    const where = e.instancePath || '(body)';
    const extra =
      e.keyword === 'additionalProperties'
        ? ` "${e.params.additionalProperty}"`
        : e.keyword === 'enum'
          ? ` ${JSON.stringify(e.params.allowedValues)}`
          : '';
    return `${where} ${e.message}${extra}`;
  });
}
