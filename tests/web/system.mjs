// system.mjs: the real paygate for one test run, on this machine.
//
// Starts paygate-broker (event bus in a scratch dir), the user, order,
// payment, transaction and notification services and paygate-gateway
// (serving web/) on free loopback ports, against a database of its own on
// the test PostgreSQL of ./dev test (PAYGATE_TEST_PG_DSN: services that
// share a database share outboxes, so side-by-side tests must not) and the
// test Redis (PAYGATE_TEST_REDIS_PORT). Each process logs to
// <logDir>/web-<name>.log. stop() sends SIGTERM in reverse order and
// reports each exit; the database and scratch dir are removed.
import { execFileSync, spawn } from "node:child_process";
import { createWriteStream, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";

// Start order; stopped in reverse.
export const PROCESS_NAMES = ["broker", "user", "order", "payment", "transaction", "notification", "gateway"];

const JWT_SECRET = "web-e2e-test-secret-0123456789abcdefghijklmnop";
const READY_LIMIT_MS = 30000; // ASan build, migrations of a fresh database
const STOP_LIMIT_MS = 10000;

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function freePort() {
    return new Promise((resolve, reject) => {
        const server = net.createServer();
        server.once("error", reject);
        server.listen(0, "127.0.0.1", () => {
            const { port } = server.address();
            server.close(() => resolve(port));
        });
    });
}

/** The running system. Use `await PaygateSystem.start(options)`. */
// The CURVE key of process "name" when the test runs with test certificates
// (PAYGATE_TEST_CERTS_DIR, made by tests/support/make_test_certs.sh): each
// process its own key, as in production. Without them the processes get
// PAYGATE_INSECURE_PLAINTEXT from this environment, or refuse to start.
function curveEnv(name) {
    const dir = process.env.PAYGATE_TEST_CERTS_DIR;
    if (!dir) {
        const insecure = process.env.PAYGATE_INSECURE_PLAINTEXT;
        return insecure ? { PAYGATE_INSECURE_PLAINTEXT: insecure } : {};
    }
    return {
        PAYGATE_CURVE_CERT: path.join(dir, `${name}.cert_secret`),
        PAYGATE_BROKER_CERT: path.join(dir, "broker.cert"),
        PAYGATE_CURVE_CLIENTS_DIR: path.join(dir, "clients"),
    };
}

export class PaygateSystem {
    /** options: bins (Map name -> binary path, every PROCESS_NAMES),
     *  webDir, logDir. Needs PAYGATE_TEST_PG_DSN and PAYGATE_TEST_REDIS_PORT. */
    static async start(options) {
        const system = new PaygateSystem(options);
        try {
            await system.boot();
        } catch (error) {
            await system.stop();
            throw error;
        }
        return system;
    }

    constructor({ bins, webDir, logDir }) {
        this.bins = bins;
        this.webDir = webDir;
        this.logDir = logDir;
        this.pgDsn = process.env.PAYGATE_TEST_PG_DSN;
        this.redisPort = process.env.PAYGATE_TEST_REDIS_PORT;
        if (!this.pgDsn || !this.redisPort) {
            throw new Error(
                "PAYGATE_TEST_PG_DSN and PAYGATE_TEST_REDIS_PORT must be set: run the suite with ./dev test",
            );
        }
        for (const name of PROCESS_NAMES) {
            if (!bins.has(name)) throw new Error(`no --bin ${name}=PATH given`);
        }
        this.database = `web_e2e_${process.pid}`;
        this.children = new Map();
        this.scratch = null;
        this.databaseCreated = false;
        this.exits = new Map(); // name -> {code, signal}
    }

    psql(sql) {
        const own = path.join(process.env.PAYGATE_PG_BIN ?? "/usr/lib/postgresql/15/bin", "psql");
        return execFileSync(
            existsSync(own) ? own : "psql",
            ["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", this.pgDsn, "-c", sql],
            {
                encoding: "utf8",
            },
        );
    }

    async boot() {
        this.scratch = mkdtempSync(path.join(os.tmpdir(), "paygate-web-"));
        // The database name is ours ([a-z0-9_]), not user input.
        this.psql(`drop database if exists ${this.database} with (force)`);
        this.psql(`create database ${this.database}`);
        this.databaseCreated = true;
        this.openapiFile = path.join(this.scratch, "openapi.yaml");
        writeFileSync(
            this.openapiFile,
            "openapi: 3.1.0\ninfo:\n  title: web_e2e stand-in\n  version: '1'\npaths: {}\n",
        );
        const brokerPort = await freePort();
        this.httpPort = await freePort();
        this.baseUrl = `http://127.0.0.1:${this.httpPort}`;
        const common = {
            PATH: process.env.PATH,
            ASAN_OPTIONS: process.env.ASAN_OPTIONS ?? "",
            UBSAN_OPTIONS: process.env.UBSAN_OPTIONS ?? "",
            PAYGATE_BROKER_ENDPOINT: `tcp://127.0.0.1:${brokerPort}`,
            PAYGATE_PG_DSN: `${this.pgDsn} dbname=${this.database}`,
            PAYGATE_REDIS_HOST: "127.0.0.1",
            PAYGATE_REDIS_PORT: this.redisPort,
            PAYGATE_JWT_SECRET: JWT_SECRET,
        };
        const extra = {
            broker: { PAYGATE_BROKER_DATA_DIR: path.join(this.scratch, "bus") },
            gateway: {
                PAYGATE_GATEWAY_PORT: String(this.httpPort),
                PAYGATE_GATEWAY_REQUIRED_SERVICES: "user,order,payment,transaction,notification",
                PAYGATE_GATEWAY_STATIC_DIR: this.webDir,
                PAYGATE_GATEWAY_OPENAPI_FILE: this.openapiFile,
            },
        };
        for (const name of PROCESS_NAMES)
            this.spawn(name, { ...common, ...curveEnv(name), ...(extra[name] ?? {}) });
        await this.waitReady();
    }

    spawn(name, env) {
        const log = createWriteStream(path.join(this.logDir, `web-${name}.log`));
        const child = spawn(this.bins.get(name), [], { env, stdio: ["ignore", "pipe", "pipe"] });
        child.stdout.pipe(log, { end: false });
        child.stderr.pipe(log, { end: false });
        child.on("error", (error) => log.write(`spawn error: ${error.message}\n`));
        child.exited = new Promise((resolve) =>
            child.on("close", (code, signal) => {
                log.end();
                this.exits.set(name, { code, signal });
                resolve({ code, signal });
            }),
        );
        this.children.set(name, child);
    }

    logTail(name, lines = 20) {
        const file = path.join(this.logDir, `web-${name}.log`);
        return existsSync(file) ? readFileSync(file, "utf8").split("\n").slice(-lines).join("\n") : "(no log)";
    }

    /** Waits until GET /readyz answers 200 (every service registered). */
    async waitReady() {
        const until = Date.now() + READY_LIMIT_MS;
        for (;;) {
            for (const [name, exit] of this.exits) {
                throw new Error(`${name} exited during start-up (${JSON.stringify(exit)}):\n${this.logTail(name)}`);
            }
            try {
                const response = await fetch(`${this.baseUrl}/readyz`);
                if (response.status === 200) return;
            } catch {
                // not listening yet
            }
            if (Date.now() > until) {
                throw new Error(
                    `the gateway was not ready within ${READY_LIMIT_MS / 1000} s:\n${this.logTail("gateway")}`,
                );
            }
            await sleep(100);
        }
    }

    /** Stops everything (SIGTERM, then SIGKILL after 10 s) in reverse start
     *  order; drops the database and removes the scratch dir. Resolves a
     *  Map name -> {code, signal, killed}. */
    async stop() {
        const results = new Map();
        for (const name of [...PROCESS_NAMES].reverse()) {
            const child = this.children.get(name);
            if (child === undefined) continue;
            let killed = false;
            if (!this.exits.has(name)) {
                child.kill("SIGTERM");
                const timer = setTimeout(() => {
                    killed = true;
                    child.kill("SIGKILL");
                }, STOP_LIMIT_MS);
                await child.exited;
                clearTimeout(timer);
            }
            results.set(name, { ...this.exits.get(name), killed });
        }
        this.children.clear();
        if (this.databaseCreated) {
            try {
                this.psql(`drop database if exists ${this.database} with (force)`);
            } catch (error) {
                console.error(`could not drop ${this.database}: ${error.message}`);
            }
            this.databaseCreated = false;
        }
        if (this.scratch !== null) rmSync(this.scratch, { recursive: true, force: true });
        this.scratch = null;
        return results;
    }

    /** Kills what still runs, at once (the test runner is going away). */
    killNow() {
        for (const child of this.children.values()) {
            if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
        }
    }
}
