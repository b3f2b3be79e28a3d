// PresenceLink: the kiosk page's presence connection on /ws (signaling/presence.py),
// held the whole time the page is open, so staff see the kiosk online.
//
//   page:   {"type": "presence", "token": "<device token>"}
//   server: {"type": "present", "device", "heartbeat_seconds", "timeout_seconds"}
//   page:   {"type": "heartbeat"} every heartbeat_seconds; the server echoes it.
//
// After a drop it connects again with back-off; not after 4401 (bad token),
// 4403 (not a kiosk) or 4409 (a newer connection of this kiosk took over).
//
// Events: status {phase: "connecting"|"online"|"offline"|"stopped", attempt?}

import { closeSocket, openSocket, socketUrl } from "./call.js";

const RETRY_DELAYS_MS = [1000, 2000, 5000, 10000, 15000];
const FINAL_CLOSE_CODES = new Set([4401, 4403, 4409]);

export class PresenceLink extends EventTarget {
  #token;
  #url;
  #ws = null;
  #beat = null;
  #retry = null;
  #attempt = 0;
  #stopped = false;

  constructor({ token, url }) {
    super();
    this.#token = token;
    this.#url = url ?? socketUrl("/ws");
  }

  start() {
    this.#connect();
    window.addEventListener("online", () => this.#retryNow());
  }

  stop() {
    this.#stopped = true;
    clearInterval(this.#beat);
    clearTimeout(this.#retry);
    closeSocket(this.#ws);
    this.#emit("stopped");
  }

  #connect() {
    this.#retry = null;
    if (this.#stopped) return;
    this.#emit("connecting");
    const ws = openSocket(this.#url, (current) => current === this.#ws, {
      open: () => ws.send(JSON.stringify({ type: "presence", token: this.#token })),
      message: (data) => this.#handle(ws, data),
      close: (event) => this.#closed(event),
    });
    this.#ws = ws;
    if (!ws) this.#later();
  }

  #handle(ws, data) {
    if (data?.type === "present") {
      this.#attempt = 0;
      clearInterval(this.#beat);
      const every = Math.max(1, Number(data.heartbeat_seconds) || 10) * 1000;
      this.#beat = setInterval(() => {
        if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "heartbeat" }));
      }, every);
      this.#emit("online");
    }
  }

  #closed(event) {
    clearInterval(this.#beat);
    this.#ws = null;
    if (this.#stopped) return;
    this.#emit("offline");
    if (FINAL_CLOSE_CODES.has(event.code)) {
      this.#stopped = true;
      this.#emit("stopped");
      return;
    }
    this.#later();
  }

  #later() {
    if (this.#stopped || this.#retry) return;
    const delay = RETRY_DELAYS_MS[Math.min(this.#attempt, RETRY_DELAYS_MS.length - 1)];
    this.#attempt += 1;
    this.#retry = setTimeout(() => this.#connect(), delay);
  }

  #retryNow() {
    if (!this.#retry || this.#stopped) return;
    clearTimeout(this.#retry);
    this.#connect();
  }

  #emit(phase) {
    this.dispatchEvent(new CustomEvent("status", { detail: { phase, attempt: this.#attempt } }));
  }
}
