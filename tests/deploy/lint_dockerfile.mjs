// lint_dockerfile.mjs: lints deploy/docker/Dockerfile without a Docker engine.
//
//   node lint_dockerfile.mjs REPO_ROOT BUILD_DIR RENDERED.yaml...
//
// Two layers:
// 1. dockerfile-utils (pinned npm package, the linter behind the VS Code
//    Dockerfile language server): syntax, flags, instruction rules, every
//    check raised to an error.
// 2. Our own rules, written here because no maintained Dockerfile linter is
//    packaged for Debian 12 or npm (hadolint is neither): pinned Debian 12
//    slim bases, apt hygiene, one package list (sections of
//    deploy/debian-packages.txt through packages.sh, never names typed into
//    the Dockerfile), no secrets, exec-form CMD, a numeric non-root USER that
//    matches the manifests' runAsUser, every directory CMake reads copied,
//    every installed binary built at that path in BUILD_DIR, the build
//    context allow-list, and the [runtime] section holding exactly the
//    packages of the shared libraries the binaries load (readelf + dpkg).
// Prints one line per problem; exits 1 when there is any.
import { execFileSync } from "node:child_process";
import { existsSync, readFileSync, realpathSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import { loadDocs, workloads, isOurImage } from "./manifests.mjs";

const require = createRequire(import.meta.url);
const dfu = require("dockerfile-utils");

const [root, buildDir, ...rendered] = process.argv.slice(2);
if (!root || !buildDir) {
    console.error("usage: node lint_dockerfile.mjs REPO_ROOT BUILD_DIR RENDERED.yaml...");
    process.exit(2);
}
const dockerfilePath = path.join(root, "deploy/docker/Dockerfile");
const text = readFileSync(dockerfilePath, "utf8");
const problems = [];
let checks = 0;
const check = (ok, message) => {
    checks++;
    if (!ok) problems.push(message);
};

// ---- 1. dockerfile-utils ------------------------------------------------
const E = dfu.ValidationSeverity.ERROR;
for (const d of dfu.validate(text, {
    deprecatedMaintainer: E, directiveCasing: E, emptyContinuationLine: E, instructionCasing: E,
    instructionCmdMultiple: E, instructionEntrypointMultiple: E, instructionHealthcheckMultiple: E,
    instructionJSONInSingleQuotes: E, instructionWorkdirRelative: E,
}))
    problems.push(`dockerfile-utils: line ${d.range.start.line + 1}: ${d.message}`);
checks++;

// ---- 2. our rules -------------------------------------------------------
// Instructions with continuation lines joined, comments dropped.
const instructions = [];
{
    let current = "";
    let line0 = 0;
    text.split("\n").forEach((line, i) => {
        if (current === "" && (/^\s*#/.test(line) || line.trim() === "")) return;
        if (current === "") line0 = i + 1;
        if (/^\s*#/.test(line)) return;
        if (line.endsWith("\\")) current += line.slice(0, -1) + " ";
        else {
            current += line;
            const m = current.trim().match(/^(\w+)\s+([\s\S]*)$/);
            if (m) instructions.push({ op: m[1].toUpperCase(), args: m[2].replace(/\s+/g, " ").trim(), line: line0 });
            current = "";
        }
    });
}
const stages = [];
for (const ins of instructions) {
    if (ins.op === "FROM") stages.push({ from: ins, body: [] });
    else if (stages.length > 0) stages[stages.length - 1].body.push(ins);
}
check(stages.length >= 2, "multi-stage build expected (a build stage and a runtime stage)");
const stageNames = stages.map((s) => s.from.args.match(/\bAS\s+(\S+)/i)?.[1]).filter(Boolean);
for (const s of stages) {
    const image = s.from.args.split(/\s+/)[0];
    if (stageNames.includes(image)) continue;
    check(/^debian:(12-slim|bookworm-slim)(@sha256:[0-9a-f]{64})?$/.test(image),
        `line ${s.from.line}: FROM ${image}: the base must be Debian 12 slim, pinned by tag (debian:12-slim)`);
}
const final = stages[stages.length - 1];
const build = stages.find((s) => /\bAS\s+build\b/i.test(s.from.args));
check(build !== undefined, "a stage named build");

// Packages: only through packages.sh from debian-packages.txt.
const sectionsUsed = new Map();
for (const s of stages)
    for (const ins of s.body.filter((i) => i.op === "RUN")) {
        if (/\b(curl|wget)\b|https?:\/\//.test(ins.args))
            problems.push(`line ${ins.line}: RUN fetches from the network outside apt`);
        if (!/apt-get install/.test(ins.args)) continue;
        checks++;
        if (!/apt-get update/.test(ins.args)) problems.push(`line ${ins.line}: apt-get install without apt-get update in the same RUN`);
        if (!/--no-install-recommends/.test(ins.args)) problems.push(`line ${ins.line}: apt-get install without --no-install-recommends`);
        if (!/apt-get install -y\b/.test(ins.args)) problems.push(`line ${ins.line}: apt-get install without -y`);
        if (!/rm -rf \/var\/lib\/apt\/lists/.test(ins.args)) problems.push(`line ${ins.line}: apt lists not removed in the same RUN`);
        const install = ins.args.match(/apt-get install ([^&;]*)/)[1];
        const words = install.replace(/\$\([^)]*\)/g, "").split(/\s+/).filter((w) => w && !w.startsWith("-"));
        if (words.length > 0) problems.push(`line ${ins.line}: package names typed into the Dockerfile (${words.join(" ")}); list them in deploy/debian-packages.txt`);
        const sel = install.match(/packages\.sh\s+(\S+)\s+([\w\s-]+)\)/);
        if (!sel) problems.push(`line ${ins.line}: apt-get install must take its packages from packages.sh`);
        else sectionsUsed.set(s, sel[2].trim().split(/\s+/));
    }
check(JSON.stringify(sectionsUsed.get(build)) === JSON.stringify(["build"]), "the build stage installs exactly section [build]");
check(JSON.stringify(sectionsUsed.get(final)) === JSON.stringify(["runtime"]), "the final stage installs exactly section [runtime]");
const section = (name) =>
    execFileSync("sh", [path.join(root, "deploy/docker/packages.sh"), path.join(root, "deploy/debian-packages.txt"), name], { encoding: "utf8" })
        .split("\n").filter(Boolean);
const runtimePackages = section("runtime");
const buildPackages = section("build");
for (const p of runtimePackages)
    check(!/-dev$|^build-essential$|^cmake$|^gcc|^clang|protobuf-c-compiler/.test(p), `[runtime] has a build tool or header package: ${p}`);

// No secrets, no ADD, exec-form CMD/ENTRYPOINT.
for (const ins of instructions) {
    if (ins.op === "ADD") problems.push(`line ${ins.line}: ADD; use COPY`);
    if (["ENV", "ARG"].includes(ins.op) && /(SECRET|PASSWORD|PASSWD|TOKEN|PRIVATE|_KEY\b|_DSN\b|CREDENTIAL)/i.test(ins.args))
        problems.push(`line ${ins.line}: ${ins.op} ${ins.args}: secrets must not be baked into the image`);
    if (ins.op === "COPY" && /(\.env\b|secret|\.run\b|\.git\b)/i.test(ins.args))
        problems.push(`line ${ins.line}: COPY ${ins.args}: copies secrets, local state or git data`);
    if (["CMD", "ENTRYPOINT"].includes(ins.op)) {
        let ok = false;
        try {
            ok = Array.isArray(JSON.parse(ins.args));
        } catch {}
        check(ok, `line ${ins.line}: ${ins.op} must use the exec (JSON) form so SIGTERM reaches the process`);
    }
}
checks++;

// The final stage: numeric non-root USER, binaries only from the build stage.
const users = final.body.filter((i) => i.op === "USER");
const user = users[users.length - 1]?.args ?? "";
const uid = Number(user.split(":")[0]);
check(/^\d+(:\d+)?$/.test(user) && uid > 0, `final stage USER must be a numeric non-root uid (runAsNonRoot verifies it), got "${user}"`);
for (const ins of final.body.filter((i) => i.op === "COPY"))
    check(/--from=build\b/.test(ins.args) || /packages/.test(ins.args), `line ${ins.line}: the final stage copies only from the build stage (and the package list)`);
for (const file of rendered)
    for (const w of workloads(loadDocs(file)).filter((x) => (x.podSpec.containers ?? []).some((c) => isOurImage(c.image)))) {
        check(w.podSpec.securityContext?.runAsUser === uid, `${path.basename(file)}: ${w.name} runAsUser ${w.podSpec.securityContext?.runAsUser} is not the image's uid ${uid}`);
        const fsGroup = w.podSpec.securityContext?.fsGroup;
        if (fsGroup !== undefined) check(fsGroup === Number(user.split(":")[1] ?? uid), `${w.name}: fsGroup ${fsGroup} is not the image's gid`);
    }

// Every directory CMake reads is copied into the build stage.
const copied = build.body.filter((i) => i.op === "COPY" && !/--from/.test(i.args)).flatMap((i) => i.args.split(/\s+/).slice(0, -1));
const topCmake = readFileSync(path.join(root, "CMakeLists.txt"), "utf8").replace(/#.*$/gm, "");
const needed = ["CMakeLists.txt", ...[...topCmake.matchAll(/add_subdirectory\((\w[\w-]*)/g)].map((m) => `${m[1]}/`), ...[...topCmake.matchAll(/include\((\w+)\//g)].map((m) => `${m[1]}/`)];
for (const n of needed) check(copied.includes(n), `the build stage does not COPY ${n}, which CMakeLists.txt reads`);

// The build context allow-list sends what is copied and keeps secrets out.
const ignorePath = path.join(root, "deploy/docker/Dockerfile.dockerignore");
check(existsSync(ignorePath), "deploy/docker/Dockerfile.dockerignore missing (the context would include build trees and .run secrets)");
if (existsSync(ignorePath)) {
    const ignore = readFileSync(ignorePath, "utf8").split("\n").map((l) => l.trim()).filter((l) => l && !l.startsWith("#"));
    check(ignore[0] === "*", "Dockerfile.dockerignore must start with * (allow-list)");
    for (const src of [...copied, ...instructions.filter((i) => i.op === "COPY" && !/--from/.test(i.args)).flatMap((i) => i.args.split(/\s+/).slice(0, -1))])
        check(ignore.includes(`!${src}`), `Dockerfile.dockerignore does not let ${src} through`);
    check(ignore.includes("**/*.env"), "Dockerfile.dockerignore must exclude **/*.env");
}

// Binaries: each target is built at the path the Dockerfile installs from,
// and installed once.
const buildRun = build.body.find((i) => i.op === "RUN" && /cmake --build/.test(i.args));
check(buildRun !== undefined, "the build stage runs cmake --build");
const targets = buildRun ? buildRun.args.match(/--target ([\w\s-]+?)(?: &&|$)/)?.[1].trim().split(/\s+/) ?? [] : [];
const installed = buildRun ? [...buildRun.args.matchAll(/\/build\/(\S+)/g)].map((m) => m[1]) : [];
check(targets.length > 0 && installed.length === targets.length, `${targets.length} targets built but ${installed.length} binaries installed`);
for (const rel of installed) {
    check(targets.includes(path.basename(rel)), `${rel} is installed but not a --target`);
    check(existsSync(path.join(buildDir, rel)), `${rel}: not found in ${buildDir} (target renamed or moved?)`);
}

// [runtime] = the packages of the libraries the binaries load.
const essential = new Set(["libc6", "libgcc-s1"]); // in every Debian image
const sanitizer = /^lib(asan|ubsan|lsan|tsan)\d*$/; // the test build's ASan/UBSan runtimes
const libraryPaths = new Map();
for (const line of execFileSync("ldconfig", ["-p"], { encoding: "utf8" }).split("\n")) {
    const m = line.match(/^\s*(\S+) \(libc6,x86-64[^)]*\) => (\S+)$/) ?? line.match(/^\s*(\S+) \([^)]*\) => (\S+)$/);
    if (m && !libraryPaths.has(m[1])) libraryPaths.set(m[1], m[2]);
}
const packageCache = new Map();
const packageOf = (file) => {
    if (!packageCache.has(file)) packageCache.set(file, packageOfUncached(file));
    return packageCache.get(file);
};
const packageOfUncached = (file) => {
    for (const candidate of [file, realpathSync(file)]) {
        try {
            return execFileSync("dpkg", ["-S", candidate], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }).split(":")[0];
        } catch {}
        try {
            // /lib -> /usr/lib on merged-/usr systems
            return execFileSync("dpkg", ["-S", candidate.replace(/^\/usr\/lib\//, "/lib/")], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }).split(":")[0];
        } catch {}
    }
    return null;
};
const neededPackages = new Set();
for (const rel of installed) {
    const file = path.join(buildDir, rel);
    if (!existsSync(file)) continue;
    const dyn = execFileSync("readelf", ["-d", file], { encoding: "utf8" });
    for (const m of dyn.matchAll(/\(NEEDED\)\s+Shared library: \[([^\]]+)\]/g)) {
        const lib = libraryPaths.get(m[1]);
        if (!lib) {
            problems.push(`${rel}: needs ${m[1]}, which ldconfig does not know`);
            continue;
        }
        const pkg = packageOf(lib);
        if (!pkg) problems.push(`${rel}: ${m[1]} (${lib}) belongs to no Debian package`);
        else if (!essential.has(pkg) && !sanitizer.test(pkg.replace(/-.*$/, ""))) neededPackages.add(pkg);
    }
}
for (const pkg of neededPackages)
    check(runtimePackages.includes(pkg), `a binary loads a library of ${pkg}, which [runtime] of deploy/debian-packages.txt lacks`);
for (const pkg of runtimePackages.filter((p) => p !== "ca-certificates"))
    check(neededPackages.has(pkg), `[runtime] lists ${pkg}, which no binary loads`);
check(buildPackages.length > 0, "[build] is empty");

for (const p of problems) console.log(`FAIL ${p}`);
console.log(`Dockerfile: ${checks} checks, ${problems.length} problems`);
process.exit(problems.length > 0 ? 1 : 0);
