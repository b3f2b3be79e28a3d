// Tokens arrive in the URL fragment (#token=...), which browsers never send to
// the server. Take the token, drop it from the address bar so it does not
// linger in history or screenshots, and keep it in sessionStorage (this tab
// only) so a reload still works.

export function takeToken(storageKey) {
  const params = new URLSearchParams(location.hash.replace(/^#/, ""));
  if (params.has("token")) {
    const token = params.get("token");
    params.delete("token");
    const rest = params.toString();
    history.replaceState(history.state, "", location.pathname + location.search + (rest ? `#${rest}` : ""));
    if (token) {
      try {
        sessionStorage.setItem(storageKey, token);
      } catch {
        // Storage can be disabled (private modes); the token still works for this page view.
      }
      return token;
    }
  }
  try {
    return sessionStorage.getItem(storageKey);
  } catch {
    return null;
  }
}

export function forgetToken(storageKey) {
  try {
    sessionStorage.removeItem(storageKey);
  } catch {
    // nothing stored
  }
}
