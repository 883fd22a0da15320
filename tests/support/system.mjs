// system.mjs: the whole paygate system as real processes, for a node test
// driven over HTTP (tests/openapi/responses.mjs, tests/web/web_e2e.mjs; the
// node counterpart of tests/support/system.c). It uses node's own modules
// only: each test's CMakeLists copies it next to its scripts.
//
// start(): a scratch database of its own on the server of
// PAYGATE_TEST_PG_DSN (dropped and created again, so side-by-side tests
// never share outbox tables), an event bus directory under the system's
// temporary directory, free loopback ports, then the broker, user, order,
// payment, transaction, notification and gateway processes (Redis on
// 127.0.0.1:PAYGATE_TEST_REDIS_PORT; CURVE keys per process with test
// certificates), each logging to LOG_DIR/<prefix>-<name>.log, and waits
// until GET /readyz answers 200. stop() ends every process (SIGTERM, then
// SIGKILL after 10 s) and removes the database and the directory. Never
// leaves a process running when it returns.
import { spawn, spawnSync } from 'node:child_process';
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

export const SERVICES = ['user', 'order', 'payment', 'transaction', 'notification'];
// Start order; stopped in reverse.
export const PROCESS_NAMES = ['broker', ...SERVICES, 'gateway'];
const READY_TIMEOUT_MS = 90_000; // sanitizer builds start slowly on 2 cores
const STOP_GRACE_MS = 10_000;

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// A TCP port on 127.0.0.1 that was free a moment ago.
export function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

function psqlPath() {
  const bin = process.env.PAYGATE_PG_BIN;
  if (bin && existsSync(path.join(bin, 'psql'))) return path.join(bin, 'psql');
  return 'psql';
}

// Runs one SQL statement on the server of 'dsn' with psql; throws on failure.
function psql(dsn, sql) {
  const r = spawnSync(psqlPath(), ['-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', dsn, '-c', sql], {
    encoding: 'utf8',
  });
  if (r.status !== 0) {
    throw new Error(`psql ${sql}: ${r.error?.message ?? ''}${r.stderr ?? ''}`.trim());
  }
}

// The CURVE key of process 'name' when the test runs with test certificates
// (PAYGATE_TEST_CERTS_DIR, ctest fixture "certs"): like proc_start, every
// process its own key, as in production. Without them, nothing (the
// environment must then say PAYGATE_INSECURE_PLAINTEXT=1).
export function curveEnv(name) {
  const dir = process.env.PAYGATE_TEST_CERTS_DIR;
  if (!dir) return {};
  return {
    PAYGATE_CURVE_CERT: path.join(dir, `${name}.cert_secret`),
    PAYGATE_BROKER_CERT: path.join(dir, 'broker.cert'),
    PAYGATE_CURVE_CLIENTS_DIR: path.join(dir, 'clients'),
  };
}

// A note for a process that did not end cleanly (exit status 0), else null.
// 'result': what stopProcess() resolves ({code, signal, killed}).
export function uncleanNote(name, result) {
  if (!result || result.code === 0) return null;
  return `${name} ended with code ${result.code} signal ${result.signal}${result.killed ? ' (killed)' : ''}`;
}

export class System {
  // 'bins': {broker: path, user: path, ..., gateway: path} (every
  // PROCESS_NAMES); 'logDir': where the logs go; 'prefix' ([a-z0-9_]) names
  // the logs, the database and the directory; 'env': extra KEY: VALUE for
  // every process (wins over the system's own).
  constructor({ bins, logDir, prefix, env = {} }) {
    for (const name of PROCESS_NAMES) {
      if (!bins[name]) throw new Error(`no --bin for ${name}`);
    }
    this.bins = bins;
    this.logDir = logDir;
    this.prefix = prefix;
    this.extraEnv = env;
    this.procs = new Map();
    this.jwtSecret = `${prefix}-test-secret-0123456789abcdefghijklmnop`;
  }

  // Starts a system (see start()); on failure stops what it started and throws.
  static async start(options) {
    const system = new System(options);
    try {
      await system.start();
    } catch (err) {
      await system.stop();
      throw err;
    }
    return system;
  }

  async start() {
    const baseDsn = process.env.PAYGATE_TEST_PG_DSN;
    const redisPort = process.env.PAYGATE_TEST_REDIS_PORT;
    if (!baseDsn || !redisPort) {
      throw new Error(
        'PAYGATE_TEST_PG_DSN and PAYGATE_TEST_REDIS_PORT must be set: run the suite with ./dev test',
      );
    }
    this.baseDsn = baseDsn;
    this.dbName = `${this.prefix}_${process.pid}`.replace(/[^a-z0-9_]/g, '_');
    psql(baseDsn, `DROP DATABASE IF EXISTS "${this.dbName}" WITH (FORCE)`);
    psql(baseDsn, `CREATE DATABASE "${this.dbName}"`);
    this.dir = mkdtempSync(path.join(os.tmpdir(), `paygate-${this.prefix}-`));
    // The gateway serves an OpenAPI file; a test that does not care gets a stand-in.
    const openapiFile = path.join(this.dir, 'openapi.yaml');
    writeFileSync(openapiFile, "openapi: 3.1.0\ninfo:\n  title: test stand-in\n  version: '1'\npaths: {}\n");
    this.brokerPort = await freePort();
    this.httpPort = await freePort();
    this.brokerEndpoint = `tcp://127.0.0.1:${this.brokerPort}`;
    this.baseUrl = `http://127.0.0.1:${this.httpPort}`;
    this.env = {
      PAYGATE_BROKER_ENDPOINT: this.brokerEndpoint,
      PAYGATE_PG_DSN: `${baseDsn} dbname=${this.dbName}`,
      PAYGATE_REDIS_HOST: '127.0.0.1',
      PAYGATE_REDIS_PORT: String(redisPort),
      PAYGATE_JWT_SECRET: this.jwtSecret,
      PAYGATE_BROKER_DATA_DIR: path.join(this.dir, 'bus'),
      PAYGATE_GATEWAY_PORT: String(this.httpPort),
      PAYGATE_GATEWAY_REQUIRED_SERVICES: SERVICES.join(','),
      PAYGATE_GATEWAY_OPENAPI_FILE: openapiFile,
      PAYGATE_LOG_LEVEL: 'info',
      ...this.extraEnv,
    };
    for (const name of PROCESS_NAMES) this.startProcess(name);
    await this.waitReady();
  }

  startProcess(name) {
    const logPath = path.join(this.logDir, `${this.prefix}-${name}.log`);
    const log = openSync(logPath, 'w');
    const child = spawn(this.bins[name], [], {
      env: { ...process.env, ...this.env, ...curveEnv(name) },
      stdio: ['ignore', log, log],
    });
    closeSync(log);
    const proc = { name, child, logPath, exited: false, code: null, signal: null };
    proc.done = new Promise((resolve) => {
      child.on('exit', (code, signal) => {
        Object.assign(proc, { exited: true, code, signal });
        resolve();
      });
      child.on('error', (err) => {
        Object.assign(proc, { exited: true, code: -1, error: err });
        resolve();
      });
    });
    this.procs.set(name, proc);
    return proc;
  }

  logTail(name, lines = 20) {
    const proc = this.procs.get(name);
    try {
      return readFileSync(proc.logPath, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
    } catch {
      return '(no log)';
    }
  }

  // Waits until GET /readyz answers 200; throws with the log of a process
  // that died, or after READY_TIMEOUT_MS.
  async waitReady() {
    const until = Date.now() + READY_TIMEOUT_MS;
    for (;;) {
      for (const proc of this.procs.values()) {
        if (proc.exited) {
          throw new Error(
            `${proc.name} exited during start-up (code ${proc.code}, signal ${proc.signal}):\n` +
              this.logTail(proc.name),
          );
        }
      }
      try {
        const r = await fetch(`${this.baseUrl}/readyz`, { signal: AbortSignal.timeout(2000) });
        await r.arrayBuffer();
        if (r.status === 200) return;
      } catch {
        // not listening yet
      }
      if (Date.now() > until) {
        throw new Error(`not ready after ${READY_TIMEOUT_MS} ms:\n${this.logTail('gateway')}`);
      }
      await sleep(200);
    }
  }

  // SIGTERM, then SIGKILL after STOP_GRACE_MS. Resolves {code, signal,
  // killed} of process 'name' (also when it had ended before), or null when
  // it was never started.
  async stopProcess(name) {
    const proc = this.procs.get(name);
    if (!proc) return null;
    if (!proc.exited) {
      proc.child.kill('SIGTERM');
      const timer = setTimeout(() => {
        proc.killed = true;
        proc.child.kill('SIGKILL');
      }, STOP_GRACE_MS);
      await proc.done;
      clearTimeout(timer);
    }
    return { code: proc.code, signal: proc.signal, killed: proc.killed === true };
  }

  // Stops every process in reverse start order, drops the database and
  // removes the directory. Resolves a Map name -> {code, signal, killed}
  // and a list of 'notes' (processes that did not end cleanly, cleanup
  // that failed) as its 'notes' property.
  async stop() {
    const results = new Map();
    results.notes = [];
    for (const name of [...PROCESS_NAMES].reverse()) {
      const result = await this.stopProcess(name);
      if (result === null) continue;
      results.set(name, result);
      const note = uncleanNote(name, result);
      if (note) results.notes.push(note);
    }
    this.procs.clear();
    if (this.dbName) {
      try {
        psql(this.baseDsn, `DROP DATABASE IF EXISTS "${this.dbName}" WITH (FORCE)`);
      } catch (err) {
        results.notes.push(`could not drop ${this.dbName}: ${err.message}`);
      }
      this.dbName = null;
    }
    if (this.dir) rmSync(this.dir, { recursive: true, force: true });
    this.dir = null;
    return results;
  }

  // Kills everything at once (a signal arrived, the runner is going away): no waiting.
  killAll() {
    for (const proc of this.procs.values()) {
      if (!proc.exited) proc.child.kill('SIGKILL');
    }
  }
}
