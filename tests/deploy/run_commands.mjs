// run_commands.mjs: starts what the deployment files say to start, with the
// real binaries, on this machine (no Docker engine or cluster involved).
//
//   node run_commands.mjs --log-dir DIR --dockerfile FILE --bin NAME=PATH...
//                         SYSTEM=FILE...   (SYSTEM: dev, prod: rendered
//                         Kubernetes; compose: `docker-compose config` output)
//
// For each system, every container of our image is taken as written: its
// command and args, its environment built the way the kubelet (or Compose)
// builds it from ConfigMaps, Secrets, the downward API and $(VAR)
// expansion, and its probes. Then, statically: the binary is one the image
// installs; every variable is one the binary reads (its --help names it)
// or an input spliced into another variable; required ones are set; host
// names are Services (Compose services) with matching ports; the gateway's
// probe port is the port it listens on; the broker's data dir is on a
// persistent volume; a pod annotated for Prometheus declares the port it
// names and its process serves metrics there, on every interface; the CURVE
// files (PAYGATE_CURVE_CERT, PAYGATE_BROKER_CERT, PAYGATE_CURVE_CLIENTS_DIR)
// are on a mounted Secret (Compose: a volume) and nothing runs in
// plaintext. And for real: hosts are mapped to 127.0.0.1, ports to
// free ones (PostgreSQL and Redis to the test servers of ./dev test, a
// database of its own), Secrets the operator creates to test values (the
// CURVE Secrets' files to certificates made by the real paygate-certs, laid
// out as deploy/README.md tells the operator to; Compose's "certs" job runs
// paygate-certs itself into its volume); the
// broker, the services and the gateway are started in that order; each
// one's startup, readiness and liveness probes must pass as written (exec
// probes run as commands with the container's environment, HTTP probes GET
// the path on the port); a probe for an instance that does not exist must
// fail; every metrics port answers GET /metrics; Compose's two payment instances must both be in discovery; and on
// SIGTERM each process must exit 0 within its termination grace period
// (minus a preStop sleep). A renamed flag or variable, a wrong probe path
// or port, a missing variable: the test fails and says which.
import { execFileSync, spawn, spawnSync } from "node:child_process";
import { copyFileSync, createWriteStream, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import {
    configIndex,
    containerEnv,
    expandKubernetes,
    formatConninfo,
    isOurImage,
    loadDoc,
    loadDocs,
    parseConninfo,
    selectorMatches,
    workloads,
} from "./manifests.mjs";

// ---- arguments and environment ------------------------------------------
const args = process.argv.slice(2);
const bins = new Map();
const systems = [];
let logDir = null;
let dockerfile = null;
for (let i = 0; i < args.length; i++) {
    if (args[i] === "--log-dir") logDir = args[++i];
    else if (args[i] === "--dockerfile") dockerfile = args[++i];
    else if (args[i] === "--bin") {
        const [k, v] = args[++i].split("=");
        bins.set(k, v);
    } else systems.push(args[i].split("="));
}
const pgDsn = process.env.PAYGATE_TEST_PG_DSN;
const redisPort = process.env.PAYGATE_TEST_REDIS_PORT;
if (!logDir || !dockerfile || bins.size === 0 || systems.length === 0 || !pgDsn || !redisPort) {
    console.error(
        "usage: PAYGATE_TEST_PG_DSN=... PAYGATE_TEST_REDIS_PORT=... node run_commands.mjs " +
            "--log-dir DIR --dockerfile FILE --bin NAME=PATH... SYSTEM=FILE...\n" +
            "(./dev test sets both variables; this test needs the test PostgreSQL and Redis)",
    );
    process.exit(2);
}
mkdirSync(logDir, { recursive: true });

const problems = [];
let checks = 0;
const check = (ok, message) => {
    checks++;
    if (!ok) problems.push(message);
    return ok;
};
const say = (text) => console.log(`[deploy_commands] ${text}`);

// The binaries the image installs (/usr/local/bin/<name>), from the Dockerfile.
const imageBinaries = new Set(
    [...readFileSync(dockerfile, "utf8").matchAll(/\/build\/\S+\/(paygate[\w-]*)\b/g)].map((m) => m[1]),
);
check(imageBinaries.size > 0, `no binaries found in ${dockerfile}`);
// A directory with the image's binary names, first on PATH, as /usr/local/bin is.
const scratch = mkdtempSync(path.join(os.tmpdir(), "paygate-deploy-"));
const binDir = path.join(scratch, "bin");
mkdirSync(binDir);
for (const [name, file] of bins) symlinkSync(file, path.join(binDir, name));

// --help of each binary: what it reads, what it requires.
const helpCache = new Map();
function helpOf(binary) {
    if (!helpCache.has(binary)) {
        const r = spawnSync(bins.get(binary), ["--help"], { encoding: "utf8", timeout: 20000 });
        helpCache.set(binary, `${r.stdout}${r.stderr}`);
    }
    return helpCache.get(binary);
}
const requiredBy = (binary) =>
    helpOf(binary)
        .split("\n")
        .filter((l) => /\(required\)/.test(l))
        .flatMap((l) => [...l.matchAll(/\b(PAYGATE_[A-Z0-9_]+)/g)].map((m) => m[1]));

// ---- free ports, test database -------------------------------------------
function freePort() {
    return new Promise((resolve, reject) => {
        const s = net.createServer();
        s.once("error", reject);
        s.listen(0, "127.0.0.1", () => {
            const { port } = s.address();
            s.close(() => resolve(port));
        });
    });
}
const testPg = new Map(parseConninfo(pgDsn));
const psql = path.join(process.env.PAYGATE_PG_BIN ?? "/usr/lib/postgresql/15/bin", "psql");
const database = `paygate_deploy_${process.pid}`;
const psqlRun = (sql) =>
    execFileSync(existsSync(psql) ? psql : "psql", ["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", pgDsn, "-c", sql], { encoding: "utf8" });

// ---- processes -------------------------------------------------------------
const running = new Set();
function start(label, argv, env) {
    const out = createWriteStream(path.join(logDir, `${label}.log`));
    const child = spawn(argv[0], argv.slice(1), { env: Object.fromEntries(env), stdio: ["ignore", "pipe", "pipe"] });
    // Both streams into one file: neither may end it, the close does.
    child.stdout.pipe(out, { end: false });
    child.stderr.pipe(out, { end: false });
    child.on("close", () => out.end());
    child.on("error", (e) => out.write(`spawn error: ${e.message}\n`));
    child.exited = new Promise((resolve) => child.on("exit", (code, signal) => resolve({ code, signal })));
    child.label = label;
    running.add(child);
    child.exited.then(() => running.delete(child));
    return child;
}
function killAll() {
    for (const c of running) c.kill("SIGKILL");
}
process.on("exit", killAll);
// How long a process may take to pass its startup and readiness probes
// (ASan build, migrations of a fresh database: about 2 s here).
const readyLimitMs = 20000;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const logTail = (label) => {
    const f = path.join(logDir, `${label}.log`);
    return existsSync(f) ? readFileSync(f, "utf8").split("\n").slice(-15).join("\n") : "(no log)";
};

// Runs probe 'probe' (as mapped: {kind: exec, argv} or {kind: http, port,
// path}) once with environment 'env'; resolves {ok, detail}.
function runProbe(probe, env, timeoutMs) {
    if (probe.kind === "exec") {
        const r = spawnSync(probe.argv[0], probe.argv.slice(1), {
            env: Object.fromEntries(env),
            encoding: "utf8",
            timeout: timeoutMs,
        });
        const detail = `${probe.argv.join(" ")} -> ${r.error ? r.error.message : `exit ${r.status}`} ${(r.stdout + r.stderr).trim()}`;
        return Promise.resolve({ ok: !r.error && r.status === 0, detail });
    }
    return new Promise((resolve) => {
        const req = http.get({ host: "127.0.0.1", port: probe.port, path: probe.path, timeout: timeoutMs }, (res) => {
            res.resume();
            // Kubernetes: any code from 200 to 399 is a success.
            resolve({ ok: res.statusCode >= 200 && res.statusCode < 400, detail: `GET ${probe.path} on ${probe.port} -> ${res.statusCode}` });
        });
        req.on("timeout", () => req.destroy(new Error("timeout")));
        req.on("error", (e) => resolve({ ok: false, detail: `GET ${probe.path} on ${probe.port} -> ${e.message}` }));
    });
}

// Waits until 'probe' passes, up to 'limitMs'; false (with the last detail
// recorded) when it never does or the process exits first.
async function waitProbe(child, probe, env, limitMs, what) {
    const until = Date.now() + limitMs;
    let last = "";
    while (Date.now() < until) {
        if (child.exitCode !== null || child.signalCode !== null) {
            problems.push(`${what}: the process exited (${child.exitCode ?? child.signalCode}) before its probe passed\n${logTail(child.label)}`);
            return false;
        }
        const r = await runProbe(probe, env, 5000);
        if (r.ok) return true;
        last = r.detail;
        await sleep(250);
    }
    problems.push(`${what}: probe never passed in ${limitMs} ms: ${last}\n${logTail(child.label)}`);
    return false;
}

// ---- reading containers from the files -----------------------------------
// A container, whatever the file: {id, binary, argv, env (Map), inputs,
// problems, probes {startup, readiness, liveness} as written, preStopSleepS,
// graceS, listenPort (gateway), persistentPaths, hostsKnown}.
const testSecret = (name, key) => {
    // prod: Secrets the operator creates. Test values of the right shape.
    if (key === "secret") return "deploy-test-jwt-key-0123456789abcdef0123456789";
    return `deploy-test-${name}-${key}`;
};

function kubernetesContainers(file) {
    const objects = loadDocs(file);
    const index = configIndex(objects);
    const services = objects.filter((o) => o.kind === "Service");
    const result = [];
    for (const w of workloads(objects)) {
        for (const c of w.podSpec.containers ?? []) {
            if (!isOurImage(c.image)) continue;
            const podName = `${w.name}-deploytest-0`;
            const built = containerEnv(c, index, {
                secret: testSecret,
                field: (p) => ({ "metadata.name": podName, "metadata.namespace": "deploytest" })[p],
            });
            const unresolved = [];
            const argv = [...(c.command ?? []), ...(c.args ?? [])].map((a) => expandKubernetes(String(a), built.env, unresolved));
            for (const n of unresolved) built.problems.push(`command/args: $(${n}) is not defined`);
            const portNumber = (p) => (typeof p === "number" ? p : (c.ports ?? []).find((x) => x.name === p)?.containerPort);
            const probe = (p) => {
                if (!p) return null;
                if (p.exec) return { kind: "exec", argv: p.exec.command, timeoutS: p.timeoutSeconds ?? 1 };
                if (p.httpGet) return { kind: "http", path: p.httpGet.path ?? "/", port: portNumber(p.httpGet.port), portWritten: p.httpGet.port, timeoutS: p.timeoutSeconds ?? 1 };
                return { kind: "unsupported", detail: JSON.stringify(p) };
            };
            const preStop = c.lifecycle?.preStop?.exec?.command;
            const claims = new Set((w.obj.spec?.volumeClaimTemplates ?? []).map((t) => t.metadata.name));
            const persistentPaths = (c.volumeMounts ?? [])
                .filter((m) => claims.has(m.name) || (w.podSpec.volumes ?? []).some((v) => v.name === m.name && v.persistentVolumeClaim))
                .map((m) => m.mountPath);
            // Secret volumes: files the process reads (its CURVE key).
            const fileMounts = (c.volumeMounts ?? []).flatMap((m) => {
                const v = (w.podSpec.volumes ?? []).find((x) => x.name === m.name);
                return v?.secret ? [{ mountPath: m.mountPath, kind: "secret", name: v.secret.secretName }] : [];
            });
            result.push({
                id: `${w.kind}/${w.name}/${c.name}`,
                label: w.name.replace(/^paygate-/, ""),
                argv,
                commandWritten: c.command?.[0] ?? "",
                env: built.env,
                inputs: built.inputs,
                problems: built.problems,
                probes: { startup: probe(c.startupProbe), readiness: probe(c.readinessProbe), liveness: probe(c.livenessProbe) },
                preStop,
                graceS: w.podSpec.terminationGracePeriodSeconds ?? 30,
                listenPorts: (c.ports ?? []).map((p) => p.containerPort),
                podAnnotations: w.obj.kind === "Pod" ? w.obj.metadata?.annotations ?? {} : w.obj.spec?.template?.metadata?.annotations ?? {},
                persistentPaths,
                fileMounts,
                // host:port a client may dial: Services of the render.
                resolveHost: (host, port) => {
                    const svc = services.find((s) => s.metadata.name === host);
                    if (!svc) return { ok: false, why: `no Service named ${host}` };
                    const sp = (svc.spec.ports ?? []).find((p) => p.port === Number(port));
                    if (!sp) return { ok: false, why: `Service ${host} has no port ${port}` };
                    const target = sp.targetPort ?? sp.port;
                    for (const tw of workloads(objects).filter((x) => selectorMatches({ matchLabels: svc.spec.selector ?? {} }, x.podLabels)))
                        for (const tc of tw.podSpec.containers ?? [])
                            for (const cp of tc.ports ?? [])
                                if (cp.name === target || cp.containerPort === target) return { ok: true, containerPort: cp.containerPort, workload: tw.name };
                    return { ok: false, why: `Service ${host} port ${port} reaches no container port` };
                },
            });
        }
    }
    return result;
}

function composeContainers(file) {
    const doc = loadDoc(file);
    const services = doc.services ?? {};
    const named = doc.volumes ?? {};
    const unescape = (v) => String(v).replaceAll("$$", "$");
    const duration = (d) => {
        const m = String(d ?? "10s").match(/^(?:(\d+)m)?(?:(\d+)s)?$/);
        return m ? Number(m[1] ?? 0) * 60 + Number(m[2] ?? 0) : NaN;
    };
    const defaultPorts = { postgres: 5432, redis: 6379 };
    const result = [];
    for (const [name, s] of Object.entries(services)) {
        if (!isOurImage(s.image)) continue;
        const env = new Map(Object.entries(s.environment ?? {}).map(([k, v]) => [k, unescape(v ?? "")]));
        const command = Array.isArray(s.command) ? s.command.map(unescape) : String(s.command ?? "").split(/\s+/).filter(Boolean);
        let health = null;
        const t = s.healthcheck?.test;
        if (Array.isArray(t) && t[0] === "CMD") health = { kind: "exec", argv: t.slice(1).map(unescape) };
        else if (Array.isArray(t) && t[0] === "CMD-SHELL") health = { kind: "exec", argv: ["sh", "-c", unescape(t[1])] };
        else if (typeof t === "string") health = { kind: "exec", argv: ["sh", "-c", unescape(t)] };
        if (health) health.timeoutS = duration(s.healthcheck.timeout ?? "30s");
        const mounts = (s.volumes ?? [])
            .map((v) => (typeof v === "string" ? { source: v.split(":")[0], target: v.split(":")[1], read_only: v.split(":")[2] === "ro" } : v))
            .filter((v) => Object.hasOwn(named, v.source));
        // A named volume read-only is files the process reads (the CURVE keys).
        const persistentPaths = mounts.filter((v) => !v.read_only).map((v) => v.target);
        const fileMounts = mounts.map((v) => ({ mountPath: v.target, kind: "volume", name: v.source }));
        result.push({
            id: `compose/${name}`,
            label: name,
            argv: command,
            commandWritten: command[0] ?? "",
            env,
            inputs: new Set(),
            problems: [],
            // Compose has one healthcheck: it stands for all three probes.
            probes: { startup: health, readiness: health, liveness: health },
            preStop: null,
            fileMounts,
            graceS: duration(s.stop_grace_period ?? "10s"),
            listenPorts: (s.ports ?? []).map((p) => (typeof p === "object" ? Number(p.target) : Number(String(p).replace(/\/(tcp|udp)$/, "").split(":").pop()))),
            persistentPaths,
            resolveHost: (host, port) => {
                if (!services[host]) return { ok: false, why: `no Compose service named ${host}` };
                const target = services[host];
                if (isOurImage(target.image)) {
                    const bind = String(target.environment?.PAYGATE_BROKER_ENDPOINT ?? "");
                    const p = Number(bind.split(":").pop());
                    return p === Number(port) ? { ok: true, containerPort: p, workload: host } : { ok: false, why: `${host} listens on ${bind}, not port ${port}` };
                }
                const known = Object.entries(defaultPorts).find(([k]) => String(target.image).startsWith(k));
                if (known && known[1] !== Number(port)) return { ok: false, why: `${host} (${target.image}) listens on ${known[1]}, not ${port}` };
                return { ok: true, containerPort: Number(port), workload: host };
            },
        });
    }
    return result;
}

// ---- one system --------------------------------------------------------------
const binaryOf = (c) => path.basename(c.commandWritten);
// A job runs once to completion before the rest (Compose's "certs").
const isJob = (c) => binaryOf(c) === "paygate-certs";
const curveFileVars = ["PAYGATE_CURVE_CERT", "PAYGATE_BROKER_CERT", "PAYGATE_CURVE_CLIENTS_DIR"];

// Certificates made by the real paygate-certs once, standing for what the
// operator makes (deploy/README.md, "CURVE keys").
let testCertsDir = null;
function testCerts() {
    if (testCertsDir) return testCertsDir;
    testCertsDir = path.join(scratch, "certs");
    const r = spawnSync(bins.get("paygate-certs") ?? "paygate-certs", [testCertsDir], { encoding: "utf8" });
    check(r.status === 0, `paygate-certs ${testCertsDir} failed: ${r.error?.message ?? ""} ${r.stderr}`);
    return testCertsDir;
}

// The files of Secret 'name' as deploy/README.md creates them: Map file
// name -> source file, or null for a Secret we do not know.
function secretFiles(name) {
    const dir = testCerts();
    if (name === "paygate-curve-clients")
        return new Map(readdirSync(path.join(dir, "clients")).map((f) => [f, path.join(dir, "clients", f)]));
    if (name === "paygate-curve-broker")
        return new Map([
            ["cert_secret", path.join(dir, "broker.cert_secret")],
            ["probe.cert_secret", path.join(dir, "paygatectl.cert_secret")],
            ["broker.cert", path.join(dir, "broker.cert")],
        ]);
    const m = name.match(/^paygate-curve-([a-z]+)$/);
    if (m)
        return new Map([
            ["cert_secret", path.join(dir, `${m[1]}.cert_secret`)],
            ["broker.cert", path.join(dir, "broker.cert")],
        ]);
    return null;
}

// Where mount 'm' of container 'c' is on this machine: a Secret's files
// copied into a directory of the container's own, or a named volume's
// directory shared by every container of the system (as Docker does).
function mountDir(system, c, m) {
    if (m.kind === "volume") {
        const dir = path.join(scratch, system, "volumes", m.name);
        mkdirSync(dir, { recursive: true });
        return dir;
    }
    const dir = path.join(scratch, system, "mounts", c.label, m.mountPath.replaceAll("/", "_"));
    if (!existsSync(dir)) {
        mkdirSync(dir, { recursive: true });
        const files = secretFiles(m.name);
        if (check(files !== null, `${system} ${c.id}: Secret ${m.name} mounted at ${m.mountPath}: no test files for it`))
            for (const [file, source] of files) copyFileSync(source, path.join(dir, file));
    }
    return dir;
}

// 'text' with the container's mount paths replaced by their directories
// on this machine.
function mapPaths(text, system, c) {
    let s = String(text);
    for (const m of [...(c.fileMounts ?? [])].sort((a, b) => b.mountPath.length - a.mountPath.length))
        s = s.replace(new RegExp(`${m.mountPath.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}(?=/|$|\\s|")`, "g"), mountDir(system, c, m));
    return s;
}

// Static checks of one container; returns false when it cannot be run.
function staticChecks(system, c) {
    const where = `${system} ${c.id}`;
    for (const p of c.problems) check(false, `${where}: ${p}`);
    const binary = binaryOf(c);
    if (!check(imageBinaries.has(binary), `${where}: command ${c.commandWritten} is not a binary the image installs`)) return false;
    if (system !== "compose")
        check(c.commandWritten === `/usr/local/bin/${binary}`, `${where}: command ${c.commandWritten}: the image installs it as /usr/local/bin/${binary}`);
    if (!check(bins.has(binary), `${where}: no built binary ${binary}`)) return false;
    const help = helpOf(binary);
    for (const name of c.env.keys()) {
        if (c.inputs.has(name)) continue; // spliced into another variable
        check(new RegExp(`\\b${name}\\b`).test(help), `${where}: sets ${name}, which ${binary} does not read (not in its --help)`);
    }
    for (const name of requiredBy(binary)) check(c.env.has(name) && c.env.get(name) !== "", `${where}: ${binary} requires ${name}, which is not set`);
    // Host names: dotless ones are in-cluster (Compose) names that must exist.
    const endpoint = c.env.get("PAYGATE_BROKER_ENDPOINT");
    if (endpoint !== undefined) {
        const m = endpoint.match(/^tcp:\/\/([^:]+):(\d+)$/);
        if (check(m !== null, `${where}: PAYGATE_BROKER_ENDPOINT ${endpoint} is not tcp://HOST:PORT`)) {
            if (binary === "paygate-broker") {
                check(["0.0.0.0", "*"].includes(m[1]), `${where}: the broker binds ${m[1]}; other pods cannot reach it (0.0.0.0 expected)`);
                if (system !== "compose") check(c.listenPorts.includes(Number(m[2])), `${where}: the broker binds port ${m[2]}, not a declared container port (${c.listenPorts})`);
            } else {
                const r = c.resolveHost(m[1], m[2]);
                if (check(r.ok, `${where}: PAYGATE_BROKER_ENDPOINT ${endpoint}: ${r.why}`))
                    check(r.workload === "paygate-broker" || r.workload === "broker", `${where}: ${endpoint} reaches ${r.workload}, not the broker`);
            }
        }
    }
    const dsn = c.env.get("PAYGATE_PG_DSN");
    if (dsn !== undefined) {
        try {
            const kv = new Map(parseConninfo(dsn));
            check(kv.has("password"), `${where}: PAYGATE_PG_DSN carries no password`);
            const host = kv.get("host") ?? "";
            if (!host.includes(".")) {
                const r = c.resolveHost(host, kv.get("port") ?? "5432");
                check(r.ok, `${where}: PAYGATE_PG_DSN host ${host}: ${r.why}`);
            }
            if (["verify-full", "verify-ca"].includes(kv.get("sslmode")))
                check(existsSync(kv.get("sslrootcert") ?? "~"), `${where}: sslrootcert ${kv.get("sslrootcert")} does not exist (Debian ca-certificates puts the bundle at /etc/ssl/certs/ca-certificates.crt)`);
        } catch (e) {
            check(false, `${where}: PAYGATE_PG_DSN: ${e.message}`);
        }
    }
    const redisHost = c.env.get("PAYGATE_REDIS_HOST");
    if (redisHost !== undefined && !redisHost.includes(".")) {
        const r = c.resolveHost(redisHost, c.env.get("PAYGATE_REDIS_PORT") ?? "6379");
        check(r.ok, `${where}: PAYGATE_REDIS_HOST ${redisHost}: ${r.why}`);
    }
    if (binary === "paygate-gateway") {
        const port = Number(c.env.get("PAYGATE_GATEWAY_PORT") ?? 8080);
        check(c.env.get("PAYGATE_GATEWAY_BIND") === "0.0.0.0", `${where}: PAYGATE_GATEWAY_BIND must be 0.0.0.0 (default 127.0.0.1 is unreachable from outside the container)`);
        check(c.listenPorts.includes(port), `${where}: the gateway listens on ${port}, which is not its declared port (${c.listenPorts})`);
        for (const [kind, p] of Object.entries(c.probes)) {
            if (p?.kind === "http") check(p.port === port, `${where}: ${kind} probe port ${p.portWritten} is ${p.port}, the gateway listens on ${port}`);
            if (p?.kind === "exec") {
                const m = p.argv.join(" ").match(/\/dev\/tcp\/127\.0\.0\.1\/(\d+)/);
                check(m && Number(m[1]) === port, `${where}: ${kind} healthcheck does not ask the gateway's port ${port}`);
            }
        }
    }
    // Metrics (Kubernetes): a scraped pod serves them on a declared port,
    // on every interface, and its prometheus.io/port annotation names it.
    const metricsVar = metricsPortVariable(c);
    if (system !== "compose" && c.podAnnotations?.["prometheus.io/scrape"] === "true") {
        const annotated = Number(c.podAnnotations["prometheus.io/port"]);
        check(c.listenPorts.includes(annotated), `${where}: prometheus.io/port ${annotated} is not a declared container port (${c.listenPorts})`);
        if (binary !== "paygate-gateway") {
            check(metricsVar !== null && Number(c.env.get(metricsVar)) === annotated, `${where}: prometheus.io/port ${annotated}, but ${metricsVar ?? "no metrics port variable"} is ${metricsVar ? c.env.get(metricsVar) : "unset"}`);
            check(c.env.get("PAYGATE_METRICS_BIND") === "0.0.0.0", `${where}: PAYGATE_METRICS_BIND must be 0.0.0.0 for Prometheus to reach the metrics port`);
        }
    }
    if (binary === "paygate-broker") {
        const dir = c.env.get("PAYGATE_BROKER_DATA_DIR");
        check(dir !== undefined && c.persistentPaths.includes(dir), `${where}: PAYGATE_BROKER_DATA_DIR ${dir} is not on a persistent volume (${c.persistentPaths})`);
    }
    // CURVE: never plaintext; the key files are on a mounted Secret (volume).
    if (!isJob(c)) {
        check(!c.env.has("PAYGATE_INSECURE_PLAINTEXT"), `${where}: sets PAYGATE_INSECURE_PLAINTEXT (no authentication)`);
        const needs = binary === "paygate-broker" ? ["PAYGATE_CURVE_CERT", "PAYGATE_CURVE_CLIENTS_DIR"] : ["PAYGATE_CURVE_CERT", "PAYGATE_BROKER_CERT"];
        for (const name of needs) check(c.env.has(name), `${where}: ${name} is not set (CURVE)`);
        for (const name of curveFileVars) {
            const file = c.env.get(name);
            if (file === undefined) continue;
            check((c.fileMounts ?? []).some((m) => file.startsWith(`${m.mountPath}/`) || file === m.mountPath), `${where}: ${name} ${file} is not on a mounted Secret or volume`);
        }
    }
    for (const [kind, p] of Object.entries(c.probes))
        if (!isJob(c)) check(p !== null && p.kind !== "unsupported", `${where}: ${kind} probe missing or not runnable here (${p?.detail ?? "none"})`);
    if (c.preStop) check(spawnSync("sh", ["-c", `command -v ${c.preStop[0]}`]).status === 0, `${where}: preStop ${c.preStop[0]} not found`);
    return true;
}

// The variable that sets container 'c''s metrics port, when it sets one.
function metricsPortVariable(c) {
    for (const name of ["PAYGATE_BROKER_METRICS_PORT", "PAYGATE_METRICS_PORT"])
        if (c.env.has(name) && c.env.get(name) !== "0") return name;
    return null;
}

// The container's environment for this machine: hosts to loopback, ports
// to the test servers or free ports, the data dir to a scratch dir.
function mappedEnv(c, ports, system) {
    const env = new Map(c.env);
    if (env.has("PAYGATE_BROKER_ENDPOINT")) env.set("PAYGATE_BROKER_ENDPOINT", `tcp://127.0.0.1:${ports.broker}`);
    if (env.has("PAYGATE_BROKER_DATA_DIR")) env.set("PAYGATE_BROKER_DATA_DIR", path.join(scratch, system, "broker-data"));
    if (env.has("PAYGATE_PG_DSN")) {
        const kv = new Map(parseConninfo(env.get("PAYGATE_PG_DSN")));
        for (const k of ["host", "port", "user"]) kv.set(k, testPg.get(k));
        kv.set("dbname", database);
        // The test server has no TLS; the certificate path was checked above.
        kv.set("sslmode", "disable");
        kv.delete("sslrootcert");
        env.set("PAYGATE_PG_DSN", formatConninfo([...kv]));
    }
    if (env.has("PAYGATE_REDIS_HOST")) env.set("PAYGATE_REDIS_HOST", "127.0.0.1");
    if (env.has("PAYGATE_REDIS_PORT")) env.set("PAYGATE_REDIS_PORT", String(redisPort));
    if (env.has("PAYGATE_GATEWAY_BIND")) env.set("PAYGATE_GATEWAY_BIND", "127.0.0.1");
    if (env.has("PAYGATE_GATEWAY_PORT")) env.set("PAYGATE_GATEWAY_PORT", String(ports.gateway));
    const metricsVar = metricsPortVariable(c);
    if (metricsVar !== null) env.set(metricsVar, String(ports.metrics.get(c.id)));
    if (env.has("PAYGATE_METRICS_BIND")) env.set("PAYGATE_METRICS_BIND", "127.0.0.1");
    // What the image gives every process, and the sanitizers' settings.
    env.set("PATH", `${binDir}:/usr/bin:/bin`);
    env.set("HOME", "/nonexistent");
    for (const k of ["ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS"]) if (process.env[k]) env.set(k, process.env[k]);
    // Mounted files (CURVE keys) where they are on this machine.
    for (const [k, v] of env) env.set(k, mapPaths(v, system, c));
    return env;
}

// A probe as written, for this machine: the broker's and the gateway's
// ports replaced by the free ones (their equality was checked).
function mappedProbe(p, c, ports, system) {
    if (!p) return null;
    if (p.kind === "http") return { ...p, port: ports.gateway };
    const brokerBind = Number(String(c.env.get("PAYGATE_BROKER_ENDPOINT") ?? "").split(":").pop());
    const gatewayPort = c.env.get("PAYGATE_GATEWAY_PORT");
    const argv = p.argv.map((a) => {
        let s = String(a);
        if (binaryOf(c) === "paygate-broker") s = s.replace(`127.0.0.1:${brokerBind}`, `127.0.0.1:${ports.broker}`);
        if (gatewayPort) s = s.replace(`/dev/tcp/127.0.0.1/${gatewayPort}`, `/dev/tcp/127.0.0.1/${ports.gateway}`);
        return mapPaths(s, system, c);
    });
    return { ...p, argv };
}

async function runSystem(system, containers) {
    say(`${system}: ${containers.length} containers: ${containers.map((c) => c.label).join(", ")}`);
    const runnable = containers.filter((c) => staticChecks(system, c));
    const byBinary = (b) => runnable.filter((c) => binaryOf(c) === b);
    for (const b of ["paygate-broker", "paygate-gateway", "paygate-user", "paygate-order", "paygate-payment", "paygate-transaction", "paygate-notification"])
        check(byBinary(b).length > 0, `${system}: no container runs ${b}`);
    if (byBinary("paygate-broker").length !== 1) return;
    const ports = { broker: await freePort(), gateway: await freePort(), metrics: new Map() };
    for (const c of runnable) if (metricsPortVariable(c) !== null) ports.metrics.set(c.id, await freePort());
    mkdirSync(path.join(scratch, system), { recursive: true });
    const started = [];
    const launch = (c) => {
        const env = mappedEnv(c, ports, system);
        const argv = [path.join(binDir, binaryOf(c)), ...c.argv.slice(1).map((a) => mapPaths(a, system, c))];
        const child = start(`${system}-${c.label}`, argv, env);
        const entry = { c, env, child };
        started.push(entry);
        return entry;
    };
    const ready = async (e) => {
        for (const kind of ["startup", "readiness"]) {
            const p = mappedProbe(e.c.probes[kind], e.c, ports, system);
            if (p && !(await waitProbe(e.child, p, e.env, readyLimitMs, `${system} ${e.c.id} ${kind}`))) return false;
        }
        return true;
    };
    try {
        // Jobs first, to completion (Compose's "certs" makes the keys).
        for (const c of runnable.filter(isJob)) {
            const e = launch(c);
            const r = await Promise.race([e.child.exited, sleep(30000).then(() => null)]);
            if (!check(r !== null && r.code === 0, `${system} ${c.id}: job did not exit 0 within 30 s\n${logTail(e.child.label)}`)) return;
            started.splice(started.indexOf(e), 1);
            say(`${system}: job ${c.label} done`);
        }
        // The broker, then every worker, then the gateway (its /readyz needs them).
        const broker = launch(byBinary("paygate-broker")[0]);
        if (!(await ready(broker))) return;
        const workers = runnable.filter((c) => !isJob(c) && !["paygate-broker", "paygate-gateway"].includes(binaryOf(c))).map(launch);
        if (!(await Promise.all(workers.map(ready))).every(Boolean)) return;
        const gateways = byBinary("paygate-gateway").map(launch);
        if (!(await Promise.all(gateways.map(ready))).every(Boolean)) return;
        checks += started.length;
        // Liveness (and startup again) as written, once everything runs.
        for (const e of started)
            for (const kind of ["liveness", "startup"]) {
                const p = mappedProbe(e.c.probes[kind], e.c, ports, system);
                const r = await runProbe(p, e.env, (p.timeoutS ?? 1) * 1000);
                check(r.ok, `${system} ${e.c.id}: ${kind} probe fails while it runs: ${r.detail}`);
            }
        // Every metrics port set answers GET /metrics (the gateway's is its
        // HTTP port).
        for (const e of started) {
            const port = ports.metrics.get(e.c.id) ?? (binaryOf(e.c) === "paygate-gateway" ? ports.gateway : null);
            if (port === null) continue;
            const r = await runProbe({ kind: "http", path: "/metrics", port }, e.env, 5000);
            check(r.ok, `${system} ${e.c.id}: metrics: ${r.detail}`);
        }
        // Not vacuous: the same probe for an instance that is not there fails.
        const worker = workers.find((e) => e.env.has("PAYGATE_INSTANCE_ID"));
        if (check(worker !== undefined, `${system}: no worker sets PAYGATE_INSTANCE_ID`)) {
            const env = new Map(worker.env).set("PAYGATE_INSTANCE_ID", "no-such-pod");
            const r = await runProbe(mappedProbe(worker.c.probes.readiness, worker.c, ports, system), env, 5000);
            check(!r.ok, `${system} ${worker.c.id}: readiness passes for an instance that does not exist: ${r.detail}`);
        }
        // Two instances of one service share it: both in discovery.
        for (const b of ["paygate-payment"]) {
            const group = workers.filter((e) => binaryOf(e.c) === b);
            if (group.length < 2) continue;
            // paygatectl with a payment process's own key and environment.
            const out = spawnSync(path.join(binDir, "paygatectl"), ["--broker", `tcp://127.0.0.1:${ports.broker}`, "services", "--json", "payment"], { encoding: "utf8", env: Object.fromEntries(group[0].env) }).stdout;
            for (const e of group)
                check(out.includes(`"${e.env.get("PAYGATE_INSTANCE_ID")}-`), `${system}: ${e.c.id} is not in discovery: ${out}`);
            say(`${system}: ${group.length} payment processes registered with the broker`);
        }
        // SIGTERM: the gateway, the workers, the broker; each exits 0 in time.
        const order = [...gateways, ...workers, broker];
        for (const e of order) {
            const budgetS = e.c.graceS - (e.c.preStop?.[0] === "sleep" ? Number(e.c.preStop[1]) : 0);
            const t0 = Date.now();
            e.child.kill("SIGTERM");
            const timer = sleep(budgetS * 1000).then(() => null);
            const r = await Promise.race([e.child.exited, timer]);
            const tookMs = Date.now() - t0;
            if (check(r !== null, `${system} ${e.c.id}: still running ${budgetS} s after SIGTERM (grace ${e.c.graceS} s)\n${logTail(e.child.label)}`))
                check(r.code === 0, `${system} ${e.c.id}: exit ${r.code ?? r.signal} after SIGTERM\n${logTail(e.child.label)}`);
            else e.child.kill("SIGKILL");
            say(`${system}: ${e.c.label} stopped in ${tookMs} ms (budget ${budgetS} s)`);
        }
    } finally {
        for (const e of started) if (e.child.exitCode === null && e.child.signalCode === null) e.child.kill("SIGKILL");
        await Promise.all(started.map((e) => e.child.exited));
    }
}

// ---- main ---------------------------------------------------------------------
let dbCreated = false;
try {
    psqlRun(`create database ${database}`);
    dbCreated = true;
    for (const [system, file] of systems) {
        const containers = system === "compose" ? composeContainers(file) : kubernetesContainers(file);
        const before = problems.length;
        await runSystem(system, containers);
        say(`${system}: ${problems.length - before} problems`);
    }
} catch (e) {
    problems.push(`error: ${e.stack ?? e}`);
} finally {
    killAll();
    if (dbCreated) {
        try {
            psqlRun(`drop database if exists ${database} with (force)`);
        } catch (e) {
            problems.push(`could not drop ${database}: ${e.message}`);
        }
    }
    rmSync(scratch, { recursive: true, force: true });
}
for (const p of problems) console.log(`FAIL ${p}`);
console.log(`deploy_commands: ${checks} checks, ${problems.length} problems`);
process.exit(problems.length > 0 ? 1 : 0);
