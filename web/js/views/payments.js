// payments: the payments made, and refunds of successful ones
// (POST /v1/payments/{id}/refunds): a part in rupees, or all that remains
// when the amount is left empty.

import { messageOf, newIdempotencyKey } from "../api.js";
import { formatPaise, parseRupees } from "../money.js";
import { clear, clearMessage, el, formatTime, section, showMessage, statusPill, whileBusy } from "../dom.js";

export const title = "Payments & refunds";

const PAGE_SIZE = 20;

let lastId = "";

function refundForm(app, payment) {
    const remaining = payment.amount - (payment.amount_refunded ?? 0);
    const inputId = "refund-" + payment.id;
    const hintId = inputId + "-hint";
    const form = el(
        "form",
        { className: "actions", attrs: { novalidate: true } },
        el(
            "div",
            { className: "field" },
            el("label", { text: "Refund amount (₹)", attrs: { for: inputId } }),
            el("input", {
                attrs: {
                    id: inputId,
                    name: "amount",
                    type: "text",
                    inputmode: "decimal",
                    autocomplete: "off",
                    "aria-describedby": hintId,
                },
            }),
            el("p", {
                className: "hint",
                text: "Up to " + formatPaise(remaining) + ". Leave empty to refund all of it.",
                attrs: { id: hintId },
            }),
        ),
        el("button", { text: "Refund", attrs: { type: "submit", "aria-label": "Refund payment " + payment.id } }),
    );
    form.addEventListener("submit", (event) => {
        event.preventDefault();
        whileBusy(form.querySelector("button"), () => refund(app, payment, form));
    });
    return form;
}

async function refund(app, payment, form) {
    const view = section("payments");
    clearMessage(view);
    const typed = form.elements.amount.value.trim();
    const body = {};
    if (typed !== "") {
        const amount = parseRupees(typed);
        if (!amount.ok) {
            showMessage(view, "error", amount.message);
            form.elements.amount.focus();
            return;
        }
        body.amount = amount.paise;
    }
    try {
        const result = await app.call("POST", "/v1/payments/" + encodeURIComponent(payment.id) + "/refunds", {
            body,
            idempotencyKey: newIdempotencyKey("refund"),
        });
        const state = result.status === "SUCCEEDED" ? "is back in your wallet." : "is on its way to your wallet.";
        showMessage(
            view,
            "ok",
            "Refund of " + formatPaise(result.amount) + " for Order #" + payment.order_id + " " + state,
        );
        await load(app, false);
    } catch (error) {
        showMessage(view, "error", messageOf(error));
    }
}

function paymentItem(app, payment) {
    const refunded = payment.amount_refunded ?? 0;
    const created = formatTime(payment.created_at);
    const refundable = payment.status === "SUCCEEDED" && refunded < payment.amount;
    return el(
        "li",
        { attrs: { "data-payment-id": payment.id } },
        el(
            "div",
            { className: "item-head" },
            el("h3", { className: "item-title", text: "Payment for Order #" + payment.order_id }),
            el("span", { className: "amount", text: formatPaise(payment.amount) }),
        ),
        el(
            "p",
            { className: "meta" },
            statusPill(payment.status),
            refunded > 0 ? " · refunded " + formatPaise(refunded) : "",
            created ? " · " + created : "",
            " · " + payment.id,
        ),
        payment.status === "FAILED" && payment.failure_message
            ? el("p", { className: "meta", text: "Why it failed: " + payment.failure_message })
            : null,
        refundable ? refundForm(app, payment) : null,
    );
}

async function load(app, more) {
    const list = document.getElementById("payments-list");
    const query = "?limit=" + PAGE_SIZE + (more && lastId ? "&starting_after=" + encodeURIComponent(lastId) : "");
    try {
        const page = await app.call("GET", "/v1/payments" + query);
        const data = Array.isArray(page.data) ? page.data : [];
        if (!more) clear(list);
        for (const payment of data) list.append(paymentItem(app, payment));
        if (data.length > 0) lastId = data[data.length - 1].id;
        document.getElementById("payments-more").hidden = !page.has_more;
        document.getElementById("payments-empty").hidden = list.children.length > 0;
    } catch (error) {
        showMessage(section("payments"), "error", messageOf(error));
    }
}

export function init(app) {
    const more = document.getElementById("payments-more");
    more.addEventListener("click", () => whileBusy(more, () => load(app, true)));
}

export function show(app) {
    clearMessage(section("payments"));
    load(app, false);
}

export function refresh(app) {
    // Not while someone types a refund amount: their input would vanish.
    if (section("payments").contains(document.activeElement) && document.activeElement.tagName === "INPUT") return;
    load(app, false);
}
