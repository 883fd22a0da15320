// auth: the register and log in views. What the person types goes to the
// API as is; the API checks it and its message is what they see.

import { messageOf, request, session } from "../api.js";
import { clearMessage, section, showMessage, whileBusy } from "../dom.js";

export const login = {
    title: "Log in",

    init(app) {
        const view = section("login");
        const form = document.getElementById("login-form");
        form.addEventListener("submit", (event) => {
            event.preventDefault();
            const button = form.querySelector("button[type=submit]");
            whileBusy(button, async () => {
                clearMessage(view);
                const email = form.elements.email.value.trim();
                try {
                    const reply = await request("POST", "/v1/auth/login", {
                        body: { email, password: form.elements.password.value },
                    });
                    session.save(reply.access_token, reply.expires_in, email);
                    form.reset();
                    app.loggedIn();
                } catch (error) {
                    showMessage(view, "error", messageOf(error));
                    form.elements.password.focus();
                }
            });
        });
    },

    show() {
        clearMessage(section("login"));
    },
};

export const register = {
    title: "Create your account",

    init(app) {
        const view = section("register");
        const form = document.getElementById("register-form");
        form.addEventListener("submit", (event) => {
            event.preventDefault();
            const button = form.querySelector("button[type=submit]");
            whileBusy(button, async () => {
                clearMessage(view);
                try {
                    const user = await request("POST", "/v1/users", {
                        body: {
                            name: form.elements.name.value.trim(),
                            email: form.elements.email.value.trim(),
                            password: form.elements.password.value,
                        },
                    });
                    form.reset();
                    document.getElementById("login-email").value = user.email ?? "";
                    app.flashOn("login", "ok", "Your account is ready. Log in with your email and password.");
                    app.navigate("#/login");
                } catch (error) {
                    showMessage(view, "error", messageOf(error));
                }
            });
        });
    },

    show() {
        clearMessage(section("register"));
    },
};
