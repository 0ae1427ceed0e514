// A web app on its own origin using UserManager through fetch() only: sign up,
// verify the email from the mailed link, sign in with JSON (and a second factor),
// show the profile picture, turn on an authenticator app, sign out.
//
// Tokens live in sessionStorage so that following the mailed link or reloading
// keeps the session for this tab. Any script on this origin can read them there:
// keep this origin free of third-party scripts, and its Content-Security-Policy
// strict.

const api = window.USERMANAGER_API;
const $ = (id) => document.getElementById(id);
const tokens = {
  get access() { return sessionStorage.getItem("access_token"); },
  get refresh() { return sessionStorage.getItem("refresh_token"); },
  keep(pair) {
    sessionStorage.setItem("access_token", pair.access_token);
    sessionStorage.setItem("refresh_token", pair.refresh_token);
    // A device token lets later logins from this browser skip strangers' lockouts.
    if (pair.device_token) localStorage.setItem("device_token", pair.device_token);
  },
  forget() {
    sessionStorage.removeItem("access_token");
    sessionStorage.removeItem("refresh_token");
  },
};
let otpToken = null;

function say(text) {
  $("status").textContent = text;
}

// One call to the API. Errors come as {detail, code} (plus errors[] for a 422).
async function call(path, { method = "GET", body, auth = true, retried = false } = {}) {
  const headers = {};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (auth && tokens.access) headers.Authorization = `Bearer ${tokens.access}`;
  const device = localStorage.getItem("device_token");
  if (device) headers["X-Device-Token"] = device;
  const answer = await fetch(`${api}${path}`, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (answer.status === 401 && auth && tokens.refresh && !retried) {
    // The access token ran out: trade the refresh token once, then try again.
    const refreshed = await fetch(`${api}/auth/refresh`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ refresh_token: tokens.refresh }),
    });
    if (refreshed.ok) {
      tokens.keep(await refreshed.json());
      return call(path, { method, body, auth, retried: true });
    }
    tokens.forget();
  }
  const data = answer.status === 204 ? null : await answer.json();
  if (!answer.ok) throw new Error(`${data.code}: ${data.detail}`);
  return data;
}

function fields(form) {
  return Object.fromEntries(new FormData(form).entries());
}

function show(section) {
  for (const id of ["signed-out", "signed-in", "verify"]) $(id).hidden = id !== section;
}

async function showAccount() {
  const me = await call("/users/me");
  $("username").textContent = me.username;
  $("email").textContent = me.email;
  $("verified").textContent = me.email_verified ? "verified" : "not verified";
  $("otp-method").textContent = me.otp_method;
  // A signed, expiring URL: an <img> needs no Authorization header.
  $("avatar").src = me.picture_url;
  $("otp-setup").hidden = me.otp_method !== "none";
  show("signed-in");
}

async function signedIn(pair) {
  tokens.keep(pair);
  $("otp").hidden = true;
  await showAccount();
  say("Signed in.");
}

function handle(form, action) {
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      await action(fields(form));
    } catch (error) {
      say(error.message);
    }
  });
}

handle($("signup"), async ({ username, email, password }) => {
  await call("/auth/signup", { method: "POST", auth: false, body: { username, email, password } });
  say("Account created. Check your mail for the verification link.");
});

handle($("login"), async ({ username, password }) => {
  const answer = await call("/auth/login", { method: "POST", auth: false, body: { username, password } });
  if (answer.otp_required) {
    otpToken = answer.otp_token;
    $("otp").hidden = false;
    say("Enter the code from your authenticator app.");
    return;
  }
  await signedIn(answer);
});

handle($("otp"), async ({ code }) => {
  const pair = await call("/auth/otp/verify", { method: "POST", auth: false, body: { otp_token: otpToken, code } });
  await signedIn(pair);
});

handle($("otp-setup"), async ({ password }) => {
  const setup = await call("/auth/otp/setup", { method: "POST", body: { method: "authenticator", password } });
  $("qr").src = `data:image/png;base64,${setup.qr_png}`;
  $("otp-uri").textContent = setup.provisioning_uri;
  $("otp-setup").hidden = true;
  $("otp-enable").hidden = false;
  say("Scan the code, then type the code your app shows.");
});

handle($("otp-enable"), async ({ code }) => {
  await call("/auth/otp/enable", { method: "POST", body: { method: "authenticator", code } });
  $("otp-enable").hidden = true;
  await showAccount();
  say("Two-factor authentication is on.");
});

$("logout").addEventListener("click", async () => {
  try {
    await call("/auth/logout", { method: "POST" });
  } finally {
    tokens.forget();
    show("signed-out");
    say("Signed out.");
  }
});

async function start() {
  // The mailed link opens FRONTEND_URL + FRONTEND_VERIFY_PATH?token=...: send the
  // token to the API in a POST body, then drop it from the address bar and history.
  if (location.pathname === "/verify-email") {
    const token = new URLSearchParams(location.search).get("token");
    history.replaceState(null, "", "/verify-email");
    show("verify");
    try {
      await call("/auth/email/verify", { method: "POST", auth: false, body: { token } });
      say("Email verified.");
    } catch (error) {
      say(error.message);
    }
    return;
  }
  if (tokens.access) {
    try {
      await showAccount();
      return;
    } catch {
      tokens.forget();
    }
  }
  show("signed-out");
}

start();
