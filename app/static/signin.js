// The sign-in page: password step, then the 2FA step when the account has one (a code,
// a recovery code, or a passkey instead), or a passkey alone. The access token obtained
// goes once, by a form POST, to /interactive-docs (which keeps it in an HttpOnly
// cookie); the page keeps nothing.
"use strict";
(() => {
  const passwordStep = document.getElementById("password-step");
  const codeStep = document.getElementById("code-step");
  const api = passwordStep.dataset.api;
  const error = document.getElementById("error");
  const jsonHeaders = { "Content-Type": "application/json" };
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

  function post(path, body) {
    return fetch(api + path, { method: "POST", headers: jsonHeaders, body: JSON.stringify(body) });
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
    const body = await answer(await post(path, { otp_token: otpToken, ...proof }));
    if (body) finish(body);
  });

  // Passkeys -----------------------------------------------------------------------------
  // The API speaks WebAuthn's JSON (binary fields in base64url); the browser's
  // navigator.credentials speaks ArrayBuffers.

  function fromBase64url(text) {
    const base64 = text.replace(/-/g, "+").replace(/_/g, "/");
    const binary = atob(base64 + "=".repeat((4 - (base64.length % 4)) % 4));
    return Uint8Array.from(binary, (c) => c.charCodeAt(0)).buffer;
  }

  function toBase64url(buffer) {
    let binary = "";
    for (const byte of new Uint8Array(buffer)) binary += String.fromCharCode(byte);
    return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function requestOptions(options) {
    return {
      ...options,
      challenge: fromBase64url(options.challenge),
      allowCredentials: (options.allowCredentials || []).map((c) => ({
        ...c,
        id: fromBase64url(c.id),
      })),
    };
  }

  function assertion(credential) {
    const response = credential.response;
    return {
      id: credential.id,
      rawId: toBase64url(credential.rawId),
      type: credential.type,
      response: {
        clientDataJSON: toBase64url(response.clientDataJSON),
        authenticatorData: toBase64url(response.authenticatorData),
        signature: toBase64url(response.signature),
        userHandle: response.userHandle ? toBase64url(response.userHandle) : null,
      },
      clientExtensionResults: credential.getClientExtensionResults(),
      authenticatorAttachment: credential.authenticatorAttachment,
    };
  }

  // Ask the API for options, the authenticator for a signature, then the API for tokens.
  async function withPasskey(begin, beginBody, finishPath, finishBody) {
    error.textContent = "";
    const begun = await answer(await post(begin, beginBody));
    if (!begun) return;
    let credential;
    try {
      credential = await navigator.credentials.get({ publicKey: requestOptions(begun.options) });
    } catch {
      error.textContent = "No passkey was used";
      return;
    }
    const body = await answer(
      await post(finishPath, {
        ...finishBody,
        challenge_id: begun.challenge_id,
        credential: assertion(credential),
      }),
    );
    if (body) finish(body);
  }

  if (window.PublicKeyCredential && navigator.credentials) {
    const signInButton = document.getElementById("passkey-sign-in");
    const secondFactorButton = document.getElementById("passkey-second-factor");
    signInButton.hidden = false;
    secondFactorButton.hidden = false;
    signInButton.addEventListener("click", () =>
      withPasskey("/auth/passkeys/sign-in/begin", {}, "/auth/passkeys/sign-in/finish", {}),
    );
    secondFactorButton.addEventListener("click", () =>
      withPasskey(
        "/auth/passkeys/second-factor/begin",
        { otp_token: otpToken },
        "/auth/passkeys/second-factor/finish",
        { otp_token: otpToken },
      ),
    );
  }
})();
