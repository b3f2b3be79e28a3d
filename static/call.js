// CallClient: one participant's connection to a visit — the WebSocket
// signaling of SPEC §5 plus the RTCPeerConnection to the server's relay.
// Both call pages (family and kiosk) use it; it knows nothing about the DOM.
//
// Events (CustomEvent, payload in `detail`):
//   status             {phase: "connecting"|"joined"|"connected"|"unstable"|"reconnecting", attempt?, of?, delayMs?}
//   joined             the server's `joined` message
//   ends-at            {endsAt: Date}
//   participant-joined {participant: {id, role, name}}
//   participant-left   {id}
//   track              {participantId, track}
//   restricted         {action: "audio-only"|"none", directive}  ("none": video is allowed again)
//   hold               {state: "waiting"|"paused"|"active", reason, guardians, message, ends_in?}
//                      (a minor: held back until a guardian of theirs is in the call)
//   participant-state  {participant: {id, role, name, minor, state}}  (a minor held back or let in)
//   problem            {code, message}  (an `error` from the server)
//   ended              {ending: {kind, reason, code, message, directive, errorCode?}}
//                      (kind "unsupported": this browser cannot call; reason says what it lacks)

import { explainForFamily, missingCallSupport, openDevice } from "./localmedia.js";

/** Close codes after which trying again cannot help (SPEC §5). */
const FINAL_CLOSE_CODES = new Map([
  [4401, "unauthorized"],
  [4403, "refused"],
  [4409, "replaced"],
  [4410, "visit-ended"],
]);
/** The visit's call lives on another node: join there (after a `redirect` message). */
const REDIRECT_CLOSE_CODE = 4307;
const MAX_REDIRECTS = 3;
const RETRY_DELAYS_MS = [1000, 2000, 4000, 8000, 16000];
const ICE_GATHERING_LIMIT_MS = 2000;
const LEAVE_GRACE_MS = 1500;

export class CallClient extends EventTarget {
  #token;
  #visit;
  #stream;
  #url;
  #ws = null;
  #pc = null;
  #videoTransceiver = null;
  #codecSet = new WeakSet();
  #joined = null;
  #ending = null;
  #leaving = false;
  #audioOnly = false;
  #hasCamera;
  #cameraDeviceId = null;
  #redirectTo = null;
  #redirects = 0;
  #offerSent = false;
  #attempt = 0;
  #generation = 0;
  #retryTimer = null;
  #lastError = null;
  #queue = Promise.resolve();
  #onOnline = () => this.#retryNow();

  /**
   * @param {object} options
   * @param {string} options.token  the bearer token (family or device)
   * @param {string} options.visit  the visit id
   * @param {MediaStream} options.localStream  microphone (+ camera, unless missing)
   * @param {string} [options.url]  WebSocket URL; defaults to /ws on this origin
   */
  constructor({ token, visit, localStream, url }) {
    super();
    this.#token = token;
    this.#visit = visit;
    this.#stream = localStream;
    this.#hasCamera = localStream.getVideoTracks().some((t) => t.readyState === "live");
    this.#url = url ?? socketUrl("/ws");
  }

  get joined() {
    return this.#joined;
  }

  get audioOnly() {
    return this.#audioOnly;
  }

  get ended() {
    return this.#ending !== null;
  }

  start() {
    // Without WebRTC no attempt can succeed: end at once, never join and retry.
    const missing = missingCallSupport();
    if (missing) {
      this.#finish({ kind: "unsupported", reason: missing, message: explainForFamily(missing) });
      return;
    }
    window.addEventListener("online", this.#onOnline);
    this.#connect();
  }

  /** Leave on purpose: tell the server, which answers with close 1000. */
  leave() {
    if (this.#ending) return;
    this.#leaving = true;
    if (this.#ws?.readyState === WebSocket.OPEN) {
      this.#send({ type: "leave" });
      setTimeout(() => this.#finish({ kind: "left", reason: "left" }), LEAVE_GRACE_MS);
    } else {
      this.#finish({ kind: "left", reason: "left" });
    }
  }

  setMicrophoneEnabled(on) {
    for (const track of this.#stream.getAudioTracks()) track.enabled = on;
  }

  setCameraEnabled(on) {
    if (this.#audioOnly) return;
    for (const track of this.#stream.getVideoTracks()) track.enabled = on;
  }

  // --- signaling -----------------------------------------------------------

  #connect() {
    this.#retryTimer = null;
    this.#generation += 1;
    this.#emit(
      "status",
      this.#attempt
        ? { phase: "reconnecting", attempt: this.#attempt, of: RETRY_DELAYS_MS.length }
        : { phase: "connecting" },
    );
    const ws = openSocket(this.#url, (current) => current === this.#ws, {
      open: () => this.#send({ type: "join", token: this.#token, visit: this.#visit }),
      message: (message) => {
        if (message && typeof message.type === "string") this.#handle(message);
      },
      close: (event) => this.#onClose(event),
    });
    if (!ws) {
      this.#retryLater();
      return;
    }
    this.#ws = ws;
  }

  #send(message) {
    if (this.#ws?.readyState === WebSocket.OPEN) this.#ws.send(JSON.stringify(message));
  }

  /**
   * Messages are handled in arrival order. SDP work is asynchronous, so it is
   * chained on a queue; everything else (including `terminated`) acts at
   * once, so that a close right behind it never overtakes it.
   */
  #handle(message) {
    if (this.#ending) return;
    switch (message.type) {
      case "joined":
        this.#joined = message;
        this.#lastError = null;
        if (message.audio_only) this.#audioOnly = true;
        this.#emit("joined", message);
        if (message.hold) this.#emit("hold", message.hold);
        this.#emit("status", { phase: "joined" });
        if (message.ends_at) this.#emit("ends-at", { endsAt: new Date(message.ends_at) });
        this.#enqueue(() => this.#startPeer(), { retryOnFailure: true });
        break;
      case "answer":
        this.#enqueue(() => applyAnswer(this.#pc, message.sdp), { retryOnFailure: true });
        break;
      case "offer":
        this.#enqueue(() => this.#acceptOffer(message.sdp));
        break;
      case "candidate":
        if (!message.candidate) break;
        this.#enqueue(() => addRemoteCandidate(this.#pc, message));
        break;
      case "participant-joined":
        this.#emit("participant-joined", { participant: message.participant });
        break;
      case "participant-left":
        this.#emit("participant-left", { id: message.participant });
        break;
      case "hold":
        this.#emit("hold", message);
        break;
      case "participant-state":
        this.#emit("participant-state", { participant: message.participant });
        break;
      case "time-remaining":
        if (Number.isFinite(message.seconds)) {
          this.#emit("ends-at", { endsAt: new Date(Date.now() + message.seconds * 1000) });
        }
        break;
      case "restricted":
        if (message.action === "audio-only") {
          this.#audioOnly = true;
          this.#enqueue(() => this.#stopSendingVideo());
          this.#emit("restricted", { action: message.action, directive: message.directive ?? null });
        } else if (message.action === "none" && this.#audioOnly) {
          // The restriction was lifted or expired: the camera may come back.
          this.#audioOnly = false;
          this.#enqueue(() => this.#resumeVideo());
        }
        break;
      case "terminated":
        this.#finish({
          kind: "terminated",
          reason: message.reason ?? "",
          message: message.message ?? "",
          directive: message.directive ?? null,
        });
        break;
      case "error":
        // A refusal by a directive carries the directive: keep it for the end screen.
        this.#lastError = {
          code: message.code,
          message: message.message ?? "",
          directive: message.directive ?? null,
        };
        this.#emit("problem", this.#lastError);
        break;
      case "redirect":
        if (/^wss?:\/\//.test(message.url ?? "")) this.#redirectTo = message.url;
        break;
      default:
        // Unknown message types are ignored so newer servers keep working.
        break;
    }
  }

  /** Chain an SDP step; steps of an abandoned connection are dropped. */
  #enqueue(step, { retryOnFailure = false } = {}) {
    const generation = this.#generation;
    const current = () => !this.#ending && generation === this.#generation;
    this.#queue = this.#queue
      .then(() => (current() ? step() : undefined))
      .catch((error) => {
        console.warn("parlor: signaling step failed", error);
        if (retryOnFailure && current()) this.#retryLater();
      });
  }

  #onClose(event) {
    if (this.#ending) return;
    if (this.#leaving) {
      this.#finish({ kind: "left", reason: "left" });
      return;
    }
    const message = this.#lastError?.message || event.reason || "";
    const directive = this.#lastError?.directive ?? null;
    if (event.code === REDIRECT_CLOSE_CODE && this.#redirectTo && this.#redirects < MAX_REDIRECTS) {
      this.#redirects += 1;
      this.#url = this.#redirectTo;
      this.#redirectTo = null;
      this.#closePeer();
      this.#connect();
    } else if (FINAL_CLOSE_CODES.has(event.code)) {
      const reason = FINAL_CLOSE_CODES.get(event.code);
      const errorCode = this.#lastError?.code ?? null;
      this.#finish({ kind: "closed", code: event.code, reason, message, directive, errorCode });
    } else if (event.code === 1000) {
      this.#finish({ kind: "closed", code: 1000, reason: "", message });
    } else {
      this.#retryLater();
    }
  }

  // --- reconnecting ----------------------------------------------------------

  /** The network or the peer connection broke: back off, then a fresh `join`. */
  #retryLater() {
    if (this.#ending || this.#retryTimer) return;
    this.#closePeer();
    closeSocket(this.#ws);
    this.#ws = null;

    const endsAt = this.#joined?.ends_at ? Date.parse(this.#joined.ends_at) : NaN;
    if (Date.now() >= endsAt) {
      this.#finish({ kind: "closed", reason: "visit-ended" });
      return;
    }
    if (this.#attempt >= RETRY_DELAYS_MS.length) {
      this.#finish({ kind: "network", reason: "" });
      return;
    }
    const delayMs = RETRY_DELAYS_MS[this.#attempt];
    this.#attempt += 1;
    this.#emit("status", { phase: "reconnecting", attempt: this.#attempt, of: RETRY_DELAYS_MS.length, delayMs });
    this.#retryTimer = setTimeout(() => this.#connect(), delayMs);
  }

  /** The browser says it is back online: do not wait out the back-off. */
  #retryNow() {
    if (!this.#retryTimer || this.#ending) return;
    clearTimeout(this.#retryTimer);
    this.#connect();
  }

  // --- media ---------------------------------------------------------------

  async #startPeer() {
    this.#closePeer();
    const pc = new RTCPeerConnection({ iceServers: this.#joined.ice_servers ?? [] });
    this.#pc = pc;
    window.__parlorPc = pc;

    pc.addEventListener("track", (event) => {
      if (pc !== this.#pc) return;
      this.#emit("track", { participantId: trackOwner(event), track: event.track });
    });
    pc.addEventListener("icecandidate", (event) => {
      // Candidates found before the offer went out are inside its SDP.
      if (pc !== this.#pc || !this.#offerSent || !event.candidate) return;
      this.#send(candidateMessage(event.candidate));
    });
    pc.addEventListener("connectionstatechange", () => {
      if (pc !== this.#pc) return;
      if (pc.connectionState === "connected") {
        this.#attempt = 0;
        this.#emit("status", { phase: "connected" });
      } else if (pc.connectionState === "disconnected") {
        this.#emit("status", { phase: "unstable" });
      } else if (pc.connectionState === "failed") {
        this.#retryLater();
      }
    });

    const audio = this.#stream.getAudioTracks()[0];
    const video = this.#stream.getVideoTracks()[0];
    if (audio) {
      pc.addTransceiver(audio, { direction: "sendrecv", streams: [this.#stream] });
    } else {
      pc.addTransceiver("audio", { direction: "recvonly" });
    }
    // One video m-line whatever happens, so the layout of the offer is stable.
    // No sendEncodings: the relay does not take simulcast. With a camera the
    // line stays sendrecv even while video is restricted, so that video can
    // come back with replaceTrack and no new offer.
    if (!this.#hasCamera) {
      this.#videoTransceiver = pc.addTransceiver("video", { direction: "recvonly" });
    } else if (video?.readyState === "live" && !this.#audioOnly) {
      this.#videoTransceiver = pc.addTransceiver(video, { direction: "sendrecv", streams: [this.#stream] });
    } else {
      this.#videoTransceiver = pc.addTransceiver("video", { direction: "sendrecv", streams: [this.#stream] });
      this.#releaseCamera();
    }
    this.#preferCodec(this.#videoTransceiver);

    await pc.setLocalDescription(await pc.createOffer());
    await iceGatheringDone(pc, ICE_GATHERING_LIMIT_MS);
    if (pc !== this.#pc) return;
    this.#send({ type: "offer", sdp: pc.localDescription.sdp });
    this.#offerSent = true;
  }

  /** The server adds or removes participants' media by offering. */
  async #acceptOffer(sdp) {
    const pc = this.#pc;
    if (!pc) return;
    await pc.setRemoteDescription({ type: "offer", sdp });
    for (const transceiver of pc.getTransceivers()) {
      if (transceiver.receiver.track?.kind === "video") this.#preferCodec(transceiver);
    }
    await pc.setLocalDescription(await pc.createAnswer());
    if (pc !== this.#pc) return;
    this.#send({ type: "answer", sdp: pc.localDescription.sdp });
  }

  /** Every leg of a visit must use the codec the server chose for it. */
  #preferCodec(transceiver) {
    if (this.#codecSet.has(transceiver) || transceiver.stopped) return;
    this.#codecSet.add(transceiver);
    if (typeof transceiver.setCodecPreferences !== "function") return;
    const capabilities = RTCRtpReceiver.getCapabilities?.("video");
    const codecs = pickVideoCodecs(this.#joined?.codec ?? "VP8", capabilities?.codecs ?? []);
    if (!codecs.length) {
      console.warn("parlor: this browser cannot use", this.#joined?.codec);
      return;
    }
    try {
      transceiver.setCodecPreferences(codecs);
    } catch (error) {
      console.warn("parlor: setCodecPreferences failed", error);
    }
  }

  async #stopSendingVideo() {
    this.#audioOnly = true;
    const sender = this.#videoTransceiver?.sender;
    if (sender?.track) await sender.replaceTrack(null);
    this.#releaseCamera();
  }

  /** No video will be sent on this call: switch the camera (and its light) off. */
  #releaseCamera() {
    if (!this.#audioOnly) return;
    for (const track of this.#stream.getVideoTracks()) {
      if (track.readyState === "live") this.#cameraDeviceId = track.getSettings().deviceId ?? null;
      track.stop();
    }
  }

  /** Video is allowed again: reopen the camera and send it on the same line. */
  async #resumeVideo() {
    if (this.#hasCamera) {
      let track = this.#stream.getVideoTracks().find((t) => t.readyState === "live");
      if (!track) {
        try {
          track = (await openDevice("video", this.#cameraDeviceId)).getVideoTracks()[0];
        } catch {
          track = (await openDevice("video").catch(() => null))?.getVideoTracks()[0];
        }
        for (const old of this.#stream.getVideoTracks()) this.#stream.removeTrack(old);
        if (track) this.#stream.addTrack(track);
      }
      const sender = this.#videoTransceiver?.sender;
      if (track && sender && !this.#audioOnly) await sender.replaceTrack(track);
    }
    this.#emit("restricted", { action: "none", directive: null });
  }

  #closePeer() {
    if (this.#pc) {
      this.#pc.close();
      if (window.__parlorPc === this.#pc) window.__parlorPc = null;
    }
    this.#pc = null;
    this.#videoTransceiver = null;
    this.#offerSent = false;
  }

  #finish(ending) {
    if (this.#ending) return;
    this.#ending = ending;
    window.removeEventListener("online", this.#onOnline);
    clearTimeout(this.#retryTimer);
    this.#retryTimer = null;
    this.#closePeer();
    closeSocket(this.#ws);
    this.#ws = null;
    this.#emit("ended", { ending });
  }

  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}

/**
 * The capability entries to keep for `name` ("VP8" or "H264"), plus RTX.
 * For H264 only Constrained Baseline 42e01f (else 42001f) with
 * packetization-mode=1, the profile the relay forwards.
 */
export function pickVideoCodecs(name, codecs) {
  const mime = `video/${String(name).toLowerCase()}`;
  let chosen = codecs.filter((codec) => codec.mimeType.toLowerCase() === mime);
  if (mime === "video/h264") {
    const modeOne = chosen.filter((codec) => fmtp(codec)["packetization-mode"] === "1");
    const profile = (id) => modeOne.filter((codec) => fmtp(codec)["profile-level-id"]?.toLowerCase() === id);
    chosen = profile("42e01f").length ? profile("42e01f") : profile("42001f");
  }
  if (!chosen.length) return [];
  return [...chosen, ...codecs.filter((codec) => codec.mimeType.toLowerCase() === "video/rtx")];
}

function fmtp(codec) {
  const params = {};
  for (const part of (codec.sdpFmtpLine ?? "").split(";")) {
    const [key, value] = part.split("=");
    if (key) params[key.trim()] = (value ?? "").trim();
  }
  return params;
}

/** Wait for ICE gathering to finish, but never longer than `limitMs` (also the monitor's). */
export function iceGatheringDone(pc, limitMs) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(done, limitMs);
    function done() {
      clearTimeout(timer);
      pc.removeEventListener("icegatheringstatechange", check);
      resolve();
    }
    function check() {
      if (pc.iceGatheringState === "complete") done();
    }
    pc.addEventListener("icegatheringstatechange", check);
  });
}

// --- shared with the monitor (console-monitor.js) and the event stream (console-events.js)

/** The WebSocket URL of `path` on this origin (wss: on an https: page). */
export function socketUrl(path) {
  return `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}${path}`;
}

/**
 * Open a WebSocket and pass its events on while `isCurrent(ws)` holds:
 * `open()`, `message(data)` with the parsed JSON (text that is not JSON is
 * dropped) and `close(event)`. Returns null if the browser refuses the URL.
 */
export function openSocket(url, isCurrent, { open, message, close }) {
  let ws;
  try {
    ws = new WebSocket(url);
  } catch {
    return null;
  }
  ws.addEventListener("open", () => {
    if (isCurrent(ws)) open();
  });
  ws.addEventListener("message", (event) => {
    if (!isCurrent(ws)) return;
    let data;
    try {
      data = JSON.parse(event.data);
    } catch {
      return;
    }
    message(data);
  });
  ws.addEventListener("close", (event) => {
    if (isCurrent(ws)) close(event);
  });
  return ws;
}

/** Close `ws` (1000 unless told otherwise) if it is still connecting or open. */
export function closeSocket(ws, code = 1000, reason = undefined) {
  if (ws && ws.readyState <= WebSocket.OPEN) ws.close(code, reason);
}

/** Apply the server's `answer`, if an offer of ours is waiting for one. */
export async function applyAnswer(pc, sdp) {
  if (pc?.signalingState === "have-local-offer") {
    await pc.setRemoteDescription({ type: "answer", sdp });
  }
}

/** Add an ICE candidate from the server's `candidate` message; a bad one is ignored. */
export function addRemoteCandidate(pc, message) {
  return pc
    ?.addIceCandidate({ candidate: message.candidate, sdpMid: message.sdpMid, sdpMLineIndex: message.sdpMLineIndex })
    .catch(() => {});
}

/** Whose media a `track` event carries: the relay names each stream after the participant who publishes it. */
export function trackOwner(event) {
  return event.streams[0]?.id ?? `track:${event.track.id}`;
}

/** The `candidate` message that sends a local ICE candidate to the server. */
export function candidateMessage({ candidate, sdpMid, sdpMLineIndex }) {
  return { type: "candidate", candidate, sdpMid, sdpMLineIndex };
}
