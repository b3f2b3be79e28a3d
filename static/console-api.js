// The console's side of the REST API (SPEC §6): one fetch wrapper that sends
// the bearer token and turns `{"error": {code, message}}` answers into an
// ApiError, plus reading the token's claims for display.

export class ApiError extends Error {
  /**
   * @param {number} status  HTTP status (0 when the server could not be reached)
   * @param {string} code    the API's error code, e.g. "self-confirmation"
   * @param {string} message the API's own words
   */
  constructor(status, code, message) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
  }
}

export class Api {
  #token;
  #onUnauthorized;

  /**
   * @param {string} token  a staff token (operator, supervisor or auditor)
   * @param {{onUnauthorized?: (error: ApiError) => void}} [options]
   */
  constructor(token, { onUnauthorized } = {}) {
    this.#token = token;
    this.#onUnauthorized = onUnauthorized ?? (() => {});
  }

  get(path) {
    return this.request("GET", path);
  }

  post(path, body = {}) {
    return this.request("POST", path, body);
  }

  patch(path, body = {}) {
    return this.request("PATCH", path, body);
  }

  put(path, body = {}) {
    return this.request("PUT", path, body);
  }

  async request(method, path, body) {
    const headers = { Authorization: `Bearer ${this.#token}`, Accept: "application/json" };
    const init = { method, headers, cache: "no-store" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(`/api/v1${path}`, init);
    } catch {
      throw new ApiError(0, "network", "The server could not be reached. Check the connection and try again.");
    }
    let payload = null;
    try {
      payload = await response.json();
    } catch {
      payload = null;
    }
    if (response.ok) return payload;
    const error = new ApiError(
      response.status,
      payload?.error?.code ?? `http-${response.status}`,
      payload?.error?.message ?? `The server answered ${response.status} ${response.statusText}.`,
    );
    if (response.status === 401) this.#onUnauthorized(error);
    throw error;
  }
}

/**
 * The claims of a JWT, for display only: the server checks the signature and
 * decides what the holder may do. Returns null for anything that is not a JWT.
 */
export function readClaims(token) {
  const part = String(token ?? "").split(".")[1];
  if (!part) return null;
  try {
    const base64 = part.replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(part.length / 4) * 4, "=");
    const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
    const claims = JSON.parse(new TextDecoder().decode(bytes));
    return claims && typeof claims === "object" ? claims : null;
  } catch {
    return null;
  }
}

/** Staff roles that may write (issue, lift, end, decide); auditors only read. */
export const WRITER_ROLES = new Set(["operator", "supervisor"]);
export const STAFF_ROLES = new Set(["operator", "supervisor", "auditor"]);
