// sse: the notification stream, read with fetch().
//
// EventSource cannot send an Authorization header, and the stream
// (GET /v1/notifications/stream) needs `Authorization: Bearer`. So the
// stream is read with fetch() and a ReadableStream, and parsed here as the
// HTML standard's event-stream format: lines "field: value", an empty line
// ends an event, lines starting with ":" are comments (the server's
// keep-alives), "retry:" changes the reconnection delay.
//
// The token stays in a header: never in the URL, never in a cookie.
//
// Must never: lose an event split across network chunks, or keep
// reconnecting after stop().

/** Parses an event stream fed in arbitrary text chunks. Calls
 *  'onEvent({type, id, data})' for each complete event and
 *  'onRetry(ms)' for each valid "retry:" line. */
export class EventStreamParser {
    constructor(onEvent, onRetry = () => {}) {
        this.onEvent = onEvent;
        this.onRetry = onRetry;
        this.buffer = "";
        this.type = "";
        this.data = [];
        this.id = "";
    }

    /** Feeds 'text' (any part of the stream; lines may span chunks). */
    push(text) {
        this.buffer += text;
        for (;;) {
            const match = /\r\n|\r|\n/.exec(this.buffer);
            if (match === null) break;
            // A lone "\r" at the very end may be the first half of "\r\n".
            if (match[0] === "\r" && match.index === this.buffer.length - 1) break;
            const line = this.buffer.slice(0, match.index);
            this.buffer = this.buffer.slice(match.index + match[0].length);
            this.line(line);
        }
    }

    line(line) {
        if (line === "") {
            this.dispatch();
            return;
        }
        if (line.startsWith(":")) return; // comment: keep-alive
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? "" : line.slice(colon + 1);
        if (value.startsWith(" ")) value = value.slice(1);
        if (field === "event") this.type = value;
        else if (field === "data") this.data.push(value);
        else if (field === "id" && !value.includes("\0")) this.id = value;
        else if (field === "retry" && /^\d+$/.test(value)) this.onRetry(Number(value));
    }

    dispatch() {
        if (this.data.length > 0) {
            this.onEvent({ type: this.type || "message", id: this.id, data: this.data.join("\n") });
        }
        this.type = "";
        this.data = [];
    }
}

/** The user's notification stream: connects with the token, parses,
 *  reconnects with backoff after a drop, stops for good on stop() or on
 *  401. Callbacks:
 *    onNotification(object)  each "notification" event's JSON
 *    onState(state)          "connecting" | "live" | "retrying" | "off"
 *    onReconnected()         after a reconnect (fetch what was missed)
 *    onUnauthorized(message) the token is no longer accepted */
export class NotificationStream {
    constructor({ path, token, onNotification, onState, onReconnected, onUnauthorized }) {
        this.path = path;
        this.token = token;
        this.onNotification = onNotification;
        this.onState = onState;
        this.onReconnected = onReconnected;
        this.onUnauthorized = onUnauthorized;
        this.controller = null;
        this.stopped = false;
        this.retryMs = 2000;
        this.failures = 0;
        this.timer = null;
    }

    start() {
        this.stopped = false;
        this.connect(false);
    }

    stop() {
        this.stopped = true;
        clearTimeout(this.timer);
        if (this.controller !== null) this.controller.abort();
        this.controller = null;
        this.onState("off");
    }

    async connect(isReconnect) {
        if (this.stopped) return;
        this.onState(isReconnect ? "retrying" : "connecting");
        const controller = new AbortController();
        this.controller = controller;
        try {
            const response = await fetch(this.path, {
                headers: { Authorization: "Bearer " + this.token, Accept: "text/event-stream" },
                cache: "no-store",
                signal: controller.signal,
            });
            if (response.status === 401) {
                const body = await response.json().catch(() => null);
                const message = body?.error?.message;
                this.stopped = true;
                this.onState("off");
                this.onUnauthorized(typeof message === "string" ? message : "Your session has ended.");
                return;
            }
            if (!response.ok || response.body === null) throw new Error("stream refused");
            this.failures = 0;
            this.onState("live");
            if (isReconnect) this.onReconnected();
            const parser = new EventStreamParser(
                (event) => this.event(event),
                (ms) => (this.retryMs = Math.min(Math.max(ms, 500), 60000)),
            );
            const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
            for (;;) {
                const { value, done } = await reader.read();
                if (done) break;
                parser.push(value);
            }
        } catch (error) {
            if (this.stopped || controller.signal.aborted) return;
        }
        if (this.stopped) return;
        // Dropped or refused: try again, backing off up to 30 s.
        this.failures += 1;
        const delay = Math.min(this.retryMs * 2 ** Math.min(this.failures - 1, 4), 30000);
        this.onState("retrying");
        this.timer = setTimeout(() => this.connect(true), delay);
    }

    event(event) {
        if (event.type !== "notification") return;
        let notification;
        try {
            notification = JSON.parse(event.data);
        } catch {
            return; // not ours to show
        }
        if (notification !== null && typeof notification.message === "string") {
            this.onNotification(notification);
        }
    }
}
