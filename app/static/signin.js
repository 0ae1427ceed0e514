// The sign-in page: password step, then the 2FA step when the account has one (a code,
// or a recovery code instead). The access token obtained goes once, by a form POST, to
// /interactive-docs (which keeps it in an HttpOnly cookie); the page keeps nothing.
"use strict";
(() => {
  const passwordStep = document.getElementById("password-step");
  const codeStep = document.getElementById("code-step");
  const api = passwordStep.dataset.api;
  const error = document.getElementById("error");
  let otpToken = null;
  let recovery = false;

  function finish(tokens) {
    document.getElementById("token").value = tokens.access_token;
    document.getElementById("finish").submit();
  }

  async function answer(response) {
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      error.textContent = body.detail || "Sign-in failed";
      return null;
    }
    return body;
  }

  passwordStep.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    const form = new URLSearchParams(new FormData(passwordStep));
    const body = await answer(await fetch(api + "/auth/login", { method: "POST", body: form }));
    if (!body) return;
    if (body.otp_required) {
      otpToken = body.otp_token;
      if (body.otp_method === "email") {
        document.getElementById("code-hint").textContent = "Enter the code we just emailed you.";
      }
      passwordStep.hidden = true;
      codeStep.hidden = false;
      document.getElementById("code").focus();
      return;
    }
    finish(body);
  });

  document.getElementById("use-recovery-code").addEventListener("click", (event) => {
    recovery = true;
    const input = document.getElementById("code");
    input.inputMode = "text";
    input.autocomplete = "off";
    input.value = "";
    input.focus();
    document.querySelector("label[for=code]").textContent = "Recovery code";
    document.getElementById("code-hint").textContent =
      "Enter one of the recovery codes you saved when you turned on two-factor authentication.";
    event.target.hidden = true;
  });

  codeStep.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    const code = document.getElementById("code").value.trim();
    const [path, proof] = recovery
      ? ["/auth/otp/recovery-codes/verify", { recovery_code: code }]
      : ["/auth/otp/verify", { code }];
    const body = await answer(await fetch(api + path, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ otp_token: otpToken, ...proof }),
    }));
    if (body) finish(body);
  });
})();
