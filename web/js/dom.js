// dom: building and updating the page without HTML strings.
//
// Every node is made with createElement and filled with textContent, so
// no text from the API can ever become markup (the CSP also requires
// Trusted Types for script sinks, which this never touches).

/** Makes element 'tag'. 'props': className, text, attrs (name -> value;
 *  false/null/undefined leave it out), on (event -> handler). Children may
 *  be nodes, strings, or null (skipped). */
export function el(tag, props = {}, ...children) {
    const node = document.createElement(tag);
    if (props.className) node.className = props.className;
    if (props.text !== undefined) node.textContent = props.text;
    for (const [name, value] of Object.entries(props.attrs ?? {})) {
        if (value === false || value === null || value === undefined) continue;
        node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const [event, handler] of Object.entries(props.on ?? {})) node.addEventListener(event, handler);
    for (const child of children) {
        if (child === null || child === undefined || child === false) continue;
        node.append(child);
    }
    return node;
}

/** Removes every child of 'node'. */
export function clear(node) {
    node.replaceChildren();
}

/** The view section named 'name'. */
export function section(name) {
    return document.querySelector(`section[data-view="${name}"]`);
}

/** Shows one message in the message box of view section 'view': 'kind' is
 *  "ok", "error" or "info"; 'link' an optional {href, text} placed after
 *  the text. Errors are announced at once (role=alert), the rest politely. */
export function showMessage(view, kind, text, link = null) {
    const box = view.querySelector("[data-message]");
    const message = el(
        "p",
        {
            className: "message " + kind,
            attrs: { role: kind === "error" ? "alert" : "status" },
        },
        text,
    );
    if (link !== null) {
        message.append(
            el("span", { className: "message-link" }, el("a", { text: link.text, attrs: { href: link.href } })),
        );
    }
    box.replaceChildren(message);
}

/** Empties the message box of view section 'view'. */
export function clearMessage(view) {
    view.querySelector("[data-message]").replaceChildren();
}

/** An RFC 3339 time as a local date and time ("27 Nov 2026, 7:26 pm"),
 *  or "" when it is not a time. */
export function formatTime(iso) {
    const date = new Date(iso);
    if (typeof iso !== "string" || Number.isNaN(date.getTime())) return "";
    return date.toLocaleString("en-IN", {
        day: "numeric",
        month: "short",
        year: "numeric",
        hour: "numeric",
        minute: "2-digit",
    });
}

/** Runs 'work' with 'button' marked busy (aria-busy, aria-disabled) and
 *  returns its result; a second call while busy does nothing (returns
 *  undefined). The button is not `disabled`, so it keeps the keyboard
 *  focus. */
export async function whileBusy(button, work) {
    if (button.getAttribute("aria-busy") === "true") return undefined;
    button.setAttribute("aria-busy", "true");
    button.setAttribute("aria-disabled", "true");
    try {
        return await work();
    } finally {
        button.removeAttribute("aria-busy");
        button.removeAttribute("aria-disabled");
    }
}

/** A status pill for an order or payment status. */
export function statusPill(status) {
    const text = typeof status === "string" && status !== "" ? status : "UNKNOWN";
    return el("span", { className: "status status-" + text.replace(/[^A-Z_]/g, ""), text });
}
