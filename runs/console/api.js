// The /v1 API with the session's token. The token lives in sessionStorage only: it is sent
// in the Authorization header, never put in a URL, and forgotten on sign-out.

const TOKEN_KEY = "runlog.token";

export const session = {
  get token() {
    return sessionStorage.getItem(TOKEN_KEY);
  },
  set(token) {
    sessionStorage.setItem(TOKEN_KEY, token);
  },
  clear() {
    sessionStorage.removeItem(TOKEN_KEY);
  },
};

/** An error response in the API's shape: {code, message, details, trace_id}. */
export class ApiError extends Error {
  constructor(status, body) {
    const message = body && typeof body.message === "string" ? body.message : `HTTP ${status}`;
    super(message);
    this.status = status;
    this.code = body && body.code ? body.code : `http.${status}`;
    this.traceId = body && body.trace_id ? body.trace_id : null;
  }
}

/** Fired on window when the server no longer accepts the token (revoked key, expiry). */
export const SIGNED_OUT = "runlog:signed-out";

export function authHeaders(token = session.token) {
  return { Authorization: `Bearer ${token}` };
}

export async function api(method, path, body, token = session.token) {
  const headers = { ...authHeaders(token), Accept: "application/json" };
  const init = { method, headers, cache: "no-store" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const isJson = (response.headers.get("Content-Type") || "").startsWith("application/json");
  const data = isJson ? await response.json() : null;
  if (response.status === 401 && token === session.token && token) {
    session.clear();
    window.dispatchEvent(new CustomEvent(SIGNED_OUT));
  }
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

/** Exchange a login and password for an access token. */
export async function login(name, password) {
  const response = await fetch("/v1/auth/login", {
    method: "POST",
    headers: { "Content-Type": "application/json", Accept: "application/json" },
    body: JSON.stringify({ login: name, password }),
    cache: "no-store",
  });
  const data = await response.json().catch(() => null);
  if (!response.ok) throw new ApiError(response.status, data);
  return data.access_token;
}

export function query(params) {
  const pairs = Object.entries(params).filter(([, v]) => v !== null && v !== undefined && v !== "");
  return pairs.length ? `?${new URLSearchParams(pairs)}` : "";
}

export const id = encodeURIComponent;
