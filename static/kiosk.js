// The kiosk page, /kiosk#token=<device token>: a touch screen in the facility.
// It waits for the visit scheduled at this device, joins it by itself, and
// after the visit goes back to waiting. It never joins a visit again by
// itself once the visit was refused, replaced, stopped, over, or left.

import { CallClient } from "./call.js";
import { CallView, renderEndScreen } from "./callview.js";
import { classifyMediaError, openLocalMedia } from "./localmedia.js";
import { PresenceLink } from "./presence.js";
import { takeToken } from "./token.js";
import { describeEnd, formatDateTime, formatTime, h, listNames } from "./ui.js";

const POLL_MS = 15_000;
const RETURN_AFTER_MS = 30_000;
const FINISHED_KEY = "parlor.kiosk.finished";

const $ = (id) => document.getElementById(id);
const app = $("app");
const token = takeToken("parlor.token.kiosk");

/**
 * Visits this kiosk will not join again by itself, by id:
 * "final" (stopped, refused, over, replaced), "left" (offer a Rejoin button),
 * "media" (camera or microphone failed: offer Try again).
 */
const finished = new Map(loadFinished());

let pollTimer = null;
let returnTimer = null;
let returnTicker = null;
let client = null;
let offered = null; // the visit a Rejoin button would join
let wakeLock = null;

function loadFinished() {
  try {
    return JSON.parse(sessionStorage.getItem(FINISHED_KEY) ?? "[]");
  } catch {
    return [];
  }
}

function markFinished(visitId, how) {
  finished.set(visitId, how);
  try {
    sessionStorage.setItem(FINISHED_KEY, JSON.stringify([...finished].slice(-50)));
  } catch {
    // the in-memory record still protects this page view
  }
}

function setState(state) {
  app.dataset.state = state;
  $("waiting").hidden = state !== "waiting";
  $("call").hidden = state !== "joining" && state !== "in-call";
  $("end").hidden = state !== "ended";
}

// --- waiting for a visit ---------------------------------------------------------

function showWaiting({ title = "No visit right now", detail = null, next = null, problem = null, rejoin = null } = {}) {
  $("waiting-title").textContent = title;
  $("waiting-detail").textContent = detail ?? "When it is time for your visit, it will start on this screen by itself.";
  const nextLine = $("next-visit");
  nextLine.hidden = !next;
  if (next) {
    const names = listNames((next.contacts ?? []).map((c) => c.name));
    const when = next.starts_at ? formatDateTime(next.starts_at) : "";
    nextLine.textContent = `Next visit: ${when}${names ? ` with ${names}` : ""}`;
  }
  $("kiosk-problem").hidden = !problem;
  $("kiosk-problem").textContent = problem ?? "";
  $("rejoin").hidden = !rejoin;
  if (rejoin) $("rejoin-button").textContent = rejoin;
  if (app.dataset.state !== "waiting") {
    setState("waiting");
    $("waiting-title").focus();
  }
}

function schedule() {
  clearTimeout(pollTimer);
  pollTimer = setTimeout(checkForVisit, POLL_MS);
}

function showStatus(text) {
  $("kiosk-status").textContent = text;
}

async function checkForVisit() {
  clearTimeout(pollTimer);
  pollTimer = null;
  if (app.dataset.state !== "waiting") return;
  let response;
  let body = {};
  try {
    response = await fetch("/api/v1/kiosk/visit", {
      headers: { Authorization: `Bearer ${token}` },
      cache: "no-store",
    });
    body = await response.json().catch(() => ({}));
  } catch {
    showStatus("Cannot reach the visit server right now. Trying again…");
    schedule();
    return;
  }
  if (app.dataset.state !== "waiting") return;
  showStatus(`Last checked at ${formatTime(new Date().toISOString())}.`);

  if (response.ok && body.visit?.id) {
    if (onVisit(body.visit)) return;
  } else if (response.status === 404) {
    showWaiting({ next: body.next ?? null });
  } else if (response.status === 401) {
    showNotSetUp();
    return; // a new device token is needed; polling cannot fix that
  } else if (response.status === 403) {
    showWaiting({
      title: "Visits on this screen are paused",
      detail: body.error?.message || "Facility staff have paused visits here. Please ask a member of staff.",
    });
  } else {
    showStatus("Could not check for visits. Trying again…");
  }
  schedule();
}

/** Returns true when the visit is being joined. */
function onVisit(visit) {
  const done = finished.get(visit.id);
  if (!done) {
    join(visit);
    return true;
  }
  offered = visit;
  const names = listNames((visit.contacts ?? []).map((c) => c.name));
  const until = visit.ends_at ? ` until ${formatTime(visit.ends_at)}` : "";
  if (done === "left") {
    showWaiting({
      title: `Your visit${names ? ` with ${names}` : ""} is still open${until}`,
      detail: "You left the visit. You can go back to it.",
      rejoin: "Rejoin visit",
    });
  } else if (done === "media") {
    showWaiting({
      title: "The camera or microphone is not working",
      detail: "Please tell a member of staff. When it is fixed, press Try again.",
      rejoin: "Try again",
    });
  } else {
    offered = null;
    showWaiting();
  }
  return false;
}

function showNotSetUp() {
  $("end").replaceChildren(
    h("h1", { id: "end-title", tabindex: "-1" }, "This screen is not set up for visits."),
    h("p", { id: "end-reason", class: "end-reason" }, "Please tell a member of staff."),
  );
  setState("ended");
}

// --- the visit -------------------------------------------------------------------

async function join(visit) {
  clearTimeout(pollTimer);
  offered = null;
  setState("joining");
  const names = listNames((visit.contacts ?? []).map((c) => c.name));

  let media;
  try {
    media = await openLocalMedia();
  } catch (error) {
    markFinished(visit.id, "media");
    offered = visit;
    showWaiting({
      title: "The camera or microphone is not working",
      detail: "Your visit cannot start until this is fixed. Please tell a member of staff.",
      problem: mediaProblemText(classifyMediaError(error)),
      rejoin: "Try again",
    });
    schedule();
    return;
  }

  const view = new CallView($("call"), { audience: "kiosk", expecting: names, onLeave: () => client?.leave() });
  view.showSelf(media.stream, { cameraMissing: Boolean(media.cameraProblem) });
  client = new CallClient({ token, visit: visit.id, localStream: media.stream });
  view.bind(client);
  client.addEventListener("joined", () => setState("in-call"));
  client.addEventListener("ended", (event) => {
    for (const track of media.stream.getTracks()) track.stop();
    client = null;
    releaseScreen();
    showEnd(visit, event.detail.ending);
  });
  keepScreenOn();
  view.focus();
  client.start();
}

function mediaProblemText(kind) {
  switch (kind) {
    case "denied":
      return "This screen is not allowed to use its camera and microphone.";
    case "not-found":
      return "No microphone was found on this screen.";
    case "in-use":
      return "The camera or microphone is busy.";
    default:
      return "The camera or microphone could not be started.";
  }
}

function showEnd(visit, ending) {
  const about = describeEnd(ending, "kiosk");
  // A lost network may be retried by itself; anything else is not.
  if (ending.kind !== "network") markFinished(visit.id, about.canRejoin ? "left" : "final");

  renderEndScreen($("end"), ending, {
    audience: "kiosk",
    actions: [{ id: "back-button", label: "Back to start", primary: true, onClick: backToWaiting }],
  });
  const notice = h("p", { class: "end-return", id: "end-return" });
  $("end").append(notice);
  const returnAt = Date.now() + RETURN_AFTER_MS;
  const tick = () => {
    const seconds = Math.max(0, Math.ceil((returnAt - Date.now()) / 1000));
    notice.textContent = `This screen goes back to the start in ${seconds} seconds.`;
  };
  tick();
  returnTicker = setInterval(tick, 1000);
  returnTimer = setTimeout(backToWaiting, RETURN_AFTER_MS);
  setState("ended");
  $("end-title").focus();
}

function backToWaiting() {
  clearTimeout(returnTimer);
  clearInterval(returnTicker);
  showWaiting();
  checkForVisit();
}

async function keepScreenOn() {
  try {
    wakeLock = await navigator.wakeLock?.request("screen");
  } catch {
    wakeLock = null;
  }
}

function releaseScreen() {
  wakeLock?.release().catch(() => {});
  wakeLock = null;
}

function showClock() {
  const now = new Date();
  $("clock").textContent = new Intl.DateTimeFormat(undefined, {
    weekday: "long",
    day: "numeric",
    month: "long",
    hour: "numeric",
    minute: "2-digit",
  }).format(now);
}

// --- start -------------------------------------------------------------------------

$("rejoin-button").addEventListener("click", () => {
  if (!offered) return;
  finished.delete(offered.id);
  join(offered);
});

if (!token) {
  showNotSetUp();
} else {
  // Staff see this kiosk online while the page is open, in a call or not.
  const presence = new PresenceLink({ token });
  presence.addEventListener("status", (event) => {
    app.dataset.presence = event.detail.phase;
  });
  presence.start();
  showClock();
  setInterval(showClock, 10_000);
  showWaiting();
  checkForVisit();
}
