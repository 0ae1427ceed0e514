// k6 scenario (for those who have k6): sign up, log in, read profiles, upload a
// picture, call a feature-flagged endpoint. Run: k6 run load-test/load-test.js
// BASE_URL defaults to http://localhost:8000.
import http from "k6/http";
import { check, sleep } from "k6";

export const options = {
  stages: [
    { duration: "20s", target: 10 },
    { duration: "40s", target: 10 },
    { duration: "10s", target: 0 },
  ],
  thresholds: { http_req_failed: ["rate<0.01"], http_req_duration: ["p(95)<500"] },
};

const BASE = __ENV.BASE_URL || "http://localhost:8000";
const PASSWORD = "correct horse battery staple";
// A 1x1 PNG.
const PNG = http.file(
  Uint8Array.from(atob(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
  ), (c) => c.charCodeAt(0)).buffer,
  "me.png",
  "image/png",
);

export default function () {
  const name = `k6_${__VU}_${__ITER}_${Math.floor(Math.random() * 1e6)}`;
  const signup = http.post(`${BASE}/api/auth/signup`,
    JSON.stringify({ username: name, email: `${name}@example.com`, password: PASSWORD }),
    { headers: { "Content-Type": "application/json" } });
  check(signup, { "signed up": (r) => r.status === 201 });

  const login = http.post(`${BASE}/api/auth/login`, { username: name, password: PASSWORD });
  check(login, { "logged in": (r) => r.status === 200 });
  const headers = { Authorization: `Bearer ${login.json("access_token")}` };

  const me = http.get(`${BASE}/api/users/me`, { headers });
  check(me, { "read me": (r) => r.status === 200 });
  const uuid = me.json("uuid");
  check(http.get(`${BASE}/api/user/${uuid}`, { headers }), { "read profile": (r) => r.status === 200 });

  const upload = http.put(`${BASE}/api/user/${uuid}/pfp`, { file: PNG }, { headers });
  check(upload, { "picture uploaded": (r) => r.status === 204 });

  // Every endpoint is behind its own feature flag (FEATURE_FLAGS_ENABLED=True).
  const flagged = http.get(`${BASE}/api/auth/token/validate`, { headers });
  check(flagged, { "flagged endpoint answered": (r) => r.status === 200 || r.status === 403 });
  sleep(1);
}
