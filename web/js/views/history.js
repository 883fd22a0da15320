// history: every money movement (GET /v1/transactions), 10 per page,
// newest first. The API pages with a cursor (starting_after); going back
// uses the cursors of the pages already seen.

import { messageOf } from "../api.js";
import { formatPaise } from "../money.js";
import { clear, clearMessage, el, formatTime, section, showMessage, whileBusy } from "../dom.js";

export const title = "Transaction history";

const PAGE_SIZE = 10;
const TYPE_NAMES = { PAYMENT: "Payment", REFUND: "Refund", TOPUP: "Money added" };

let cursors = [""]; // cursors[i]: starting_after of page i
let pageIndex = 0;

function transactionItem(t) {
    const credit = t.type === "TOPUP" || t.type === "REFUND";
    const when = formatTime(t.created_at);
    return el(
        "li",
        { attrs: { "data-transaction-id": t.id } },
        el(
            "div",
            {},
            el("p", { className: "description", text: t.description || TYPE_NAMES[t.type] || "Transaction" }),
            el("p", { className: "meta", text: (TYPE_NAMES[t.type] ?? t.type ?? "") + (when ? " · " + when : "") }),
        ),
        el("span", {
            className: "amount " + (credit ? "credit" : "debit"),
            text: (credit ? "+" : "−") + formatPaise(t.amount),
            attrs: { "aria-label": (credit ? "plus " : "minus ") + formatPaise(t.amount) },
        }),
    );
}

async function load(app, index) {
    const view = section("history");
    const cursor = cursors[index] ?? "";
    const query = "?limit=" + PAGE_SIZE + (cursor ? "&starting_after=" + encodeURIComponent(cursor) : "");
    try {
        const page = await app.call("GET", "/v1/transactions" + query);
        const data = Array.isArray(page.data) ? page.data : [];
        const list = document.getElementById("history-list");
        clear(list);
        for (const t of data) list.append(transactionItem(t));
        pageIndex = index;
        cursors = cursors.slice(0, index + 1);
        if (page.has_more && data.length > 0) cursors.push(data[data.length - 1].id);
        document.getElementById("history-empty").hidden = data.length > 0 || index > 0;
        document.getElementById("history-page").textContent = "Page " + (index + 1);
        document.getElementById("history-newer").disabled = index === 0;
        document.getElementById("history-older").disabled = cursors.length <= index + 1;
        document.getElementById("history-pager").hidden = index === 0 && cursors.length <= 1;
    } catch (error) {
        showMessage(view, "error", messageOf(error));
    }
}

export function init(app) {
    const newer = document.getElementById("history-newer");
    const older = document.getElementById("history-older");
    newer.addEventListener("click", () => whileBusy(newer, () => load(app, Math.max(0, pageIndex - 1))));
    older.addEventListener("click", () => whileBusy(older, () => load(app, pageIndex + 1)));
}

export function show(app) {
    clearMessage(section("history"));
    cursors = [""];
    load(app, 0);
}

export function refresh(app) {
    if (pageIndex === 0) load(app, 0);
}
