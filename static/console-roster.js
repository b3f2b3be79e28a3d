// Facilities and the people in them: create and edit facilities (name, the
// longest a visit there may last) and inmates (name). Every change is an
// audit event on the server; the lists follow the event stream.

import { busy, clearErrorsOnEdit, field, openDialog, problemBox, showProblems, showSummary } from "./console-dialog.js";
import { formatLength } from "./console-time.js";
import { refusal } from "./console-visits.js";
import { h } from "./ui.js";

const MAXIMUMS = [30, 45, 60, 90, 120, 180, 240, 360, 480]; // minutes

/** A facility's recording policy in a few words. */
function recordingPolicy(f) {
  if (f.recording === false) return h("span", { class: "muted" }, "Off");
  const who = f.operators_play_recordings ? "; operators may play" : "";
  return `Social visits, kept ${f.recording_retention_days ?? 180} days${who}`;
}

/** A supervisor's fields for a facility's recording policy (SPEC §10). */
function recordingFields(form, facility) {
  const on = h("input", { type: "checkbox", name: "recording", id: "facility-recording" });
  on.checked = facility?.recording ?? true;
  const days = h("input", { type: "number", name: "recording_retention_days", min: "1", max: "3650", step: "1", value: String(facility?.recording_retention_days ?? 180) });
  const operators = h("input", { type: "checkbox", name: "operators_play_recordings", id: "facility-operators-play" });
  operators.checked = facility?.operators_play_recordings ?? false;
  form.append(
    h("div", { class: "field field--check" }, on, h("label", { for: "facility-recording" }, "Record social visits (privileged visits never are)")),
    field({ label: "Keep recordings for (days)", control: days, hint: "Then they are deleted, unless a supervisor holds them." }),
    h("div", { class: "field field--check" }, operators, h("label", { for: "facility-operators-play" }, "Operators may list and play recordings (supervisors and auditors always may)")),
  );
  return {
    read: () => ({ recording: on.checked, recording_retention_days: Number(days.value), operators_play_recordings: operators.checked }),
    problems: () => {
      const n = Number(days.value);
      return Number.isInteger(n) && n >= 1 && n <= 3650 ? [] : [[days, "Enter a number of days from 1 to 3650."]];
    },
  };
}

export class RosterView {
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
    el.facilities = h("tbody", { id: "facility-rows" });
    el.inmates = h("tbody", { id: "inmate-rows" });
    el.filter = h("select", { id: "inmate-facility" });
    el.filter.addEventListener("change", () => {
      this.#facility = el.filter.value;
      this.render();
    });
    const write = this.#session.canWrite;
    const facilityTools = [];
    const inmateTools = [h("div", { class: "field field--inline" }, h("label", { for: "inmate-facility" }, "Facility"), el.filter)];
    if (write) {
      const addFacility = h("button", { type: "button", class: "button", id: "add-facility" }, "Add a facility…");
      addFacility.addEventListener("click", () => this.#facilityForm(null));
      facilityTools.push(addFacility);
      const addInmate = h("button", { type: "button", class: "button", id: "add-inmate" }, "Add an inmate…");
      addInmate.addEventListener("click", () => this.#inmateForm(null));
      inmateTools.push(addInmate);
    }
    const heads = (names) => h("thead", {}, h("tr", {}, [...names, ...(write ? ["Actions"] : [])].map((t) => h("th", { scope: "col" }, t))));
    this.#panel.replaceChildren(
      h("h2", {}, "Facilities"),
      h("div", { class: "toolbar" }, facilityTools),
      h("table", { class: "data-table", id: "facility-table" }, h("caption", { class: "visually-hidden" }, "Facilities"), heads(["Facility", "Longest visit", "Recording", "Kiosks", "Inmates"]), el.facilities),
      h("h2", { class: "section-title" }, "Inmates"),
      h("div", { class: "toolbar" }, inmateTools),
      h("table", { class: "data-table", id: "inmate-table" }, h("caption", { class: "visually-hidden" }, "Inmates"), heads(["Inmate", "Facility", "Approved visitors"]), el.inmates),
    );
  }

  render() {
    const state = this.#state;
    const facilities = [...state.facilities.values()].sort((a, b) => a.id.localeCompare(b.id));
    const wanted = facilities.map((f) => `${f.id}:${f.name}`).join("|");
    if (this.#el.filter.dataset.options !== wanted) {
      this.#el.filter.dataset.options = wanted;
      this.#el.filter.replaceChildren(h("option", { value: "" }, "All facilities"), ...facilities.map((f) => h("option", { value: f.id }, `${f.name} (${f.id})`)));
      this.#el.filter.value = facilities.some((f) => f.id === this.#facility) ? this.#facility : "";
    }
    const devices = [...state.devices.values()];
    const inmates = [...state.inmates.values()];
    this.#el.facilities.replaceChildren(
      ...facilities.map((f) => {
        const cells = [
          h("td", { "data-label": "Facility" }, h("strong", {}, f.name), h("span", { class: "muted" }, f.id)),
          h("td", { "data-label": "Longest visit" }, f.max_visit_seconds ? formatLength(f.max_visit_seconds) : h("span", { class: "muted" }, "The server's default")),
          h("td", { "data-label": "Recording" }, recordingPolicy(f)),
          h("td", { "data-label": "Kiosks" }, String(devices.filter((d) => d.facility === f.id).length)),
          h("td", { "data-label": "Inmates" }, String(inmates.filter((i) => i.facility === f.id).length)),
        ];
        if (this.#session.canWrite) {
          const edit = h("button", { type: "button", class: "button button--small", "data-action": "edit" }, "Edit…");
          edit.addEventListener("click", () => this.#facilityForm(f));
          cells.push(h("td", { "data-label": "Actions" }, edit));
        }
        return h("tr", { "data-facility": f.id }, cells);
      }),
    );
    const shown = inmates.filter((i) => !this.#facility || i.facility === this.#facility).sort((a, b) => a.name.localeCompare(b.name));
    this.#el.inmates.replaceChildren(
      ...shown.map((i) => {
        const approved = [...state.contacts.values()].filter((c) => c.approvals?.[i.id] === "approved").length;
        const cells = [
          h("td", { "data-label": "Inmate" }, h("strong", {}, i.name), h("span", { class: "muted" }, i.id)),
          h("td", { "data-label": "Facility" }, state.facilityName(i.facility)),
          h("td", { "data-label": "Approved visitors" }, String(approved)),
        ];
        if (this.#session.canWrite) {
          const edit = h("button", { type: "button", class: "button button--small", "data-action": "edit" }, "Edit…");
          edit.addEventListener("click", () => this.#inmateForm(i));
          cells.push(h("td", { "data-label": "Actions" }, edit));
        }
        return h("tr", { "data-inmate": i.id }, cells);
      }),
    );
  }

  #facilityForm(facility) {
    this.#form({
      title: facility ? `Edit ${facility.name}` : "Add a facility",
      id: facility ? null : { label: "Facility id" },
      fields: (form) => {
        const name = h("input", { type: "text", name: "name", maxlength: 200, value: facility?.name ?? "", autocomplete: "off" });
        const longest = h("select", { name: "max_visit_seconds" }, h("option", { value: "" }, "The server's default"), MAXIMUMS.map((m) => h("option", { value: String(m * 60) }, formatLength(m * 60))));
        longest.value = facility?.max_visit_seconds ? String(facility.max_visit_seconds) : "";
        form.append(field({ label: "Name", control: name }), field({ label: "Longest visit", control: longest, hint: "Visits booked already keep their length." }));
        const policy = this.#session.role === "supervisor" ? recordingFields(form, facility) : null;
        return () => {
          const body = { name: name.value.trim(), max_visit_seconds: longest.value ? Number(longest.value) : null, ...(policy ? policy.read() : {}) };
          const problems = body.name ? [] : [[name, "Enter the name."]];
          if (policy) problems.push(...policy.problems());
          return { body, problems };
        };
      },
      send: (body, id) => (facility ? this.#api.patch(`/facilities/${encodeURIComponent(facility.id)}`, body) : this.#api.post("/facilities", { id, ...body })),
      done: (saved) => `${saved.name} ${facility ? "saved" : "added"}.`,
    });
  }

  #inmateForm(inmate) {
    const state = this.#state;
    this.#form({
      title: inmate ? `Edit ${inmate.name}` : "Add an inmate",
      id: inmate ? null : { label: "Inmate id" },
      fields: (form) => {
        const name = h("input", { type: "text", name: "name", maxlength: 200, value: inmate?.name ?? "", autocomplete: "off" });
        form.append(field({ label: "Name", control: name }));
        let where = null;
        if (!inmate) {
          const facilities = [...state.facilities.values()].sort((a, b) => a.id.localeCompare(b.id));
          where = h("select", { name: "facility" }, facilities.map((f) => h("option", { value: f.id }, `${f.name} (${f.id})`)));
          where.value = this.#facility || facilities[0]?.id || "";
          form.append(field({ label: "Facility", control: where }));
        } else {
          form.append(h("p", { class: "muted" }, `At ${state.facilityName(inmate.facility)}. A transfer to another facility is not an edit.`));
        }
        return () => {
          const body = { name: name.value.trim(), ...(where ? { facility: where.value } : {}) };
          return { body, problems: body.name ? [] : [[name, "Enter the name."]] };
        };
      },
      send: (body, id) => (inmate ? this.#api.patch(`/inmates/${encodeURIComponent(inmate.id)}`, body) : this.#api.post("/inmates", { id, ...body })),
      done: (saved) => `${saved.name} ${inmate ? "saved" : "added"}.`,
    });
  }

  /** A small create-or-edit form: an id field when creating, then `fields`. */
  #form({ title, id, fields, send, done }) {
    openDialog({
      title,
      build: (dialog, close) => {
        const form = h("form", { novalidate: true, class: "roster-form" });
        const problems = problemBox();
        form.append(problems);
        const idInput = id ? h("input", { type: "text", name: "id", maxlength: 64, autocomplete: "off", spellcheck: "false" }) : null;
        if (idInput) form.append(field({ label: id.label, control: idInput, hint: "Letters, digits, '_', '.', '-'." }));
        const read = fields(form);
        const submit = h("button", { type: "submit", class: "button button--primary" }, id ? "Add" : "Save");
        const cancel = h("button", { type: "button", class: "button" }, "Cancel");
        cancel.addEventListener("click", close);
        form.append(h("div", { class: "actions" }, submit, cancel));
        clearErrorsOnEdit(form);
        form.addEventListener("submit", async (event) => {
          event.preventDefault();
          const { body, problems: found } = read();
          if (idInput && !idInput.value.trim()) found.unshift([idInput, "Enter the id."]);
          if (!showProblems(form, problems, found)) return;
          let saved;
          try {
            saved = await busy(submit, "Saving…", () => send(body, idInput?.value.trim()));
          } catch (error) {
            showSummary(problems, refusal(error));
            return;
          }
          this.#announce(done(saved));
          close();
        });
        const first = form.querySelector("input, select");
        if (first) first.autofocus = true;
        dialog.append(form);
      },
    });
  }
}
