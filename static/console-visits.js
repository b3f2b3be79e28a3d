// The day's visits: per facility and day, each kiosk's visits on a timeline
// (booked, live, ended, cancelled, no-show) and the same visits as a table.
// From here staff book a visit, move it, change its kind before it opens, and
// cancel it with a structured reason; the server's refusals (a double booking,
// a visit too long, a contact not approved) are shown as it words them.
// Live state comes from ConsoleState, fed by the event stream.
//
// The dialogs are exported: the kiosk list opens them for the visits a kiosk's
// suspension affects.

import { ApiError } from "./console-api.js";
import {
  busy,
  checkedValue,
  choiceGroup,
  clearErrorsOnEdit,
  field,
  openDialog,
  problemBox,
  showProblems,
  showSummary,
} from "./console-dialog.js";
import {
  atTime,
  dayKey,
  formatClock,
  formatDay,
  formatLength,
  formatWhen,
  fromDayKey,
  startOfDay,
  timeKey,
  toRfc3339,
  withLocalTimes,
} from "./console-time.js";
import { h, listNames } from "./ui.js";

export const STATE_WORDS = { booked: "Booked", live: "Live", ended: "Ended", cancelled: "Cancelled", "no-show": "No-show" };
export const CANCEL_REASONS = [
  { value: "lockdown", label: "Lockdown" },
  { value: "kiosk-maintenance", label: "Kiosk maintenance" },
  { value: "illness", label: "Illness" },
  { value: "facility-closure", label: "Facility closure" },
  { value: "contact-request", label: "At the visitor's request" },
  { value: "other", label: "Other", hint: "say why in the note" },
];
const REASON_WORDS = Object.fromEntries([...CANCEL_REASONS.map((r) => [r.value, r.label]), ["approval-withdrawn", "Approval withdrawn"]]);
const LENGTHS = [15, 20, 30, 45, 60, 90, 120, 180, 240]; // minutes
const DEFAULT_HOURS = [8, 20]; // the timeline's day when it has no visit
const MIN_HOURS = 6;

/** "Refused: <the server's words>." with its times in local time. */
export function refusal(error) {
  if (!(error instanceof ApiError)) return String(error);
  const text = withLocalTimes(error.message);
  return error.status >= 400 && error.status < 500 ? `Refused: ${text}.` : text;
}

export class VisitsView {
  #panel;
  #state;
  #api;
  #session;
  #announce;
  #el = {};
  #facility = "";
  #chosen = false; // a facility picked by staff (until then: the first one)
  #day = startOfDay(new Date());

  constructor(panel, { state, api, session, announce }) {
    this.#panel = panel;
    this.#state = state;
    this.#api = api;
    this.#session = session;
    this.#announce = announce;
    this.#build();
  }

  #build() {
    const el = this.#el;
    el.facility = h("select", { id: "schedule-facility" });
    el.facility.addEventListener("change", () => {
      this.#facility = el.facility.value;
      this.#chosen = true;
      this.render();
    });
    el.day = h("input", { type: "date", id: "schedule-day", value: dayKey(this.#day), required: true });
    el.day.addEventListener("change", () => {
      const day = fromDayKey(el.day.value);
      if (day) this.showDay(day);
    });
    const step = (days, label, id) => {
      const button = h("button", { type: "button", class: "button button--small", id }, label);
      button.addEventListener("click", () => {
        const next = days === 0 ? startOfDay(new Date()) : new Date(this.#day.getFullYear(), this.#day.getMonth(), this.#day.getDate() + days);
        this.showDay(next);
      });
      return button;
    };
    el.summary = h("p", { class: "schedule-summary", id: "schedule-summary", "aria-live": "polite" });
    el.flash = h("div", { class: "banner", id: "schedule-flash", role: "status", hidden: true });
    el.timeline = h("div", { class: "timeline", id: "schedule-timeline" });
    el.body = h("tbody", { id: "schedule-rows" });
    el.empty = h("p", { class: "empty", id: "schedule-empty", hidden: true }, "No visits on this day.");
    const headings = ["Time", "Kiosk", "Inmate", "Visitors", "Kind", "State", "Actions"];
    el.table = h(
      "table",
      { class: "data-table schedule-table", id: "schedule-table" },
      h("caption", { class: "visually-hidden" }, "Visits on this day, by start"),
      h("thead", {}, h("tr", {}, headings.map((t) => h("th", { scope: "col" }, t)))),
      el.body,
    );
    const tools = [
      h("div", { class: "field field--inline" }, h("label", { for: "schedule-facility" }, "Facility"), el.facility),
      h("div", { class: "field field--inline" }, h("label", { for: "schedule-day" }, "Day"), el.day),
      h("div", { class: "day-steps", role: "group", "aria-label": "Change day" }, step(-1, "‹ Previous", "day-previous"), step(0, "Today", "day-today"), step(1, "Next ›", "day-next")),
    ];
    if (this.#session.canWrite) {
      const add = h("button", { type: "button", class: "button button--primary", id: "new-visit" }, "Book a visit…");
      add.addEventListener("click", () => this.#openBook());
      tools.push(add);
    }
    el.heading = h("h2", { id: "schedule-title" }, "Visits");
    this.#panel.replaceChildren(el.heading, h("div", { class: "toolbar" }, tools), el.summary, el.flash, el.timeline, h("h3", { class: "schedule-list-title" }, "List"), el.table, el.empty);
  }

  showDay(day) {
    this.#day = startOfDay(day);
    this.#el.day.value = dayKey(this.#day);
    this.render();
  }

  /** Visits booked for today, for the tab's count. */
  count() {
    return this.#state.visitsOn(this.#facility, startOfDay(new Date())).filter((v) => v.status === "booked").length;
  }

  render() {
    this.#renderFacilities();
    const state = this.#state;
    const visits = state.visitsOn(this.#facility, this.#day);
    const where = this.#facility ? state.facilityName(this.#facility) : "All facilities";
    this.#el.heading.textContent = `Visits — ${where}, ${formatDay(this.#day)}`;
    const counts = {};
    for (const visit of visits) counts[state.visitState(visit)] = (counts[state.visitState(visit)] ?? 0) + 1;
    const parts = Object.entries(STATE_WORDS).filter(([key]) => counts[key]).map(([key, word]) => `${counts[key]} ${word.toLowerCase()}`);
    const text = `${visits.length} visit${visits.length === 1 ? "" : "s"}${parts.length ? `: ${parts.join(", ")}` : ""}.`;
    if (this.#el.summary.textContent !== text) this.#el.summary.textContent = text;
    this.#renderTimeline(visits);
    this.#el.body.replaceChildren(...visits.map((v) => this.#row(v)));
    this.#el.table.hidden = visits.length === 0;
    this.#el.empty.hidden = visits.length > 0;
  }

  #renderFacilities() {
    const select = this.#el.facility;
    const facilities = [...this.#state.facilities.values()].sort((a, b) => a.id.localeCompare(b.id));
    const wanted = facilities.map((f) => `${f.id}:${f.name}`).join("|");
    if (select.dataset.options !== wanted) {
      select.dataset.options = wanted;
      select.replaceChildren(h("option", { value: "" }, "All facilities"), ...facilities.map((f) => h("option", { value: f.id }, `${f.name} (${f.id})`)));
    }
    if (!this.#chosen && !this.#facility && facilities.length) this.#facility = facilities[0].id; // a day is one facility's
    select.value = facilities.some((f) => f.id === this.#facility) ? this.#facility : "";
    this.#facility = select.value;
  }

  // --- the timeline ----------------------------------------------------------------------

  #renderTimeline(visits) {
    const state = this.#state;
    const day = this.#day.getTime();
    // The hours the day's visits take, an hour either side, at least MIN_HOURS: a 30-minute
    // visit must be wide enough to read.
    let [first, last] = visits.length ? [24, 0] : DEFAULT_HOURS;
    for (const v of visits) {
      first = Math.min(first, Math.max(0, Math.floor((Date.parse(v.starts_at) - day) / 3600_000) - 1));
      last = Math.max(last, Math.min(24, Math.ceil((Date.parse(v.ends_at) - day) / 3600_000) + 1));
    }
    while (last - first < MIN_HOURS) {
      if (last < 24) last += 1;
      if (last - first < MIN_HOURS && first > 0) first -= 1;
    }
    const from = day + first * 3600_000;
    const span = (last - first) * 3600_000;
    const at = (ms) => Math.max(0, Math.min(100, ((ms - from) / span) * 100));
    const devices = [...state.devices.values()]
      .filter((d) => !this.#facility || d.facility === this.#facility)
      .sort((a, b) => a.id.localeCompare(b.id));
    const hours = h("div", { class: "timeline-hours", "aria-hidden": "true" });
    for (let hour = first; hour < last; hour += 1) {
      const tick = h("span", { class: "timeline-hour" }, formatHour(new Date(day + hour * 3600_000)));
      tick.style.setProperty("--at", String(at(day + hour * 3600_000)));
      hours.append(tick);
    }
    const rows = [h("div", { class: "timeline-corner" }, "Kiosk"), hours];
    const now = Date.now();
    for (const device of devices) {
      const track = h("div", { class: "timeline-track", "data-device": device.id });
      track.style.setProperty("--hours", String(last - first));
      if (now >= from && now < from + span) {
        const line = h("span", { class: "timeline-now", title: "Now" });
        line.style.setProperty("--at", String(at(now)));
        track.append(line);
      }
      for (const visit of visits.filter((v) => v.device === device.id)) track.append(this.#block(visit, at));
      const presence = state.kioskCall(device.id) ? "In a call" : device.presence?.state === "online" ? "Online" : device.presence ? "Offline" : "Never connected";
      rows.push(
        h(
          "div",
          { class: "timeline-kiosk" },
          h("strong", {}, `Kiosk ${device.id}`),
          h("span", { class: `presence presence--${state.kioskCall(device.id) ? "call" : (device.presence?.state ?? "unknown")}` }, presence),
        ),
        track,
      );
    }
    if (!devices.length) rows.push(h("p", { class: "empty timeline-empty" }, "No kiosks in this facility yet: add one on the Kiosks tab."));
    this.#el.timeline.replaceChildren(...rows);
  }

  #block(visit, at) {
    const state = this.#state.visitState(visit);
    const start = at(Date.parse(visit.starts_at));
    const end = at(Date.parse(visit.ends_at));
    const who = listNames((visit.contacts ?? []).map((c) => this.#state.contactName(c)));
    const label = `${formatClock(visit.starts_at)}–${formatClock(visit.ends_at)} ${this.#state.inmateName(visit.inmate)} with ${who}, ${STATE_WORDS[state]}${visit.kind === "privileged" ? ", privileged" : ""}`;
    const block = h(
      "button",
      { type: "button", class: `visit-block visit-block--${state}${visit.kind === "privileged" ? " is-privileged" : ""}`, "data-visit": visit.id, "data-state": state, "aria-label": label, title: label },
      h("span", { class: "visit-block-time" }, formatClock(visit.starts_at)),
      h("span", { class: "visit-block-who" }, this.#state.inmateName(visit.inmate)),
      visit.kind === "privileged" ? h("span", { class: "visit-block-kind" }, "Privileged") : null,
      h("span", { class: "visit-block-state" }, STATE_WORDS[state]),
    );
    block.style.setProperty("--start", String(start));
    block.style.setProperty("--length", String(Math.max(0.8, end - start)));
    block.addEventListener("click", () => openVisitDialog(visit.id, this.#context()));
    return block;
  }

  // --- the list ---------------------------------------------------------------------------

  #row(visit) {
    const state = this.#state;
    const now = state.visitState(visit);
    const visitors = (visit.contacts ?? []).map((c) => {
      const contact = state.contacts.get(c);
      const approved = contact?.approvals?.[visit.inmate] === "approved";
      return h(
        "span",
        { class: "visitor" },
        state.contactName(c),
        contact?.minor ? h("span", { class: "badge badge--minor" }, "Minor") : null,
        approved || visit.status !== "booked" ? null : h("span", { class: "badge badge--restricted" }, "Not approved"),
      );
    });
    const details = h("button", { type: "button", class: "button button--small", "data-action": "details" }, "Details…");
    details.addEventListener("click", () => openVisitDialog(visit.id, this.#context()));
    const actions = [details];
    if (this.#session.canWrite && visit.status === "booked" && Date.parse(visit.ends_at) > Date.now()) {
      const move = h("button", { type: "button", class: "button button--small", "data-action": "move" }, "Move…");
      move.addEventListener("click", () => openMoveDialog(visit.id, this.#context()));
      const cancel = h("button", { type: "button", class: "button button--small button--danger-quiet", "data-action": "cancel" }, "Cancel…");
      cancel.addEventListener("click", () => openCancelDialog(visit.id, this.#context()));
      actions.push(move, cancel);
    }
    const why = visit.cancellation ? h("span", { class: "muted" }, REASON_WORDS[visit.cancellation.reason] ?? visit.cancellation.reason, visit.cancellation.note ? `: ${visit.cancellation.note}` : "") : null;
    const moved = visit.moved ? h("span", { class: "muted" }, `Moved from ${formatWhen(visit.moved.from.starts_at)}`) : null;
    return h(
      "tr",
      { "data-visit": visit.id, "data-state": now },
      h("td", { "data-label": "Time" }, h("span", {}, `${formatClock(visit.starts_at)}–${formatClock(visit.ends_at)}`), moved),
      h("td", { "data-label": "Kiosk" }, visit.device),
      h("td", { "data-label": "Inmate" }, `${state.inmateName(visit.inmate)} (${visit.inmate})`),
      h("td", { "data-label": "Visitors" }, visitors),
      h("td", { "data-label": "Kind" }, kindBadge(visit)),
      h("td", { "data-label": "State" }, h("span", { class: `visit-state visit-state--${now}` }, STATE_WORDS[now]), why),
      h("td", { "data-label": "Actions", class: "row-actions" }, actions),
    );
  }

  #context() {
    return { state: this.#state, api: this.#api, session: this.#session, announce: this.#announce, flash: (text, kind) => this.#flash(text, kind) };
  }

  #flash(text, kind = "ok") {
    const flash = this.#el.flash;
    flash.className = `banner ${kind === "ok" ? "banner--ok" : "banner--error"}`;
    flash.textContent = text;
    flash.hidden = false;
  }

  #openBook() {
    openBookDialog({ ...this.#context(), facility: this.#facility, day: this.#day, onBooked: (visit) => this.showDay(new Date(visit.starts_at)) });
  }
}

function kindBadge(visit) {
  return visit.kind === "privileged"
    ? h("span", { class: "badge badge--privileged", title: "Privileged: private, never monitored" }, "Privileged")
    : h("span", { class: "badge badge--social" }, "Social");
}

// --- dialogs ---------------------------------------------------------------------------------

/** Book a visit: inmate, kiosk, approved visitors, day, start, length, kind. */
export function openBookDialog({ state, api, announce, flash, facility, day, onBooked = () => {} }) {
  return openDialog({
    title: "Book a visit",
    className: "dialog--visit",
    build(dialog, close) {
      const form = h("form", { class: "visit-form", novalidate: true, id: "book-form" });
      const problems = problemBox();
      const facilities = [...state.facilities.values()].sort((a, b) => a.id.localeCompare(b.id));
      const where = h("select", { name: "facility" }, facilities.map((f) => h("option", { value: f.id }, `${f.name} (${f.id})`)));
      where.value = facility || facilities[0]?.id || "";
      const inmate = h("select", { name: "inmate", autofocus: true });
      const kiosk = h("select", { name: "device" });
      const visitors = h("fieldset", { class: "field choices visitors", id: "book-visitors", "data-field": "book-visitors" }, h("legend", {}, "Visitors"));
      const date = h("input", { type: "date", name: "day", value: dayKey(day ?? new Date()), required: true });
      const start = h("input", { type: "time", name: "start", step: 300, required: true, value: nextSlot() });
      const length = h("select", { name: "length" });
      const kind = choiceGroup({
        name: "kind",
        legend: "Kind",
        choices: [
          { value: "social", label: "Social", hint: "family and friends; may be monitored" },
          { value: "privileged", label: "Privileged", hint: "attorney or clergy: private, never monitored or recorded" },
        ],
        className: "choices--kind",
      });
      kind.querySelector('input[value="social"]').checked = true;

      const fillFacility = () => {
        const f = where.value;
        const inmates = [...state.inmates.values()].filter((i) => i.facility === f).sort((a, b) => a.name.localeCompare(b.name));
        inmate.replaceChildren(h("option", { value: "" }, inmates.length ? "Choose an inmate…" : "No inmates here yet"), ...inmates.map((i) => h("option", { value: i.id }, `${i.name} (${i.id})`)));
        const kiosks = [...state.devices.values()].filter((d) => d.facility === f).sort((a, b) => a.id.localeCompare(b.id));
        kiosk.replaceChildren(...kiosks.map((d) => h("option", { value: d.id }, `Kiosk ${d.id}${state.outOfService(d.id).length ? " (out of service)" : ""}`)));
        const longest = (state.facilities.get(f)?.max_visit_seconds ?? 4 * 3600) / 60;
        const before = length.value || "30";
        length.replaceChildren(...LENGTHS.filter((m) => m <= longest).map((m) => h("option", { value: String(m) }, formatLength(m * 60))));
        length.value = [...length.options].some((o) => o.value === before) ? before : length.options[0]?.value ?? "";
        fillVisitors();
      };
      const fillVisitors = () => {
        const approved = [...state.contacts.values()].filter((c) => c.approvals?.[inmate.value] === "approved").sort((a, b) => a.name.localeCompare(b.name));
        const items = approved.map((c) => {
          const id = `book-visitor-${c.id}`;
          return h("div", { class: "choice" }, h("input", { type: "checkbox", name: "contacts", value: c.id, id }), h("label", { for: id }, c.name, c.minor ? h("span", { class: "badge badge--minor" }, "Minor") : null, h("span", { class: "choice-hint" }, h("code", {}, c.id))));
        });
        visitors.replaceChildren(
          h("legend", {}, "Visitors"),
          h("p", { class: "field-error", id: "book-visitors-error", hidden: true }),
          items.length ? h("div", { class: "choice-list" }, items) : h("p", { class: "muted" }, inmate.value ? "Nobody is approved to visit this inmate yet (Contacts tab)." : "Choose an inmate first."),
        );
      };
      where.addEventListener("change", fillFacility);
      inmate.addEventListener("change", fillVisitors);
      fillFacility();

      const submit = h("button", { type: "submit", class: "button button--primary" }, "Book visit");
      const cancel = h("button", { type: "button", class: "button" }, "Cancel");
      cancel.addEventListener("click", close);
      form.append(
        problems,
        h("div", { class: "form-row" }, field({ label: "Facility", control: where }), field({ label: "Kiosk", control: kiosk })),
        field({ label: "Inmate", control: inmate }),
        visitors,
        h("div", { class: "form-row" }, field({ label: "Day", control: date }), field({ label: "Starts at", control: start }), field({ label: "Length", control: length })),
        kind,
        h("div", { class: "actions" }, submit, cancel),
      );
      clearErrorsOnEdit(form);
      form.addEventListener("submit", async (event) => {
        event.preventDefault();
        const chosen = [...form.querySelectorAll('input[name="contacts"]:checked')].map((i) => i.value);
        const starts = atTime(fromDayKey(date.value), start.value);
        const found = [];
        if (!inmate.value) found.push([inmate, "Choose the inmate."]);
        if (!kiosk.value) found.push([kiosk, "Choose the kiosk."]);
        if (!chosen.length) found.push([visitors, "Choose at least one visitor."]);
        if (!Number.isFinite(starts)) found.push([start, "Enter the day and the time it starts."]);
        if (!showProblems(form, problems, found)) return;
        const body = {
          inmate: inmate.value,
          device: kiosk.value,
          contacts: chosen,
          kind: checkedValue(form, "kind") || "social",
          starts_at: toRfc3339(starts),
          ends_at: toRfc3339(starts + Number(length.value) * 60_000),
        };
        let visit;
        try {
          visit = await busy(submit, "Booking…", () => api.post("/visits", body));
        } catch (error) {
          showSummary(problems, refusal(error));
          return;
        }
        const text = `Visit booked: ${state.inmateName(visit.inmate)}, ${formatWhen(visit.starts_at)} at kiosk ${visit.device}.`;
        announce(text);
        flash?.(text);
        onBooked(visit);
        showLinks(dialog, visit, state, close, "Visit booked", "Send each visitor their own link. It shows them the visit's time, and any change, until they join.");
      });
      dialog.append(form);
    },
  });
}

/** After booking (or a move the old links do not cover): each visitor's link, to copy. */
function showLinks(dialog, visit, state, close, title, intro) {
  const done = h("button", { type: "button", class: "button button--primary" }, "Done");
  done.addEventListener("click", close);
  dialog.querySelector("h2").textContent = title;
  const rows = visit.contacts.map((c) => {
    const url = visit.join?.[c]?.url ?? "";
    const input = h("input", { type: "text", readonly: true, value: url, "aria-label": `Join link for ${state.contactName(c)}`, class: "link-input", "data-contact": c });
    const copy = h("button", { type: "button", class: "button button--small" }, "Copy");
    copy.addEventListener("click", async () => {
      input.select();
      try {
        await navigator.clipboard.writeText(url);
        copy.textContent = "Copied";
      } catch {
        copy.textContent = "Select and copy";
      }
    });
    return h("div", { class: "link-row" }, h("span", { class: "link-who" }, state.contactName(c)), input, copy);
  });
  const body = h("div", { class: "visit-links", role: "status" }, h("p", {}, `${state.inmateName(visit.inmate)} · ${formatWhen(visit.starts_at)}–${formatClock(visit.ends_at)} · Kiosk ${visit.device} · ${visit.kind === "privileged" ? "Privileged" : "Social"}`), h("p", { class: "muted" }, intro), rows, h("div", { class: "actions" }, done));
  dialog.querySelector("form")?.replaceWith(body);
  done.focus(); // the dialog is open already: focus moves now
}

/** A visit's details and what can still be done to it. */
export function openVisitDialog(visitId, ctx) {
  const { state, session } = ctx;
  const visit = state.visits.get(visitId);
  if (!visit) return null;
  const now = state.visitState(visit);
  return openDialog({
    title: `${state.inmateName(visit.inmate)} — ${formatWhen(visit.starts_at)}`,
    className: "dialog--visit",
    build(dialog, close) {
      const rows = [
        ["When", `${formatWhen(visit.starts_at)}–${formatClock(visit.ends_at)}`],
        ["Where", `${state.facilityName(visit.facility)} (${visit.facility}) · Kiosk ${visit.device}`],
        ["Inmate", `${state.inmateName(visit.inmate)} (${visit.inmate})`],
        ["Visitors", listNames(visit.contacts.map((c) => `${state.contactName(c)}${state.contacts.get(c)?.minor ? " (minor)" : ""}`))],
        ["Kind", visit.kind === "privileged" ? "Privileged: private, never monitored, never recorded" : "Social: may be monitored"],
        ["State", STATE_WORDS[now]],
      ];
      if (visit.cancellation) rows.push(["Cancelled", `${formatWhen(visit.cancellation.at)} by ${visit.cancellation.by}: ${REASON_WORDS[visit.cancellation.reason] ?? visit.cancellation.reason}${visit.cancellation.note ? ` — ${visit.cancellation.note}` : ""}`]);
      if (visit.moved) rows.push(["Moved", `from ${formatWhen(visit.moved.from.starts_at)}, on ${formatWhen(visit.moved.at)} by ${visit.moved.by}`]);
      rows.push(["Visit", visit.id]);
      const actions = [];
      const problems = problemBox();
      const open = visit.status === "booked" && Date.parse(visit.ends_at) > Date.now();
      if (session.canWrite && open) {
        const move = h("button", { type: "button", class: "button", "data-action": "move" }, "Move…");
        move.addEventListener("click", () => {
          close();
          openMoveDialog(visit.id, ctx);
        });
        const cancel = h("button", { type: "button", class: "button button--danger", "data-action": "cancel" }, "Cancel visit…");
        cancel.addEventListener("click", () => {
          close();
          openCancelDialog(visit.id, ctx);
        });
        actions.push(move);
        if (now === "booked") {
          const other = visit.kind === "privileged" ? "social" : "privileged";
          const kind = h("button", { type: "button", class: "button", "data-action": "kind" }, `Make it ${other}`);
          kind.addEventListener("click", async () => {
            try {
              await busy(kind, "Changing…", () => ctx.api.post(`/visits/${encodeURIComponent(visit.id)}/kind`, { kind: other }));
            } catch (error) {
              showSummary(problems, refusal(error));
              return;
            }
            ctx.announce(`Visit ${visit.id} is now ${other}.`);
            close();
          });
          actions.push(kind);
        }
        actions.push(cancel);
      }
      const done = h("button", { type: "button", class: "button" }, "Close");
      done.addEventListener("click", close);
      actions.push(done);
      dialog.append(
        h("dl", { class: "visit-facts" }, rows.map(([label, value]) => h("div", {}, h("dt", {}, label), h("dd", {}, value)))),
        problems,
        h("div", { class: "actions" }, actions),
      );
      done.autofocus = true;
    },
  });
}

/** Move a visit to another day or time; its id and the family's link stay. */
export function openMoveDialog(visitId, ctx) {
  const { state, api, announce } = ctx;
  const visit = state.visits.get(visitId);
  if (!visit) return null;
  const startsAt = Date.parse(visit.starts_at);
  const minutes = Math.round((Date.parse(visit.ends_at) - startsAt) / 60000);
  return openDialog({
    title: `Move ${state.inmateName(visit.inmate)}'s visit`,
    className: "dialog--visit",
    build(dialog, close) {
      const form = h("form", { novalidate: true, id: "move-form" });
      const problems = problemBox();
      const date = h("input", { type: "date", name: "day", value: dayKey(new Date(startsAt)), required: true, autofocus: true });
      const start = h("input", { type: "time", name: "start", step: 300, value: timeKey(startsAt), required: true });
      const length = h("select", { name: "length" }, [...new Set([...LENGTHS, minutes])].sort((a, b) => a - b).map((m) => h("option", { value: String(m) }, formatLength(m * 60))));
      length.value = String(minutes);
      const kiosks = [...state.devices.values()].filter((d) => d.facility === visit.facility).sort((a, b) => a.id.localeCompare(b.id));
      const kiosk = h("select", { name: "device" }, kiosks.map((d) => h("option", { value: d.id }, `Kiosk ${d.id}${state.outOfService(d.id).length ? " (out of service)" : ""}`)));
      kiosk.value = visit.device;
      const submit = h("button", { type: "submit", class: "button button--primary" }, "Move visit");
      const cancel = h("button", { type: "button", class: "button" }, "Keep it");
      cancel.addEventListener("click", close);
      form.append(
        h("p", { class: "dialog-intro" }, `Now: ${formatWhen(visit.starts_at)}–${formatClock(visit.ends_at)} at kiosk ${visit.device}. The visitors' links keep working and show them the new time.`),
        problems,
        h("div", { class: "form-row" }, field({ label: "New day", control: date }), field({ label: "Starts at", control: start }), field({ label: "Length", control: length })),
        field({ label: "Kiosk", control: kiosk }),
        h("div", { class: "actions" }, submit, cancel),
      );
      clearErrorsOnEdit(form);
      form.addEventListener("submit", async (event) => {
        event.preventDefault();
        const starts = atTime(fromDayKey(date.value), start.value);
        if (!showProblems(form, problems, Number.isFinite(starts) ? [] : [[start, "Enter the new day and time."]])) return;
        const body = { starts_at: toRfc3339(starts), ends_at: toRfc3339(starts + Number(length.value) * 60_000), device: kiosk.value };
        let moved;
        try {
          moved = await busy(submit, "Moving…", () => api.post(`/visits/${encodeURIComponent(visit.id)}/reschedule`, body));
        } catch (error) {
          showSummary(problems, refusal(error));
          return;
        }
        const text = `Visit ${visit.id} moved to ${formatWhen(moved.starts_at)} at kiosk ${moved.device}.`;
        announce(text);
        ctx.flash?.(text);
        if (moved.links_kept) close();
        else showLinks(dialog, moved, state, close, "Visit moved: send new links", "The move is later than the visitors' old links last: send them these.");
      });
      dialog.append(form);
    },
  });
}

/** Cancel a visit with a structured reason; the family is shown the reason and the note. */
export function openCancelDialog(visitId, ctx) {
  const { state, api, announce } = ctx;
  const visit = state.visits.get(visitId);
  if (!visit) return null;
  const live = state.visitState(visit) === "live";
  return openDialog({
    title: `Cancel ${state.inmateName(visit.inmate)}'s visit?`,
    className: "dialog--visit",
    build(dialog, close) {
      const form = h("form", { novalidate: true, id: "cancel-form" });
      const problems = problemBox();
      const reason = choiceGroup({ name: "reason", legend: "Why", choices: CANCEL_REASONS, className: "choices--reasons" });
      const note = h("textarea", { name: "note", rows: 2, maxlength: 500 });
      const submit = h("button", { type: "submit", class: "button button--danger" }, "Cancel visit");
      const keep = h("button", { type: "button", class: "button" }, "Keep it");
      keep.addEventListener("click", close);
      form.append(
        h("p", { class: "dialog-intro" }, `${formatWhen(visit.starts_at)}–${formatClock(visit.ends_at)} · Kiosk ${visit.device} · ${listNames(visit.contacts.map((c) => state.contactName(c)))}`),
        live ? h("p", { class: "banner banner--warning" }, "This visit is live: its call ends now, and everyone in it is told why.") : "",
        problems,
        reason,
        field({ label: "Note", control: note, hint: "Shown to the visitors with the reason. Required for “Other”." }),
        h("div", { class: "actions" }, submit, keep),
      );
      clearErrorsOnEdit(form);
      form.addEventListener("submit", async (event) => {
        event.preventDefault();
        const why = checkedValue(form, "reason");
        const found = [];
        if (!why) found.push([reason, "Choose why the visit is cancelled."]);
        if (why === "other" && !note.value.trim()) found.push([note, "Say why in the note."]);
        if (!showProblems(form, problems, found)) return;
        const body = { reason: why };
        if (note.value.trim()) body.note = note.value.trim();
        let cancelled;
        try {
          cancelled = await busy(submit, "Cancelling…", () => api.post(`/visits/${encodeURIComponent(visit.id)}/cancel`, body));
        } catch (error) {
          showSummary(problems, refusal(error));
          return;
        }
        const ended = cancelled.sessions_ended ? ` ${cancelled.sessions_ended} connection(s) ended.` : "";
        const text = `Visit ${visit.id} cancelled (${REASON_WORDS[why]}).${ended}`;
        announce(text);
        ctx.flash?.(text);
        close();
      });
      form.querySelector('input[name="reason"]').autofocus = true;
      dialog.append(form);
    },
  });
}

/** An hour of the timeline's ruler, short: "14" or "2 PM", as the reader's locale has it. */
function formatHour(date) {
  return new Intl.DateTimeFormat(undefined, { hour: "numeric" }).format(date);
}

/** The next whole quarter hour from now, as "HH:MM". */
function nextSlot() {
  const quarter = 15 * 60_000;
  return timeKey(Math.ceil((Date.now() + 5 * 60_000) / quarter) * quarter);
}
