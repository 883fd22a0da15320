// cluster: the whole paygate system as real processes, for fault tests.
//
// A private PostgreSQL (postgres.mjs), the broker with its event bus in a
// temporary directory, N instances of each service and of the gateway on
// free loopback ports, and Redis of ./dev test (PAYGATE_TEST_REDIS_PORT;
// every key the system writes there is per user or per event, and the
// users are new). Each process is addressed by name ("broker", "user-1",
// "payment-2", "gateway-1", ...), can be killed, paused, terminated and
// started again; every incarnation logs to LOG_DIR/<prefix>-<name>-<n>.log.
//
// The environment of every process is built in ONE place, processEnv():
// a setting that all processes need (broker certificates, an insecure
// switch, rate limits, log format) is added there and nowhere else.
//
// It must never leave a process running: stop() ends them all, and
// killAll() is for a signal arriving mid-run.
import { execFile, spawn } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';

import { PrivatePostgres } from './postgres.mjs';
// freePort: a free loopback port; curveEnv: a process's CURVE key from the
// test certificates (the ctest fixture "certs"), one key per kind.
import { curveEnv, freePort } from '../support/system.mjs';

const run = promisify(execFile);
export const SERVICES = ['user', 'order', 'payment', 'transaction', 'notification'];
const READY_TIMEOUT_MS = 120_000; // ASan builds start slowly on 2 busy cores
const REGISTER_POLL_MS = 250;
const PROBE_TIMEOUT_MS = 1000;
export const STOP_GRACE_MS = 10_000; // a process must exit this soon after SIGTERM

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export class Cluster {
  // 'bins': {'paygate-broker': path, ..., paygatectl: path};
  // 'instances': {user: 1, payment: 2, gateway: 1, ...} (default 1 each);
  // 'settings': the tunables the test wants (see processEnv).
  constructor({ bins, logDir, prefix, instances = {}, settings = {} }) {
    this.bins = bins;
    this.logDir = logDir;
    this.prefix = prefix;
    this.instances = instances;
    this.settings = settings;
    this.procs = new Map();
    this.unexpectedExits = []; // processes that ended without being told to
    this.jwtSecret = `${prefix}-test-secret-0123456789abcdefghijklmnopqrstuv`;
  }

  count(kind) {
    return this.instances[kind] ?? 1;
  }

  // Every process name, in start order.
  names() {
    const names = ['broker'];
    for (const kind of [...SERVICES, 'gateway']) {
      for (let i = 1; i <= this.count(kind); i++) names.push(`${kind}-${i}`);
    }
    return names;
  }

  // THE environment of process 'name' (kind = name without "-N"): what
  // every process gets, then what its kind needs. The test's extra
  // settings come last.
  processEnv(name, incarnation) {
    const kind = name.replace(/-\d+$/, '');
    const s = this.settings;
    const env = {
      PAYGATE_BROKER_ENDPOINT: this.brokerEndpoint,
      PAYGATE_LOG_LEVEL: s.logLevel ?? 'info',
      ...curveEnv(kind), // instances of one kind share its key
    };
    if (kind === 'broker') {
      Object.assign(env, {
        PAYGATE_BROKER_DATA_DIR: path.join(this.dir, 'bus'),
        PAYGATE_BROKER_ACK_TIMEOUT_MS: String(s.ackTimeoutMs ?? 5000),
      });
    } else if (kind === 'gateway') {
      Object.assign(env, {
        PAYGATE_GATEWAY_PORT: String(this.gatewayPorts[Number(name.split('-')[1]) - 1]),
        PAYGATE_GATEWAY_THREADS: String(s.gatewayThreads ?? 16),
        PAYGATE_GATEWAY_DEADLINE_MS: String(s.gatewayDeadlineMs ?? 8000),
        PAYGATE_GATEWAY_REQUIRED_SERVICES: SERVICES.join(','),
        PAYGATE_JWT_SECRET: this.jwtSecret,
        PAYGATE_REDIS_HOST: '127.0.0.1',
        PAYGATE_REDIS_PORT: String(this.redisPort),
        // The clients are 16 busy users behind one address: the gateway's
        // abuse limits (token buckets) are not what these tests measure.
        PAYGATE_GATEWAY_RATE_ADDRESS_PER_MIN: '0',
        PAYGATE_GATEWAY_RATE_USER_PER_MIN: '0',
        PAYGATE_GATEWAY_RATE_REGISTER_ADDRESS_PER_MIN: '0',
        PAYGATE_GATEWAY_RATE_LOGIN_ADDRESS_PER_MIN: '0',
        PAYGATE_GATEWAY_RATE_LOGIN_EMAIL_PER_MIN: '0',
        PAYGATE_GATEWAY_RATE_PAYMENT_USER_PER_MIN: '0',
      });
    } else {
      Object.assign(env, {
        PAYGATE_INSTANCE_ID: `${name}-i${incarnation}`,
        [`PAYGATE_${kind.toUpperCase()}_THREADS`]: String(s.serviceThreads ?? 2),
      });
      if (kind !== 'notification') env.PAYGATE_PG_DSN = this.dsn;
      if (kind === 'notification') {
        env.PAYGATE_REDIS_HOST = '127.0.0.1';
        env.PAYGATE_REDIS_PORT = String(this.redisPort);
      }
      if (kind === 'user') env.PAYGATE_JWT_SECRET = this.jwtSecret;
      if (kind === 'payment') {
        env.PAYGATE_PAYMENT_LEASE_MS = String(s.leaseMs ?? 2000);
        env.PAYGATE_PAYMENT_RECOVERY_INTERVAL_MS = String(s.recoveryIntervalMs ?? 300);
      }
    }
    return { ...env, ...(s.extraEnv ?? {}) };
  }

  async start() {
    const redisPort = process.env.PAYGATE_TEST_REDIS_PORT;
    if (!redisPort) {
      throw new Error('PAYGATE_TEST_REDIS_PORT must be set: run the suite with ./dev test');
    }
    for (const kind of ['broker', ...SERVICES, 'gateway']) {
      if (!this.bins[`paygate-${kind}`]) throw new Error(`no --bin paygate-${kind}=PATH`);
    }
    this.redisPort = Number(redisPort);
    this.dir = mkdtempSync(path.join(os.tmpdir(), `paygate-${this.prefix}-`));
    this.pg = new PrivatePostgres({ port: await freePort(), logDir: this.logDir, prefix: this.prefix });
    this.dsn = await this.pg.create();
    this.brokerEndpoint = `tcp://127.0.0.1:${await freePort()}`;
    this.gatewayPorts = [];
    for (let i = 0; i < this.count('gateway'); i++) this.gatewayPorts.push(await freePort());
    this.baseUrls = this.gatewayPorts.map((port) => `http://127.0.0.1:${port}`);
    for (const name of this.names()) this.startProcess(name);
    await this.waitAllReady(READY_TIMEOUT_MS);
  }

  // Starts the next incarnation of 'name'.
  startProcess(name) {
    const old = this.procs.get(name);
    if (old && !old.exited) throw new Error(`${name} is already running`);
    const incarnation = old ? old.incarnation + 1 : 1;
    const kind = name.replace(/-\d+$/, '');
    const logPath = path.join(this.logDir, `${this.prefix}-${name}-${incarnation}.log`);
    const log = openSync(logPath, 'w');
    const child = spawn(this.bins[`paygate-${kind}`], [], {
      env: { ...process.env, ...this.processEnv(name, incarnation) },
      stdio: ['ignore', log, log],
    });
    closeSync(log);
    const proc = { name, kind, incarnation, child, logPath, exited: false, code: null, signal: null };
    proc.done = new Promise((resolve) => {
      child.on('exit', (code, signal) => {
        Object.assign(proc, { exited: true, code, signal, exitedAt: Date.now() });
        if (!proc.stopping) {
          this.unexpectedExits.push(`${name} (incarnation ${incarnation}) exited by itself: ` +
                                    `code ${code} signal ${signal}; see ${logPath}`);
        }
        resolve();
      });
      child.on('error', (err) => {
        Object.assign(proc, { exited: true, code: -1, error: err, exitedAt: Date.now() });
        resolve();
      });
    });
    this.procs.set(name, proc);
    return proc;
  }

  proc(name) {
    return this.procs.get(name);
  }

  signal(name, signal) {
    const proc = this.procs.get(name);
    if (proc && !proc.exited) proc.child.kill(signal);
  }

  // SIGKILL and wait until it is gone.
  async kill(name) {
    const proc = this.procs.get(name);
    if (!proc || proc.exited) return;
    proc.stopping = true;
    proc.child.kill('SIGCONT');
    proc.child.kill('SIGKILL');
    await proc.done;
  }

  // SIGTERM; waits up to 'graceMs' for the exit, then SIGKILLs. Returns
  // {ms, code, signal, clean}: clean = exited by itself with status 0 in time.
  async terminate(name, graceMs = STOP_GRACE_MS) {
    const proc = this.procs.get(name);
    if (!proc || proc.exited) return { ms: 0, code: proc?.code, signal: proc?.signal, clean: false };
    const started = Date.now();
    proc.stopping = true;
    proc.child.kill('SIGCONT');
    proc.child.kill('SIGTERM');
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      proc.child.kill('SIGKILL');
    }, graceMs);
    await proc.done;
    clearTimeout(timer);
    const ms = Date.now() - started;
    return { ms, code: proc.code, signal: proc.signal, clean: !timedOut && proc.code === 0 };
  }

  logTail(name, lines = 30) {
    const proc = this.procs.get(name);
    try {
      return readFileSync(proc.logPath, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
    } catch {
      return '(no log)';
    }
  }

  // Whether the broker lists an instance of the current incarnation of
  // service process 'name'.
  async registered(name) {
    const proc = this.procs.get(name);
    try {
      await run(this.bins.paygatectl, ['--broker', this.brokerEndpoint, '--timeout',
                                       String(PROBE_TIMEOUT_MS), 'probe', proc.kind,
                                       `${name}-i${proc.incarnation}-`],
                { timeout: PROBE_TIMEOUT_MS * 5 });
      return true;
    } catch {
      return false;
    }
  }

  // Whether GET /readyz of gateway 'name' answers 200.
  async gatewayReady(name) {
    const url = this.baseUrls[Number(name.split('-')[1]) - 1];
    try {
      const r = await fetch(`${url}/readyz`, { signal: AbortSignal.timeout(2000) });
      await r.arrayBuffer();
      return r.status === 200;
    } catch {
      return false;
    }
  }

  // Whether the broker answers discovery at all.
  async brokerAnswers() {
    try {
      await run(this.bins.paygatectl, ['--broker', this.brokerEndpoint, '--timeout',
                                       String(PROBE_TIMEOUT_MS), 'services', '--json'],
                { timeout: PROBE_TIMEOUT_MS * 5 });
      return true;
    } catch {
      return false;
    }
  }

  // Waits until process 'name' serves: a service instance registered, a
  // gateway ready, the broker answering. Throws after 'timeoutMs' or when
  // it exited.
  async waitServing(name, timeoutMs = READY_TIMEOUT_MS) {
    const proc = this.procs.get(name);
    const until = Date.now() + timeoutMs;
    for (;;) {
      if (proc.exited) {
        throw new Error(`${name} exited (code ${proc.code}, signal ${proc.signal}):\n` +
                        this.logTail(name));
      }
      let ok;
      if (proc.kind === 'broker') ok = await this.brokerAnswers();
      else if (proc.kind === 'gateway') ok = await this.gatewayReady(name);
      else ok = await this.registered(name);
      if (ok) return;
      if (Date.now() > until) throw new Error(`${name} not serving after ${timeoutMs} ms`);
      await sleep(REGISTER_POLL_MS);
    }
  }

  async waitAllReady(timeoutMs) {
    const until = Date.now() + timeoutMs;
    for (const name of this.names()) {
      await this.waitServing(name, Math.max(1000, until - Date.now()));
    }
  }

  // Ends every process (SIGTERM, reverse start order). Returns notes for
  // those that did not exit cleanly within STOP_GRACE_MS; then removes the
  // database cluster and the bus directory.
  async stop() {
    const notes = [];
    for (const name of this.names().reverse()) {
      const proc = this.procs.get(name);
      if (!proc) continue;
      if (proc.exited) continue; // in unexpectedExits
      const r = await this.terminate(name);
      if (!r.clean) {
        notes.push(`${name} did not stop cleanly on SIGTERM (code ${r.code}, signal ${r.signal}, ${r.ms} ms); see ${proc.logPath}`);
      }
    }
    if (this.pg) await this.pg.destroy();
    if (this.dir) rmSync(this.dir, { recursive: true, force: true });
    return notes;
  }

  killAll() {
    this.pg?.destroySync();
    for (const proc of this.procs.values()) {
      if (!proc.exited) {
        proc.stopping = true;
        proc.child.kill('SIGCONT');
        proc.child.kill('SIGKILL');
      }
    }
  }
}
