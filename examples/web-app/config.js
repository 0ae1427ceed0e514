// Where the UserManager API answers. The service must list this page's origin in
// CORS_ORIGINS, e.g. CORS_ORIGINS=http://localhost:5173.
window.USERMANAGER_API = "http://localhost:8000/api";
