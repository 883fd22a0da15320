// postgres: a throw-away PostgreSQL cluster of the test's own.
//
// The fault tests stop and restart PostgreSQL in the middle of a run. Doing
// that to the server that ./dev test shares between all tests would break
// whichever test runs beside them, so each run initdb's a private cluster
// in a temporary directory on a free loopback port (trust auth, loopback
// and a private socket only). fsync is off: a crash of the server's
// processes, which is what the tests inject, loses nothing the kernel
// already has. synchronous_commit stays ON: with it off, a commit is
// answered before its WAL leaves the server's memory, and the crash would
// lose acknowledged transactions, which no service can make up for. It runs as the
// 'postgres' user when we are root (PostgreSQL refuses to run as root), as
// ourselves otherwise. The binaries come from PAYGATE_PG_BIN (set by
// ./dev test) or /usr/lib/postgresql/15/bin.
//
// It must never touch any other cluster: every command names its own data
// directory, and destroy() removes only that directory.
import { execFile, spawnSync } from 'node:child_process';
import { chmodSync, chownSync, copyFileSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);
const START_TIMEOUT_S = 60; // pg_ctl -w -t: a busy 2-core machine
const SQL_TIMEOUT_MS = 60_000;
const SQL_OUTPUT_BYTES_MAX = 256 * 1024 * 1024;

function pgBin(name) {
  return path.join(process.env.PAYGATE_PG_BIN || '/usr/lib/postgresql/15/bin', name);
}

// The uid/gid to run the server as: 'postgres' when we are root.
async function serverOwner() {
  if (process.getuid() !== 0) return null;
  const { stdout } = await run('id', ['-u', 'postgres']);
  const { stdout: gid } = await run('id', ['-g', 'postgres']);
  return { uid: Number(stdout.trim()), gid: Number(gid.trim()) };
}

export class PrivatePostgres {
  constructor({ port, logDir, prefix }) {
    this.port = port;
    this.logPath = path.join(logDir, `${prefix}-postgres.log`);
    this.restarts = 0;
  }

  // Runs a PostgreSQL binary as the server's owner.
  async asOwner(bin, args) {
    const argv = this.owner ? ['runuser', ['-u', 'postgres', '--', pgBin(bin), ...args]]
                            : [pgBin(bin), args];
    return run(argv[0], argv[1], { cwd: '/', timeout: 120_000 });
  }

  // initdb, start, and create database 'paygate'. Returns the base DSN.
  async create() {
    this.owner = await serverOwner();
    this.dir = mkdtempSync(path.join(os.tmpdir(), 'paygate-pg-'));
    chmodSync(this.dir, 0o700);
    if (this.owner) chownSync(this.dir, this.owner.uid, this.owner.gid);
    this.data = path.join(this.dir, 'data');
    await this.asOwner('initdb', ['-D', this.data, '-U', 'postgres', '--auth=trust',
                                  '--encoding=UTF8', '--no-locale', '--no-sync']);
    const conf = [
      `port = ${this.port}`,
      "listen_addresses = '127.0.0.1'",
      `unix_socket_directories = '${this.dir}'`,
      'fsync = off',
      'full_page_writes = off',
      'max_connections = 300',
      '',
    ].join('\n');
    const confPath = path.join(this.data, 'postgresql.auto.conf');
    writeFileSync(confPath, conf);
    if (this.owner) chownSync(confPath, this.owner.uid, this.owner.gid);
    // The server log is ours (the test's log dir), opened by pg_ctl as the owner:
    // so it goes into the private directory and is copied out at the end.
    await this.start();
    this.dsn = `host=127.0.0.1 port=${this.port} user=postgres`;
    await this.sql('CREATE DATABASE paygate', 'postgres');
    this.dsn = `${this.dsn} dbname=paygate`;
    return this.dsn;
  }

  async start() {
    await this.asOwner('pg_ctl', ['-D', this.data, '-l', path.join(this.dir, 'server.log'),
                                  '-w', '-t', String(START_TIMEOUT_S), 'start']);
  }

  // The crash: every server process SIGQUIT'ed at once, no checkpoint.
  async crash() {
    await this.asOwner('pg_ctl', ['-D', this.data, '-m', 'immediate', '-w', 'stop']);
  }

  // Runs 'query' (no parameters: the tests build it from ids they made) and
  // returns its rows as parsed JSON objects. 'db' overrides the database.
  async sql(query, db) {
    const dsn = db ? `host=127.0.0.1 port=${this.port} user=postgres dbname=${db}` : this.dsn;
    const wrapped = /^\s*select/i.test(query)
      ? `SELECT coalesce(json_agg(q), '[]'::json) FROM (${query}) q`
      : query;
    const { stdout } = await run(pgBin('psql'), ['-X', '-q', '-A', '-t', '-v', 'ON_ERROR_STOP=1',
                                                 '-d', dsn, '-c', wrapped],
                                 { timeout: SQL_TIMEOUT_MS, maxBuffer: SQL_OUTPUT_BYTES_MAX });
    return /^\s*select/i.test(query) ? JSON.parse(stdout) : stdout;
  }

  // For a signal arriving mid-run: stop at once, remove the cluster.
  destroySync() {
    if (!this.data) return;
    const argv = ['-D', this.data, '-m', 'immediate', '-w', 'stop'];
    if (this.owner) spawnSync('runuser', ['-u', 'postgres', '--', pgBin('pg_ctl'), ...argv], { cwd: '/' });
    else spawnSync(pgBin('pg_ctl'), argv, { cwd: '/' });
    rmSync(this.dir, { recursive: true, force: true });
    this.data = null;
  }

  // Stops the server and removes the cluster; keeps its log in logPath.
  async destroy() {
    if (!this.data) return;
    try {
      await this.asOwner('pg_ctl', ['-D', this.data, '-m', 'fast', '-w', 'stop']);
    } catch {
      // already down
    }
    try {
      copyFileSync(path.join(this.dir, 'server.log'), this.logPath);
    } catch {
      // no log
    }
    rmSync(this.dir, { recursive: true, force: true });
    this.data = null;
  }
}
