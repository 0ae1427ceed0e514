// Swagger UI for this service. When signed in, "Try it out" sends the docs session's
// access token. The page is never given that token in its HTML: it asks for it with a
// same-origin POST to /docs/token (the HttpOnly cookie authenticates that call), keeps
// it in this closure only, and sends it to this origin only.
"use strict";
(() => {
  const root = document.getElementById("swagger-ui");
  const credential =
    root.dataset.signedIn === "true"
      ? fetch("/docs/token", { method: "POST", credentials: "same-origin", cache: "no-store" })
          .then((response) => (response.ok ? response.json() : null))
          .then((body) => (body ? body.access_token : null))
          .catch(() => null)
      : Promise.resolve(null);

  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    layout: "BaseLayout",
    deepLinking: true,
    validatorUrl: null,
    oauth2RedirectUrl: window.location.origin + "/docs/oauth2-redirect",
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
    requestInterceptor: async (request) => {
      const target = new URL(request.url, window.location.href);
      const token = await credential;
      if (token && target.origin === window.location.origin && !request.headers.Authorization) {
        request.headers.Authorization = "Bearer " + token;
      }
      return request;
    },
  });
})();
