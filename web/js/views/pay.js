// pay: pay one order from the wallet (POST /v1/payments). Shows success,
// or the API's reason when it fails; for insufficient funds, a link to
// add money.
//
// Idempotency: one key per attempt. A retry after no answer (network
// error, 503, 504) reuses it, so a payment is never made twice; after a
// definite answer the next click is a new attempt with a new key (the old
// key would only replay the old answer).

import { messageOf, newIdempotencyKey } from "../api.js";
import { formatPaise } from "../money.js";
import { clearMessage, section, showMessage, statusPill, whileBusy } from "../dom.js";

export const title = "Pay order";

let orderId = "";
let key = "";

function text(id, value) {
    document.getElementById(id).textContent = value;
}

/** Shows the order and the balance; the pay button only while PENDING. */
async function load(app) {
    const view = section("pay");
    const id = orderId;
    try {
        const [order, wallet] = await Promise.all([
            app.call("GET", "/v1/orders/" + encodeURIComponent(id)),
            app.call("GET", "/v1/wallet"),
        ]);
        if (id !== orderId) return; // another order is shown meanwhile
        text("pay-order-id", "#" + order.id);
        text("pay-amount", formatPaise(order.amount));
        document.getElementById("pay-status").replaceChildren(statusPill(order.status));
        text("pay-balance", formatPaise(wallet.balance));
        const button = document.getElementById("pay-button");
        button.textContent = "Pay " + formatPaise(order.amount) + " from wallet";
        button.hidden = order.status !== "PENDING";
        return order;
    } catch (error) {
        showMessage(view, "error", messageOf(error));
        return null;
    }
}

async function payNow(app) {
    const view = section("pay");
    clearMessage(view);
    const id = orderId;
    try {
        const payment = await app.call("POST", "/v1/payments", { body: { order_id: id }, idempotencyKey: key });
        key = newIdempotencyKey("pay");
        const amount = formatPaise(payment.amount);
        if (payment.status === "SUCCEEDED") {
            showMessage(view, "ok", "Payment successful: " + amount + " paid for Order #" + id + ".", {
                href: "#/history",
                text: "See your transactions",
            });
        } else if (payment.status === "FAILED") {
            showMessage(view, "error", payment.failure_message || "The payment failed.");
        } else {
            showMessage(
                view,
                "info",
                "Payment " +
                    payment.id +
                    " of " +
                    amount +
                    " is being processed. A notification will say when it is done.",
            );
        }
    } catch (error) {
        if (error.status !== 0 && error.status !== 503 && error.status !== 504) key = newIdempotencyKey("pay");
        const link =
            error.code === "insufficient_funds" ? { href: "#/wallet", text: "Add money to your wallet" } : null;
        showMessage(view, "error", messageOf(error), link);
    }
    await load(app);
}

export function init(app) {
    const button = document.getElementById("pay-button");
    button.addEventListener("click", () => whileBusy(button, () => payNow(app)));
}

export function show(app, params) {
    orderId = params[0] ?? "";
    key = newIdempotencyKey("pay");
    clearMessage(section("pay"));
    text("pay-title", "Pay Order #" + orderId);
    for (const id of ["pay-order-id", "pay-amount", "pay-status", "pay-balance"]) text(id, "…");
    document.getElementById("pay-button").hidden = true;
    load(app);
}

export function refresh(app) {
    load(app);
}
