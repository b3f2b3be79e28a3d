// Recordings (SPEC §10): the list, the incomplete-recording alert, and a
// player that shows every side of the call at once.
//
// Every play, download and export needs a reason, which the server records
// with who asked (an audit event) before it hands out a short-lived link for
// that one file: the link is a grant in the path, never the staff token.
//
// The player: a <video> plays only the first video track of a file, so the
// server makes one rendition per participant from the same record file, on
// the call's timeline; they play side by side, driven by one scrubber, with
// the visit's joins, leaves and directives marked on it. The export stays the
// single call file with its SHA-256 (the one in the audit chain).

import { formatLength, formatWhen } from "./console-time.js";
import { refusal } from "./console-visits.js";
import { h } from "./ui.js";

const EARLY_SECONDS = 10; // the timeline's moments this far outside the file are still shown
const DRIFT_SECONDS = 0.25; // a rendition further than this from the first is moved back in step
const TIMELINE_WORDS = {
  "session.started": (e) => `${e.actor} joined${e.mode === "monitor" ? " (monitor)" : ""}`,
  "session.ended": (e) => (e.directive ? `${e.actor} ended by directive ${e.directive}` : `${e.actor} left (${e.reason})`),
  "recording.incomplete": (e) => `Recording incomplete: ${e.reason}`,
  "visit.ended": () => "Visit ended",
  "visit.cancelled": () => "Visit cancelled",
};

export class RecordingsView {
  #panel;
  #api;
  #session;
  #announce;
  #alert;
  #el = {};
  #recordings = [];
  #player = null; // {videos, offsets, scrubber, frame}
  loaded = false;

  constructor(panel, { api, session, announce, alert }) {
    this.#panel = panel;
    this.#api = api;
    this.#session = session;
    this.#announce = announce;
    this.#alert = alert;
    this.#el.problem = h("div", { class: "banner banner--error", id: "recordings-problem", role: "alert", hidden: true });
    this.#el.list = h("ul", { class: "recording-list", id: "recording-list" });
    this.#el.empty = h("p", { class: "empty", id: "recordings-empty", hidden: true }, "No recordings.");
    this.#el.detail = h("section", { class: "recording-detail", id: "recording-detail", "aria-live": "polite", hidden: true });
    this.#panel.replaceChildren(h("h2", {}, "Recordings"), this.#el.problem, this.#el.list, this.#el.empty, this.#el.detail);
  }

  /** An audit event from the stream: an incomplete recording alerts staff at once. */
  heard(event) {
    if (event.action === "recording.incomplete") {
      const reason = event.data?.reason ?? "a storage failure";
      this.#alert(`A recording is incomplete (${reason}) for ${event.data?.recording?.visit ?? "a visit"}: the call goes on; check the recordings storage.`);
    }
    if (event.action?.startsWith("recording.") && this.loaded) this.load();
  }

  async load() {
    try {
      this.#recordings = await this.#api.get("/recordings");
    } catch (error) {
      this.#el.problem.textContent = error.status === 403 ? "Recordings are for supervisors and auditors (operators only where the facility allows it)." : refusal(error);
      this.#el.problem.hidden = false;
      return;
    }
    this.loaded = true;
    this.#el.problem.hidden = true;
    const incomplete = this.#recordings.filter((r) => !r.complete && r.status !== "deleted");
    if (incomplete.length) this.#alert(`${incomplete.length} recording${incomplete.length === 1 ? " is" : "s are"} incomplete: see Recordings.`);
    this.#el.list.replaceChildren(...this.#recordings.map((r) => this.#item(r)));
    this.#el.empty.hidden = this.#recordings.length > 0;
  }

  #item(recording) {
    const badges = [];
    if (!recording.complete) badges.push(h("span", { class: "badge badge--warning" }, `incomplete: ${recording.incomplete_reason}`));
    if (recording.held) badges.push(h("span", { class: "badge" }, "held"));
    const open = h(
      "button",
      { type: "button", class: "button button--small", "data-recording": recording.id },
      recording.status === "finalized" ? "Open" : recording.status,
    );
    open.disabled = recording.status !== "finalized";
    open.addEventListener("click", () => this.open(recording.id));
    return h(
      "li",
      { class: "recording-item", id: `recording-${recording.id}` },
      h("strong", {}, `Visit ${recording.visit}`),
      ` · ${formatWhen(recording.started_at)}`,
      recording.duration_seconds != null ? ` · ${formatLength(recording.duration_seconds)}` : "",
      " ",
      ...badges,
      " ",
      open,
    );
  }

  async open(id) {
    let recording;
    try {
      recording = await this.#api.get(`/recordings/${encodeURIComponent(id)}`);
    } catch (error) {
      this.#el.problem.textContent = refusal(error);
      this.#el.problem.hidden = false;
      return;
    }
    this.#stopPlayer();
    const detail = this.#el.detail;
    const reason = h("input", { id: "recording-reason", type: "text", maxlength: "500", required: true, autocomplete: "off" });
    const formProblem = h("p", { class: "field-error", id: "recording-reason-error", role: "alert", hidden: true });
    const actions = h("div", { class: "actions" });
    const ask = (label, access) => {
      const button = h("button", { type: "button", class: "button", id: `recording-${access}` }, label);
      button.addEventListener("click", () => this.#read(recording, access, reason, formProblem));
      actions.append(button);
    };
    ask("Play", "play");
    ask("Download", "download");
    ask("Export with SHA-256", "export");
    const parts = [
      h("h3", {}, `Recording ${recording.id} · visit ${recording.visit}`),
      h("p", {}, `Started ${formatWhen(recording.started_at)}; ${formatLength(recording.duration_seconds ?? 0)}; SHA-256 `, h("code", { id: "recording-sha" }, recording.sha256 ?? "—")),
      recording.complete ? null : h("p", { class: "banner banner--warning" }, `Incomplete: ${recording.incomplete_reason}. What was recorded before the failure is kept.`),
      h("div", { class: "field" }, h("label", { for: "recording-reason" }, "Reason (recorded with your name)"), formProblem, reason),
      actions,
      this.#holdControls(recording),
      h("div", { class: "recording-player", id: "recording-player" }),
      h("div", { class: "recording-links", id: "recording-links" }),
    ];
    detail.replaceChildren(...parts.filter(Boolean)); // (replaceChildren would write "null")
    detail.hidden = false;
    detail.dataset.recording = recording.id;
    this.#el.detail.recording = recording;
    reason.focus();
  }

  #holdControls(recording) {
    if (this.#session.role !== "supervisor" && this.#session.role !== null) return null;
    const why = h("input", { id: "hold-reason", type: "text", maxlength: "500", autocomplete: "off" });
    const ref = h("input", { id: "hold-ref", type: "text", maxlength: "64", autocomplete: "off" });
    const problem = h("p", { class: "field-error", id: "hold-error", role: "alert", hidden: true });
    const button = h("button", { type: "button", class: "button", id: "hold-toggle" }, recording.held ? "Release hold" : "Hold past retention");
    button.addEventListener("click", async () => {
      const path = `/recordings/${encodeURIComponent(recording.id)}/${recording.held ? "release" : "hold"}`;
      const body = { reason: why.value };
      if (!recording.held && ref.value.trim()) body.ref = ref.value.trim();
      try {
        await this.#api.post(path, body);
      } catch (error) {
        problem.textContent = refusal(error);
        problem.hidden = false;
        return;
      }
      this.#announce(recording.held ? "Hold released." : "Recording held.");
      await this.load();
      await this.open(recording.id);
    });
    return h(
      "fieldset",
      { class: "recording-hold" },
      h("legend", {}, recording.held ? `Held by ${recording.held_by}: ${recording.held_reason}` : "Hold"),
      h("div", { class: "field" }, h("label", { for: "hold-reason" }, "Why"), why),
      recording.held ? null : h("div", { class: "field" }, h("label", { for: "hold-ref" }, "Directive or appeal id (optional)"), ref),
      problem,
      button,
    );
  }

  async #read(recording, access, reason, problem) {
    if (!reason.value.trim()) {
      problem.textContent = "Say why you need the recording.";
      problem.hidden = false;
      reason.setAttribute("aria-invalid", "true");
      reason.focus();
      return;
    }
    problem.hidden = true;
    reason.removeAttribute("aria-invalid");
    let grant;
    try {
      grant = await this.#api.post(`/recordings/${encodeURIComponent(recording.id)}/${access}`, { reason: reason.value });
    } catch (error) {
      problem.textContent = refusal(error);
      problem.hidden = false;
      return;
    }
    if (access === "play") return this.#play(recording, grant);
    const links = document.getElementById("recording-links");
    const file = h("a", { href: grant.url, download: "", id: `recording-${access}-link` }, `Download the call file (SHA-256 ${grant.sha256})`);
    links.replaceChildren(file);
    if (grant.manifest) {
      const blob = new Blob([JSON.stringify(grant.manifest, null, 2)], { type: "application/json" });
      links.append(" ", h("a", { href: URL.createObjectURL(blob), download: `${recording.id}.json`, id: "recording-manifest-link" }, "Download the manifest (JSON)"));
    }
  }

  #play(recording, grant) {
    this.#stopPlayer();
    const names = recording.participants ?? {};
    const starts = {};
    for (const track of recording.tracks ?? []) {
      starts[track.participant] = Math.min(starts[track.participant] ?? Infinity, track.start_seconds);
    }
    const parts = grant.parts?.length ? grant.parts : [{ participant: "call", url: grant.url }];
    const videos = parts.map((part, index) => {
      const video = h("video", { class: "recording-video", id: `recording-video-${index + 1}`, preload: "auto", playsinline: true, "data-participant": part.participant });
      video.src = part.url;
      video.dataset.start = String(starts[part.participant] ?? 0);
      return video;
    });
    const duration = recording.duration_seconds ?? 0;
    const scrubber = h("input", { type: "range", id: "recording-scrubber", min: "0", max: String(duration), step: "0.1", value: "0", "aria-label": "Position in the call" });
    const clock = h("span", { id: "recording-clock" }, "0:00");
    const toggle = h("button", { type: "button", class: "button", id: "recording-toggle" }, "Play");
    // Ticks over the scrubber, and the same moments as a list (readable, and jumped to).
    const ticks = h("div", { class: "recording-ticks", id: "recording-ticks", "aria-hidden": "true" });
    const marks = h("ol", { class: "recording-timeline", id: "recording-timeline" });
    for (const entry of recording.timeline ?? []) {
      const words = TIMELINE_WORDS[entry.action];
      // A join comes a moment before its first media (the file's 0): shown at 0.
      if (!words || entry.offset_seconds < -EARLY_SECONDS || entry.offset_seconds > duration + EARLY_SECONDS) continue;
      const at = Math.min(duration, Math.max(0, entry.offset_seconds));
      const left = duration ? (100 * at) / duration : 0;
      const tick = h("span", { class: `timeline-tick timeline-tick--${entry.action.replace(".", "-")}`, title: words(entry) });
      tick.style.left = `${left}%`; // through the CSSOM: the page's CSP allows no style attributes
      ticks.append(tick);
      const jump = h("button", { type: "button", class: "timeline-jump" }, `${formatLength(at)} — ${words(entry)}`);
      jump.addEventListener("click", () => this.#seek(at));
      marks.append(h("li", { class: "timeline-mark" }, jump));
    }
    const player = document.getElementById("recording-player");
    player.replaceChildren(
      h("div", { class: "recording-sides" }, ...videos.map((video) => h("figure", {}, video, h("figcaption", {}, names[video.dataset.participant] ?? video.dataset.participant)))),
      h("div", { class: "recording-controls" }, toggle, h("div", { class: "recording-scrub" }, ticks, scrubber), clock),
      marks,
    );
    this.#player = { videos, scrubber, clock, toggle, frame: null };
    toggle.addEventListener("click", () => (videos[0].paused ? this.#resume() : this.#pause()));
    scrubber.addEventListener("input", () => this.#seek(Number(scrubber.value)));
    const follow = () => {
      if (!this.#player) return;
      const t = this.#callTime(videos[0]);
      scrubber.value = String(t);
      clock.textContent = formatLength(t);
      for (const video of videos.slice(1)) {
        const want = this.#mediaTime(video, t);
        if (!video.paused && Math.abs(video.currentTime - want) > DRIFT_SECONDS) video.currentTime = want;
      }
      this.#player.frame = requestAnimationFrame(follow);
    };
    this.#player.frame = requestAnimationFrame(follow);
    this.#announce("Playing every side of the call.");
    this.#resume();
  }

  /** A rendition's own time for a moment of the call: browsers may start a file at 0. */
  #mediaTime(video, callTime) {
    const normalized = !(video.seekable.length && video.seekable.start(0) > 0.05);
    return Math.max(0, callTime - (normalized ? Number(video.dataset.start) : 0));
  }

  #callTime(video) {
    const normalized = !(video.seekable.length && video.seekable.start(0) > 0.05);
    return video.currentTime + (normalized ? Number(video.dataset.start) : 0);
  }

  #seek(t) {
    for (const video of this.#player?.videos ?? []) video.currentTime = this.#mediaTime(video, t);
  }

  #resume() {
    const player = this.#player;
    if (!player) return;
    for (const video of player.videos) video.play().catch(() => {});
    player.toggle.textContent = "Pause";
  }

  #pause() {
    const player = this.#player;
    if (!player) return;
    for (const video of player.videos) video.pause();
    player.toggle.textContent = "Play";
  }

  #stopPlayer() {
    const player = this.#player;
    if (!player) return;
    cancelAnimationFrame(player.frame);
    for (const video of player.videos) {
      video.pause();
      video.removeAttribute("src");
      video.load();
    }
    this.#player = null;
  }
}
