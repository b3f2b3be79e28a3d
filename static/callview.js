// What a person sees during a call and after it: video tiles, countdown,
// microphone/camera toggles, notices, and the end screen. Shared by the
// family page and the kiosk; it listens to a CallClient and draws.

import { describeEnd, formatCountdown, formatDateTime, h, listNames, putTrack, removeTile, WARNING_MS } from "./ui.js";

const STATUS_TEXT = {
  connecting: "Connecting to your call…",
  joined: "Connecting video and sound…",
  unstable: "The connection is unstable. Trying to keep the call going…",
};

export class CallView {
  #section;
  #audience;
  #client = null;
  #selfId = null;
  #tiles = new Map();
  #endsAt = null;
  #ticker = null;
  #holdEndsAt = null;
  #hold = null;
  #announced = new Set();
  #cameraNote = "";
  #cameraMissing = false;
  #el = {};

  /**
   * @param {HTMLElement} section  empty container for the in-call screen
   * @param {{audience: "family"|"kiosk", onLeave: () => void, expecting?: string}} options
   *   `expecting` names who should appear, for the "waiting for …" line.
   */
  constructor(section, { audience, onLeave, expecting = "" }) {
    this.#section = section;
    this.#audience = audience;
    this.#build(onLeave, expecting);
  }

  /** Show our own camera in the small self view. */
  showSelf(stream, { cameraMissing = false } = {}) {
    this.#el.selfVideo.srcObject = stream;
    this.#cameraMissing = cameraMissing;
    if (cameraMissing) this.#cameraUnavailable("Sound only: no camera is being used.");
  }

  /** Follow one CallClient until it ends. */
  bind(client) {
    this.#client = client;
    client.addEventListener("status", (e) => this.#showStatus(e.detail));
    client.addEventListener("joined", (e) => this.#onJoined(e.detail));
    client.addEventListener("ends-at", (e) => this.#setEndsAt(e.detail.endsAt));
    client.addEventListener("participant-joined", (e) => this.#addParticipant(e.detail.participant));
    client.addEventListener("participant-left", (e) => this.#removeTile(e.detail.id));
    client.addEventListener("track", (e) => this.#addTrack(e.detail.participantId, e.detail.track));
    client.addEventListener("hold", (e) => this.#showHold(e.detail));
    client.addEventListener("participant-state", (e) => this.#addParticipant(e.detail.participant));
    client.addEventListener("restricted", (e) => {
      if (e.detail.action === "audio-only") this.#showAudioOnly(e.detail.directive);
      else if (e.detail.action === "none") this.#videoAllowedAgain();
    });
    client.addEventListener("ended", () => this.destroy());
    this.#ticker = setInterval(() => this.#tick(), 1000);
  }

  /** Stop timers and release the media elements. */
  destroy() {
    clearInterval(this.#ticker);
    this.#ticker = null;
    for (const id of [...this.#tiles.keys()]) this.#removeTile(id);
    this.#el.selfVideo.srcObject = null;
    if (this.#el.leaveDialog.open) this.#el.leaveDialog.close();
  }

  focus() {
    this.#el.heading.focus();
  }

  // --- building --------------------------------------------------------------

  #build(onLeave, expecting) {
    const el = this.#el;
    const kiosk = this.#audience === "kiosk";
    el.heading = h("h1", { class: "visually-hidden", id: "call-title", tabindex: "-1" }, "Video call");
    el.countdownValue = h("span", { class: "countdown-value", id: "countdown-value" }, "--:--");
    el.countdown = h(
      "p",
      { class: "countdown", id: "countdown" },
      h("span", { class: "countdown-label" }, "Time left"),
      " ",
      el.countdownValue,
    );
    el.names = h("p", { class: "participants", id: "participants" });
    el.monitored = h(
      "p",
      { class: "notice notice--monitored", id: "monitored-notice", hidden: true },
      "This call may be monitored by facility staff.",
    );
    el.recorded = h(
      "p",
      { class: "notice notice--recorded", id: "recorded-notice-call", hidden: true },
      "This call is recorded.",
    );
    el.audioOnly = h("div", { class: "banner banner--restricted", id: "audio-only-banner", role: "status", hidden: true });
    el.status = h("div", { class: "banner banner--status", id: "connection-banner", role: "status" });
    // A minor held back until a guardian of theirs is in the call (policy/guardian.py).
    el.hold = h("div", { class: "banner banner--restricted", id: "guardian-banner", role: "status", hidden: true });
    // Others: a minor in the call who waits for a guardian, or was paused without one.
    el.minors = h("p", { class: "notice", id: "minor-notice", role: "status", hidden: true });
    el.announcer = h("p", { class: "visually-hidden", "aria-live": "polite", id: "announcer" });

    el.waiting = h("p", { class: "stage-waiting", id: "stage-waiting" }, `Waiting for ${expecting || "the other person"} to join…`);
    el.tiles = h("div", { class: "tiles", id: "remote-tiles" });
    el.selfVideo = h("video", { class: "self-video", id: "self-video", autoplay: true, playsinline: true });
    el.selfVideo.muted = true;
    el.selfState = h("p", { class: "self-state", id: "self-state", role: "status", hidden: true });
    const self = h("figure", { class: "self-view" }, el.selfVideo, h("figcaption", {}, "You"));

    el.mic = h("button", { type: "button", class: "toggle", id: "mic-toggle", "aria-pressed": "false" }, "Mute microphone");
    el.camera = h("button", { type: "button", class: "toggle", id: "camera-toggle", "aria-pressed": "false" }, "Turn camera off");
    el.leave = h("button", { type: "button", class: "button button--danger", id: "leave-button" }, kiosk ? "Leave visit" : "Leave call");
    el.mic.addEventListener("click", () => this.#toggle(el.mic, (off) => this.#client?.setMicrophoneEnabled(!off)));
    el.camera.addEventListener("click", () => this.#toggle(el.camera, (off) => this.#client?.setCameraEnabled(!off)));

    el.leaveDialog = this.#buildLeaveDialog(onLeave);
    el.leave.addEventListener("click", () => el.leaveDialog.showModal());

    this.#section.replaceChildren(
      el.heading,
      h("div", { class: "call-bar" }, el.countdown, el.names),
      el.monitored,
      el.recorded,
      el.audioOnly,
      el.hold,
      el.minors,
      el.status,
      (el.stage = h("div", { class: "stage", id: "stage", "data-remote": "0" }, el.waiting, el.tiles, self)),
      el.selfState,
      h("div", { class: "controls", role: "group", "aria-label": "Call controls" }, el.mic, el.camera, el.leave),
      el.announcer,
      el.leaveDialog,
    );
  }

  #buildLeaveDialog(onLeave) {
    const kiosk = this.#audience === "kiosk";
    const stay = h("button", { type: "button", class: "button" }, kiosk ? "Stay in the visit" : "Stay in the call");
    const go = h("button", { type: "button", class: "button button--danger", id: "leave-confirm" }, "Yes, leave");
    const dialog = h(
      "dialog",
      { class: "dialog", id: "leave-dialog", "aria-labelledby": "leave-dialog-title" },
      h("h2", { id: "leave-dialog-title" }, kiosk ? "Leave the visit?" : "Leave the call?"),
      h(
        "p",
        {},
        kiosk
          ? "The other person will see that you left."
          : "You can join again with your link while the visit time lasts.",
      ),
      h("div", { class: "actions" }, stay, go),
    );
    stay.addEventListener("click", () => dialog.close());
    go.addEventListener("click", () => {
      dialog.close();
      onLeave();
    });
    return dialog;
  }

  #toggle(button, apply) {
    if (button.getAttribute("aria-disabled") === "true") return;
    const off = button.getAttribute("aria-pressed") !== "true";
    button.setAttribute("aria-pressed", String(off));
    apply(off);
    this.#showSelfState();
  }

  #showSelfState() {
    const micOff = this.#el.mic.getAttribute("aria-pressed") === "true";
    const camOff = this.#el.camera.getAttribute("aria-pressed") === "true";
    const lines = [];
    if (micOff) lines.push("Your microphone is off.");
    if (this.#cameraNote) lines.push(this.#cameraNote);
    else if (camOff) lines.push("Your camera is off.");
    this.#el.selfState.textContent = lines.join(" ");
    this.#el.selfState.hidden = lines.length === 0;
    this.#el.selfVideo.classList.toggle("is-off", camOff);
  }

  #cameraUnavailable(text) {
    const camera = this.#el.camera;
    camera.setAttribute("aria-pressed", "true");
    camera.setAttribute("aria-disabled", "true");
    camera.setAttribute("aria-describedby", "self-state");
    this.#el.selfVideo.classList.add("is-off");
    this.#cameraNote = text;
    this.#showSelfState();
  }

  // --- events from the client --------------------------------------------------

  #showStatus({ phase, attempt, of, delayMs }) {
    const status = this.#el.status;
    this.#section.dataset.connection = phase;
    if (phase === "connected") {
      status.hidden = true;
      status.textContent = "";
      return;
    }
    status.hidden = false;
    status.classList.toggle("banner--warning", phase === "reconnecting" || phase === "unstable");
    if (phase === "reconnecting") {
      const wait = delayMs ? ` in ${Math.round(delayMs / 1000)} seconds` : "";
      status.textContent = attempt
        ? `The connection was lost. Reconnecting${wait} (try ${attempt} of ${of})…`
        : "Reconnecting…";
    } else {
      status.textContent = STATUS_TEXT[phase] ?? "";
    }
  }

  #onJoined(joined) {
    this.#selfId = joined.session ?? null;
    for (const id of [...this.#tiles.keys()]) this.#removeTile(id);
    for (const participant of joined.participants ?? []) this.#addParticipant(participant);
    this.#el.monitored.hidden = !joined.monitored;
    this.#el.recorded.hidden = !joined.recorded;
    if (joined.audio_only) this.#showAudioOnly(null);
    this.#showNames();
  }

  #setEndsAt(endsAt) {
    if (Number.isNaN(endsAt.getTime())) return;
    this.#endsAt = endsAt;
    this.#tick();
  }

  #tick() {
    if (this.#hold?.state === "paused") this.#drawHold();
    if (!this.#endsAt) return;
    const left = this.#endsAt.getTime() - Date.now();
    this.#el.countdownValue.textContent = formatCountdown(left);
    const warning = left <= WARNING_MS;
    this.#el.countdown.classList.toggle("is-warning", warning);
    for (const [minutes, text] of [
      [5, "5 minutes left in this visit."],
      [1, "1 minute left in this visit."],
    ]) {
      if (left <= minutes * 60_000 && left > 0 && !this.#announced.has(minutes)) {
        this.#announced.add(minutes);
        this.#el.announcer.textContent = text;
      }
    }
  }

  #showHold(hold) {
    this.#hold = hold;
    this.#holdEndsAt = Number.isFinite(hold.ends_in) ? Date.now() + hold.ends_in * 1000 : null;
    this.#drawHold();
    if (hold.state === "active") this.#el.announcer.textContent = "Your guardian is here: the call goes on.";
  }

  #drawHold() {
    const hold = this.#hold;
    const banner = this.#el.hold;
    if (!hold || hold.state === "active") {
      banner.hidden = true;
      banner.replaceChildren();
      return;
    }
    const who = hold.guardians?.length ? hold.guardians.join(" or ") : "your guardian";
    let text = hold.message || `Waiting for ${who} to join.`;
    if (hold.state === "paused" && this.#holdEndsAt !== null) {
      const left = Math.max(0, Math.round((this.#holdEndsAt - Date.now()) / 1000));
      text = `Paused: your guardian left; the call ends in ${left} s unless ${who} comes back.`;
    }
    banner.replaceChildren(
      h("strong", { id: "guardian-text" }, text),
      " No video or sound is shared until then.",
    );
    banner.dataset.state = hold.state;
    banner.hidden = false;
  }

  #showMinors() {
    const held = [...this.#tiles.values()]
      .map((t) => t.participant)
      .filter((p) => p?.minor && p.state && p.state !== "active");
    const note = this.#el.minors;
    note.hidden = held.length === 0;
    note.textContent = held
      .map((p) => `${p.name || "A minor"} ${p.state === "paused" ? "is paused: their guardian left" : "is waiting for their guardian"}; no video or sound is shared with them until a guardian is in the call.`)
      .join(" ");
  }

  #showAudioOnly(directive) {
    const banner = this.#el.audioOnly;
    banner.replaceChildren(
      h("strong", {}, "Video has been turned off for this call by facility staff."),
      " You can still hear and speak to each other.",
      directive?.reason ? h("span", { class: "banner-detail", id: "audio-only-reason" }, `Reason: ${directive.reason}`) : null,
      directive?.expires_at
        ? h("span", { class: "banner-detail" }, `Until: ${formatDateTime(directive.expires_at)}`)
        : null,
    );
    banner.hidden = false;
    this.#cameraUnavailable("Video is turned off for this call.");
  }

  #videoAllowedAgain() {
    this.#el.audioOnly.hidden = true;
    this.#el.audioOnly.replaceChildren();
    this.#el.announcer.textContent = "Facility staff have turned video back on for this call.";
    if (this.#cameraMissing) return;
    const camera = this.#el.camera;
    camera.removeAttribute("aria-disabled");
    camera.removeAttribute("aria-describedby");
    camera.setAttribute("aria-pressed", "false");
    this.#cameraNote = "";
    const video = this.#el.selfVideo;
    const stream = video.srcObject;
    video.srcObject = null;
    video.srcObject = stream;
    this.#showSelfState();
  }

  // --- remote participants -------------------------------------------------------

  #addParticipant(participant) {
    if (!participant?.id || participant.id === this.#selfId) return;
    const tile = this.#tile(participant.id);
    tile.participant = participant;
    tile.caption.textContent = participant.name || "Participant";
    if (participant.minor) this.#showHeld(tile);
    this.#showNames();
    this.#showMinors();
  }

  /** A minor's tile while no guardian of theirs is in the call: nothing comes, and it says why. */
  #showHeld(tile) {
    const state = tile.participant?.state;
    if (state === "waiting" || state === "paused") {
      tile.element.classList.add("no-video");
      tile.placeholder.textContent = state === "paused" ? "Paused: no guardian in the call" : "Waiting for a guardian";
      return true;
    }
    if (!tile.seenVideo) tile.placeholder.textContent = "Connecting video…";
    return false;
  }

  #tile(id) {
    let tile = this.#tiles.get(id);
    if (tile) return tile;
    const video = h("video", { class: "remote-video", autoplay: true, playsinline: true });
    const caption = h("figcaption", { class: "tile-name" }, "Participant");
    const placeholder = h("p", { class: "tile-placeholder" }, "Connecting video…");
    const soundButton = h("button", { type: "button", class: "button tile-sound", hidden: true }, "Turn on sound");
    const element = h("figure", { class: "tile no-video", "data-participant": id }, video, placeholder, soundButton, caption);
    const stream = new MediaStream();
    video.srcObject = stream;
    soundButton.addEventListener("click", () => {
      video.play().then(() => (soundButton.hidden = true), () => {});
    });
    tile = { element, video, caption, placeholder, soundButton, stream, participant: null, seenVideo: false };
    this.#tiles.set(id, tile);
    this.#el.tiles.append(element);
    this.#layout();
    return tile;
  }

  #addTrack(id, track) {
    if (id === this.#selfId) return;
    const tile = this.#tile(id);
    putTrack(tile.stream, track);
    tile.video.srcObject = tile.stream;
    if (track.kind === "video") {
      const showVideo = () => this.#showVideo(tile, track);
      track.addEventListener("mute", showVideo);
      track.addEventListener("unmute", showVideo);
      track.addEventListener("ended", () => {
        tile.stream.removeTrack(track);
        showVideo();
      });
      tile.video.addEventListener("resize", showVideo);
      showVideo();
    }
    tile.video.play().then(
      () => (tile.soundButton.hidden = true),
      (error) => {
        // Autoplay with sound refused (no user gesture yet): ask for one tap.
        if (error?.name === "NotAllowedError") tile.soundButton.hidden = false;
      },
    );
    this.#showNames();
  }

  #showVideo(tile, track) {
    if (tile.participant?.minor && this.#showHeld(tile)) return;
    const live = track.readyState === "live" && !track.muted && tile.stream.getVideoTracks().includes(track);
    if (live) tile.seenVideo = true;
    tile.element.classList.toggle("no-video", !live);
    if (this.#client?.audioOnly) tile.placeholder.textContent = "Sound only";
    else tile.placeholder.textContent = tile.seenVideo ? "Video is off" : "Connecting video…";
  }

  #removeTile(id) {
    if (!removeTile(this.#tiles, id)) return;
    this.#layout();
    this.#showNames();
    this.#showMinors();
  }

  #layout() {
    const count = this.#tiles.size;
    this.#el.tiles.dataset.count = String(count);
    // One person on screen: your picture floats in a corner. Two or more: it would cover one
    // of them, so it takes its own place below them (style.css, .stage[data-remote="many"]).
    this.#el.stage.dataset.remote = count >= 2 ? "many" : String(count);
    this.#el.waiting.hidden = count > 0;
  }

  #showNames() {
    const names = [...this.#tiles.values()].map((t) => t.participant?.name).filter(Boolean);
    this.#el.names.textContent = names.length ? `In this call: ${listNames(names)}` : "";
  }
}

/**
 * Draw the end screen into `section` and return the description used.
 * The element ids (#end-title, #end-reason, #end-legal-basis, #end-expires,
 * #appeal-link) are stable: tests and staff guides refer to them.
 */
export function renderEndScreen(section, ending, { audience, actions = [] }) {
  const about = describeEnd(ending, audience);
  const title = h("h1", { id: "end-title", tabindex: "-1" }, about.title);
  const parts = [title];
  const directive = about.directive;
  if (directive) {
    const rows = [
      ["Reason", h("dd", { id: "end-reason" }, directive.reason || about.detail || "No reason was given.")],
      ["Legal basis", h("dd", { id: "end-legal-basis" }, directive.legal_basis || "Not given")],
      [
        "In effect until",
        h("dd", { id: "end-expires" }, directive.expires_at ? formatDateTime(directive.expires_at) : "Not given"),
      ],
    ];
    parts.push(
      h(
        "dl",
        { class: "end-details", id: "end-details" },
        rows.map(([label, value]) => h("div", {}, h("dt", {}, label), value)),
      ),
    );
    if (audience === "kiosk") {
      parts.push(
        h(
          "p",
          { class: "end-appeal" },
          "A member of staff can help you appeal this decision.",
          directive.id ? ` Reference: ${directive.id}.` : "",
        ),
      );
    } else if (directive.appeal_url) {
      parts.push(
        h(
          "p",
          { class: "end-appeal" },
          h("a", { id: "appeal-link", href: directive.appeal_url }, "Appeal this decision"),
          " — tell us why you think this decision is wrong. Someone other than the person who made it will review it.",
        ),
      );
    }
  } else if (about.detail) {
    parts.push(h("p", { id: "end-reason", class: "end-reason" }, about.detail));
  }
  const buttons = actions.filter((a) => !a.when || a.when(about));
  if (buttons.length) {
    const row = h("div", { class: "actions" });
    for (const action of buttons) {
      const button = h("button", { type: "button", class: action.primary ? "button button--primary" : "button", id: action.id }, action.label);
      button.addEventListener("click", action.onClick);
      row.append(button);
    }
    parts.push(row);
  }
  section.replaceChildren(...parts);
  return about;
}
