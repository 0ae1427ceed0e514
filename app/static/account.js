// The pages that links in mails open when no front end is configured. The token comes
// in the URL fragment (#token=...), which the browser never sends to a server; this
// script reads it, takes it out of the address bar, and sends it to the API in the body
// of a POST. It keeps nothing.
"use strict";
(() => {
  const step = document.getElementById("step");
  const api = step.dataset.api;
  const action = step.dataset.action;
  const outcome = document.getElementById("outcome");
  const error = document.getElementById("error");
  const token = new URLSearchParams(location.hash.slice(1)).get("token");
  if (location.hash) history.replaceState(null, "", location.pathname + location.search);

  async function post(path, body) {
    const response = await fetch(api + path, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    const answer = await response.json().catch(() => ({})); // 204: no body
    if (!response.ok) {
      error.textContent = answer.detail || "Something went wrong; try again later.";
      return null;
    }
    return answer;
  }

  function done(message) {
    step.hidden = true;
    document.getElementById("intro").hidden = true;
    error.textContent = "";
    outcome.textContent = message;
    outcome.hidden = false;
  }

  function onSubmit(handler) {
    step.addEventListener("submit", async (event) => {
      event.preventDefault();
      error.textContent = "";
      document.getElementById("submit").disabled = true;
      try {
        await handler();
      } finally {
        document.getElementById("submit").disabled = false;
      }
    });
  }

  async function verify() {
    if (await post("/auth/email/verify", { token })) done("Your email is verified.");
  }

  async function reset() {
    const info = await post("/auth/password/reset/info", { token });
    if (!info) return;
    const providers = document.getElementById("providers");
    for (const name of info.linked_providers) {
      const label = document.createElement("label");
      const box = document.createElement("input");
      box.type = "checkbox";
      box.name = "unlink";
      box.value = name;
      label.append(box, " Unlink " + name);
      providers.append(label);
    }
    providers.hidden = info.linked_providers.length === 0;
    step.hidden = false;
    onSubmit(async () => {
      const password = document.getElementById("new-password").value;
      if (password !== document.getElementById("repeat-password").value) {
        error.textContent = "The two passwords differ.";
        return;
      }
      const unlink = [...providers.querySelectorAll("input:checked")].map((box) => box.value);
      const body = { token, new_password: password, unlink_providers: unlink };
      if (await post("/auth/password/reset", body)) {
        done("Your password is changed. Sign in with the new one.");
      }
    });
  }

  function onClick(path, message) {
    step.hidden = false;
    onSubmit(async () => {
      if (await post(path, { token })) done(message);
    });
  }

  function forgot() {
    onSubmit(async () => {
      const email = document.getElementById("email").value.trim();
      if (await post("/auth/password/forgot", { email })) {
        done("If an account has this email, a reset link is on its way.");
      }
    });
  }

  if (action === "forgot-password") {
    forgot();
  } else if (!token) {
    error.textContent = "This link is incomplete: open it exactly as it was mailed.";
  } else if (action === "verify") {
    verify();
  } else if (action === "reset") {
    reset();
  } else if (action === "confirm-email-change") {
    onClick("/auth/email/change/confirm", "This address is now your account's email.");
  } else if (action === "undo-email-change") {
    onClick(
      "/auth/email/change/undo",
      "The change is undone and every session has ended. A link to choose a new " +
        "password is on its way to this address.",
    );
  }
})();
