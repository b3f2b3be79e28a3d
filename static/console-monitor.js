// Silent monitoring of a live social call (SPEC §5, `mode: "monitor"`).
//
// MonitorClient speaks the same signaling as a participant, but joins with
// `mode: "monitor"`, offers receive-only audio and video, and answers the
// server's offers that add each participant's media. It publishes nothing,
// never reconnects by itself, and ends on any close. (CallClient in call.js
// always publishes a local stream and cannot join as a monitor.)
//
// MonitorView draws one tile per participant with the client's media.

import {
  addRemoteCandidate,
  applyAnswer,
  candidateMessage,
  closeSocket,
  iceGatheringDone,
  openSocket,
  socketUrl,
  trackOwner,
} from "./call.js";
import { h, putTrack, removeTile } from "./ui.js";

const ICE_GATHERING_LIMIT_MS = 2000;

export class MonitorClient extends EventTarget {
  #token;
  #visit;
  #url;
  #ws = null;
  #pc = null;
  #queue = Promise.resolve();
  #offerSent = false;
  #ended = null;
  #error = null;

  constructor({ token, visit, url }) {
    super();
    this.#token = token;
    this.#visit = visit;
    this.#url = url ?? socketUrl("/ws");
  }

  get ended() {
    return this.#ended !== null;
  }

  start() {
    this.#emit("status", { phase: "connecting" });
    const ws = openSocket(this.#url, (current) => current === this.#ws, {
      open: () => this.#send({ type: "join", token: this.#token, visit: this.#visit, mode: "monitor" }),
      message: (message) => {
        if (message && typeof message.type === "string") this.#handle(message);
      },
      close: (event) => {
        this.#finish({ code: event.code, reason: this.#error?.code ?? event.reason, message: this.#error?.message ?? "" });
      },
    });
    if (!ws) throw new SyntaxError(`the browser refused the WebSocket URL ${this.#url}`);
    this.#ws = ws;
  }

  /** Stop monitoring: the server answers a `leave` with close 1000. */
  stop() {
    if (this.#ended) return;
    this.#send({ type: "leave" });
    this.#finish({ code: 1000, reason: "left", message: "" });
  }

  #handle(message) {
    if (this.#ended) return;
    switch (message.type) {
      case "joined":
        this.#emit("joined", message);
        this.#enqueue(() => this.#offer(message.ice_servers ?? []));
        break;
      case "answer":
        this.#enqueue(() => applyAnswer(this.#pc, message.sdp));
        break;
      case "offer":
        this.#enqueue(async () => {
          const pc = this.#pc;
          if (!pc) return;
          await pc.setRemoteDescription({ type: "offer", sdp: message.sdp });
          await pc.setLocalDescription(await pc.createAnswer());
          this.#send({ type: "answer", sdp: pc.localDescription.sdp });
        });
        break;
      case "candidate":
        if (message.candidate) this.#enqueue(() => addRemoteCandidate(this.#pc, message));
        break;
      case "participant-joined":
        this.#emit("participant-joined", { participant: message.participant });
        break;
      case "participant-left":
        this.#emit("participant-left", { id: message.participant });
        break;
      case "terminated":
        this.#error = { code: message.reason ?? "terminated", message: message.message ?? message.directive?.reason ?? "" };
        break;
      case "error":
        this.#error = { code: message.code, message: message.message ?? "" };
        this.#emit("problem", this.#error);
        break;
      default:
        break;
    }
  }

  async #offer(iceServers) {
    const pc = new RTCPeerConnection({ iceServers });
    this.#pc = pc;
    pc.addEventListener("track", (event) => {
      this.#emit("track", { participantId: trackOwner(event), track: event.track });
    });
    pc.addEventListener("icecandidate", (event) => {
      if (!this.#offerSent || !event.candidate) return;
      this.#send(candidateMessage(event.candidate));
    });
    pc.addEventListener("connectionstatechange", () => {
      const phase = { connected: "connected", disconnected: "unstable", failed: "failed" }[pc.connectionState];
      if (phase) this.#emit("status", { phase });
      if (pc.connectionState === "failed") this.#finish({ code: 0, reason: "failed", message: "The media connection failed." });
    });
    pc.addTransceiver("audio", { direction: "recvonly" });
    pc.addTransceiver("video", { direction: "recvonly" });
    await pc.setLocalDescription(await pc.createOffer());
    await iceGatheringDone(pc, ICE_GATHERING_LIMIT_MS);
    this.#send({ type: "offer", sdp: pc.localDescription.sdp });
    this.#offerSent = true;
  }

  #enqueue(step) {
    this.#queue = this.#queue
      .then(() => (this.#ended ? undefined : step()))
      .catch((error) => console.warn("parlor: monitor signaling step failed", error));
  }

  #send(message) {
    if (this.#ws?.readyState === WebSocket.OPEN) this.#ws.send(JSON.stringify(message));
  }

  #finish(ending) {
    if (this.#ended) return;
    this.#ended = ending;
    this.#pc?.close();
    this.#pc = null;
    closeSocket(this.#ws);
    this.#ws = null;
    this.#emit("ended", ending);
  }

  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}

const ENDINGS = {
  privileged: "Privileged visits are never monitored.",
  forbidden: "Your role cannot monitor calls.",
  "visit-over": "The visit is over.",
};

/**
 * The monitoring panel: one tile per participant, sound toggle, stop button.
 * `nameOf(participantId)` gives a tile its caption.
 */
export class MonitorView {
  #section;
  #client;
  #nameOf;
  #tiles = new Map();
  #el = {};
  #soundOn = true;
  #onClosed;

  constructor(section, { client, title, nameOf, onClosed }) {
    this.#section = section;
    this.#client = client;
    this.#nameOf = nameOf;
    this.#onClosed = onClosed;
    this.#build(title);
    client.addEventListener("status", (e) => this.#status(e.detail.phase));
    client.addEventListener("joined", () => this.#status("joined"));
    client.addEventListener("track", (e) => this.#addTrack(e.detail.participantId, e.detail.track));
    client.addEventListener("participant-left", (e) => this.#removeTile(e.detail.id));
    client.addEventListener("ended", (e) => this.#ended(e.detail));
  }

  focus() {
    this.#el.heading.focus();
  }

  #build(title) {
    const el = this.#el;
    el.heading = h("h2", { id: "monitor-title", tabindex: "-1" }, `Monitoring: ${title}`);
    el.status = h("p", { class: "monitor-status", id: "monitor-status", role: "status" }, "Connecting…");
    el.tiles = h("div", { class: "monitor-tiles", id: "monitor-tiles" });
    el.sound = h("button", { type: "button", class: "toggle", id: "monitor-sound", "aria-pressed": "false" }, "Mute sound");
    el.stop = h("button", { type: "button", class: "button button--primary", id: "monitor-stop" }, "Stop monitoring");
    el.sound.addEventListener("click", () => this.#setSound(!this.#soundOn));
    el.stop.addEventListener("click", () => {
      if (this.#client.ended) this.#close();
      else this.#client.stop();
    });
    this.#section.replaceChildren(
      el.heading,
      h(
        "p",
        { class: "monitor-note" },
        "Receive-only and silent: the participants are not told you joined (social visits tell them up front that calls may be monitored).",
      ),
      el.status,
      el.tiles,
      h("div", { class: "actions" }, el.sound, el.stop),
    );
    this.#section.hidden = false;
  }

  #status(phase) {
    const text = {
      connecting: "Connecting…",
      joined: "Joined. Waiting for media…",
      connected: "Receiving the call.",
      unstable: "The connection is unstable…",
      failed: "The media connection failed.",
    }[phase];
    if (text) this.#el.status.textContent = text;
    this.#section.dataset.phase = phase;
  }

  #tile(id) {
    let tile = this.#tiles.get(id);
    if (tile) return tile;
    const video = h("video", { class: "monitor-video", autoplay: true, playsinline: true, "data-participant": id });
    video.muted = !this.#soundOn;
    const caption = h("figcaption", {}, this.#nameOf(id));
    const stream = new MediaStream();
    video.srcObject = stream;
    const element = h("figure", { class: "monitor-tile" }, video, caption);
    tile = { element, video, stream };
    this.#tiles.set(id, tile);
    this.#el.tiles.append(element);
    return tile;
  }

  #addTrack(id, track) {
    const tile = this.#tile(id);
    putTrack(tile.stream, track);
    track.addEventListener("ended", () => tile.stream.removeTrack(track));
    this.#play(tile.video);
  }

  #play(video) {
    video.play().catch((error) => {
      if (error?.name !== "NotAllowedError") return;
      // Sound needs a click first: play muted, and let the sound button turn it on.
      this.#setSound(false);
      video.play().catch(() => {});
    });
  }

  #setSound(on) {
    this.#soundOn = on;
    this.#el.sound.setAttribute("aria-pressed", String(!on));
    this.#el.sound.textContent = on ? "Mute sound" : "Turn sound on";
    for (const tile of this.#tiles.values()) {
      tile.video.muted = !on;
      if (on) tile.video.play().catch(() => {});
    }
  }

  #removeTile(id) {
    removeTile(this.#tiles, id);
  }

  #ended({ code, reason, message }) {
    for (const id of [...this.#tiles.keys()]) this.#removeTile(id);
    this.#section.dataset.phase = "ended";
    if (reason === "left") {
      this.#close();
      return;
    }
    this.#el.status.textContent = ENDINGS[reason] ?? (message || (code === 4410 ? "The visit is over." : "Monitoring ended: the call is over."));
    this.#el.sound.hidden = true;
    this.#el.stop.textContent = "Close";
  }

  #close() {
    for (const id of [...this.#tiles.keys()]) this.#removeTile(id);
    this.#section.hidden = true;
    this.#section.replaceChildren();
    this.#onClosed?.();
  }
}
