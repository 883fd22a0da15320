// wallet: the balance and "add money" (POST /v1/wallet/topups).

import { messageOf, newIdempotencyKey } from "../api.js";
import { formatPaise, parseRupees } from "../money.js";
import { clearMessage, section, showMessage, whileBusy } from "../dom.js";

export const title = "Wallet";

function showBalance(paise) {
    document.getElementById("wallet-balance").textContent = formatPaise(paise);
}

async function loadBalance(app) {
    try {
        const wallet = await app.call("GET", "/v1/wallet");
        showBalance(wallet.balance);
    } catch (error) {
        showMessage(section("wallet"), "error", messageOf(error));
    }
}

export function init(app) {
    const view = section("wallet");
    const form = document.getElementById("topup-form");
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
            try {
                const topUp = await app.call("POST", "/v1/wallet/topups", {
                    body: { amount: amount.paise },
                    idempotencyKey: newIdempotencyKey("topup"),
                });
                showBalance(topUp.balance);
                form.reset();
                showMessage(
                    view,
                    "ok",
                    "Added " + formatPaise(topUp.amount) + ". Your balance is now " + formatPaise(topUp.balance) + ".",
                );
            } catch (error) {
                showMessage(view, "error", messageOf(error));
            }
        });
    });
}

export function show(app) {
    clearMessage(section("wallet"));
    document.getElementById("wallet-balance").textContent = "…";
    loadBalance(app);
}

export function refresh(app) {
    loadBalance(app);
}
