// validate_k8s.mjs: checks rendered Kubernetes manifests, offline.
//
//   node validate_k8s.mjs DEPLOY_README NAME=RENDERED.yaml...   (NAME: base, dev, prod)
//
// 1. Schema: every object is validated with the pinned kubernetes-models
//    validators (types, enums, required fields, quantities), and strictly:
//    a field the Kubernetes API does not define is an error, as with
//    `kubectl apply --validate=strict` (the property lists come from the
//    same package's type declarations).
// 2. Our rules for this system (dev and prod; base only gets 1): security
//    contexts, resources, probes, replicas and autoscalers, disruption
//    budgets, Services and the Ingress pointing at real ports, StatefulSets
//    with their headless Service and volumes, ConfigMap and Secret
//    references, and the NetworkPolicies as a reachability model (only the
//    gateway reachable from outside; services reach only the broker,
//    PostgreSQL and Redis).
// Prints one line per problem and a summary per manifest set;
// exits 1 when anything failed.
import { existsSync, readFileSync } from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";
import {
    configIndex,
    containerEnv,
    isOurImage,
    loadDocs,
    selectorMatches,
    workloads,
} from "./manifests.mjs";

const require = createRequire(import.meta.url);
const modelsDir = path.dirname(require.resolve("kubernetes-models/package.json"));
const nodeModules = path.dirname(modelsDir);

// ---- 1. schema ---------------------------------------------------------

// The module of an apiVersion: "v1" -> kubernetes-models/v1,
// "apps/v1" -> kubernetes-models/apps/v1.
async function modelClass(apiVersion, kind) {
    const mod = await import(`kubernetes-models/${apiVersion}`).catch(() => null);
    return mod?.[kind] ?? null;
}

// Property table of a type declaration file: Map propName -> {symbol,
// file} for nested kubernetes-models types (null when the value is a
// scalar, a map or a union). Cached per file.
const typeCache = new Map();
function typeTable(dtsFile) {
    if (typeCache.has(dtsFile)) return typeCache.get(dtsFile);
    let table = null;
    if (existsSync(dtsFile)) {
        const text = readFileSync(dtsFile, "utf8");
        const imports = new Map();
        for (const m of text.matchAll(/^import \{ (\w+) \} from "([^"]+)";$/gm)) imports.set(m[1], m[2]);
        const body = text.match(/^export interface \w+(?: extends [^{]+)? \{\n([\s\S]*?)^\}/m);
        if (body) {
            table = new Map();
            for (const m of body[1].matchAll(/^ {4}"([^"]+)"\??: (.*)$/gm)) {
                const [, prop, type] = m;
                let nested = null;
                const direct = type.match(/^(?:Array<)?(IIoK8s\w+)>?;$/);
                if (direct && imports.has(direct[1])) {
                    const spec = imports.get(direct[1]);
                    const base = spec.startsWith(".")
                        ? path.resolve(path.dirname(dtsFile), spec)
                        : path.join(nodeModules, spec);
                    nested = base.replace(/\.js$/, "") + ".d.ts";
                }
                table.set(prop, nested);
            }
        }
    }
    typeCache.set(dtsFile, table);
    return table;
}

// Appends to 'problems' every field of 'value' that the type in 'dtsFile'
// does not define, recursing into nested API types.
function unknownFields(value, dtsFile, where, problems) {
    const table = typeTable(dtsFile);
    if (table === null || value === null || typeof value !== "object") return;
    if (Array.isArray(value)) {
        value.forEach((v, i) => unknownFields(v, dtsFile, `${where}[${i}]`, problems));
        return;
    }
    for (const [k, v] of Object.entries(value)) {
        if (!table.has(k)) {
            problems.push(`${where}.${k}: unknown field (not in the Kubernetes schema)`);
            continue;
        }
        const nested = table.get(k);
        if (nested) unknownFields(v, nested, `${where}.${k}`, problems);
    }
}

async function schemaProblems(o) {
    const id = `${o.kind}/${o.metadata?.name}`;
    const Cls = await modelClass(o.apiVersion, o.kind);
    if (!Cls) return [`${id}: unknown apiVersion/kind ${o.apiVersion} ${o.kind}`];
    const problems = [];
    // kustomize wraps long base64 Secret values over lines; the API server
    // (Go's base64 decoder) skips the newlines, the schema's "byte" format
    // does not: give the validator what the server decodes.
    const data = o.kind === "Secret" && o.data
        ? Object.fromEntries(Object.entries(o.data).map(([k, v]) => [k, String(v).replace(/[\r\n]/g, "")]))
        : undefined;
    try {
        new Cls(data ? { ...o, data } : o).validate();
    } catch (e) {
        problems.push(`${id}: ${e.message}`);
    }
    unknownFields(o, path.join(modelsDir, o.apiVersion, `${o.kind}.d.ts`), id, problems);
    return problems;
}

// ---- 2. rules ----------------------------------------------------------

const quantity = (q) => {
    const m = String(q).match(/^([0-9.]+)(m|Ki|Mi|Gi|Ti|k|M|G|T)?$/);
    if (!m) return NaN;
    const unit = { m: 1e-3, Ki: 1024, Mi: 1024 ** 2, Gi: 1024 ** 3, Ti: 1024 ** 4, k: 1e3, M: 1e6, G: 1e9, T: 1e12 };
    return Number(m[1]) * (m[2] ? unit[m[2]] : 1);
};

function podRules(w, problems) {
    const id = `${w.kind}/${w.name}`;
    const ps = w.podSpec;
    const psc = ps.securityContext ?? {};
    if (psc.runAsNonRoot !== true) problems.push(`${id}: pod securityContext.runAsNonRoot must be true`);
    if (!(Number.isInteger(psc.runAsUser) && psc.runAsUser > 0))
        problems.push(`${id}: pod securityContext.runAsUser must be a non-zero uid (runAsNonRoot needs it numeric)`);
    if (psc.seccompProfile?.type !== "RuntimeDefault") problems.push(`${id}: seccompProfile RuntimeDefault expected`);
    if (ps.automountServiceAccountToken !== false) problems.push(`${id}: automountServiceAccountToken must be false`);
    if (ps.enableServiceLinks !== false)
        problems.push(`${id}: enableServiceLinks must be false (Service env vars like PAYGATE_GATEWAY_PORT=tcp://... collide with settings)`);
    if (!Number.isInteger(ps.terminationGracePeriodSeconds) && w.podLabels["app.kubernetes.io/component"] !== "datastore")
        problems.push(`${id}: terminationGracePeriodSeconds must be set (matching the process's drain)`);
    for (const c of [...(ps.initContainers ?? []), ...(ps.containers ?? [])]) {
        const cid = `${id} container ${c.name}`;
        const sc = c.securityContext ?? {};
        if (sc.allowPrivilegeEscalation !== false) problems.push(`${cid}: allowPrivilegeEscalation must be false`);
        if (sc.readOnlyRootFilesystem !== true) problems.push(`${cid}: readOnlyRootFilesystem must be true`);
        if (!(sc.capabilities?.drop ?? []).includes("ALL")) problems.push(`${cid}: capabilities must drop ALL`);
        if ((sc.capabilities?.add ?? []).length > 0) problems.push(`${cid}: adds capabilities`);
        if (sc.privileged) problems.push(`${cid}: privileged`);
        const r = c.resources ?? {};
        for (const res of ["cpu", "memory"]) {
            const req = r.requests?.[res];
            const lim = r.limits?.[res];
            if (req === undefined || lim === undefined) problems.push(`${cid}: needs ${res} request and limit`);
            else if (!(quantity(lim) >= quantity(req))) problems.push(`${cid}: ${res} limit ${lim} below request ${req}`);
        }
        if (!c.readinessProbe) problems.push(`${cid}: no readinessProbe`);
        if (!c.livenessProbe) problems.push(`${cid}: no livenessProbe`);
        for (const kind of ["startupProbe", "readinessProbe", "livenessProbe"]) {
            const p = c[kind];
            const cmd = p?.exec?.command?.join(" ") ?? "";
            // The kubelet expands $(VAR) in exec probes only for variables
            // with a literal value: use sh -c and $VAR instead.
            if (cmd.includes("$(")) problems.push(`${cid}: ${kind} uses $(...), which exec probes expand only partly`);
            const t = cmd.match(/paygatectl .*--timeout (\d+)/);
            // The RPC client may wait its deadline plus about 1 s.
            if (t && Number(t[1]) + 1000 > (p.timeoutSeconds ?? 1) * 1000)
                problems.push(`${cid}: ${kind} --timeout ${t[1]} ms does not fit in timeoutSeconds ${p.timeoutSeconds ?? 1}`);
        }
        if (isOurImage(c.image) && !String(c.command?.[0] ?? "").startsWith("/usr/local/bin/"))
            problems.push(`${cid}: command must name a binary in /usr/local/bin (the image has no default process)`);
        for (const m of c.volumeMounts ?? []) {
            const v = (ps.volumes ?? []).find((x) => x.name === m.name);
            const claim = (w.obj.spec?.volumeClaimTemplates ?? []).find((x) => x.metadata?.name === m.name);
            if (!v && !claim) problems.push(`${cid}: volumeMount ${m.name} has no volume or claim template`);
        }
    }
}

// Reachability from the NetworkPolicies: for a pod's labels, the policies
// of 'type' (Ingress/Egress) that select it, or null when none does (then
// everything is allowed, which our rules forbid).
function policiesFor(policies, labels, type) {
    const sel = policies.filter(
        (p) => (p.spec.policyTypes ?? ["Ingress"]).includes(type) && selectorMatches(p.spec.podSelector ?? {}, labels),
    );
    return sel.length > 0 ? sel : null;
}

async function checkSet(name, file, readme) {
    const problems = [];
    let checks = 0;
    const objects = loadDocs(file);
    const seen = new Set();
    for (const o of objects) {
        checks++;
        const key = `${o.kind}/${o.metadata?.namespace ?? ""}/${o.metadata?.name}`;
        if (seen.has(key)) problems.push(`${key}: defined twice`);
        seen.add(key);
        problems.push(...(await schemaProblems(o)));
    }
    if (name === "base") return { checks, problems };

    const ws = workloads(objects);
    const ours = ws.filter((w) => (w.podSpec.containers ?? []).some((c) => isOurImage(c.image)));
    const byName = (kind, n) => objects.find((o) => o.kind === kind && o.metadata?.name === n);
    const index = configIndex(objects);
    const services = objects.filter((o) => o.kind === "Service");
    const hpas = objects.filter((o) => o.kind === "HorizontalPodAutoscaler");
    const pdbs = objects.filter((o) => o.kind === "PodDisruptionBudget");
    const policies = objects.filter((o) => o.kind === "NetworkPolicy");
    const component = (w) => w.podLabels["app.kubernetes.io/component"];

    // Every pod: hardened, sized, probed.
    for (const w of ws) {
        checks++;
        podRules(w, problems);
    }

    // The parts of the system: the broker a StatefulSet, the rest Deployments.
    const expected = ["paygate-broker", "paygate-user", "paygate-order", "paygate-payment", "paygate-transaction", "paygate-notification", "paygate-gateway"];
    for (const n of expected) {
        checks++;
        const w = ours.find((x) => x.name === n);
        if (!w) problems.push(`${n}: missing`);
        else if (n === "paygate-broker" && w.kind !== "StatefulSet") problems.push(`${n}: must be a StatefulSet`);
        else if (n !== "paygate-broker" && w.kind !== "Deployment") problems.push(`${n}: must be a Deployment`);
    }

    // Autoscalers and replicas: at least 2 of everything but the broker in prod.
    for (const h of hpas) {
        checks++;
        const t = h.spec.scaleTargetRef;
        const target = byName(t.kind, t.name);
        if (!target) problems.push(`HPA ${h.metadata.name}: target ${t.kind}/${t.name} does not exist`);
        else if (target.spec.replicas !== undefined)
            problems.push(`HPA ${h.metadata.name}: ${t.name} sets spec.replicas, which fights the autoscaler`);
        const pod = ws.find((w) => w.name === t.name);
        if (pod && !(pod.podSpec.containers ?? []).every((c) => c.resources?.requests?.cpu))
            problems.push(`HPA ${h.metadata.name}: CPU utilisation needs CPU requests`);
    }
    for (const n of ["paygate-gateway", "paygate-payment"]) {
        checks++;
        if (!hpas.some((h) => h.spec.scaleTargetRef.name === n)) problems.push(`${n}: no HorizontalPodAutoscaler`);
    }
    for (const w of ours.filter((x) => x.kind === "Deployment")) {
        checks++;
        const hpa = hpas.find((h) => h.spec.scaleTargetRef.kind === "Deployment" && h.spec.scaleTargetRef.name === w.name);
        const replicas = hpa ? hpa.spec.minReplicas ?? 1 : w.obj.spec.replicas ?? 1;
        if (name === "prod" && replicas < 2) problems.push(`prod: ${w.name} runs ${replicas} replica(s); at least 2 expected`);
        if (!pdbs.some((p) => selectorMatches(p.spec.selector, w.podLabels)))
            problems.push(`${w.name}: no PodDisruptionBudget selects its pods`);
    }
    for (const p of pdbs) {
        checks++;
        if (!ws.some((w) => selectorMatches(p.spec.selector, w.podLabels)))
            problems.push(`PDB ${p.metadata.name}: selects no pod`);
    }

    // Datastores: StatefulSets in dev, absent (managed) in prod.
    for (const n of ["postgres", "redis"]) {
        checks++;
        const w = ws.find((x) => x.name === n);
        if (name === "dev" && w?.kind !== "StatefulSet") problems.push(`dev: ${n} must be a StatefulSet in the overlay`);
        if (name === "prod" && w) problems.push(`prod: ${n} must not run in the cluster (managed endpoint expected)`);
    }

    // Services and Ingress point at real pods and ports.
    for (const s of services) {
        checks++;
        const sid = `Service/${s.metadata.name}`;
        if (["LoadBalancer", "NodePort"].includes(s.spec.type))
            problems.push(`${sid}: type ${s.spec.type}; only the Ingress may expose the gateway`);
        const matched = ws.filter((w) => selectorMatches({ matchLabels: s.spec.selector ?? {} }, w.podLabels));
        if (matched.length === 0) problems.push(`${sid}: selector matches no pod`);
        for (const port of s.spec.ports ?? []) {
            const target = port.targetPort ?? port.port;
            const ok = matched.some((w) =>
                (w.podSpec.containers ?? []).some((c) =>
                    (c.ports ?? []).some((cp) => cp.name === target || cp.containerPort === target),
                ),
            );
            if (!ok) problems.push(`${sid}: targetPort ${target} is no container port of its pods`);
        }
    }
    const ingresses = objects.filter((o) => o.kind === "Ingress");
    checks++;
    if (ingresses.length !== 1) problems.push(`expected exactly one Ingress, found ${ingresses.length}`);
    for (const ing of ingresses) {
        for (const rule of ing.spec.rules ?? [])
            for (const p of rule.http?.paths ?? []) {
                const b = p.backend.service;
                const svc = services.find((s) => s.metadata.name === b.name);
                if (b.name !== "paygate-gateway") problems.push(`Ingress ${ing.metadata.name}: routes to ${b.name}; only the gateway may be exposed`);
                if (!svc) problems.push(`Ingress ${ing.metadata.name}: Service ${b.name} does not exist`);
                else if (!(svc.spec.ports ?? []).some((sp) => sp.name === b.port.name || sp.port === b.port.number))
                    problems.push(`Ingress ${ing.metadata.name}: Service ${b.name} has no port ${b.port.name ?? b.port.number}`);
            }
    }

    // StatefulSets: a headless governing Service; the broker's data dir on its claim.
    for (const w of ws.filter((x) => x.kind === "StatefulSet")) {
        checks++;
        const gov = services.find((s) => s.metadata.name === w.obj.spec.serviceName);
        if (!gov || gov.spec.clusterIP !== "None") {
            // A normal Service as serviceName works for DNS of the set itself only.
            if (!gov) problems.push(`StatefulSet/${w.name}: serviceName ${w.obj.spec.serviceName} does not exist`);
        }
    }
    const broker = ours.find((w) => w.name === "paygate-broker");
    if (broker) {
        checks++;
        const c = broker.podSpec.containers[0];
        const { env } = containerEnv(c, index);
        const dir = env.get("PAYGATE_BROKER_DATA_DIR");
        const mount = (c.volumeMounts ?? []).find((m) => m.mountPath === dir);
        const claims = (broker.obj.spec.volumeClaimTemplates ?? []).map((t) => t.metadata.name);
        if (!dir) problems.push("paygate-broker: PAYGATE_BROKER_DATA_DIR is not set (no event bus)");
        else if (!mount || !claims.includes(mount.name))
            problems.push(`paygate-broker: PAYGATE_BROKER_DATA_DIR ${dir} is not a mounted PersistentVolumeClaim`);
        if (broker.obj.spec.replicas !== 1) problems.push("paygate-broker: exactly 1 replica (its data dir is locked against a second broker)");
        if (!broker.podSpec.securityContext?.fsGroup) problems.push("paygate-broker: fsGroup needed to write its volume as non-root");
    }

    // References to ConfigMaps and Secrets resolve; Secrets that are not
    // rendered (prod) are documented in deploy/README.md.
    const external = new Set();
    for (const w of ws) {
        for (const c of w.podSpec.containers ?? []) {
            checks++;
            const r = containerEnv(c, index, { secret: () => "x", field: () => "x" });
            for (const p of r.problems) problems.push(`${w.name}/${c.name}: ${p}`);
            for (const s of r.secretNames) if (!index.secrets.has(s)) external.add(s);
        }
        for (const v of w.podSpec.volumes ?? [])
            if (v.secret && !index.secrets.has(v.secret.secretName)) external.add(v.secret.secretName);
    }
    for (const ing of ingresses) for (const t of ing.spec.tls ?? []) if (!index.secrets.has(t.secretName)) external.add(t.secretName);
    for (const s of external) {
        checks++;
        if (!readme.includes(s)) problems.push(`Secret ${s} is referenced, not rendered, and not documented in deploy/README.md`);
        else if (!new RegExp(`kubectl[^\\n]*create secret[^\\n]*\\b${s}\\b`).test(readme))
            problems.push(`Secret ${s}: deploy/README.md does not show how to create it (kubectl ... create secret ... ${s})`);
    }

    // NetworkPolicies: every selector selects something, default deny, and
    // the reachability the README promises.
    checks++;
    if (!policies.some((p) => Object.keys(p.spec.podSelector ?? {}).length === 0 && (p.spec.policyTypes ?? []).includes("Ingress") && (p.spec.policyTypes ?? []).includes("Egress") && !p.spec.ingress && !p.spec.egress))
        problems.push("no default-deny NetworkPolicy (podSelector {}, Ingress and Egress, no rules)");
    const podSelectorsOf = (p) => [
        p.spec.podSelector,
        ...(p.spec.ingress ?? []).flatMap((r) => (r.from ?? []).filter((f) => f.podSelector && !f.namespaceSelector).map((f) => f.podSelector)),
        ...(p.spec.egress ?? []).flatMap((r) => (r.to ?? []).filter((f) => f.podSelector && !f.namespaceSelector).map((f) => f.podSelector)),
    ];
    for (const p of policies) {
        checks++;
        for (const sel of podSelectorsOf(p))
            if (Object.keys(sel ?? {}).length > 0 && !ws.some((w) => selectorMatches(sel, w.podLabels)))
                problems.push(`NetworkPolicy ${p.metadata.name}: selector ${JSON.stringify(sel)} matches no pod`);
    }
    const isDns = (peer) => peer.namespaceSelector?.matchLabels?.["kubernetes.io/metadata.name"] === "kube-system";
    for (const w of ws) {
        checks++;
        const inPolicies = policiesFor(policies, w.podLabels, "Ingress");
        const outPolicies = policiesFor(policies, w.podLabels, "Egress");
        if (!inPolicies || !outPolicies) {
            problems.push(`${w.name}: not covered by Ingress and Egress policies`);
            continue;
        }
        // From outside: a rule with no "from", or an ipBlock/namespace peer;
        // except Prometheus scraping: a rule only for the pod's annotated
        // metrics port whose every peer is a pod labelled
        // paygate.io/metrics-scraper=true (in whatever namespace).
        const metricsPort = Number(w.obj.spec?.template?.metadata?.annotations?.["prometheus.io/port"]);
        const scrapeOnly = (r) =>
            (r.ports ?? []).length > 0 &&
            r.ports.every((x) => Number(x.port) === metricsPort) &&
            (r.from ?? []).length > 0 &&
            r.from.every((f) => !f.ipBlock && f.podSelector?.matchLabels?.["paygate.io/metrics-scraper"] === "true");
        const open = inPolicies.some((p) =>
            (p.spec.ingress ?? []).some((r) => !scrapeOnly(r) && (!r.from || r.from.length === 0 || r.from.some((f) => f.ipBlock || f.namespaceSelector))),
        );
        if (open && w.name !== "paygate-gateway") problems.push(`${w.name}: reachable from outside the namespace; only the gateway may be`);
        if (w.name === "paygate-gateway" && !open) problems.push("paygate-gateway: not reachable from outside");
        // Where it may connect: pods by name, ipBlocks, DNS.
        const dests = new Set();
        for (const p of outPolicies)
            for (const r of p.spec.egress ?? []) {
                if (!r.to || r.to.length === 0) dests.add("anywhere");
                for (const peer of r.to ?? []) {
                    if (isDns(peer)) dests.add("dns");
                    else if (peer.ipBlock) dests.add(`ipBlock:${(r.ports ?? []).map((x) => x.port).join(",")}`);
                    else if (peer.namespaceSelector) dests.add("other-namespace");
                    else for (const t of ws) if (selectorMatches(peer.podSelector, t.podLabels)) dests.add(t.name);
                }
            }
        if (component(w) === "service" || w.name === "paygate-gateway") {
            const allowed = new Set(["dns", "paygate-broker", "postgres", "redis", "ipBlock:5432", "ipBlock:6379"]);
            for (const d of dests) if (!allowed.has(d)) problems.push(`${w.name}: may connect to ${d}; only the broker, PostgreSQL and Redis`);
            if (!dests.has("paygate-broker")) problems.push(`${w.name}: cannot reach the broker`);
            const needsPg = w.podLabels["paygate.io/postgres-client"] === "true";
            const needsRedis = w.podLabels["paygate.io/redis-client"] === "true";
            if (needsPg && !dests.has("postgres") && !dests.has("ipBlock:5432")) problems.push(`${w.name}: cannot reach PostgreSQL`);
            if (needsRedis && !dests.has("redis") && !dests.has("ipBlock:6379")) problems.push(`${w.name}: cannot reach Redis`);
            if (!needsPg && (dests.has("postgres") || dests.has("ipBlock:5432"))) problems.push(`${w.name}: reaches PostgreSQL without needing it`);
        }
        if (dests.has("anywhere")) problems.push(`${w.name}: unrestricted egress`);
    }
    return { checks, problems };
}

const [readmeFile, ...sets] = process.argv.slice(2);
if (!readmeFile || sets.length === 0) {
    console.error("usage: node validate_k8s.mjs DEPLOY_README NAME=RENDERED.yaml...");
    process.exit(2);
}
const readme = readFileSync(readmeFile, "utf8");
let failed = 0;
for (const arg of sets) {
    const [name, file] = arg.split("=");
    const { checks, problems } = await checkSet(name, file, readme);
    for (const p of problems) console.log(`FAIL ${name}: ${p}`);
    console.log(`${name}: ${checks} checks, ${problems.length} problems`);
    if (problems.length > 0) failed++;
}
process.exit(failed > 0 ? 1 : 0);
