// The operator console, /console#token=...
//
// Sign-in: the staff token comes from the URL fragment (then leaves the
// address bar) or from the sign-in form, and is kept in this tab's
// sessionStorage. Its role is read for display only; the server decides.
//
// Data: everything is loaded once over the REST API, then kept live by the
// staff event stream (never polled). The views draw from ConsoleState.

import { Api, STAFF_ROLES, WRITER_ROLES, readClaims } from "./console-api.js";
import { AppealsView } from "./console-appeals.js";
import { AuditView, ReportView } from "./console-audit.js";
import { CallsView } from "./console-calls.js";
import { ContactsView } from "./console-contacts.js";
import { DirectivesView } from "./console-directives.js";
import { EventStream } from "./console-events.js";
import { KiosksView } from "./console-kiosks.js";
import { RosterView } from "./console-roster.js";
import { RecordingsView } from "./console-recordings.js";
import { ConsoleState } from "./console-state.js";
import { VisitsView } from "./console-visits.js";
import { forgetToken, takeToken } from "./token.js";

const TOKEN_KEY = "parlor.token.console";
const TAB_KEY = "parlor.console.tab";
const ROLE_WORDS = { operator: "Operator", supervisor: "Supervisor", auditor: "Auditor (read-only)" };

const $ = (id) => document.getElementById(id);
const app = $("app");

let running = null; // {events, state, views, ticker}

// --- signing in and out --------------------------------------------------------------------

function showSignIn(message = "") {
  stop();
  app.dataset.state = "signed-out";
  $("console").hidden = true;
  $("sign-in").hidden = false;
  $("console-title").classList.remove("visually-hidden");
  $("who").hidden = true;
  $("sign-out").hidden = true;
  $("live-status").textContent = "";
  const problem = $("sign-in-problem");
  problem.textContent = message;
  problem.hidden = !message;
  document.title = "Sign in — Operator console — Parlor";
  $("token-input").focus();
}

/** What the token says about its holder, or a reason not to try it. */
function inspect(token) {
  const claims = readClaims(token);
  if (!claims) return { claims: null, role: null, sub: null }; // not a JWT we can read: let the server decide
  if (Number.isFinite(claims.exp) && claims.exp * 1000 < Date.now()) {
    return { refused: "This sign-in has expired. Ask for a new sign-in link." };
  }
  if (claims.role && !STAFF_ROLES.has(claims.role)) {
    return { refused: `This link is for a ${claims.role}, not for staff. The console needs an operator, supervisor or auditor sign-in.` };
  }
  return { claims, role: claims.role ?? null, sub: claims.sub ?? null };
}

function signOut() {
  forgetToken(TOKEN_KEY);
  showSignIn("You have signed out.");
}

$("sign-in-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = $("token-input");
  const token = input.value.trim();
  if (!token) {
    input.setAttribute("aria-invalid", "true");
    showSignIn("Paste your staff token first.");
    return;
  }
  input.removeAttribute("aria-invalid");
  const about = inspect(token);
  if (about.refused) {
    showSignIn(about.refused);
    return;
  }
  try {
    sessionStorage.setItem(TOKEN_KEY, token);
  } catch {
    // storage disabled: the token still works for this page view
  }
  input.value = "";
  start(token, about);
});
$("sign-out").addEventListener("click", signOut);

// --- the console -----------------------------------------------------------------------------

function start(token, about) {
  stop();
  const role = about.role;
  const session = {
    token,
    role,
    sub: about.sub,
    // Unknown role (an opaque token): show the controls and let the server refuse.
    canWrite: role === null || WRITER_ROLES.has(role),
    canMonitor: role === null || WRITER_ROLES.has(role),
  };
  app.dataset.state = "signed-in";
  app.dataset.role = role ?? "unknown";
  $("sign-in").hidden = true;
  $("console").hidden = false;
  $("console-title").classList.add("visually-hidden");
  $("who").hidden = false;
  $("who").textContent = about.sub ? `${about.sub} · ${ROLE_WORDS[role] ?? role}` : "Signed in";
  $("sign-out").hidden = false;
  $("console-problem").hidden = true;
  document.title = "Operator console — Parlor";

  const api = new Api(token, {
    onUnauthorized: (error) => {
      forgetToken(TOKEN_KEY);
      showSignIn(`Your sign-in was not accepted: ${error.message}. Sign in again.`);
    },
  });
  const state = new ConsoleState(api);
  const events = new EventStream({ token });
  const announce = makeAnnouncer($("announcer"));
  const options = { state, api, session, announce };
  const views = {
    calls: new CallsView($("panel-calls"), options),
    visits: new VisitsView($("panel-visits"), options),
    kiosks: new KiosksView($("panel-kiosks"), options),
    contacts: new ContactsView($("panel-contacts"), options),
    roster: new RosterView($("panel-roster"), options),
    directives: new DirectivesView($("panel-directives"), options),
    appeals: new AppealsView($("panel-appeals"), options),
    recordings: new RecordingsView($("panel-recordings"), { api, session, announce, alert: showRecordingAlert }),
    audit: new AuditView($("panel-audit"), { api, head: () => events.lastSeq }),
    report: new ReportView($("panel-report"), { api }),
  };
  const me = { events, state, views, session, ticker: null, buffer: [], loading: true, failed: false, reportStale: true };
  running = me;
  window.__parlorConsole = { events, state };

  state.addEventListener("change", (e) => {
    if (running !== me) return;
    const parts = e.detail.parts;
    if (parts.has("sessions") || parts.has("visits") || parts.has("roster") || parts.has("directives")) {
      views.calls.render();
    }
    if (parts.has("sessions") || parts.has("visits") || parts.has("roster") || parts.has("presence")) views.visits.render();
    if (["sessions", "visits", "roster", "presence", "directives"].some((p) => parts.has(p))) views.kiosks.render();
    if (parts.has("roster") || parts.has("approvals")) views.contacts.render();
    if (parts.has("roster")) views.roster.render();
    if (parts.has("directives")) views.directives.render();
    if (parts.has("appeals") || parts.has("directives") || parts.has("roster")) views.appeals.render();
    if (parts.has("report") || parts.has("visits")) {
      me.reportStale = true;
      if (currentTab() === "report") refreshReport(me);
    }
    updateCounts(me);
  });

  events.addEventListener("status", (e) => showLive(e.detail));
  events.addEventListener("fatal", (e) => {
    forgetToken(TOKEN_KEY);
    showSignIn(`Your sign-in was not accepted: ${e.detail.message}`);
  });
  events.addEventListener("ready", (e) => {
    if (running !== me) return;
    // A resumed stream replays what was missed; only a fresh one (or a failed load) needs a load.
    if (!e.detail.resumed || me.failed) load(me);
  });
  events.addEventListener("event", (e) => {
    if (running !== me) return;
    const event = e.detail;
    if (me.loading) {
      me.buffer.push(event);
      if (me.failed && me.buffer.length > 5000) me.buffer.shift(); // the next load makes them moot
      return;
    }
    state.apply(event);
    views.audit.add(event);
    views.recordings.heard(event);
    announceEvent(event, announce, state);
  });

  me.ticker = setInterval(() => {
    views.calls.tick();
    views.directives.tick();
    views.kiosks.tick();
    views.contacts.tick();
  }, 1000);
  // Visits turn live and ended, and the timeline's "now" moves, with the clock.
  me.minutes = setInterval(() => views.visits.render(), 30_000);

  selectTab(storedTab(), { focus: false });
  events.start();
  $("console-title").focus({ preventScroll: true });
}

/**
 * Load everything, then apply the events that arrived meanwhile (from the
 * stream's head on, so nothing between the two is lost; applying is idempotent).
 */
async function load(me) {
  me.loading = true;
  me.buffer = [];
  const problem = $("console-problem");
  try {
    await me.state.loadAll();
  } catch (error) {
    if (running !== me || error.status === 401) return;
    me.failed = true;
    const retry = document.createElement("button");
    retry.type = "button";
    retry.className = "button button--small";
    retry.textContent = "Try again";
    retry.addEventListener("click", () => load(me));
    problem.replaceChildren(`The console could not load: ${error.message} `, retry);
    problem.hidden = false;
    return;
  }
  if (running !== me) return;
  me.failed = false;
  problem.hidden = true;
  me.loading = false;
  for (const event of me.buffer.splice(0)) me.state.apply(event);
  app.dataset.loaded = "true";
  if (currentTab() === "audit" || me.views.audit.loaded) me.views.audit.load(null);
  if (currentTab() === "report") refreshReport(me);
  if (readsRecordings(me)) me.views.recordings.load(); // its alert shows on every tab
}

/** Supervisors and auditors read recordings (operators only where a facility allows it). */
function readsRecordings(me) {
  return me.session.role === null || me.session.role === "supervisor" || me.session.role === "auditor";
}

function showRecordingAlert(text) {
  const alert = $("recording-alert");
  alert.textContent = text;
  alert.hidden = false;
}

function stop() {
  if (!running) return;
  const me = running;
  running = null;
  me.events.stop();
  clearInterval(me.ticker);
  clearInterval(me.minutes);
  for (const dialog of document.querySelectorAll("dialog.console-dialog")) dialog.close();
  me.views.calls.destroy();
}

function refreshReport(me) {
  if (!me.reportStale) return;
  me.reportStale = false;
  me.views.report.load();
}

function showLive({ phase, attempt }) {
  const status = $("live-status");
  status.dataset.phase = phase;
  status.textContent = {
    connecting: "Connecting…",
    live: "Live",
    reconnecting: `Connection lost — reconnecting${attempt ? ` (try ${attempt})` : ""}…`,
    stopped: "Not live",
  }[phase] ?? "";
}

function updateCounts(me) {
  const calls = me.state.calls().length;
  const { active, unconfirmed } = me.views.directives.counts();
  const appeals = me.views.appeals.count();
  $("count-calls").textContent = `(${calls})`;
  $("count-directives").textContent = unconfirmed ? `(${active} · ${unconfirmed} to confirm)` : `(${active})`;
  $("count-directives").classList.toggle("is-urgent", unconfirmed > 0);
  $("count-appeals").textContent = `(${appeals})`;
  $("count-appeals").classList.toggle("is-urgent", appeals > 0);
  $("count-visits").textContent = `(${me.views.visits.count()} today)`;
  const offline = me.views.kiosks.offline();
  $("count-kiosks").textContent = offline ? `(${offline} offline)` : "";
  $("count-kiosks").classList.toggle("is-urgent", offline > 0);
  const waiting = me.views.contacts.pending();
  $("count-contacts").textContent = waiting ? `(${waiting} waiting)` : "";
  $("count-contacts").classList.toggle("is-urgent", waiting > 0);
}

const ANNOUNCED = {
  "device.offline": (e) => `Kiosk ${e.data?.device ?? ""} went offline.`,
  "visit.cancelled": (e) => `${e.subject?.replace("visit:", "Visit ")} was cancelled.`,
  "appeal.filed": (e) => `New appeal ${e.data?.appeal ?? ""} against ${e.subject?.replace("directive:", "directive ")}.`,
  "directive.lapsed": (e) => `${e.subject?.replace("directive:", "Directive ")} lapsed: not confirmed in time.`,
  "directive.confirmed": (e) => `${e.subject?.replace("directive:", "Directive ")} confirmed by ${e.data?.confirmed_by ?? e.actor}.`,
  "directive.expired": (e) => `${e.subject?.replace("directive:", "Directive ")} expired.`,
};

function announceEvent(event, announce) {
  const words = ANNOUNCED[event.action];
  if (words) announce(words(event));
}

function makeAnnouncer(region) {
  let timer = null;
  return (text) => {
    // Clear, then set: a repeated message is announced again.
    region.textContent = "";
    clearTimeout(timer);
    timer = setTimeout(() => (region.textContent = text), 50);
  };
}

// --- tabs (WAI-ARIA tabs pattern: arrow keys move between tabs) ---------------------------------

const tabs = [...document.querySelectorAll('[role="tab"]')];

function currentTab() {
  return tabs.find((t) => t.getAttribute("aria-selected") === "true")?.id.replace("tab-", "") ?? "calls";
}

function storedTab() {
  try {
    return sessionStorage.getItem(TAB_KEY) ?? "calls";
  } catch {
    return "calls";
  }
}

function selectTab(name, { focus = true } = {}) {
  const chosen = tabs.find((t) => t.id === `tab-${name}`) ?? tabs[0];
  for (const tab of tabs) {
    const selected = tab === chosen;
    tab.setAttribute("aria-selected", String(selected));
    tab.tabIndex = selected ? 0 : -1;
    $(tab.getAttribute("aria-controls")).hidden = !selected;
  }
  if (focus) chosen.focus();
  const key = chosen.id.replace("tab-", "");
  try {
    sessionStorage.setItem(TAB_KEY, key);
  } catch {
    // not remembered across reloads
  }
  const me = running;
  if (me && !me.loading) {
    if (key === "audit" && !me.views.audit.loaded) me.views.audit.load(null);
    if (key === "report") refreshReport(me);
    if (key === "recordings" && !me.views.recordings.loaded) me.views.recordings.load();
  }
}

for (const tab of tabs) {
  tab.addEventListener("click", () => selectTab(tab.id.replace("tab-", "")));
  tab.addEventListener("keydown", (event) => {
    const index = tabs.indexOf(tab);
    const next = {
      ArrowRight: tabs[(index + 1) % tabs.length],
      ArrowLeft: tabs[(index - 1 + tabs.length) % tabs.length],
      Home: tabs[0],
      End: tabs[tabs.length - 1],
    }[event.key];
    if (!next) return;
    event.preventDefault();
    selectTab(next.id.replace("tab-", ""));
  });
}

// --- go ------------------------------------------------------------------------------------------

const token = takeToken(TOKEN_KEY);
if (!token) {
  showSignIn();
} else {
  const about = inspect(token);
  if (about.refused) {
    forgetToken(TOKEN_KEY);
    showSignIn(about.refused);
  } else {
    start(token, about);
  }
}
