// The kiosks of a facility: online (its presence connection is held), in a
// call, offline since when, last seen, its next visit, and whether a
// directive has taken it out of service. Presence changes reach the console
// as audit events on the event stream (device.online / device.offline), so a
// kiosk that goes away shows here within its heartbeat timeout, without
// polling. "Take out of service" issues a device:K suspension through the
// usual directive form, then lists the booked visits it affects, which staff
// can move or cancel from there.

import { busy, clearErrorsOnEdit, field, openDialog, problemBox, showProblems, showSummary } from "./console-dialog.js";
import { openDirectiveDialog } from "./console-directive-form.js";
import { formatClock, formatFromNow, formatWhen } from "./console-time.js";
import { STATE_WORDS, openCancelDialog, openMoveDialog, refusal } from "./console-visits.js";
import { h, listNames } from "./ui.js";

export class KiosksView {
  #panel;
  #state;
  #api;
  #session;
  #announce;
  #el = {};
  #facility = "";

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
    el.facility = h("select", { id: "kiosk-facility" });
    el.facility.addEventListener("change", () => {
      this.#facility = el.facility.value;
      this.render();
    });
    el.summary = h("p", { class: "kiosks-summary", id: "kiosks-summary", "aria-live": "polite" });
    el.flash = h("div", { class: "banner", id: "kiosks-flash", role: "status", hidden: true });
    el.body = h("tbody", { id: "kiosk-rows" });
    el.empty = h("p", { class: "empty", id: "kiosks-empty", hidden: true }, "No kiosks yet.");
    const headings = ["Kiosk", "Status", "Last seen", "Next visit", "Service"];
    if (this.#session.canWrite) headings.push("Actions");
    el.table = h(
      "table",
      { class: "data-table kiosk-table", id: "kiosk-table" },
      h("caption", { class: "visually-hidden" }, "Kiosks and their presence"),
      h("thead", {}, h("tr", {}, headings.map((t) => h("th", { scope: "col" }, t)))),
      el.body,
    );
    const tools = [h("div", { class: "field field--inline" }, h("label", { for: "kiosk-facility" }, "Facility"), el.facility), el.summary];
    if (this.#session.canWrite) {
      const add = h("button", { type: "button", class: "button", id: "add-kiosk" }, "Add a kiosk…");
      add.addEventListener("click", () => this.#openAdd());
      tools.push(add);
    }
    this.#panel.replaceChildren(
      h("h2", {}, "Kiosks"),
      h("div", { class: "toolbar" }, tools),
      el.flash,
      el.table,
      el.empty,
      h("p", { class: "muted kiosk-note" }, "A kiosk is online while its screen holds a connection to the server; it shows offline here within 30 seconds of going away."),
    );
  }

  /** Kiosks offline now (for the tab's count). */
  offline() {
    return [...this.#state.devices.values()].filter((d) => d.presence?.state !== "online").length;
  }

  render() {
    this.#renderFacilities();
    const devices = [...this.#state.devices.values()]
      .filter((d) => !this.#facility || d.facility === this.#facility)
      .sort((a, b) => a.id.localeCompare(b.id));
    const focused = this.#el.body.contains(document.activeElement) ? document.activeElement.dataset.focusKey : null;
    this.#el.body.replaceChildren(...devices.map((d) => this.#row(d)));
    if (focused) this.#el.body.querySelector(`[data-focus-key="${CSS.escape(focused)}"]`)?.focus();
    this.#el.table.hidden = devices.length === 0;
    this.#el.empty.hidden = devices.length > 0;
    const online = devices.filter((d) => d.presence?.state === "online").length;
    const calls = devices.filter((d) => this.#state.kioskCall(d.id)).length;
    const text = `${devices.length} kiosk${devices.length === 1 ? "" : "s"}: ${online} online${calls ? ` (${calls} in a call)` : ""}, ${devices.length - online} offline.`;
    if (this.#el.summary.textContent !== text) this.#el.summary.textContent = text;
    this.tick();
  }

  /** The "… ago" texts, once a second. */
  tick() {
    for (const element of this.#el.body.querySelectorAll("[data-since]")) {
      const text = formatFromNow(Date.parse(element.dataset.since));
      if (element.textContent !== text) element.textContent = text;
    }
  }

  #renderFacilities() {
    const select = this.#el.facility;
    const facilities = [...this.#state.facilities.values()].sort((a, b) => a.id.localeCompare(b.id));
    const wanted = facilities.map((f) => `${f.id}:${f.name}`).join("|");
    if (select.dataset.options === wanted) return;
    select.dataset.options = wanted;
    select.replaceChildren(h("option", { value: "" }, "All facilities"), ...facilities.map((f) => h("option", { value: f.id }, `${f.name} (${f.id})`)));
    select.value = facilities.some((f) => f.id === this.#facility) ? this.#facility : "";
    this.#facility = select.value;
  }

  #row(device) {
    const state = this.#state;
    const presence = device.presence;
    const call = state.kioskCall(device.id);
    const online = presence?.state === "online";
    const status = call
      ? [h("span", { class: "presence presence--call" }, "In a call"), h("span", { class: "muted" }, `visit ${call.visit}`)]
      : online
        ? [h("span", { class: "presence presence--online" }, "Online"), h("span", { class: "muted" }, `since ${formatClock(presence.since)}`)]
        : presence
          ? [h("span", { class: "presence presence--offline" }, "Offline"), h("span", { class: "muted" }, `since ${formatWhen(presence.since)}`)]
          : [h("span", { class: "presence presence--unknown" }, "Never connected")];
    const seen = online || call ? h("span", {}, "now") : presence ? h("span", {}, formatWhen(presence.last_seen), h("span", { class: "muted since", "data-since": presence.last_seen })) : h("span", { class: "muted" }, "—");
    const next = this.#nextVisit(device);
    const nextCell = next
      ? [h("span", {}, `${formatWhen(next.starts_at)}`), h("span", { class: "muted" }, `${state.inmateName(next.inmate)}${next.kind === "privileged" ? " · privileged" : ""}`)]
      : [h("span", { class: "muted" }, "None booked")];
    const stops = state.outOfService(device.id);
    const service = stops.length
      ? [h("span", { class: "badge badge--restricted" }, "Out of service"), h("span", { class: "muted" }, `until ${formatWhen(stops[0].expires_at)} (${stops[0].id})`)]
      : [h("span", {}, "In service")];
    const cells = [
      h("td", { "data-label": "Kiosk" }, h("strong", {}, `Kiosk ${device.id}`), h("span", { class: "muted" }, state.facilityName(device.facility))),
      h("td", { "data-label": "Status", class: "kiosk-status" }, status),
      h("td", { "data-label": "Last seen" }, seen),
      h("td", { "data-label": "Next visit" }, nextCell),
      h("td", { "data-label": "Service" }, service),
    ];
    if (this.#session.canWrite) {
      const actions = [];
      if (stops.length) {
        const affected = h("button", { type: "button", class: "button button--small", "data-action": "affected", "data-focus-key": `${device.id}:affected` }, "Booked visits…");
        affected.addEventListener("click", () => openAffectedDialog(device, stops[0], this.#context()));
        actions.push(affected);
      } else {
        const stop = h("button", { type: "button", class: "button button--small button--danger", "data-action": "out-of-service", "data-focus-key": `${device.id}:stop` }, "Take out of service…");
        stop.addEventListener("click", () => this.#takeOut(device));
        actions.push(stop);
      }
      cells.push(h("td", { "data-label": "Actions", class: "row-actions" }, actions));
    }
    return h("tr", { "data-device": device.id, "data-presence": call ? "call" : (presence?.state ?? "unknown") }, cells);
  }

  #nextVisit(device) {
    const now = Date.now();
    return [...this.#state.visits.values()]
      .filter((v) => v.device === device.id && v.status === "booked" && Date.parse(v.ends_at) > now)
      .sort((a, b) => Date.parse(a.starts_at) - Date.parse(b.starts_at))[0] ?? null;
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

  #takeOut(device) {
    const scope = `device:${device.id}`;
    openDirectiveDialog({
      api: this.#api,
      title: `Take kiosk ${device.id} out of service`,
      intro: `${this.#state.facilityName(device.facility)} (${device.facility}). Calls at this kiosk end now and none can start until the directive ends; every other kiosk goes on. Next you can move or cancel the visits it affects.`,
      scopes: [{ value: scope, label: `Kiosk ${device.id} — every call there`, key: scope, hint: "everyone using this kiosk" }],
      preset: { scope, action: "suspend" },
      onIssued: (directive) => {
        const text = `Kiosk ${device.id} is out of service until ${formatWhen(directive.expires_at)} (directive ${directive.id}).`;
        this.#flash(text);
        this.#announce(text);
        // After the directive dialog has closed (focus goes back first).
        setTimeout(() => openAffectedDialog(device, directive, this.#context()), 0);
      },
    });
  }

  #openAdd() {
    const state = this.#state;
    openDialog({
      title: "Add a kiosk",
      build: (dialog, close) => {
        const form = h("form", { novalidate: true, id: "add-kiosk-form" });
        const problems = problemBox();
        const id = h("input", { type: "text", name: "id", maxlength: 64, autocomplete: "off", spellcheck: "false" });
        const facilities = [...state.facilities.values()].sort((a, b) => a.id.localeCompare(b.id));
        const where = h("select", { name: "facility" }, facilities.map((f) => h("option", { value: f.id }, `${f.name} (${f.id})`)));
        where.value = this.#facility || facilities[0]?.id || "";
        const submit = h("button", { type: "submit", class: "button button--primary" }, "Add kiosk");
        const cancel = h("button", { type: "button", class: "button" }, "Cancel");
        cancel.addEventListener("click", close);
        form.append(problems, field({ label: "Kiosk id", control: id, hint: "Letters, digits, '_', '.', '-', e.g. K-NORTH-2." }), field({ label: "Facility", control: where }), h("div", { class: "actions" }, submit, cancel));
        clearErrorsOnEdit(form);
        form.addEventListener("submit", async (event) => {
          event.preventDefault();
          if (!showProblems(form, problems, id.value.trim() ? [] : [[id, "Enter the kiosk's id."]])) return;
          let created;
          try {
            created = await busy(submit, "Adding…", () => this.#api.post("/devices", { id: id.value.trim(), facility: where.value }));
          } catch (error) {
            showSummary(problems, refusal(error));
            return;
          }
          this.#announce(`Kiosk ${created.id} added.`);
          const link = `${location.origin}/kiosk#token=${created.token}`;
          const input = h("input", { type: "text", readonly: true, value: link, class: "link-input", "aria-label": "The kiosk's link" });
          const done = h("button", { type: "button", class: "button button--primary" }, "Done");
          done.addEventListener("click", close);
          dialog.querySelector("h2").textContent = `Kiosk ${created.id} added`;
          form.replaceWith(
            h(
              "div",
              { role: "status" },
              h("p", {}, "Open this link once on the kiosk's screen. It signs the kiosk in; keep it secret, like a key. It is shown only now."),
              input,
              h("div", { class: "actions" }, done),
            ),
          );
          input.select();
        });
        id.autofocus = true;
        dialog.append(form);
      },
    });
  }
}

/**
 * The booked visits a kiosk's suspension affects (its window overlaps the
 * directive's), each with Move… and Cancel…; the list follows the changes.
 */
export function openAffectedDialog(device, directive, ctx) {
  const { state } = ctx;
  const affected = () => {
    const from = Math.max(Date.now(), Date.parse(directive.starts_at ?? directive.issued_at));
    const to = Date.parse(directive.expires_at);
    return [...state.visits.values()]
      .filter((v) => v.device === device.id && v.status === "booked" && Date.parse(v.ends_at) > from && Date.parse(v.starts_at) < to)
      .sort((a, b) => Date.parse(a.starts_at) - Date.parse(b.starts_at));
  };
  return openDialog({
    title: `Visits at kiosk ${device.id} while it is out of service`,
    className: "dialog--visit",
    build(dialog, close) {
      const list = h("div", { id: "affected-visits" });
      const draw = () => {
        const visits = affected();
        if (!visits.length) {
          list.replaceChildren(h("p", { class: "empty", id: "affected-empty" }, "No booked visit at this kiosk before it is back in service."));
          return;
        }
        const rows = visits.map((v) => {
          const move = h("button", { type: "button", class: "button button--small", "data-action": "move" }, "Move…");
          move.addEventListener("click", () => openMoveDialog(v.id, ctx));
          const cancel = h("button", { type: "button", class: "button button--small button--danger-quiet", "data-action": "cancel" }, "Cancel…");
          cancel.addEventListener("click", () => openCancelDialog(v.id, ctx));
          return h(
            "tr",
            { "data-visit": v.id },
            h("td", { "data-label": "When" }, `${formatWhen(v.starts_at)}–${formatClock(v.ends_at)}`),
            h("td", { "data-label": "Inmate" }, state.inmateName(v.inmate)),
            h("td", { "data-label": "Visitors" }, listNames(v.contacts.map((c) => state.contactName(c)))),
            h("td", { "data-label": "State" }, STATE_WORDS[state.visitState(v)]),
            h("td", { "data-label": "Actions", class: "row-actions" }, move, cancel),
          );
        });
        list.replaceChildren(
          h("p", {}, `${visits.length} booked visit${visits.length === 1 ? "" : "s"} until ${formatWhen(directive.expires_at)}. Move them to another kiosk or time, or cancel them (reason: kiosk maintenance).`),
          h(
            "table",
            { class: "data-table", id: "affected-table" },
            h("thead", {}, h("tr", {}, ["When", "Inmate", "Visitors", "State", "Actions"].map((t) => h("th", { scope: "col" }, t)))),
            h("tbody", {}, rows),
          ),
        );
      };
      const follow = () => draw();
      state.addEventListener("change", follow);
      dialog.addEventListener("close", () => state.removeEventListener("change", follow));
      const done = h("button", { type: "button", class: "button button--primary" }, "Done");
      done.addEventListener("click", close);
      draw();
      done.autofocus = true;
      dialog.append(list, h("div", { class: "actions" }, done));
    },
  });
}
