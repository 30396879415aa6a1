// Sign in with an API key, or with a login and password (then the access token is kept).

import { ApiError, api, login, session } from "./api.js";
import { field, h, replace } from "./dom.js";

export function renderSignIn(main, notice, done) {
  const key = h("input", { type: "password", name: "api-key", autocomplete: "off", spellcheck: "false" });
  const name = h("input", { type: "text", name: "login", autocomplete: "username" });
  const password = h("input", { type: "password", name: "password", autocomplete: "current-password" });
  const error = h("p", { class: "error", role: "alert" });
  const button = h("button", { type: "submit", class: "primary", text: "Sign in" });

  async function submit(event) {
    event.preventDefault();
    error.textContent = "";
    button.disabled = true;
    try {
      let token = key.value.trim();
      if (!token && name.value.trim()) token = await login(name.value.trim(), password.value);
      if (!token) throw new Error("Enter an API key, or a login and password.");
      // Check the token before keeping it.
      await api("GET", "/v1/runs?limit=1", undefined, token);
      session.set(token);
      done();
    } catch (err) {
      error.textContent =
        err instanceof ApiError && err.status === 401
          ? "Not accepted: check the key, or the login and password."
          : err.message;
      button.disabled = false;
    }
  }

  const form = h(
    "form",
    { class: "card signin", method: "post", onsubmit: submit },
    h("h1", { text: "Sign in to runlog" }),
    notice ? h("p", { class: "notice", role: "status", text: notice }) : null,
    field("API key", key, "The key printed at first start, or one from: runlog admin create-key."),
    h(
      "details",
      {},
      h("summary", { text: "Use a login and password instead" }),
      field("Login", name),
      field("Password", password),
    ),
    error,
    h("div", { class: "actions" }, button),
    h("p", { class: "hint", text: "The token is kept in this tab only, until you sign out." }),
  );
  replace(main, form);
  key.focus();
}
