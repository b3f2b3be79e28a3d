// The live grid of calls: one card per visit with a live session, kept
// current by ConsoleState (itself fed by the event stream). From a card staff
// can monitor a social call, end it, or open a suspension pre-filled with the
// scopes that fit this call. The facility / system stop lives apart, below.

import { busy, openDialog, problemBox, showSummary } from "./console-dialog.js";
import { openDirectiveDialog } from "./console-directive-form.js";
import { MonitorClient, MonitorView } from "./console-monitor.js";
import { formatTimeLeft } from "./console-time.js";
import { h, listNames, placeAfter } from "./ui.js";

export class CallsView {
  #panel;
  #state;
  #api;
  #session;
  #announce;
  #el = {};
  #cards = new Map(); // visit id -> {element, signature}
  #filter = "";
  #summaryText = "";
  #monitor = null; // {visit, client}

  /**
   * @param {HTMLElement} panel  the Calls tab panel
   * @param {{state, api, session: {token, role, sub, canWrite}, announce: (text) => void}} options
   */
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
    el.filter = h("select", { id: "facility-filter" }, h("option", { value: "" }, "All facilities"));
    el.filter.addEventListener("change", () => {
      this.#filter = el.filter.value;
      this.render();
    });
    el.summary = h("p", { class: "calls-summary", id: "calls-summary", "aria-live": "polite" });
    el.monitor = h("section", { class: "monitor", id: "monitor", "aria-labelledby": "monitor-title", hidden: true });
    el.grid = h("div", { class: "call-grid", id: "call-grid" });
    el.empty = h("p", { class: "empty", id: "calls-empty" }, "No live calls right now.");
    el.flash = h("div", { class: "banner", id: "calls-flash", role: "status", hidden: true });

    const toolbar = h(
      "div",
      { class: "toolbar" },
      h("div", { class: "field field--inline" }, h("label", { for: "facility-filter" }, "Facility"), el.filter),
      el.summary,
    );
    const parts = [h("h2", { class: "visually-hidden" }, "Live calls"), toolbar, el.flash, el.monitor, el.grid, el.empty];
    if (this.#session.canWrite) parts.push(this.#buildKillSwitch());
    this.#panel.replaceChildren(...parts);
  }

  #buildKillSwitch() {
    const open = h("button", { type: "button", class: "button button--danger", id: "kill-switch" }, "Facility / system stop…");
    open.addEventListener("click", () => this.#openKillSwitch());
    return h(
      "section",
      { class: "kill-switch", "aria-labelledby": "kill-switch-title" },
      h("h2", { id: "kill-switch-title" }, "Stop calls across a facility or the whole system"),
      h(
        "p",
        {},
        "For emergencies only, when stopping the calls concerned is not enough. It takes effect at once for every matching call, ",
        "and lapses unless a second, different supervisor confirms it.",
      ),
      open,
    );
  }

  /** Stop monitoring (signing out). */
  destroy() {
    if (this.#monitor && !this.#monitor.client.ended) this.#monitor.client.stop();
    this.#monitor = null;
  }

  // --- drawing ----------------------------------------------------------------------------

  render() {
    const state = this.#state;
    this.#renderFilter();
    const calls = state.calls().filter((call) => !this.#filter || call.visit.facility === this.#filter);
    const seen = new Set();
    let previous = null;
    for (const call of calls) {
      seen.add(call.visit.id);
      const data = this.#cardData(call);
      const signature = JSON.stringify(data);
      let entry = this.#cards.get(call.visit.id);
      if (!entry || entry.signature !== signature) {
        const element = this.#card(data, call);
        if (entry) {
          const focusKey = entry.element.contains(document.activeElement) ? document.activeElement.dataset.focusKey : null;
          entry.element.replaceWith(element);
          if (focusKey) element.querySelector(`[data-focus-key="${focusKey}"]`)?.focus();
        }
        entry = { element, signature };
        this.#cards.set(call.visit.id, entry);
      }
      // Keep the order of `calls` (newest first) without moving unchanged cards needlessly.
      placeAfter(this.#el.grid, previous, entry.element);
      previous = entry.element;
    }
    for (const [visitId, entry] of this.#cards) {
      if (!seen.has(visitId)) {
        const hadFocus = entry.element.contains(document.activeElement);
        entry.element.remove();
        this.#cards.delete(visitId);
        if (hadFocus) this.#el.filter.focus();
      }
    }
    this.#el.empty.hidden = calls.length > 0;
    this.#el.empty.textContent = this.#filter
      ? `No live calls in ${state.facilityName(this.#filter)} right now.`
      : "No live calls right now.";
    const monitored = calls.filter((c) => c.monitors.length).length;
    const where = this.#filter ? ` in ${state.facilityName(this.#filter)} (${this.#filter})` : "";
    const summary = `${calls.length} live call${calls.length === 1 ? "" : "s"}${where}${monitored ? `, ${monitored} monitored` : ""}.`;
    if (summary !== this.#summaryText) {
      this.#summaryText = summary;
      this.#el.summary.textContent = summary;
    }
    this.tick();
    return calls.length;
  }

  /** Count the visit countdowns down (once a second, no network). */
  tick() {
    const now = Date.now();
    for (const element of this.#el.grid.querySelectorAll("[data-ends-at]")) {
      const left = Date.parse(element.dataset.endsAt) - now;
      element.textContent = Number.isNaN(left) ? "—" : formatTimeLeft(left);
      element.closest(".call-time")?.classList.toggle("is-warning", left <= 5 * 60_000);
    }
  }

  #renderFilter() {
    const select = this.#el.filter;
    const facilities = [...this.#state.facilities.values()].sort((a, b) => a.id.localeCompare(b.id));
    const wanted = ["", ...facilities.map((f) => f.id)].join("|");
    if (select.dataset.options === wanted) return;
    select.dataset.options = wanted;
    select.replaceChildren(
      h("option", { value: "" }, "All facilities"),
      ...facilities.map((f) => h("option", { value: f.id }, `${f.name} (${f.id})`)),
    );
    select.value = facilities.some((f) => f.id === this.#filter) ? this.#filter : "";
    this.#filter = select.value;
  }

  /** Everything a card shows: when this changes, the card is redrawn. */
  #cardData(call) {
    const state = this.#state;
    const visit = call.visit;
    const contacts = visit.contacts ?? [];
    const present = new Set(call.contactsPresent);
    return {
      id: visit.id,
      facility: visit.facility ?? "",
      facilityName: visit.facility ? state.facilityName(visit.facility) : "Unknown facility",
      device: visit.device ?? "",
      inmate: visit.inmate ?? "",
      inmateName: visit.inmate ? state.inmateName(visit.inmate) : "Unknown",
      kind: visit.kind ?? "social",
      monitoredKind: visit.monitored ?? visit.kind !== "privileged",
      endsAt: visit.ends_at ?? "",
      kioskPresent: call.kioskPresent,
      contacts: contacts.map((c) => ({ id: c, name: state.contactName(c), minor: Boolean(state.contacts.get(c)?.minor), present: present.has(c) })),
      monitors: call.monitors.map((s) => s.sub),
      restrictions: this.#restrictions(visit),
      monitoringHere: this.#monitor?.visit === visit.id && !this.#monitor.client.ended,
    };
  }

  /** Active audio-only directives that reach this call (suspensions end it, so they do not show). */
  #restrictions(visit) {
    const keys = new Set(["system", `facility:${visit.facility}`, `device:${visit.device}`, `inmate:${visit.inmate}`, `visit:${visit.id}`]);
    for (const c of visit.contacts ?? []) {
      keys.add(`contact:${c}`);
      keys.add(`pair:${visit.inmate}:${c}`);
    }
    return [...this.#state.directives.values()]
      .filter((d) => d.status === "active" && d.action === "audio-only" && keys.has(d.scope))
      .map((d) => ({ id: d.id, scope: d.scope }));
  }

  #card(data, call) {
    const titleId = `call-${data.id}-title`;
    const people = [];
    if (data.kioskPresent) people.push(h("li", { class: "person is-present" }, `${data.inmateName} (kiosk ${data.device})`));
    for (const contact of data.contacts.filter((c) => c.present)) {
      people.push(h("li", { class: "person is-present", "data-contact": contact.id }, contact.name, contact.minor ? h("span", { class: "badge badge--minor" }, "Minor") : null));
    }
    const absent = [
      ...(data.kioskPresent ? [] : [`${data.inmateName} (kiosk ${data.device})`]),
      ...data.contacts.filter((c) => !c.present).map((c) => (c.minor ? `${c.name} (minor)` : c.name)),
    ];
    const privileged = data.kind === "privileged";
    const badges = [
      h("li", { class: `badge ${privileged ? "badge--privileged" : "badge--social"}` }, privileged ? "Privileged" : "Social"),
      privileged
        ? h("li", { class: "badge badge--quiet" }, "Never monitored")
        : data.monitors.length
          ? h("li", { class: "badge badge--monitored" }, `Monitored now by ${listNames(data.monitors)}`)
          : h("li", { class: "badge badge--quiet" }, "Not monitored now"),
      ...data.restrictions.map((r) => h("li", { class: "badge badge--restricted" }, `Audio only (${r.id})`)),
      // A minor on the visit: admitted only while a guardian of theirs is in the call.
      data.contacts.some((c) => c.minor) ? h("li", { class: "badge badge--minor", "data-flag": "minor" }, "With a minor") : null,
    ];

    const actions = [];
    if (this.#session.canMonitor && !privileged) {
      const monitor = h(
        "button",
        { type: "button", class: "button", "data-action": "monitor", "data-focus-key": "monitor", disabled: data.monitoringHere },
        data.monitoringHere ? "Monitoring…" : "Monitor",
      );
      monitor.addEventListener("click", () => this.#startMonitor(data));
      actions.push(monitor);
    }
    if (this.#session.canWrite) {
      const end = h("button", { type: "button", class: "button", "data-action": "end", "data-focus-key": "end" }, "End call");
      end.addEventListener("click", () => this.#confirmEnd(data));
      const suspend = h(
        "button",
        { type: "button", class: "button button--danger", "data-action": "suspend", "data-focus-key": "suspend" },
        "Suspend…",
      );
      suspend.addEventListener("click", () => this.#openSuspend(data));
      actions.push(end, suspend);
    }

    return h(
      "article",
      {
        class: `call-card${privileged ? " call-card--privileged" : ""}`,
        "data-visit": data.id,
        "data-facility": data.facility,
        "aria-labelledby": titleId,
      },
      h(
        "header",
        { class: "call-card-head" },
        h("h3", { id: titleId }, data.inmateName, " ", h("span", { class: "id" }, data.inmate)),
        h("p", { class: "call-where" }, `${data.facilityName} (${data.facility}) · Kiosk ${data.device}`),
      ),
      h("ul", { class: "badges", "aria-label": "About this call" }, badges),
      h(
        "dl",
        { class: "call-facts" },
        h(
          "div",
          { class: "call-time" },
          h("dt", {}, "Time left"),
          h("dd", { class: "countdown-value", "data-ends-at": data.endsAt }, "—"),
        ),
        h("div", {}, h("dt", {}, "In the call"), h("dd", {}, people.length ? h("ul", { class: "people" }, people) : "Nobody yet")),
        absent.length ? h("div", {}, h("dt", {}, "Not connected"), h("dd", { class: "absent" }, listNames(absent))) : null,
        h("div", { class: "call-visit" }, h("dt", {}, "Visit"), h("dd", { class: "id" }, data.id)),
      ),
      actions.length ? h("div", { class: "call-actions", role: "group", "aria-label": `Actions for ${data.inmateName}'s call` }, actions) : null,
    );
  }

  // --- actions -------------------------------------------------------------------------------

  #flash(text, kind = "ok") {
    const flash = this.#el.flash;
    flash.className = `banner ${kind === "ok" ? "banner--ok" : "banner--error"}`;
    flash.textContent = text;
    flash.hidden = false;
  }

  #confirmEnd(data) {
    const sessions = [...this.#state.sessions.values()].filter((s) => s.visit === data.id && !s.ended_at);
    const names = sessions.filter((s) => s.mode !== "monitor").map((s) => this.#state.subjectName(s.sub));
    openDialog({
      title: `End ${data.inmateName}'s call?`,
      build: (dialog, close) => {
        const problems = problemBox();
        const go = h("button", { type: "button", class: "button button--danger", id: "end-confirm" }, "End call");
        const cancel = h("button", { type: "button", class: "button" }, "Cancel");
        cancel.addEventListener("click", close);
        go.addEventListener("click", async () => {
          const failures = [];
          await busy(go, "Ending…", () =>
            Promise.all(
              sessions.map((s) =>
                this.#api.post(`/sessions/${encodeURIComponent(s.id)}/end`).catch((error) => {
                  if (error.status !== 404) failures.push(error.message);
                }),
              ),
            ),
          );
          if (failures.length) {
            showSummary(problems, "Some connections could not be ended:", failures);
            return;
          }
          close();
          this.#flash(`${data.inmateName}'s call (${data.id}) was ended.`);
        });
        dialog.append(
          problems,
          h("p", {}, `Every connection of this call ends now: ${listNames(names) || "no participants"}. They are told that facility staff ended the call.`),
          h("p", {}, "This does not stop anyone joining again. To keep someone out, use Suspend… instead."),
          h("div", { class: "actions" }, go, cancel),
        );
        cancel.focus();
      },
    });
  }

  #openSuspend(data) {
    const scopes = [];
    for (const contact of data.contacts) {
      const status = contact.present ? "" : " (not connected)";
      scopes.push(
        {
          value: `contact:${contact.id}`,
          label: `${contact.name}${status} — all of their calls`,
          key: `contact:${contact.id}`,
          hint: "only this person; the rest of this call goes on",
        },
        {
          value: `pair:${data.inmate}:${contact.id}`,
          label: `${contact.name}${status} — only with ${data.inmateName}`,
          key: `pair:${data.inmate}:${contact.id}`,
          hint: `only this person, only with ${data.inmateName}`,
        },
      );
    }
    scopes.push(
      { value: `visit:${data.id}`, label: "This visit", key: `visit:${data.id}`, hint: "everyone in this visit" },
      {
        value: `inmate:${data.inmate}`,
        label: `${data.inmateName} — all of their calls`,
        key: `inmate:${data.inmate}`,
        hint: `every visit of ${data.inmateName}`,
      },
      {
        value: `device:${data.device}`,
        label: `Kiosk ${data.device} — every call there`,
        key: `device:${data.device}`,
        hint: "everyone using this kiosk",
      },
    );
    openDirectiveDialog({
      api: this.#api,
      title: `Suspend or restrict: ${data.inmateName}'s call`,
      intro: `${data.facilityName} (${data.facility}) · Kiosk ${data.device} · Visit ${data.id}`,
      scopes,
      onIssued: (directive) => {
        const ended = directive.sessions_ended ?? 0;
        const text = `Directive ${directive.id} issued (${directive.scope}, ${directive.action}): ${ended} session${ended === 1 ? "" : "s"} ended.`;
        this.#flash(text);
        this.#announce(text);
      },
    });
  }

  #openKillSwitch() {
    const facilities = [...this.#state.facilities.values()].sort((a, b) => a.id.localeCompare(b.id));
    const scopes = [
      ...facilities.map((f) => ({ value: `facility:${f.id}`, label: `${f.name} (${f.id})`, key: `facility:${f.id}`, hint: "every call in this facility" })),
      { value: "system", label: "The whole system", key: "system", hint: "every call in every facility" },
    ];
    openDirectiveDialog({
      api: this.#api,
      title: "Facility / system stop",
      intro: "Before you continue: can a suspension of the people or call concerned do the job? That is almost always the proportionate answer.",
      scopes,
      broad: true,
      onIssued: (directive) => {
        const text =
          directive.status === "pending"
            ? `Request ${directive.id} (${directive.scope}) is waiting for a second supervisor: nothing has stopped yet.`
            : `Broad directive ${directive.id} (${directive.scope}) is in effect and needs a second supervisor's confirmation.`;
        this.#flash(text, "error");
        this.#announce(text);
      },
    });
  }

  #startMonitor(data) {
    if (this.#monitor && !this.#monitor.client.ended) this.#monitor.client.stop();
    const client = new MonitorClient({ token: this.#session.token, visit: data.id });
    const title = `${data.inmateName} with ${listNames(data.contacts.filter((c) => c.present).map((c) => c.name)) || "nobody yet"}`;
    this.#monitor = { visit: data.id, client };
    const view = new MonitorView(this.#el.monitor, {
      client,
      title,
      nameOf: (sessionId) => {
        const session = this.#state.sessions.get(sessionId);
        if (!session) return "Participant";
        return session.sub === `device:${data.device}` ? `${data.inmateName} (kiosk ${data.device})` : this.#state.subjectName(session.sub);
      },
      onClosed: () => {
        if (this.#monitor?.client === client) this.#monitor = null;
        this.render();
        this.#panel.querySelector(`[data-visit="${CSS.escape(data.id)}"] [data-action="monitor"]`)?.focus();
      },
    });
    client.addEventListener("ended", () => this.render());
    client.start();
    view.focus();
    this.render();
  }
}
