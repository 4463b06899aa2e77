// The admin API (/api/v1/admin, docs/compliance.md) for the console: the login
// (password + TOTP), bearer token calls, and the step-up for sensitive operations
// (a fresh TOTP code in X-Tongxin-TOTP when the node asks for one).
export const PREFIX = "/api/v1/admin";
const KEY = "tongxin.console.session";

export class ApiError extends Error {
  constructor(status, body) {
    super(body?.message || `HTTP ${status}`);
    this.status = status;
    this.code = body?.error || "";
    this.body = body || {};
  }
}

let session = null;
try {
  session = JSON.parse(sessionStorage.getItem(KEY) || "null");
} catch {
  session = null;
}
let onSignedOut = () => {};
let askStepUp = async () => null;

export const getSession = () => session;
export function configure({ signedOut, stepUp }) {
  onSignedOut = signedOut;
  askStepUp = stepUp;
}

function forget() {
  session = null;
  sessionStorage.removeItem(KEY);
}

async function parse(resp) {
  const type = resp.headers.get("content-type") || "";
  return type.includes("json") ? resp.json() : { message: await resp.text() };
}

export async function login(username, password, totp) {
  const resp = await fetch(`${PREFIX}/login`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ username, password, totp, device_id: "admin-console" }),
  });
  const body = await parse(resp);
  if (!resp.ok) throw new ApiError(resp.status, body);
  session = { username: username.trim().toLowerCase(), userId: body.user_id, role: body.role,
    token: body.token, permissions: body.permissions, expiresAt: body.expires_at_ms };
  sessionStorage.setItem(KEY, JSON.stringify(session));
  return session;
}

export async function logout() {
  if (session) {
    try {
      await call("POST", "/logout");
    } catch {
      // signed out locally all the same
    }
  }
  forget();
}

// call(method, path, body): the answer's JSON, or an ApiError. A 401 ends the
// session; STEP_UP_REQUIRED/STEP_UP_FAILED ask for a TOTP code and try again.
export async function call(method, path, body, totp = "") {
  if (!session) throw new ApiError(401, { error: "NOT_AUTHENTICATED", message: "not signed in" });
  const headers = { authorization: `Bearer ${session.token}` };
  if (body !== undefined) headers["content-type"] = "application/json";
  if (totp) headers["x-tongxin-totp"] = totp;
  const resp = await fetch(PREFIX + path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await parse(resp);
  if (resp.ok) return data;
  const err = new ApiError(resp.status, data);
  if (resp.status === 401 && path !== "/logout") {
    forget();
    onSignedOut(err);
  } else if (resp.status === 403 && (err.code === "STEP_UP_REQUIRED" || err.code === "STEP_UP_FAILED")) {
    const code = await askStepUp(err);
    if (code) return call(method, path, body, code);
  }
  throw err;
}

// fetchFile(path): a file the admin API serves (an export's), as text, with the
// same session, sign-out and step-up handling as call().
export async function fetchFile(path, totp = "") {
  if (!session) throw new ApiError(401, { error: "NOT_AUTHENTICATED", message: "not signed in" });
  const headers = { authorization: `Bearer ${session.token}` };
  if (totp) headers["x-tongxin-totp"] = totp;
  const resp = await fetch(PREFIX + path, { headers, cache: "no-store" });
  if (resp.ok) return resp.text();
  const err = new ApiError(resp.status, await parse(resp));
  if (resp.status === 401) {
    forget();
    onSignedOut(err);
  } else if (resp.status === 403 && (err.code === "STEP_UP_REQUIRED" || err.code === "STEP_UP_FAILED")) {
    const code = await askStepUp(err);
    if (code) return fetchFile(path, code);
  }
  throw err;
}

// The node's own public endpoints (/readyz answers 503 with a body when not ready).
export async function publicGet(path) {
  const resp = await fetch(path, { cache: "no-store" });
  return { status: resp.status, body: await parse(resp) };
}
