// The family call page, /join/{visit}#token=...
// Step 1: check camera and microphone. Step 2: the call. Step 3: why it ended.

import { CallClient } from "./call.js";
import { CallView, renderEndScreen } from "./callview.js";
import {
  LevelMeter,
  explainForFamily,
  classifyMediaError,
  listDevices,
  missingCallSupport,
  openDevice,
  openLocalMedia,
  playTestSound,
} from "./localmedia.js";
import { forgetToken, takeToken } from "./token.js";
import { formatDateTime, formatIn, formatTime, formatVisitDay, h } from "./ui.js";

const HEARD_LEVEL = 0.3; // about -42 dBFS: speech, not room noise
const SEEN_FRAMES = 5;

const $ = (id) => document.getElementById(id);
const app = $("app");
const visit = visitFromPath(location.pathname);
const tokenKey = `parlor.token.visit.${visit}`;
const token = visit ? takeToken(tokenKey) : null;

const TITLES = {
  upcoming: "Your visit",
  unsupported: "This browser cannot make the call",
  preview: "Check your camera and microphone",
  joining: "Joining the call",
  "in-call": "In the call",
  ended: "Call ended",
};

/** The preview's local media; handed to the call when the person joins. */
const preview = {
  ready: false, // media is open: Join may be pressed once the visit is open
  stream: null,
  cameraProblem: null,
  meter: null,
  heard: false,
  frames: 0,
};

function visitFromPath(path) {
  const match = /^\/join\/([^/]+)\/?$/.exec(path);
  return match ? decodeURIComponent(match[1]) : null;
}

function setState(state) {
  app.dataset.state = state;
  $("visit-card").hidden = state !== "upcoming" && state !== "preview";
  $("preview").hidden = state !== "preview";
  $("call").hidden = state !== "joining" && state !== "in-call";
  $("end").hidden = state !== "ended" && state !== "unsupported";
  document.title = `${TITLES[state] ?? "Video visit"} — Parlor`;
}

// --- step 1: device check -----------------------------------------------------

/**
 * A browser without WebRTC or without camera access can never make this call:
 * say so once, with what to do instead, and stop. No camera preview, no Join
 * button, no socket, no retry (retrying cannot help, and the network is fine).
 */
function showUnsupported(kind) {
  const ending = { kind: "unsupported", reason: kind, message: explainForFamily(kind) };
  renderEndScreen($("end"), ending, { audience: "family" });
  setState("unsupported");
  $("end-title").focus();
}

async function startPreview(devices = {}) {
  setState("preview");
  showProblem(null);
  preview.ready = false;
  $("join-button").disabled = true;
  $("retry-media").hidden = true;
  stopPreviewMedia();
  try {
    const { stream, cameraProblem } = await openLocalMedia(devices);
    preview.stream = stream;
    preview.cameraProblem = cameraProblem;
  } catch (error) {
    showProblem(explainForFamily(classifyMediaError(error)));
    $("retry-media").hidden = false;
    showPicture(false);
    $("camera-check").textContent = "Not available yet";
    $("mic-check").textContent = "Not available yet";
    fillSelect($("camera-select"), [], null, "Not available yet");
    fillSelect($("microphone-select"), [], null, "Not available yet");
    return;
  }
  showPreviewVideo();
  startMeter();
  await fillDeviceLists();

  preview.ready = true;
  updateJoinButton();
  if (preview.cameraProblem) {
    showProblem(explainForFamily(preview.cameraProblem, { cameraOnly: true }));
    $("retry-media").hidden = false;
  }
  labelJoinButton();
}

/** Join needs working media and an open visit (from a few minutes before it starts). */
function updateJoinButton() {
  const open = !visitState.opensAt || Date.now() >= visitState.opensAt;
  $("join-button").disabled = !(preview.ready && open && visitState.state !== "closed");
  const hint = $("join-hint");
  hint.hidden = open;
  if (!open) hint.textContent = `You can join from ${formatVisitDay(new Date(visitState.opensAt).toISOString())}.`;
}

function labelJoinButton() {
  const soundOnly = !preview.stream?.getVideoTracks().length;
  $("join-button").textContent = soundOnly ? "Join with sound only" : "Join call";
}

function showProblem(text) {
  const box = $("media-problem");
  box.hidden = !text;
  box.textContent = text ?? "";
}

function showPreviewVideo() {
  const video = $("preview-video");
  const check = $("camera-check");
  const track = preview.stream.getVideoTracks()[0];
  video.srcObject = preview.stream;
  showPicture(Boolean(track));
  preview.frames = 0;
  if (!track) {
    check.textContent = "No camera: you will join with sound only.";
    setCheck(check, false);
    return;
  }
  check.textContent = "Waiting for a picture…";
  setCheck(check, false);
  const counted = () => {
    if (video.srcObject !== preview.stream || track.readyState !== "live") return;
    preview.frames += 1;
    if (preview.frames === SEEN_FRAMES) {
      check.textContent = "Working: we can see you.";
      setCheck(check, true);
      app.dataset.cameraFrames = "yes";
    }
    if (preview.frames < SEEN_FRAMES) waitForFrame(video, counted);
  };
  waitForFrame(video, counted);
}

function showPicture(on) {
  $("preview-video").classList.toggle("is-off", !on);
  $("preview-media").classList.toggle("no-picture", !on);
  $("preview-caption").textContent = on
    ? "Your camera. You see yourself as in a mirror."
    : "No camera picture.";
}

/** Call `then` when the next video frame is shown (or, failing that, soon). */
function waitForFrame(video, then) {
  if (typeof video.requestVideoFrameCallback === "function") {
    video.requestVideoFrameCallback(() => then());
  } else {
    setTimeout(() => (video.videoWidth > 0 ? then() : waitForFrame(video, then)), 200);
  }
}

function startMeter() {
  preview.meter?.stop();
  preview.meter = null;
  preview.heard = false;
  const meter = $("mic-meter");
  const fill = $("mic-meter-fill");
  const check = $("mic-check");
  check.textContent = "Say something. The bar moves when we can hear you.";
  setCheck(check, false);
  if (!preview.stream.getAudioTracks().length) return;
  preview.meter = new LevelMeter(preview.stream, (level) => {
    fill.style.transform = `scaleX(${level.toFixed(3)})`;
    meter.setAttribute("aria-valuenow", String(Math.round(level * 100)));
    if (!preview.heard && level >= HEARD_LEVEL) {
      preview.heard = true;
      check.textContent = "Working: we can hear you.";
      setCheck(check, true);
    }
  });
}

function setCheck(element, ok) {
  element.classList.toggle("is-ok", ok);
}

async function fillDeviceLists() {
  let lists;
  try {
    lists = await listDevices();
  } catch {
    return;
  }
  const current = (kind) => preview.stream.getTracks().find((t) => t.kind === kind)?.getSettings().deviceId;
  fillSelect($("camera-select"), lists.cameras, current("video"), "No camera found");
  fillSelect($("microphone-select"), lists.microphones, current("audio"), "No microphone found");
}

function fillSelect(select, devices, selectedId, emptyText) {
  select.replaceChildren(
    ...devices.map((device, index) =>
      h("option", { value: device.deviceId, selected: device.deviceId === selectedId }, device.label || `Device ${index + 1}`),
    ),
  );
  if (!devices.length) select.append(h("option", { value: "" }, emptyText));
  select.disabled = devices.length === 0;
}

/** Switch one kind of device: the preview, the meter and the call use the new one. */
async function switchDevice(kind, deviceId) {
  const stream = preview.stream;
  if (!stream || !deviceId) return;
  const old = stream.getTracks().filter((t) => t.kind === kind);
  // Phones often cannot open two cameras at once: release the old one first.
  for (const track of old) {
    track.stop();
    stream.removeTrack(track);
  }
  let fresh;
  try {
    fresh = await openDevice(kind, deviceId);
  } catch (error) {
    showProblem(
      explainForFamily(classifyMediaError(error), { cameraOnly: kind === "video" }) +
        " You can also choose a different device above.",
    );
    fresh = await openDevice(kind, undefined).catch(() => null);
  }
  for (const track of fresh?.getTracks() ?? []) stream.addTrack(track);
  if (kind === "video") {
    preview.cameraProblem = fresh ? null : "not-found";
    showPreviewVideo();
    labelJoinButton();
  } else {
    startMeter();
  }
  if (fresh) showProblem(null);
  preview.ready = stream.getAudioTracks().length > 0;
  updateJoinButton();
  await fillDeviceLists();
}

function stopPreviewMedia() {
  preview.meter?.stop();
  preview.meter = null;
  for (const track of preview.stream?.getTracks() ?? []) track.stop();
  preview.stream = null;
  $("preview-video").srcObject = null;
}

// --- step 0: the visit's state (GET /api/v1/visits/{visit}/state) ----------------------

const REREAD_MS = 60_000; // while waiting: a cancellation or a move shows within a minute
const PREVIEW_BEFORE_MS = 15 * 60_000; // the camera check opens by itself this long before

/** What the server said of the visit, and the timers that keep the card current. */
const visitState = { state: null, opensAt: null, ticker: null, reread: null, body: null };

/** Read the visit's state with the family's own token (a bearer header, never the URL). */
async function readState() {
  let response;
  try {
    response = await fetch(`/api/v1/visits/${encodeURIComponent(visit)}/state`, {
      headers: { Authorization: `Bearer ${token}`, Accept: "application/json" },
      cache: "no-store",
    });
  } catch {
    return { failed: "We could not check your visit just now. You can still try to join." };
  }
  const body = await response.json().catch(() => ({}));
  if (response.ok) return { body };
  if (response.status === 401) return { expired: true };
  return { failed: body?.error?.message ?? `The server answered ${response.status}.` };
}

/** Show what the state says: the visit card (and the camera check), or why not. */
function showState(found) {
  if (found.expired) {
    forgetToken(tokenKey);
    stopTimers();
    showClosed("Your link has expired or is not valid.", "Ask the facility for a new link.");
    return;
  }
  if (found.failed) {
    $("visit-problem").textContent = found.failed;
    $("visit-problem").hidden = false;
    if (app.dataset.state === "loading") startPreview();
    return;
  }
  $("visit-problem").hidden = true;
  const body = found.body;
  visitState.body = body;
  visitState.state = body.state;
  visitState.opensAt = Date.parse(body.opens_at);
  if (body.state === "cancelled") {
    stopTimers();
    stopPreviewMedia();
    const when = body.cancelled?.at ? `It was cancelled on ${formatDateTime(body.cancelled.at)}.` : "";
    showClosed("This visit was cancelled.", body.cancelled?.text ?? "", when, "visit-cancelled");
    return;
  }
  if (body.state === "ended") {
    stopTimers();
    stopPreviewMedia();
    showClosed("This visit has ended.", `It was on ${formatDateTime(body.starts_at)}.`, "", "visit-ended");
    return;
  }
  if (body.state === "not-approved") {
    stopTimers();
    stopPreviewMedia();
    showClosed("You cannot join this visit.", body.not_approved ?? "", "", "visit-not-approved");
    return;
  }
  $("visit-title").textContent = `Your visit with ${body.inmate?.name ?? "your visitor"}`;
  $("visit-when").textContent = `${formatVisitDay(body.starts_at)}–${formatTime(body.ends_at)}`;
  const moved = $("visit-moved");
  moved.hidden = !body.moved;
  if (body.moved) moved.textContent = `This visit was moved. It was on ${formatDateTime(body.moved.from.starts_at)}; the new time is above.`;
  $("visit-notice").textContent = body.notice ?? "";
  $("visit-notice").classList.toggle("notice--private", body.monitored === false);
  $("recorded-notice").hidden = !body.recorded;
  $("recorded-notice").textContent = body.recorded_notice ?? "";
  tick();
  if (!visitState.ticker) visitState.ticker = setInterval(tick, 1000);
  if (!visitState.reread) visitState.reread = setInterval(reread, REREAD_MS);
  const soon = Date.now() >= visitState.opensAt - PREVIEW_BEFORE_MS;
  if (app.dataset.state === "loading" || app.dataset.state === "upcoming") {
    if (soon) startPreview();
    else showUpcoming();
  }
  updateJoinButton();
}

function showUpcoming() {
  setState("upcoming");
  $("visit-actions").hidden = false;
  $("visit-title").focus();
}

/** The countdown, every second; the camera check opens by itself when the visit is near. */
function tick() {
  const starts = Date.parse(visitState.body?.starts_at);
  const left = starts - Date.now();
  const text = left > 0 ? `Starts ${formatIn(left)}.` : Date.now() < Date.parse(visitState.body?.ends_at) ? "Your visit has started: join now." : "";
  const countdown = $("visit-countdown");
  if (countdown.textContent !== text) countdown.textContent = text;
  if (app.dataset.state === "upcoming" && Date.now() >= visitState.opensAt - PREVIEW_BEFORE_MS) startPreview();
  if (app.dataset.state === "preview") updateJoinButton();
}

async function reread() {
  if (app.dataset.state !== "upcoming" && app.dataset.state !== "preview") return;
  showState(await readState());
}

function stopTimers() {
  clearInterval(visitState.ticker);
  clearInterval(visitState.reread);
  visitState.ticker = null;
  visitState.reread = null;
}

/** A visit that cannot be joined: why, and nothing to press. */
function showClosed(title, detail, more = "", kind = "closed") {
  visitState.state = "closed";
  const parts = [h("h1", { id: "end-title", tabindex: "-1" }, title)];
  if (detail) parts.push(h("p", { id: "end-reason", class: "end-reason" }, detail));
  if (more) parts.push(h("p", { id: "end-when", class: "end-when" }, more));
  $("end").replaceChildren(...parts);
  $("end").dataset.kind = kind;
  setState("ended");
  $("end-title").focus();
}

// --- step 2: the call ---------------------------------------------------------------

function joinCall() {
  stopTimers();
  preview.meter?.stop();
  preview.meter = null;
  const stream = preview.stream;
  const cameraMissing = !stream.getVideoTracks().length;
  $("preview-video").srcObject = null;

  let client = null;
  const view = new CallView($("call"), { audience: "family", onLeave: () => client?.leave() });
  view.showSelf(stream, { cameraMissing });
  client = new CallClient({ token, visit, localStream: stream });
  view.bind(client);
  client.addEventListener("joined", () => {
    if (app.dataset.state !== "in-call") setState("in-call");
  });
  client.addEventListener("ended", (event) => {
    for (const track of stream.getTracks()) track.stop();
    preview.stream = null;
    showEnd(event.detail.ending);
  });
  setState("joining");
  view.focus();
  client.start();
}

// --- step 3: the end -------------------------------------------------------------------

async function showEnd(ending) {
  if (ending.code === 4401) forgetToken(tokenKey);
  // Ended or refused because the visit was cancelled, or its approval withdrawn: say so as
  // the link says it before joining (with the reason and when).
  if (!ending.directive && ending.code !== 4401 && ending.reason !== "left") {
    const found = await readState();
    if (found.body && ["cancelled", "not-approved"].includes(found.body.state)) {
      showState(found);
      return;
    }
  }
  keepNotice(ending.directive);
  renderEndScreen($("end"), ending, {
    audience: "family",
    actions: [
      {
        id: "rejoin-button",
        label: "Join again",
        primary: true,
        when: (about) => about.canRejoin,
        onClick: () => location.reload(),
      },
    ],
  });
  setState("ended");
  $("end-title").focus();
}

/** Keep the directive notice for the appeal page (same tab), which cannot read directives. */
function keepNotice(directive) {
  if (!directive?.id) return;
  try {
    sessionStorage.setItem(`parlor.notice.${directive.id}`, JSON.stringify({ ...directive, visit }));
  } catch {
    // storage disabled: the appeal page then shows the reference alone
  }
}

function showBrokenLink() {
  $("end").replaceChildren(
    h("h1", { id: "end-title", tabindex: "-1" }, "This link is not complete."),
    h(
      "p",
      { id: "end-reason", class: "end-reason" },
      "Open the link you were sent again, exactly as it was sent. If it still does not work, ask the facility for a new link.",
    ),
  );
  setState("ended");
}

// --- wiring -------------------------------------------------------------------------------

if (!visit || !token) {
  showBrokenLink();
} else if (missingCallSupport()) {
  showUnsupported(missingCallSupport());
} else {
  $("join-button").addEventListener("click", joinCall);
  $("check-devices").addEventListener("click", () => startPreview());
  $("retry-media").addEventListener("click", () => startPreview());
  $("test-sound").addEventListener("click", () => playTestSound().catch(() => {}));
  $("camera-select").addEventListener("change", (e) => switchDevice("video", e.target.value));
  $("microphone-select").addEventListener("change", (e) => switchDevice("audio", e.target.value));
  navigator.mediaDevices?.addEventListener?.("devicechange", () => {
    if (app.dataset.state === "preview" && preview.stream) fillDeviceLists();
  });
  readState().then(showState);
}
