// app: the story of the page. Restore the tab's session, route by the
// address's hash ("#/wallet", "#/pay/ord_..."), show one view at a time,
// keep the notifications panel fed by the live stream while logged in.
//
// Views (views/*.js) each export {title, init(app), show(app, params),
// refresh(app)}; init runs once, show on every visit, refresh when a
// notification says money moved.
//
// Must never: show an authenticated view without a session, keep a
// stream open after log out, or show an error that is not the API's
// message (or our plain sentence when there is no answer).

import { ApiError, request, session } from "./api.js";
import { NotificationStream } from "./sse.js";
import { clear, el, formatTime, section, showMessage } from "./dom.js";
import * as auth from "./views/auth.js";
import * as wallet from "./views/wallet.js";
import * as orders from "./views/orders.js";
import * as pay from "./views/pay.js";
import * as payments from "./views/payments.js";
import * as history from "./views/history.js";

const NOTIFICATIONS_SHOWN_MAX = 50;

const views = {
    login: { module: auth.login, public: true, nav: null },
    register: { module: auth.register, public: true, nav: null },
    wallet: { module: wallet, public: false, nav: "wallet" },
    orders: { module: orders, public: false, nav: "orders" },
    pay: { module: pay, public: false, nav: "orders" },
    payments: { module: payments, public: false, nav: "payments" },
    history: { module: history, public: false, nav: "history" },
};

const app = {
    current: null, // {name, params}
    flash: null, // {view, kind, text}: a message for the next view shown
    stream: null,
    notificationIds: new Set(),
    expiryTimer: null,

    /** Calls the API with the session's token. A 401 ends the session
     *  (back to log in, with the API's message) and rethrows. */
    async call(method, path, options = {}) {
        try {
            return await request(method, path, { ...options, token: session.token });
        } catch (error) {
            if (error instanceof ApiError && error.status === 401) this.expire(error.message);
            throw error;
        }
    },

    navigate(hash) {
        if (location.hash === hash) route();
        else location.hash = hash;
    },

    /** Shows 'text' in view 'view' the next time it is shown. */
    flashOn(view, kind, text) {
        this.flash = { view, kind, text };
    },

    /** After a successful log in: the stream, the panel, the first view. */
    loggedIn() {
        startSession();
        this.navigate("#/wallet");
    },

    logout() {
        endSession();
        this.flashOn("login", "info", "You have logged out.");
        this.navigate("#/login");
    },

    /** The token is no longer accepted ('message' is the API's reason). */
    expire(message) {
        if (!session.active && this.stream === null) return;
        endSession();
        this.flashOn("login", "error", "Your session has ended (" + message + "). Log in again.");
        this.navigate("#/login");
    },
};

// ---- session ---------------------------------------------------------------

function startSession() {
    document.getElementById("nav").hidden = false;
    document.getElementById("account").hidden = false;
    document.getElementById("account-email").textContent = session.email ?? "";
    document.getElementById("notifications").hidden = false;
    clearTimeout(app.expiryTimer);
    app.expiryTimer = setTimeout(() => app.expire("it expired"), Math.max(0, session.expiresAt - Date.now()));
    loadNotifications();
    app.stream = new NotificationStream({
        path: "/v1/notifications/stream",
        token: session.token,
        onNotification: (n) => {
            addNotification(n, true);
            refreshCurrent();
        },
        onState: showStreamState,
        onReconnected: loadNotifications,
        onUnauthorized: (message) => app.expire(message),
    });
    app.stream.start();
}

function endSession() {
    clearTimeout(app.expiryTimer);
    if (app.stream !== null) app.stream.stop();
    app.stream = null;
    session.clear();
    app.notificationIds.clear();
    clear(document.getElementById("notification-list"));
    document.getElementById("notifications-empty").hidden = false;
    document.getElementById("nav").hidden = true;
    document.getElementById("account").hidden = true;
    document.getElementById("notifications").hidden = true;
}

// ---- notifications panel -----------------------------------------------------

const STREAM_STATES = {
    connecting: "Connecting…",
    live: "Live",
    retrying: "Reconnecting…",
    off: "Offline",
};

function showStreamState(state) {
    const badge = document.getElementById("stream-state");
    badge.dataset.state = state;
    badge.textContent = STREAM_STATES[state] ?? "Offline";
}

/** The latest notifications (after log in and after a reconnect, to fill
 *  what the stream could not deliver while down), oldest first. */
async function loadNotifications() {
    try {
        const reply = await app.call("GET", "/v1/notifications?limit=20");
        const list = Array.isArray(reply.data) ? reply.data : [];
        for (const n of list.slice().reverse()) addNotification(n, false);
    } catch (error) {
        // The stream still brings new ones; the panel says when it is down.
    }
}

/** Puts notification 'n' on top of the panel once (by id); 'live' ones
 *  (arrived on the stream while this page was open) are highlighted. */
function addNotification(n, live) {
    if (n === null || typeof n !== "object" || typeof n.message !== "string") return;
    const id = typeof n.id === "string" ? n.id : "";
    if (id !== "" && app.notificationIds.has(id)) return;
    if (id !== "") app.notificationIds.add(id);
    const list = document.getElementById("notification-list");
    const type = typeof n.type === "string" ? n.type.replace(/[^a-z]+/g, "-") : "";
    const item = el(
        "li",
        { className: (live ? "live " : "") + (type ? "type-" + type : ""), attrs: { "data-id": id } },
        el("span", { className: "text", text: n.message }),
        el("time", { className: "when", text: formatTime(n.created_at), attrs: { datetime: n.created_at } }),
    );
    list.prepend(item);
    while (list.children.length > NOTIFICATIONS_SHOWN_MAX) list.lastElementChild.remove();
    document.getElementById("notifications-empty").hidden = true;
}

// ---- routing -----------------------------------------------------------------

/** "#/pay/ord_1" -> {name: "pay", params: ["ord_1"]}. */
function parseHash(hash) {
    const parts = hash
        .replace(/^#\/?/, "")
        .split("/")
        .filter((p) => p !== "")
        .map(decodeURIComponent);
    return { name: parts[0] ?? "", params: parts.slice(1) };
}

function route(focus = true) {
    let { name, params } = parseHash(location.hash);
    if (name === "") {
        location.replace(session.active ? "#/wallet" : "#/login");
        return;
    }
    const view = views[name];
    if (view !== undefined && !view.public && !session.active) {
        app.flashOn("login", "info", "Log in to continue.");
        location.replace("#/login");
        return;
    }
    if (view !== undefined && view.public && session.active) {
        location.replace("#/wallet");
        return;
    }
    for (const s of document.querySelectorAll("section[data-view]")) s.hidden = true;
    const target = section(view !== undefined ? name : "not-found");
    target.hidden = false;
    for (const link of document.querySelectorAll("#nav a")) {
        if (view !== undefined && link.dataset.nav === view.nav) link.setAttribute("aria-current", "page");
        else link.removeAttribute("aria-current");
    }
    app.current = { name, params };
    document.title = (view !== undefined ? view.module.title : "Page not found") + " · paygate";
    if (view !== undefined) {
        view.module.show(app, params);
        if (app.flash !== null && app.flash.view === name) {
            showMessage(target, app.flash.kind, app.flash.text);
        }
    }
    app.flash = null;
    // Move focus to the new view's heading, so keyboard and screen reader
    // users start there (not on a link of the previous view).
    if (focus) target.querySelector("h1")?.focus();
}

/** Reloads what the current view shows (money moved). */
function refreshCurrent() {
    const view = app.current && views[app.current.name];
    if (view && !view.public && typeof view.module.refresh === "function") {
        view.module.refresh(app, app.current.params);
    }
}

// ---- start -------------------------------------------------------------------

function start() {
    for (const view of Object.values(views)) view.module.init(app);
    document.getElementById("logout").addEventListener("click", () => app.logout());
    document.getElementById("skip-link").addEventListener("click", (event) => {
        event.preventDefault(); // "#main" is not a route
        document.getElementById("main").focus();
    });
    window.addEventListener("hashchange", () => route(true));
    session.restore();
    if (session.active) startSession();
    route(false);
}

start();
