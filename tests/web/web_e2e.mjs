// web_e2e.mjs: the web app (web/) end to end, in headless Chromium, against
// the real paygate (system.mjs: every process, PostgreSQL, Redis).
//
//   node web_e2e.mjs --bin NAME=PATH... --web-dir DIR --artifacts DIR
//                    --log-dir DIR --chromium /usr/bin/chromium
//
// First the gateway's static serving over plain HTTP: content types,
// caching headers, the Content-Security-Policy, HEAD, 304, and paths that
// must not escape web/. Then a person's session in the browser: register,
// log in (keyboard only), add ₹2,000, create an order for ₹1,000, pay it
// and see "Your payment of ₹1,000 for Order #... is successful." arrive in
// the notifications panel without a reload, the order COMPLETED, the
// balance ₹1,000 and the payment in the history; a payment without enough
// money shows the API's reason and a link to add money; a refund; history
// pages; phone width; log out. No script error and no CSP violation may
// happen on the way. Screenshots go to the artifacts dir.
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, readdirSync, rmSync } from "node:fs";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import { after, before, test } from "node:test";

import { chromium } from "playwright-core";

import { System } from "./system.mjs";

// ---- arguments -----------------------------------------------------------------
const options = { bins: new Map(), webDir: null, artifacts: null, logDir: null, chromium: null };
{
    const argv = process.argv.slice(2);
    for (let i = 0; i < argv.length; i++) {
        const value = argv[++i];
        if (argv[i - 1] === "--bin") {
            const at = value.indexOf("=");
            options.bins.set(value.slice(0, at), value.slice(at + 1));
        } else if (argv[i - 1] === "--web-dir") options.webDir = value;
        else if (argv[i - 1] === "--artifacts") options.artifacts = value;
        else if (argv[i - 1] === "--log-dir") options.logDir = value;
        else if (argv[i - 1] === "--chromium") options.chromium = value;
        else throw new Error(`unknown argument ${argv[i - 1]}`);
    }
    for (const key of ["webDir", "artifacts", "logDir", "chromium"]) {
        if (!options[key]) throw new Error(`missing --${key.replace(/[A-Z]/g, (c) => "-" + c.toLowerCase())}`);
    }
}
mkdirSync(options.artifacts, { recursive: true });
mkdirSync(options.logDir, { recursive: true });
for (const file of readdirSync(options.artifacts)) {
    if (file.endsWith(".png")) rmSync(path.join(options.artifacts, file));
}

const STEP_TIMEOUT_MS = 45000;
const LIVE_TIMEOUT_MS = 15000; // event bus -> notification service -> Redis -> stream
const PASSWORD = "Web-e2e-Passw0rd";
const EMAIL = `web-${process.pid}-${Date.now()}@example.com`;

let system = null;
let context = null;
let page = null;
let profileDir = null;
const pageErrors = [];
const consoleErrors = [];

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// ---- helpers -------------------------------------------------------------------

/** A plain HTTP request to the gateway with 'target' sent as is (no URL
 *  normalisation, unlike fetch). Resolves {status, headers, body}. */
function raw(target, { method = "GET", headers = {} } = {}) {
    return new Promise((resolve, reject) => {
        const request = http.request(
            { host: "127.0.0.1", port: system.httpPort, path: target, method, headers },
            (response) => {
                const chunks = [];
                response.on("data", (chunk) => chunks.push(chunk));
                response.on("end", () =>
                    resolve({
                        status: response.statusCode,
                        headers: response.headers,
                        body: Buffer.concat(chunks).toString("utf8"),
                    }),
                );
            },
        );
        request.on("error", reject);
        request.end();
    });
}

/** Calls the API as the logged-in browser user (the token the page holds). */
async function api(method, pathname, body, key) {
    const saved = await page.evaluate(() => sessionStorage.getItem("paygate.session"));
    const token = JSON.parse(saved).token;
    const headers = { Authorization: `Bearer ${token}` };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (key !== undefined) headers["Idempotency-Key"] = key;
    const response = await fetch(system.baseUrl + pathname, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
    });
    return { status: response.status, json: await response.json() };
}

/** Polls 'probe' until it returns a truthy value; fails after 'ms'. */
async function eventually(what, probe, ms = LIVE_TIMEOUT_MS) {
    const until = Date.now() + ms;
    for (;;) {
        const value = await probe();
        if (value) return value;
        if (Date.now() > until) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
        await sleep(200);
    }
}

async function shot(name, fullPage = false) {
    await page.evaluate(() => Promise.all(document.getAnimations().map((a) => a.finished)));
    await page.screenshot({ path: path.join(options.artifacts, `${name}.png`), fullPage });
}

const view = (name) => page.locator(`section[data-view="${name}"]`);
const message = (name) => view(name).locator("[data-message] .message");
const notifications = () => page.locator("#notification-list > li");

/** Goes to a view by its link in the main navigation, as a person would. */
async function navTo(label, heading) {
    await page.getByRole("navigation", { name: "Main" }).getByRole("link", { name: label, exact: true }).click();
    await page.getByRole("heading", { level: 1, name: heading }).waitFor();
}

/** Asserts the page has no horizontal scrolling (phone width). */
async function assertNoSideways(where) {
    const { scroll, client } = await page.evaluate(() => ({
        scroll: document.documentElement.scrollWidth,
        client: document.documentElement.clientWidth,
    }));
    assert.ok(scroll <= client, `${where}: the page is ${scroll} px wide in a ${client} px viewport`);
}

// Steps run in order; after a failure the rest are skipped (they build on
// each other) and a screenshot of the failure is kept.
let broken = null;
function step(name, body) {
    test(name, { timeout: STEP_TIMEOUT_MS }, async (t) => {
        if (broken !== null) {
            t.skip(`skipped: "${broken}" failed`);
            return;
        }
        try {
            await body();
        } catch (error) {
            broken = name;
            if (page !== null) await shot("failed-" + name.replace(/[^a-z0-9]+/gi, "-").toLowerCase()).catch(() => {});
            throw error;
        }
    });
}

// ---- the system and the browser --------------------------------------------------

before(
    async () => {
        system = await System.start({
            bins: Object.fromEntries(options.bins),
            logDir: options.logDir,
            prefix: "web",
            env: { PAYGATE_GATEWAY_STATIC_DIR: options.webDir },
        });
        profileDir = mkdtempSync(path.join(os.tmpdir(), "paygate-web-chromium-"));
        // A fresh profile each run. playwright-core drives Debian's chromium;
        // it downloads no browser of its own.
        context = await chromium.launchPersistentContext(profileDir, {
            executablePath: options.chromium,
            headless: true,
            args: [
                "--headless",
                "--no-sandbox",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
            viewport: { width: 1200, height: 820 },
            locale: "en-IN",
            timezoneId: "Asia/Kolkata",
        });
        page = context.pages()[0] ?? (await context.newPage());
        page.setDefaultTimeout(LIVE_TIMEOUT_MS);
        page.on("pageerror", (error) => pageErrors.push(error.message));
        page.on("console", (entry) => {
            if (entry.type() === "error") consoleErrors.push(entry.text());
        });
    },
    { timeout: 60000 },
);

after(async () => {
    if (context !== null) await context.close().catch(() => {});
    if (profileDir !== null) rmSync(profileDir, { recursive: true, force: true });
    if (system !== null) await system.stop();
});
process.on("exit", () => system?.killAll());

// ---- static files ----------------------------------------------------------------

step("the gateway serves the app with types, caching headers and its CSP", async () => {
    const index = await raw("/");
    assert.equal(index.status, 200);
    assert.equal(index.headers["content-type"], "text/html; charset=utf-8");
    assert.equal(index.headers["cache-control"], "no-cache");
    assert.equal(index.headers["x-content-type-options"], "nosniff");
    assert.match(index.headers.etag ?? "", /^"[0-9a-f-]+"$/);
    const csp = index.headers["content-security-policy"] ?? "";
    for (const directive of [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    ]) {
        assert.ok(csp.includes(directive), `CSP lacks ${directive}: ${csp}`);
    }
    assert.ok(!csp.includes("unsafe"), `CSP allows something unsafe: ${csp}`);
    // The CSP forbids inline code, so the page must have none.
    assert.doesNotMatch(index.body, /<script(?![^>]*\bsrc=)[^>]*>|<style|\sstyle=|\son[a-z]+=/i);

    const types = {
        "/app.css": "text/css; charset=utf-8",
        "/js/app.js": "text/javascript; charset=utf-8",
        "/favicon.svg": "image/svg+xml",
        "/openapi.yaml": "application/yaml",
    };
    for (const [target, type] of Object.entries(types)) {
        const r = await raw(target);
        assert.equal(r.status, 200, target);
        assert.equal(r.headers["content-type"], type, target);
        assert.equal(r.headers["cache-control"], "no-cache", target);
        assert.equal(r.headers["x-content-type-options"], "nosniff", target);
    }

    const head = await raw("/", { method: "HEAD" });
    assert.equal(head.status, 200);
    assert.equal(head.body, "");
    assert.equal(Number(head.headers["content-length"]), Buffer.byteLength(index.body));
    assert.equal(head.headers.etag, index.headers.etag);
    const revalidated = await raw("/", { headers: { "If-None-Match": index.headers.etag } });
    assert.equal(revalidated.status, 304);
    assert.equal(revalidated.body, "");

    for (const target of [
        "/../CMakeLists.txt",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/js/../../CMakeLists.txt",
        "/js%2Fapp.js",
        "/js%2fapp.js",
        "/index.html%00.css",
        "/%5C..%5CCMakeLists.txt",
        "/.gitignore",
        "/js/",
        "//etc/passwd",
        "/README",
        "/index.html/",
    ]) {
        const r = await raw(target);
        assert.equal(r.status, 404, `${target} answered ${r.status}`);
        assert.equal(JSON.parse(r.body).error.code, "not_found", target);
    }
    // The API keeps its own strict policy.
    const apiReply = await raw("/v1/wallet");
    assert.equal(apiReply.status, 401);
    assert.equal(apiReply.headers["content-security-policy"], "default-src 'none'; frame-ancestors 'none'");
    assert.equal(apiReply.headers["cache-control"], "no-store");
});

// ---- a person's session -------------------------------------------------------------

step("register, then log in with the keyboard; the token is in no cookie", async () => {
    await page.goto(system.baseUrl + "/");
    await page.getByRole("heading", { level: 1, name: "Log in" }).waitFor();

    // A log in that fails shows the API's own message.
    await view("login").getByLabel("Email").fill(EMAIL);
    await view("login").getByLabel("Password").fill("not-the-password");
    const [refused] = await Promise.all([
        page.waitForResponse((r) => r.url().endsWith("/v1/auth/login")),
        view("login").getByRole("button", { name: "Log in" }).click(),
    ]);
    assert.equal(refused.status(), 401);
    const apiMessage = (await refused.json()).error.message;
    await message("login").filter({ hasText: apiMessage }).waitFor();
    assert.equal(await message("login").textContent(), apiMessage);

    await page.getByRole("link", { name: "Create an account" }).click();
    await page.getByRole("heading", { level: 1, name: "Create your account" }).waitFor();
    await view("register").getByLabel("Name").fill("Asha Web");
    await view("register").getByLabel("Email").fill(EMAIL);
    await view("register").getByLabel("Password").fill(PASSWORD);
    await view("register").getByRole("button", { name: "Create account" }).click();
    await page.getByRole("heading", { level: 1, name: "Log in" }).waitFor();
    await message("login").filter({ hasText: "Your account is ready" }).waitFor();
    assert.equal(await view("login").getByLabel("Email").inputValue(), EMAIL);
    await shot("01-registered");

    // Keyboard only: Tab from the email field to the password, type, Enter.
    await view("login").getByLabel("Email").focus();
    await page.keyboard.press("Tab");
    const focused = await page.evaluate(() => {
        const e = document.activeElement;
        const style = getComputedStyle(e);
        return { id: e.id, outline: style.outlineStyle, width: parseFloat(style.outlineWidth) };
    });
    assert.equal(focused.id, "login-password");
    assert.ok(focused.outline !== "none" && focused.width >= 2, `no visible focus: ${JSON.stringify(focused)}`);
    await page.keyboard.type(PASSWORD);
    await page.keyboard.press("Enter");
    await page.getByRole("heading", { level: 1, name: "Wallet" }).waitFor();
    await page.locator("#wallet-balance", { hasText: "₹0" }).waitFor();

    const stored = await page.evaluate(() => ({
        cookie: document.cookie,
        session: sessionStorage.getItem("paygate.session"),
    }));
    assert.equal(stored.cookie, "");
    assert.equal((await context.cookies()).length, 0);
    assert.match(JSON.parse(stored.session).token, /^[\w-]+\.[\w-]+\.[\w-]+$/);
    // The notification stream is open (fetch with the Authorization header).
    await page.locator("#stream-state", { hasText: "Live" }).waitFor();
});

step("add ₹2,000 to the wallet", async () => {
    await view("wallet").getByLabel("Amount (₹)").fill("2,000");
    await view("wallet").getByRole("button", { name: "Add money" }).click();
    await message("wallet").filter({ hasText: "Added ₹2,000. Your balance is now ₹2,000." }).waitFor();
    await page.locator("#wallet-balance", { hasText: "₹2,000" }).waitFor();
    await notifications().filter({ hasText: "₹2,000 has been added to your wallet." }).waitFor();
    await shot("02-wallet");
});

let orderId = "";

step("create an order for ₹1,000", async () => {
    await navTo("Orders", "Orders");
    await view("orders").getByLabel("Amount (₹)").fill("1000");
    await view("orders").getByLabel("Description (optional)").fill("Headphones");
    await view("orders").getByRole("button", { name: "Create order" }).click();
    const created = await message("orders").filter({ hasText: "is created" }).textContent();
    const match = /^Order #(ord_[\w-]+) for ₹1,000 is created\./.exec(created);
    assert.ok(match, `unexpected message: ${created}`);
    orderId = match[1];
    const item = page.locator(`li[data-order-id="${orderId}"]`);
    await item.filter({ hasText: "PENDING" }).waitFor();
    assert.match(await item.textContent(), /₹1,000/);
});

step("pay it: success, and the notification arrives live without a reload", async () => {
    await page.evaluate(() => {
        window.paygateTestMarker = "same page";
    });
    const item = page.locator(`li[data-order-id="${orderId}"]`);
    await item.getByRole("link", { name: `Pay ₹1,000 for order ${orderId}` }).click();
    await page.getByRole("heading", { level: 1, name: `Pay Order #${orderId}` }).waitFor();
    await view("pay").getByRole("button", { name: "Pay ₹1,000 from wallet" }).click();
    await message("pay")
        .filter({ hasText: `Payment successful: ₹1,000 paid for Order #${orderId}.` })
        .waitFor();
    const live = notifications().filter({ hasText: `Your payment of ₹1,000 for Order #${orderId} is successful.` });
    await live.waitFor({ timeout: LIVE_TIMEOUT_MS });
    assert.match((await live.getAttribute("class")) ?? "", /\blive\b/, "the notification did not come from the stream");
    assert.equal(await page.evaluate(() => window.paygateTestMarker), "same page", "the page was reloaded");
    await view("pay").locator("#pay-status", { hasText: "COMPLETED" }).waitFor();
    await shot("03-paid");
    // The README's picture (docs/screenshot.png): the top of this page.
    await page.screenshot({
        path: path.join(options.artifacts, "readme.png"),
        clip: { x: 0, y: 0, width: 1200, height: 480 },
    });
});

step("the order is COMPLETED, the balance ₹1,000, the payment in the history", async () => {
    await navTo("Orders", "Orders");
    const item = page.locator(`li[data-order-id="${orderId}"]`);
    await item.filter({ hasText: "COMPLETED" }).waitFor();
    assert.equal(await item.getByRole("link", { name: /^Pay/ }).count(), 0);

    await navTo("Wallet", "Wallet");
    await page.locator("#wallet-balance", { hasText: "₹1,000" }).waitFor();
    assert.equal(await page.locator("#wallet-balance").textContent(), "₹1,000");

    // The history is written from the event bus, a moment after the payment.
    await eventually("the payment in GET /v1/transactions", async () => {
        const r = await api("GET", "/v1/transactions?limit=100");
        return r.json.data.some((t) => t.type === "PAYMENT" && t.order_id === orderId);
    });
    await navTo("History", "Transaction history");
    const row = page.locator("#history-list > li", { hasText: `₹1,000 paid for Order #${orderId}` });
    await row.waitFor();
    assert.match(await row.textContent(), /−₹1,000/);
    await shot("04-history");
});

step("a payment without enough money shows the API's reason and a link to add money", async () => {
    await navTo("Orders", "Orders");
    await view("orders").getByLabel("Amount (₹)").fill("5,000");
    await view("orders").getByRole("button", { name: "Create order" }).click();
    const created = await message("orders").filter({ hasText: "is created" }).textContent();
    const unpaid = /Order #(ord_[\w-]+) for ₹5,000/.exec(created)[1];
    await message("orders").getByRole("link", { name: "Pay it now" }).click();
    await page.getByRole("heading", { level: 1, name: `Pay Order #${unpaid}` }).waitFor();
    const [reply] = await Promise.all([
        page.waitForResponse((r) => r.url().endsWith("/v1/payments") && r.request().method() === "POST"),
        view("pay").getByRole("button", { name: "Pay ₹5,000 from wallet" }).click(),
    ]);
    assert.equal(reply.status(), 402);
    const error = (await reply.json()).error;
    assert.equal(error.code, "insufficient_funds");
    const shown = message("pay").filter({ hasText: error.message });
    await shown.waitFor();
    assert.equal(await shown.getAttribute("role"), "alert");
    assert.ok(!/undefined|\bError\b|at \w+ \(/.test(await shown.textContent()), await shown.textContent());
    await notifications()
        .filter({ hasText: `for Order #${unpaid} failed` })
        .waitFor();
    await shot("05-insufficient-funds");
    await shown.getByRole("link", { name: "Add money to your wallet" }).click();
    await page.getByRole("heading", { level: 1, name: "Wallet" }).waitFor();
    await page.locator("#wallet-balance", { hasText: "₹1,000" }).waitFor();
});

step("refund ₹200 of the payment", async () => {
    await navTo("Payments & refunds", "Payments & refunds");
    const item = page.locator("#payments-list > li", { hasText: `Order #${orderId}` });
    await item.filter({ hasText: "SUCCEEDED" }).waitFor();
    await item.getByLabel("Refund amount (₹)").fill("200");
    await item.getByRole("button", { name: /^Refund payment/ }).click();
    await message("payments")
        .filter({
            hasText: new RegExp(`^Refund of ₹200 for Order #${orderId} is (back in|on its way to) your wallet\\.$`),
        })
        .waitFor();
    await page
        .locator("#payments-list > li", { hasText: `Order #${orderId}` })
        .filter({ hasText: "refunded ₹200" })
        .waitFor();
    await notifications()
        .filter({ hasText: `₹200 has been refunded to your wallet for Order #${orderId}.` })
        .waitFor();
    await navTo("Wallet", "Wallet");
    await page.locator("#wallet-balance", { hasText: "₹1,200" }).waitFor();
});

step("the history pages 10 at a time", async () => {
    for (let i = 0; i < 10; i++) {
        const r = await api("POST", "/v1/wallet/topups", { amount: 100 }, `web-e2e-page-${i}`);
        assert.equal(r.status, 201);
    }
    // top-up, payment, refund, 10 top-ups
    await eventually(
        "13 transactions",
        async () => (await api("GET", "/v1/transactions?limit=100")).json.data.length >= 13,
    );
    await navTo("History", "Transaction history");
    const rows = page.locator("#history-list > li");
    await page.locator("#history-page", { hasText: "Page 1" }).waitFor();
    await eventually("10 rows", async () => (await rows.count()) === 10, 5000);
    await page.getByRole("button", { name: "Older →" }).click();
    await page.locator("#history-page", { hasText: "Page 2" }).waitFor();
    await eventually("3 rows", async () => (await rows.count()) === 3, 5000);
    assert.ok(await page.getByRole("button", { name: "Older →" }).isDisabled());
    await rows.filter({ hasText: "₹2,000 added to wallet" }).waitFor(); // the oldest
    await page.getByRole("button", { name: "← Newer" }).click();
    await page.locator("#history-page", { hasText: "Page 1" }).waitFor();
    await eventually("10 rows again", async () => (await rows.count()) === 10, 5000);
});

step("works at phone width", async () => {
    await page.setViewportSize({ width: 390, height: 844 });
    try {
        for (const [label, heading] of [
            ["Wallet", "Wallet"],
            ["Orders", "Orders"],
            ["History", "Transaction history"],
            ["Payments & refunds", "Payments & refunds"],
        ]) {
            await navTo(label, heading);
            await sleep(300); // the view's data
            await assertNoSideways(heading);
        }
        await navTo("Orders", "Orders");
        await page.locator(`li[data-order-id="${orderId}"]`).waitFor();
        await shot("06-phone-orders", true);
    } finally {
        await page.setViewportSize({ width: 1200, height: 820 });
    }
});

step("log out ends the session and the stream", async () => {
    await page.getByRole("button", { name: "Log out" }).click();
    await page.getByRole("heading", { level: 1, name: "Log in" }).waitFor();
    await message("login").filter({ hasText: "You have logged out." }).waitFor();
    assert.equal(await page.evaluate(() => sessionStorage.getItem("paygate.session")), null);
    assert.ok(await page.locator("#notifications").isHidden());
    await page.evaluate(() => {
        location.hash = "#/wallet";
    });
    await page.getByRole("heading", { level: 1, name: "Log in" }).waitFor();
});

step("no script error and no CSP violation happened", async () => {
    assert.deepEqual(pageErrors, []);
    // The browser logs the API's expected refusals (the wrong password,
    // the insufficient funds) as failed loads; nothing else may appear.
    const unexpected = consoleErrors.filter(
        (text) => !/^Failed to load resource: the server responded with a status of 40[12] /.test(text),
    );
    assert.deepEqual(unexpected, []);
});

step("every process stops cleanly on SIGTERM", async () => {
    await context.close();
    context = null;
    const results = await system.stop();
    system = null;
    for (const [name, r] of results) {
        if (r.code !== 0) console.log(`# ${name} exited ${r.code ?? r.signal}${r.killed ? " (killed)" : ""}`);
    }
    // The gateway runs this work's code (static files): it must be clean
    // (exit 0 also means no leak under ASan).
    assert.deepEqual(results.get("gateway"), { code: 0, signal: null, killed: false });
});
