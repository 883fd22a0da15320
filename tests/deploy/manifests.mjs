// manifests.mjs: reading rendered Kubernetes manifests and a resolved
// Compose file the way Kubernetes and Compose read them, for the checks in
// this directory (validate_k8s.mjs, run_commands.mjs).
//
// It must never guess: a reference that Kubernetes would leave unresolved
// (an env var from a missing ConfigMap key, a $(VAR) defined nowhere) is
// reported, not papered over.
import { readFileSync } from "node:fs";
import { parseAllDocuments, parse } from "yaml";

// Parses every YAML document of 'file'; returns the non-empty ones.
// Throws with the file name on a YAML error.
export function loadDocs(file) {
    const docs = parseAllDocuments(readFileSync(file, "utf8"));
    const out = [];
    for (const doc of docs) {
        if (doc.errors.length > 0)
            throw new Error(`${file}: ${doc.errors.map((e) => e.message).join("; ")}`);
        const value = doc.toJS();
        if (value !== null && value !== undefined) out.push(value);
    }
    return out;
}

// Parses the single YAML document in 'file' (the resolved Compose file).
export function loadDoc(file) {
    return parse(readFileSync(file, "utf8"));
}

// True when 'image' is ours: any registry and tag of the image "paygate".
export function isOurImage(image) {
    const withoutTag = String(image).replace(/@.*$/, "").replace(/:[^/:]*$/, "");
    return withoutTag === "paygate" || withoutTag.endsWith("/paygate");
}

// The pod-bearing objects (Deployment, StatefulSet) of 'objects', each as
// {kind, name, obj, podSpec, podLabels}.
export function workloads(objects) {
    return objects
        .filter((o) => ["Deployment", "StatefulSet", "DaemonSet", "Job", "Pod"].includes(o.kind))
        .map((o) => {
            const template = o.kind === "Pod" ? o : o.spec?.template ?? {};
            return {
                kind: o.kind,
                name: o.metadata?.name,
                obj: o,
                podSpec: template.spec ?? {},
                podLabels: template.metadata?.labels ?? {},
            };
        });
}

// True when label selector 'selector' ({matchLabels, matchExpressions})
// selects 'labels'. An empty selector selects everything.
export function selectorMatches(selector, labels) {
    if (!selector) return false;
    for (const [k, v] of Object.entries(selector.matchLabels ?? {})) if (labels[k] !== v) return false;
    for (const e of selector.matchExpressions ?? []) {
        const has = Object.hasOwn(labels, e.key);
        const val = labels[e.key];
        if (e.operator === "In" && !(has && e.values.includes(val))) return false;
        if (e.operator === "NotIn" && has && e.values.includes(val)) return false;
        if (e.operator === "Exists" && !has) return false;
        if (e.operator === "DoesNotExist" && has) return false;
    }
    return true;
}

// Expands $(VAR) in 'text' as the kubelet does for env values, command and
// args: $(NAME) becomes the value of NAME when 'vars' has it and stays as
// written otherwise (reported through 'unresolved'); "$$" is a literal "$".
export function expandKubernetes(text, vars, unresolved = []) {
    let out = "";
    for (let i = 0; i < text.length; i++) {
        const c = text[i];
        if (c !== "$" || i + 1 >= text.length) {
            out += c;
            continue;
        }
        const next = text[i + 1];
        if (next === "$") {
            out += "$";
            i++;
        } else if (next === "(") {
            const close = text.indexOf(")", i + 2);
            if (close < 0) {
                out += text.slice(i);
                break;
            }
            const name = text.slice(i + 2, close);
            if (vars.has(name)) out += vars.get(name);
            else {
                out += text.slice(i, close + 1);
                unresolved.push(name);
            }
            i = close;
        } else {
            out += c;
        }
    }
    return out;
}

// The names $(NAME) referred to in 'text' (escaped $$(NAME) excluded).
export function referencedNames(text) {
    const names = [];
    expandKubernetes(String(text), new Map(), names);
    return names;
}

// Index of the ConfigMaps and Secrets in 'objects' by name: {configMaps,
// secrets}, each a Map name -> Map key -> string value (Secret data decoded).
export function configIndex(objects) {
    const configMaps = new Map();
    const secrets = new Map();
    for (const o of objects) {
        if (o.kind === "ConfigMap") configMaps.set(o.metadata.name, new Map(Object.entries(o.data ?? {})));
        if (o.kind === "Secret") {
            const m = new Map(Object.entries(o.stringData ?? {}));
            for (const [k, v] of Object.entries(o.data ?? {})) m.set(k, Buffer.from(v, "base64").toString("utf8"));
            secrets.set(o.metadata.name, m);
        }
    }
    return { configMaps, secrets };
}

// Builds the environment of 'container' as the kubelet does: envFrom
// sources in order, then env entries in order, each value expanded with
// what is defined before it. 'index' is configIndex(); 'options.secret'
// (name, key) gives a value for a Secret that is not rendered (prod: the
// operator creates it) or returns undefined; 'options.field' (fieldPath)
// gives downward-API values. Returns {env: Map, problems: [text],
// inputs: Set of names used in another variable through $(NAME),
// secretNames: Set, configMapNames: Set}.
export function containerEnv(container, index, options = {}) {
    const env = new Map();
    const problems = [];
    const inputs = new Set();
    const secretNames = new Set();
    const configMapNames = new Set();
    const secretValue = (name, key, optional) => {
        secretNames.add(name);
        const rendered = index.secrets.get(name);
        if (rendered) {
            if (rendered.has(key)) return rendered.get(key);
        } else if (options.secret) {
            const v = options.secret(name, key);
            if (v !== undefined) return v;
        }
        if (!optional) problems.push(`Secret ${name} key ${key} is not available`);
        return undefined;
    };
    for (const source of container.envFrom ?? []) {
        const prefix = source.prefix ?? "";
        if (source.configMapRef) {
            const name = source.configMapRef.name;
            configMapNames.add(name);
            const cm = index.configMaps.get(name);
            if (!cm) {
                if (!source.configMapRef.optional) problems.push(`envFrom: ConfigMap ${name} is not rendered`);
                continue;
            }
            for (const [k, v] of cm) env.set(prefix + k, v);
        } else if (source.secretRef) {
            const name = source.secretRef.name;
            secretNames.add(name);
            const s = index.secrets.get(name);
            if (!s) {
                if (!source.secretRef.optional) problems.push(`envFrom: Secret ${name} is not rendered`);
                continue;
            }
            for (const [k, v] of s) env.set(prefix + k, v);
        }
    }
    for (const e of container.env ?? []) {
        if (e.valueFrom === undefined) {
            const unresolved = [];
            for (const name of referencedNames(e.value ?? "")) inputs.add(name);
            env.set(e.name, expandKubernetes(String(e.value ?? ""), env, unresolved));
            for (const name of unresolved)
                problems.push(`env ${e.name}: $(${name}) is not defined before it (left as text)`);
            continue;
        }
        const vf = e.valueFrom;
        let value;
        if (vf.configMapKeyRef) {
            const { name, key, optional } = vf.configMapKeyRef;
            configMapNames.add(name);
            value = index.configMaps.get(name)?.get(key);
            if (value === undefined && !optional) problems.push(`env ${e.name}: ConfigMap ${name} has no key ${key}`);
        } else if (vf.secretKeyRef) {
            const { name, key, optional } = vf.secretKeyRef;
            value = secretValue(name, key, optional);
        } else if (vf.fieldRef) {
            value = options.field ? options.field(vf.fieldRef.fieldPath) : undefined;
            if (value === undefined) problems.push(`env ${e.name}: no value for field ${vf.fieldRef.fieldPath}`);
        } else if (vf.resourceFieldRef) {
            value = options.resource ? options.resource(vf.resourceFieldRef) : undefined;
            if (value === undefined) problems.push(`env ${e.name}: resourceFieldRef not supported here`);
        }
        if (value !== undefined) env.set(e.name, value);
    }
    return { env, problems, inputs, secretNames, configMapNames };
}

// Splits a libpq conninfo string ("host=x port=5432 password='a b'") into
// an ordered array of [key, value]; throws on a malformed one.
export function parseConninfo(text) {
    const pairs = [];
    let i = 0;
    const s = String(text);
    const skipSpace = () => {
        while (i < s.length && /\s/.test(s[i])) i++;
    };
    for (skipSpace(); i < s.length; skipSpace()) {
        const eq = s.indexOf("=", i);
        if (eq < 0) throw new Error(`conninfo: missing "=" after "${s.slice(i)}"`);
        const key = s.slice(i, eq).trim();
        if (!/^[a-z_]+$/.test(key)) throw new Error(`conninfo: bad key "${key}"`);
        i = eq + 1;
        skipSpace();
        let value = "";
        if (s[i] === "'") {
            i++;
            for (; i < s.length && s[i] !== "'"; i++) {
                if (s[i] === "\\" && i + 1 < s.length) i++;
                value += s[i];
            }
            if (s[i] !== "'") throw new Error("conninfo: unterminated quote");
            i++;
        } else {
            for (; i < s.length && !/\s/.test(s[i]); i++) {
                if (s[i] === "\\" && i + 1 < s.length) i++;
                value += s[i];
            }
        }
        pairs.push([key, value]);
    }
    return pairs;
}

// The conninfo text of 'pairs' ([key, value]...), values quoted.
export function formatConninfo(pairs) {
    return pairs.map(([k, v]) => `${k}='${String(v).replace(/[\\']/g, "\\$&")}'`).join(" ");
}
