// EventStream: the staff event stream (`/api/v1/events`, see signaling/events.py).
// Every audit event is pushed as it happens, so the console never polls. After
// a network loss it reconnects with `after` = the last sequence number it saw,
// and the server replays what was missed, in order.
//
// Events (CustomEvent, payload in `detail`):
//   status  {phase: "connecting"|"live"|"reconnecting"|"stopped", attempt?, delayMs?, message?}
//   ready   {head, resumed}   the server's `ready`; `resumed` is true after a reconnect
//   event   the audit event {seq, at, actor, action, subject, data}
//   fatal   {code, message}   the token was refused: reconnecting cannot help

import { closeSocket, openSocket, socketUrl } from "./call.js";

const RETRY_DELAYS_MS = [500, 1000, 2000, 4000, 8000, 15000];
const FINAL_CLOSE_CODES = new Set([4401, 4403]);

export class EventStream extends EventTarget {
  #token;
  #url;
  #ws = null;
  #lastSeq = null;
  #attempt = 0;
  #retryTimer = null;
  #stopped = false;
  #everReady = false;
  #error = null;
  #onOnline = () => this.#retryNow();

  constructor({ token, url }) {
    super();
    this.#token = token;
    this.#url = url ?? socketUrl("/api/v1/events");
  }

  /** The sequence number of the last event received (null before the first). */
  get lastSeq() {
    return this.#lastSeq;
  }

  start() {
    window.addEventListener("online", this.#onOnline);
    this.#connect();
  }

  stop() {
    this.#stopped = true;
    window.removeEventListener("online", this.#onOnline);
    clearTimeout(this.#retryTimer);
    this.#retryTimer = null;
    closeSocket(this.#ws);
    this.#ws = null;
    this.#emit("status", { phase: "stopped" });
  }

  /** Drop the current connection as if the network had failed (used by tests and "Reconnect now"). */
  drop() {
    closeSocket(this.#ws, 4000, "dropped");
  }

  #connect() {
    this.#retryTimer = null;
    if (this.#stopped) return;
    this.#emit("status", this.#attempt ? { phase: "reconnecting", attempt: this.#attempt } : { phase: "connecting" });
    const ws = openSocket(this.#url, (current) => current === this.#ws, {
      open: () => {
        const auth = { type: "auth", token: this.#token };
        if (this.#lastSeq !== null) auth.after = this.#lastSeq;
        ws.send(JSON.stringify(auth));
      },
      message: (data) => this.#handle(data),
      close: (event) => this.#onClose(event),
    });
    if (!ws) {
      this.#retryLater();
      return;
    }
    this.#ws = ws;
    this.#error = null;
  }

  #onClose(event) {
    this.#ws = null;
    if (this.#stopped) return;
    if (FINAL_CLOSE_CODES.has(event.code)) {
      this.#stopped = true;
      this.#emit("fatal", {
        code: this.#error?.code ?? String(event.code),
        message: this.#error?.message ?? "The server refused this sign-in.",
      });
      this.#emit("status", { phase: "stopped", message: this.#error?.message });
      return;
    }
    this.#retryLater();
  }

  #handle(data) {
    if (data?.type === "ready") {
      let resumed = this.#everReady;
      this.#everReady = true;
      this.#attempt = 0;
      // A head behind what we saw means a different audit log (a restored
      // store): the server starts from its head, and everything is reloaded.
      if (this.#lastSeq !== null && Number.isInteger(data.head) && data.head < this.#lastSeq) {
        this.#lastSeq = null;
        resumed = false;
      }
      // Before the first event, the head is where the stream starts.
      if (this.#lastSeq === null && Number.isInteger(data.head)) this.#lastSeq = data.head;
      this.#emit("ready", { head: data.head, resumed });
      this.#emit("status", { phase: "live" });
    } else if (data?.type === "event" && data.event && Number.isInteger(data.event.seq)) {
      if (this.#lastSeq !== null && data.event.seq <= this.#lastSeq) return; // already seen
      this.#lastSeq = data.event.seq;
      this.#emit("event", data.event);
    } else if (data?.type === "error") {
      this.#error = { code: data.code, message: data.message };
    }
  }

  #retryLater() {
    if (this.#stopped || this.#retryTimer) return;
    const delayMs = RETRY_DELAYS_MS[Math.min(this.#attempt, RETRY_DELAYS_MS.length - 1)];
    this.#attempt += 1;
    this.#emit("status", { phase: "reconnecting", attempt: this.#attempt, delayMs });
    this.#retryTimer = setTimeout(() => this.#connect(), delayMs);
  }

  #retryNow() {
    if (!this.#retryTimer || this.#stopped) return;
    clearTimeout(this.#retryTimer);
    this.#connect();
  }

  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}
