// Contacts: the approvals queue (requests waiting, oldest first, with their
// age), approve or deny with a reason; every contact, with `minor` shown, and
// a contact's page: their approvals per inmate (approve, deny, withdraw), their
// visits and the directives that name them. Denying or withdrawing takes
// effect at once on the server: their calls with that inmate end and visits
// left without an approved visitor are cancelled; the answer says how many.

import { ApiError } from "./console-api.js";
import { busy, clearErrorsOnEdit, field, openDialog, problemBox, showProblems, showSummary } from "./console-dialog.js";
import { formatClock, formatFromNow, formatWhen } from "./console-time.js";
import { STATE_WORDS, refusal } from "./console-visits.js";
import { h } from "./ui.js";

const STATUS_WORDS = { pending: "Waiting", approved: "Approved", denied: "Denied" };

export class ContactsView {
  #panel;
  #state;
  #api;
  #session;
  #announce;
  #el = {};
  #search = "";

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
    el.flash = h("div", { class: "banner", id: "contacts-flash", role: "status", hidden: true });
    el.queue = h("tbody", { id: "approval-rows" });
    el.queueEmpty = h("p", { class: "empty", id: "approvals-empty", hidden: true }, "No approvals are waiting.");
    const queueHead = ["Visitor", "To visit", "Asked", "Note"];
    if (this.#session.canWrite) queueHead.push("Decision");
    el.queueTable = h(
      "table",
      { class: "data-table approval-table", id: "approval-queue" },
      h("caption", { class: "visually-hidden" }, "Approvals waiting, oldest first"),
      h("thead", {}, h("tr", {}, queueHead.map((t) => h("th", { scope: "col" }, t)))),
      el.queue,
    );
    el.search = h("input", { type: "search", id: "contact-search", placeholder: "Name or id", autocomplete: "off" });
    el.search.addEventListener("input", () => {
      this.#search = el.search.value.trim().toLowerCase();
      this.render();
    });
    el.contacts = h("tbody", { id: "contact-rows" });
    const tools = [h("div", { class: "field field--inline" }, h("label", { for: "contact-search" }, "Find"), el.search)];
    if (this.#session.canWrite) {
      const add = h("button", { type: "button", class: "button", id: "add-contact" }, "Add a contact…");
      add.addEventListener("click", () => openContactForm(null, this.#context()));
      tools.push(add);
    }
    this.#panel.replaceChildren(
      h("h2", {}, "Approvals waiting"),
      el.flash,
      el.queueTable,
      el.queueEmpty,
      h("h2", { class: "section-title" }, "Contacts"),
      h("div", { class: "toolbar" }, tools),
      h(
        "table",
        { class: "data-table contact-table", id: "contact-table" },
        h("caption", { class: "visually-hidden" }, "Contacts"),
        h("thead", {}, h("tr", {}, ["Name", "Approvals", "Actions"].map((t) => h("th", { scope: "col" }, t)))),
        el.contacts,
      ),
    );
  }

  /** Approvals waiting (for the tab's count). */
  pending() {
    return [...this.#state.approvals.values()].filter((a) => a.status === "pending").length;
  }

  render() {
    const state = this.#state;
    const waiting = [...state.approvals.values()].filter((a) => a.status === "pending").sort((a, b) => Date.parse(a.updated_at) - Date.parse(b.updated_at));
    this.#el.queue.replaceChildren(...waiting.map((a) => this.#queueRow(a)));
    this.#el.queueTable.hidden = waiting.length === 0;
    this.#el.queueEmpty.hidden = waiting.length > 0;
    const contacts = [...state.contacts.values()]
      .filter((c) => !this.#search || c.name.toLowerCase().includes(this.#search) || c.id.toLowerCase().includes(this.#search))
      .sort((a, b) => a.name.localeCompare(b.name));
    this.#el.contacts.replaceChildren(...contacts.map((c) => this.#contactRow(c)));
    this.tick();
  }

  tick() {
    for (const element of this.#el.queue.querySelectorAll("[data-since]")) {
      const text = formatFromNow(Date.parse(element.dataset.since));
      if (element.textContent !== text) element.textContent = text;
    }
  }

  #queueRow(approval) {
    const cells = [
      h("td", { "data-label": "Visitor" }, h("strong", {}, approval.contact_name), approval.minor ? h("span", { class: "badge badge--minor" }, "Minor") : null, h("span", { class: "muted" }, approval.contact)),
      h("td", { "data-label": "To visit" }, h("span", {}, approval.inmate_name), h("span", { class: "muted" }, this.#state.facilityName(approval.facility))),
      h("td", { "data-label": "Asked" }, h("span", { class: "age", "data-since": approval.updated_at }), h("span", { class: "muted" }, formatWhen(approval.updated_at))),
      h("td", { "data-label": "Note" }, approval.reason ?? h("span", { class: "muted" }, "—")),
    ];
    if (this.#session.canWrite) {
      const approve = h("button", { type: "button", class: "button button--small button--primary", "data-action": "approve" }, "Approve…");
      approve.addEventListener("click", () => openDecision(approval, "approved", this.#context()));
      const deny = h("button", { type: "button", class: "button button--small button--danger-quiet", "data-action": "deny" }, "Deny…");
      deny.addEventListener("click", () => openDecision(approval, "denied", this.#context()));
      cells.push(h("td", { "data-label": "Decision", class: "row-actions" }, approve, deny));
    }
    return h("tr", { "data-contact": approval.contact, "data-inmate": approval.inmate }, cells);
  }

  #contactRow(contact) {
    const approvals = Object.entries(contact.approvals ?? {}).map(([inmate, status]) =>
      h("span", { class: `approval approval--${status}` }, `${this.#state.inmateName(inmate)}: ${STATUS_WORDS[status] ?? status}`),
    );
    const open = h("button", { type: "button", class: "button button--small", "data-action": "open" }, "Open…");
    open.addEventListener("click", () => openContactPage(contact.id, this.#context()));
    const actions = [open];
    if (this.#session.canWrite) {
      const edit = h("button", { type: "button", class: "button button--small", "data-action": "edit" }, "Edit…");
      edit.addEventListener("click", () => openContactForm(contact, this.#context()));
      actions.push(edit);
    }
    return h(
      "tr",
      { "data-contact": contact.id },
      h(
        "td",
        { "data-label": "Name" },
        h("strong", {}, contact.name),
        contact.minor ? h("span", { class: "badge badge--minor" }, "Minor") : null,
        h("span", { class: "muted" }, contact.id),
        contact.minor
          ? h(
              "span",
              { class: contact.guardians?.length ? "muted" : "banner-detail", "data-guardians": contact.id },
              contact.guardians?.length ? `Guardians: ${contact.guardians.map((g) => this.#state.contactName(g)).join(", ")}` : "No guardian set: cannot be booked",
            )
          : null,
      ),
      h("td", { "data-label": "Approvals" }, approvals.length ? approvals : h("span", { class: "muted" }, "None yet")),
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
}

/**
 * Approve, deny or withdraw one approval. A denial or a withdrawal needs a reason
 * (recorded, not shown to the family) and takes effect at once.
 */
export function openDecision(approval, status, ctx) {
  const { state, api, announce } = ctx;
  const who = approval.contact_name ?? state.contactName(approval.contact);
  const whom = approval.inmate_name ?? state.inmateName(approval.inmate);
  const withdrawing = approval.status === "approved" && status !== "approved";
  const words = { approved: "Approve", denied: withdrawing ? "Withdraw and deny" : "Deny", pending: "Withdraw (ask again)" }[status];
  return openDialog({
    title: `${words}: ${who} to visit ${whom}?`,
    build(dialog, close) {
      const form = h("form", { novalidate: true, id: "decision-form" });
      const problems = problemBox();
      const reason = h("textarea", { name: "reason", rows: 2, maxlength: 1000, id: "decision-reason" });
      const needed = status !== "approved";
      const submit = h("button", { type: "submit", class: `button ${needed ? "button--danger" : "button--primary"}` }, words);
      const cancel = h("button", { type: "button", class: "button" }, "Cancel");
      cancel.addEventListener("click", close);
      form.append(
        needed
          ? h("p", { class: "banner banner--warning" }, `Takes effect at once: any call ${who} is in with ${whom} ends now, their links stop working, and visits left without an approved visitor are cancelled.`)
          : "",
        problems,
        field({ label: needed ? "Reason" : "Note (optional)", control: reason, hint: "Recorded in the audit log. Not shown to the family." }),
        h("div", { class: "actions" }, submit, cancel),
      );
      clearErrorsOnEdit(form);
      form.addEventListener("submit", async (event) => {
        event.preventDefault();
        if (!showProblems(form, problems, needed && !reason.value.trim() ? [[reason, "Enter the reason."]] : [])) return;
        const body = { inmate: approval.inmate, status };
        if (reason.value.trim()) body.reason = reason.value.trim();
        let answer;
        try {
          answer = await busy(submit, "Saving…", () => api.post(`/contacts/${encodeURIComponent(approval.contact)}/approvals`, body));
        } catch (error) {
          showSummary(problems, refusal(error));
          return;
        }
        const effects = [];
        if (answer.sessions_ended) effects.push(`${answer.sessions_ended} call connection(s) ended`);
        if (answer.visits_cancelled?.length) effects.push(`${answer.visits_cancelled.length} visit(s) cancelled`);
        const text = `${who} ${STATUS_WORDS[status].toLowerCase()} for ${whom}${effects.length ? `: ${effects.join(", ")}` : ""}.`;
        announce(text);
        ctx.flash?.(text);
        close();
        ctx.after?.();
      });
      reason.autofocus = true;
      dialog.append(form);
    },
  });
}

/** Add a contact, or change one's name, minor flag or (a minor's) guardians. */
export function openContactForm(contact, ctx) {
  const { api, announce, state } = ctx;
  return openDialog({
    title: contact ? `Edit ${contact.name}` : "Add a contact",
    build(dialog, close) {
      const form = h("form", { novalidate: true, id: "contact-form" });
      const problems = problemBox();
      const id = h("input", { type: "text", name: "id", maxlength: 64, autocomplete: "off", spellcheck: "false" });
      const name = h("input", { type: "text", name: "name", maxlength: 200, autocomplete: "off", value: contact?.name ?? "" });
      const minorId = "contact-minor";
      const minor = h("input", { type: "checkbox", name: "minor", id: minorId, checked: Boolean(contact?.minor) });
      const had = new Set(contact?.guardians ?? []);
      const adults = [...(state?.contacts?.values() ?? [])].filter((c) => !c.minor && c.id !== contact?.id);
      const boxes = adults.map((adult) => h("input", { type: "checkbox", name: "guardian", value: adult.id, id: `guardian-${adult.id}`, checked: had.has(adult.id) }));
      const guardians = h(
        "fieldset",
        { class: "field", id: "guardians-field", hidden: !minor.checked },
        h("legend", {}, "Guardians"),
        h("p", { class: "hint" }, "Adults who must be in the call for this minor to be let in; a visit with the minor is booked only with one of them on it."),
        adults.length
          ? boxes.map((box, i) => h("div", { class: "checkbox" }, box, h("label", { for: box.id }, `${adults[i].name} (${adults[i].id})`)))
          : h("p", { class: "muted" }, "No adult contacts yet: add the guardian first."),
      );
      minor.addEventListener("change", () => (guardians.hidden = !minor.checked));
      const submit = h("button", { type: "submit", class: "button button--primary" }, contact ? "Save" : "Add contact");
      const cancel = h("button", { type: "button", class: "button" }, "Cancel");
      cancel.addEventListener("click", close);
      form.append(
        problems,
        contact ? h("p", { class: "muted" }, `Contact ${contact.id}`) : field({ label: "Contact id", control: id, hint: "Letters, digits, '_', '.', '-'." }),
        field({ label: "Name", control: name }),
        h("div", { class: "field checkbox" }, minor, h("label", { for: minorId }, "Minor (under 18): only admitted with an approved guardian in the call")),
        guardians,
        h("div", { class: "actions" }, submit, cancel),
      );
      clearErrorsOnEdit(form);
      form.addEventListener("submit", async (event) => {
        event.preventDefault();
        const found = [];
        if (!contact && !id.value.trim()) found.push([id, "Enter the contact's id."]);
        if (!name.value.trim()) found.push([name, "Enter the name."]);
        if (!showProblems(form, problems, found)) return;
        const contactId = contact ? contact.id : id.value.trim();
        const chosen = minor.checked ? boxes.filter((b) => b.checked).map((b) => b.value) : [];
        const guardiansChanged = chosen.length !== had.size || chosen.some((g) => !had.has(g));
        try {
          // Guardians are cleared before a minor becomes an adult, and set after a contact
          // becomes a minor: the server refuses the other orders (has-guardians, not-a-minor).
          if (contact && !minor.checked && guardiansChanged) {
            await busy(submit, "Saving…", () => api.put(`/contacts/${encodeURIComponent(contactId)}/guardians`, { guardians: [] }));
          }
          const edited = !contact || name.value.trim() !== contact.name || minor.checked !== Boolean(contact.minor);
          if (contact && edited) {
            await busy(submit, "Saving…", () => api.patch(`/contacts/${encodeURIComponent(contactId)}`, { name: name.value.trim(), minor: minor.checked }));
          } else if (!contact) {
            await busy(submit, "Adding…", () => api.post("/contacts", { id: contactId, name: name.value.trim(), minor: minor.checked }));
          }
          if (minor.checked && guardiansChanged) {
            await busy(submit, "Saving…", () => api.put(`/contacts/${encodeURIComponent(contactId)}/guardians`, { guardians: chosen }));
          }
        } catch (error) {
          showSummary(problems, refusal(error));
          return;
        }
        announce(contact ? `${name.value.trim()} saved.` : `${name.value.trim()} added.`);
        close();
      });
      (contact ? name : id).autofocus = true;
      dialog.append(form);
    },
  });
}

/** A contact's page: approvals per inmate, visits, the directives that name them. */
export async function openContactPage(contactId, ctx) {
  const { state, api, session } = ctx;
  let page;
  try {
    page = await api.get(`/contacts/${encodeURIComponent(contactId)}`);
  } catch (error) {
    ctx.flash?.(error instanceof ApiError ? error.message : String(error), "error");
    return null;
  }
  return openDialog({
    title: page.name,
    className: "dialog--contact",
    build(dialog, close) {
      const reopen = () => {
        close();
        openContactPage(contactId, ctx);
      };
      const decide = (record, status) => openDecision({ ...record, contact: page.id, contact_name: page.name }, status, { ...ctx, after: reopen });
      const approvalRows = page.approval_records.map((a) => {
        const actions = [];
        if (session.canWrite) {
          if (a.status !== "approved") {
            const approve = h("button", { type: "button", class: "button button--small", "data-action": "approve" }, "Approve…");
            approve.addEventListener("click", () => decide(a, "approved"));
            actions.push(approve);
          }
          if (a.status === "approved") {
            const withdraw = h("button", { type: "button", class: "button button--small button--danger-quiet", "data-action": "withdraw" }, "Withdraw…");
            withdraw.addEventListener("click", () => decide(a, "pending"));
            actions.push(withdraw);
          }
          if (a.status !== "denied") {
            const deny = h("button", { type: "button", class: "button button--small button--danger-quiet", "data-action": "deny" }, "Deny…");
            deny.addEventListener("click", () => decide(a, "denied"));
            actions.push(deny);
          }
        }
        return h(
          "tr",
          { "data-inmate": a.inmate, "data-status": a.status },
          h("td", {}, `${a.inmate_name} (${a.inmate})`),
          h("td", {}, h("span", { class: `approval approval--${a.status}` }, STATUS_WORDS[a.status] ?? a.status)),
          h("td", {}, a.reason ?? h("span", { class: "muted" }, "—"), h("span", { class: "muted" }, `${formatWhen(a.updated_at)}${a.decided_by ? ` by ${a.decided_by}` : ""}`)),
          h("td", { class: "row-actions" }, actions),
        );
      });
      const visitRows = page.visits
        .sort((a, b) => Date.parse(b.starts_at) - Date.parse(a.starts_at))
        .slice(0, 20)
        .map((v) => h("tr", { "data-visit": v.id }, h("td", {}, `${formatWhen(v.starts_at)}–${formatClock(v.ends_at)}`), h("td", {}, state.inmateName(v.inmate)), h("td", {}, v.kind === "privileged" ? "Privileged" : "Social"), h("td", {}, STATE_WORDS[state.visits.has(v.id) ? state.visitState(state.visits.get(v.id)) : v.status] ?? v.status)));
      const directiveRows = page.directives.map((d) =>
        h("tr", { "data-directive": d.id, "data-status": d.status }, h("td", {}, d.id, h("span", { class: "muted" }, d.scope)), h("td", {}, d.action), h("td", {}, d.reason), h("td", {}, d.status === "active" ? `until ${formatWhen(d.expires_at)}` : d.status)),
      );
      const table = (caption, headings, rows, empty) =>
        rows.length
          ? h("table", { class: "data-table" }, h("caption", {}, caption), h("thead", {}, h("tr", {}, headings.map((t) => h("th", { scope: "col" }, t)))), h("tbody", {}, rows))
          : h("p", { class: "muted" }, empty);
      const parts = [
        h("p", { class: "dialog-intro" }, `Contact ${page.id}`, page.minor ? h("span", { class: "badge badge--minor" }, "Minor") : null),
        table("Approvals", ["Inmate", "Status", "Reason", ""], approvalRows, "No approvals yet."),
      ];
      if (session.canWrite) parts.push(askForm(page, ctx, reopen));
      parts.push(
        table("Visits (newest first)", ["When", "Inmate", "Kind", "State"], visitRows, "No visits."),
        table("Directives that name them", ["Directive", "Action", "Reason", "Status"], directiveRows, "No directive names them."),
      );
      const done = h("button", { type: "button", class: "button" }, "Close");
      done.addEventListener("click", close);
      parts.push(h("div", { class: "actions" }, done));
      done.autofocus = true;
      dialog.append(h("div", { class: "contact-page", id: "contact-page", "data-contact": page.id }, parts));
    },
  });
}

/** Ask for (or grant at once) an approval to visit another inmate. */
function askForm(page, ctx, after) {
  const { state, api, announce } = ctx;
  const known = new Set(page.approval_records.map((a) => a.inmate));
  const inmates = [...state.inmates.values()].filter((i) => !known.has(i.id)).sort((a, b) => a.name.localeCompare(b.name));
  const form = h("form", { class: "ask-form", novalidate: true });
  if (!inmates.length) return form;
  const problems = problemBox();
  const inmate = h("select", { name: "inmate", id: "ask-inmate" }, inmates.map((i) => h("option", { value: i.id }, `${i.name} (${i.id}, ${state.facilityName(i.facility)})`)));
  const ask = h("button", { type: "submit", class: "button button--small" }, "Add as waiting");
  form.append(problems, h("div", { class: "field field--inline" }, h("label", { for: "ask-inmate" }, "Ask to visit"), inmate, ask));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      await busy(ask, "Adding…", () => api.post(`/contacts/${encodeURIComponent(page.id)}/approvals`, { inmate: inmate.value, status: "pending" }));
    } catch (error) {
      showSummary(problems, refusal(error));
      return;
    }
    announce(`${page.name} is waiting for approval to visit ${state.inmateName(inmate.value)}.`);
    after();
  });
  return form;
}
