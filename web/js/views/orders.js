// orders: create an order in rupees, list orders with their status (20 at
// a time, "Show more" follows the cursor), pay or cancel a pending one.

import { messageOf } from "../api.js";
import { formatPaise, parseRupees } from "../money.js";
import { clear, clearMessage, el, formatTime, section, showMessage, statusPill, whileBusy } from "../dom.js";

export const title = "Orders";

const PAGE_SIZE = 20;

let lastId = ""; // cursor of the next page

function orderItem(app, order) {
    const amount = formatPaise(order.amount);
    const actions =
        order.status === "PENDING"
            ? el(
                  "div",
                  { className: "actions" },
                  el("a", {
                      className: "button",
                      text: "Pay " + amount,
                      attrs: {
                          href: "#/pay/" + encodeURIComponent(order.id),
                          "aria-label": "Pay " + amount + " for order " + order.id,
                      },
                  }),
                  el("button", {
                      className: "danger",
                      text: "Cancel order",
                      attrs: { type: "button", "aria-label": "Cancel order " + order.id },
                      on: { click: (event) => cancel(app, order, event.currentTarget) },
                  }),
              )
            : null;
    const created = formatTime(order.created_at);
    return el(
        "li",
        { attrs: { "data-order-id": order.id } },
        el(
            "div",
            { className: "item-head" },
            el("h3", { className: "item-title", text: "Order #" + order.id }),
            el("span", { className: "amount", text: amount }),
        ),
        el(
            "p",
            { className: "meta" },
            statusPill(order.status),
            created ? " · created " + created : "",
            order.description ? " · " + order.description : "",
        ),
        actions,
    );
}

async function cancel(app, order, button) {
    const view = section("orders");
    await whileBusy(button, async () => {
        clearMessage(view);
        try {
            await app.call("POST", "/v1/orders/" + encodeURIComponent(order.id) + "/cancel");
            showMessage(view, "ok", "Order #" + order.id + " is cancelled.");
            await load(app, false);
        } catch (error) {
            showMessage(view, "error", messageOf(error));
        }
    });
}

/** Loads the first page ('more' false) or the next one. */
async function load(app, more) {
    const list = document.getElementById("orders-list");
    const query = "?limit=" + PAGE_SIZE + (more && lastId ? "&starting_after=" + encodeURIComponent(lastId) : "");
    try {
        const page = await app.call("GET", "/v1/orders" + query);
        const data = Array.isArray(page.data) ? page.data : [];
        if (!more) clear(list);
        for (const order of data) list.append(orderItem(app, order));
        if (data.length > 0) lastId = data[data.length - 1].id;
        document.getElementById("orders-more").hidden = !page.has_more;
        document.getElementById("orders-empty").hidden = list.children.length > 0;
    } catch (error) {
        showMessage(section("orders"), "error", messageOf(error));
    }
}

export function init(app) {
    const view = section("orders");
    const form = document.getElementById("order-form");
    form.addEventListener("submit", (event) => {
        event.preventDefault();
        const button = form.querySelector("button[type=submit]");
        whileBusy(button, async () => {
            clearMessage(view);
            const amount = parseRupees(form.elements.amount.value);
            if (!amount.ok) {
                showMessage(view, "error", amount.message);
                form.elements.amount.focus();
                return;
            }
            const body = { amount: amount.paise };
            const description = form.elements.description.value.trim();
            if (description !== "") body.description = description;
            try {
                const order = await app.call("POST", "/v1/orders", { body });
                form.reset();
                showMessage(view, "ok", "Order #" + order.id + " for " + formatPaise(order.amount) + " is created.", {
                    href: "#/pay/" + encodeURIComponent(order.id),
                    text: "Pay it now",
                });
                await load(app, false);
            } catch (error) {
                showMessage(view, "error", messageOf(error));
            }
        });
    });
    const more = document.getElementById("orders-more");
    more.addEventListener("click", () => whileBusy(more, () => load(app, true)));
}

export function show(app) {
    clearMessage(section("orders"));
    load(app, false);
}

export function refresh(app) {
    load(app, false);
}
