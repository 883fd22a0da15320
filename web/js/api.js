// api: the paygate HTTP API (README "HTTP API (v1)") and the session.
//
// Every failure becomes an ApiError whose 'message' is fit to show: the
// API's own error message ({"error": {"code", "message", ...}}), or, when
// the server could not be reached or answered something that is not our
// JSON, a plain sentence saying so. Never a stack, never "undefined".
//
// The access token lives in memory and in sessionStorage (this tab only,
// gone when it closes): never in a cookie, never in a URL.

const TOKEN_KEY = "paygate.session";

/** An API failure. 'status' is the HTTP status (0: no answer), 'code' the
 *  API's stable code ("insufficient_funds", ...), 'details' the rest of
 *  the error object (for example payment_id). */
export class ApiError extends Error {
    constructor(status, code, message, details = {}) {
        super(message);
        this.name = "ApiError";
        this.status = status;
        this.code = code;
        this.details = details;
    }
}

/** A fresh Idempotency-Key: 128 random bits as hex. (crypto.randomUUID
 *  exists only in secure contexts; getRandomValues everywhere.) */
export function newIdempotencyKey(prefix) {
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    return prefix + "-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** The message of an error of any kind, fit to show. */
export function messageOf(error) {
    if (error instanceof ApiError && error.message) return error.message;
    return "Something went wrong in this page. Reload it and try again.";
}

/** Sends one request. 'options': body (an object, sent as JSON), token,
 *  idempotencyKey, signal. Resolves to the parsed JSON reply; rejects with
 *  ApiError. */
export async function request(method, path, options = {}) {
    const headers = { Accept: "application/json" };
    if (options.token) headers.Authorization = "Bearer " + options.token;
    if (options.idempotencyKey) headers["Idempotency-Key"] = options.idempotencyKey;
    let body;
    if (options.body !== undefined) {
        headers["Content-Type"] = "application/json";
        body = JSON.stringify(options.body);
    }
    let response;
    try {
        response = await fetch(path, { method, headers, body, cache: "no-store", signal: options.signal });
    } catch (error) {
        if (error?.name === "AbortError") throw error;
        throw new ApiError(0, "network_error", "Cannot reach paygate. Check your connection and try again.");
    }
    const text = await response.text().catch(() => "");
    let json = null;
    try {
        json = text === "" ? null : JSON.parse(text);
    } catch {
        json = null;
    }
    if (response.ok) {
        if (json === null || typeof json !== "object") {
            throw new ApiError(response.status, "bad_reply", "paygate answered something unexpected. Try again.");
        }
        return json;
    }
    const error = json?.error;
    if (error && typeof error.message === "string" && error.message !== "") {
        const { code, message, ...details } = error;
        throw new ApiError(response.status, typeof code === "string" ? code : "error", message, details);
    }
    const reason = response.statusText ? " (" + response.statusText + ")" : "";
    throw new ApiError(
        response.status,
        "http_" + response.status,
        "paygate answered with HTTP " + response.status + reason + ". Try again later.",
    );
}

/** The logged-in session: token and email, kept for this tab only. */
export const session = {
    token: null,
    email: null,
    expiresAt: 0,

    /** Restores the tab's session, if one was saved and has not expired. */
    restore() {
        try {
            const saved = JSON.parse(sessionStorage.getItem(TOKEN_KEY) ?? "null");
            if (saved && typeof saved.token === "string" && saved.expiresAt > Date.now()) {
                this.token = saved.token;
                this.email = saved.email ?? "";
                this.expiresAt = saved.expiresAt;
            }
        } catch {
            this.clear();
        }
    },

    save(token, expiresInSeconds, email) {
        this.token = token;
        this.email = email;
        this.expiresAt = Date.now() + Math.max(0, Number(expiresInSeconds) || 0) * 1000;
        try {
            sessionStorage.setItem(TOKEN_KEY, JSON.stringify({ token, email, expiresAt: this.expiresAt }));
        } catch {
            // Storage may be disabled: the session then lives in memory only.
        }
    },

    clear() {
        this.token = null;
        this.email = null;
        this.expiresAt = 0;
        try {
            sessionStorage.removeItem(TOKEN_KEY);
        } catch {
            // nothing to remove
        }
    },

    get active() {
        return this.token !== null && this.expiresAt > Date.now();
    },
};
