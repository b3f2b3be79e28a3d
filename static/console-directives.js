// The directives list: open ones first (waiting, then active), each with its
// scope, action, reason, legal basis and end. An unconfirmed broad directive
// counts down to its lapse and offers Confirm (a second, different
// supervisor); active ones can be lifted with a reason. A request waiting for a
// second supervisor (status `pending`) is marked as not in force, counts down
// to its lapse, offers Confirm (which starts it) to supervisors other than the
// one who asked, and can be withdrawn.

import { ApiError } from "./console-api.js";
import { busy, clearErrorsOnEdit, field, openDialog, problemBox, showProblems, showSummary } from "./console-dialog.js";
import { formatLength, formatTimeLeft, formatWhen } from "./console-time.js";
import { h } from "./ui.js";

const ACTION_WORDS = { suspend: "Suspend", end: "End now", "audio-only": "Audio only" };
const STATUS_WORDS = { pending: "Waiting to start", active: "Active", lifted: "Lifted", expired: "Expired", lapsed: "Lapsed" };
const OPEN = new Set(["pending", "active"]);

export class DirectivesView {
  #panel;
  #state;
  #api;
  #session;
  #announce;
  #el = {};
  #rowErrors = new Map(); // directive id -> {message, version}: shown until the directive changes
  #showAll = true;

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
    el.show = h(
      "select",
      { id: "directive-filter" },
      h("option", { value: "all" }, "All, active first"),
      h("option", { value: "active" }, "Active and waiting only"),
    );
    el.show.addEventListener("change", () => {
      this.#showAll = el.show.value === "all";
      this.render();
    });
    el.summary = h("p", { class: "directives-summary", id: "directives-summary", "aria-live": "polite" });
    el.body = h("tbody", { id: "directive-rows" });
    el.empty = h("p", { class: "empty", hidden: true }, "No directives.");
    const headings = ["Directive", "Action", "Reason and legal basis", "Issued", "Ends", "Status"];
    if (this.#session.canWrite) headings.push("Actions");
    el.table = h(
      "table",
      { class: "data-table directive-table", id: "directive-table" },
      h("caption", { class: "visually-hidden" }, "Directives, active first"),
      h("thead", {}, h("tr", {}, headings.map((text) => h("th", { scope: "col" }, text)))),
      el.body,
    );
    this.#panel.replaceChildren(
      h("h2", {}, "Directives"),
      h(
        "div",
        { class: "toolbar" },
        h("div", { class: "field field--inline" }, h("label", { for: "directive-filter" }, "Show"), el.show),
        el.summary,
      ),
      el.table,
      el.empty,
    );
  }

  /** Counts for the tab label: {active, unconfirmed}; requests waiting to start count as unconfirmed. */
  counts() {
    const all = [...this.#state.directives.values()];
    const active = all.filter((d) => d.status === "active");
    const waiting = all.filter((d) => d.status === "pending").length;
    return { active: active.length, unconfirmed: waiting + active.filter((d) => d.broad && !d.confirmed_by).length };
  }

  render() {
    const all = [...this.#state.directives.values()];
    const waiting = all.filter((d) => d.status === "pending").sort(byNewest("issued_at"));
    const active = all.filter((d) => d.status === "active").sort(byNewest("issued_at"));
    const closed = all.filter((d) => !OPEN.has(d.status)).sort(byNewest("closed_at", "issued_at"));
    const rows = this.#showAll ? [...waiting, ...active, ...closed] : [...waiting, ...active];

    const focused = this.#el.body.contains(document.activeElement) ? document.activeElement.dataset.focusKey : null;
    this.#el.body.replaceChildren(...rows.map((d) => this.#row(d)));
    if (focused) this.#el.body.querySelector(`[data-focus-key="${CSS.escape(focused)}"]`)?.focus();

    this.#el.table.hidden = rows.length === 0;
    this.#el.empty.hidden = rows.length > 0;
    this.#el.empty.textContent = this.#showAll ? "No directives have been issued." : "No active directives.";
    const unconfirmed = this.counts().unconfirmed - waiting.length;
    const text =
      `${active.length} active${unconfirmed ? `, ${unconfirmed} awaiting a second supervisor` : ""}; ` +
      `${waiting.length ? `${waiting.length} waiting to start; ` : ""}${closed.length} ended.`;
    if (this.#el.summary.textContent !== text) this.#el.summary.textContent = text;
    this.tick();
  }

  /** Lapse countdowns of unconfirmed broad directives. */
  tick() {
    const now = Date.now();
    for (const element of this.#el.body.querySelectorAll("[data-confirm-by]")) {
      element.textContent = formatTimeLeft(Date.parse(element.dataset.confirmBy) - now);
    }
    for (const element of this.#el.body.querySelectorAll("[data-expires-at]")) {
      const text = `in ${formatLength((Date.parse(element.dataset.expiresAt) - now) / 1000)}`;
      if (element.textContent !== text) element.textContent = text;
    }
  }

  #row(d) {
    const canWrite = this.#session.canWrite;
    const cells = [
      cell("Directive", h("span", { class: "id" }, d.id), h("span", { class: "scope" }, d.scope), d.broad ? h("span", { class: "badge badge--broad" }, "Broad") : null,
        d.starts_on_confirmation ? h("span", { class: "badge badge--request", title: "Issued to start only when a second supervisor confirms it" }, "Request") : null,
      ),
      cell("Action", ACTION_WORDS[d.action] ?? d.action),
      cell(
        "Reason and legal basis",
        h("span", { class: "reason" }, d.reason),
        h("span", { class: "legal-basis" }, `Legal basis: ${d.legal_basis}`),
      ),
      cell("Issued", formatWhen(d.issued_at), h("span", { class: "muted" }, `by ${d.issued_by}`)),
      cell(
        "Ends",
        formatWhen(d.expires_at),
        OPEN.has(d.status) ? h("span", { class: "muted", "data-expires-at": d.expires_at }) : null,
      ),
      cell("Status", ...this.#status(d)),
    ];
    if (canWrite) {
      const actions = [];
      if (OPEN.has(d.status)) {
        const words = d.status === "pending" ? "Withdraw…" : "Lift…";
        const lift = h("button", { type: "button", class: "button button--small", "data-action": "lift", "data-focus-key": `${d.id}:lift` }, words);
        lift.addEventListener("click", () => this.#openLift(d));
        actions.push(lift);
      }
      cells.push(cell("Actions", ...actions));
    }
    return h("tr", { "data-directive": d.id, "data-status": d.status, class: `status-${d.status}` }, cells);
  }

  #status(d) {
    const parts = [h("span", { class: `status status--${d.status}` }, STATUS_WORDS[d.status] ?? d.status)];
    if (d.status === "pending") {
      parts.push(...this.#waiting(d));
    } else if (d.status === "active" && d.broad && !d.confirmed_by && d.confirm_by) {
      parts.push(
        h(
          "span",
          { class: "lapse" },
          "Lapses in ",
          h("strong", { class: "lapse-countdown", "data-confirm-by": d.confirm_by }, "—"),
          " unless a second supervisor confirms it.",
        ),
      );
      if (this.#session.role === "supervisor") {
        parts.push(this.#confirmButton(d, "Confirm", "button--primary"));
        if (d.issued_by === this.#session.sub) {
          parts.push(h("span", { class: "muted" }, "You issued it: a different supervisor must confirm."));
        }
      }
    } else if (d.confirmed_by) {
      const started = d.starts_on_confirmation ? `; started ${formatWhen(d.starts_at)}` : "";
      parts.push(h("span", { class: "muted" }, `Confirmed by ${d.confirmed_by}${started}`));
    }
    if (!OPEN.has(d.status)) {
      const by = d.closed_by ? ` by ${d.closed_by}` : "";
      parts.push(h("span", { class: "muted" }, `${formatWhen(d.closed_at)}${by}${d.close_reason ? `: ${d.close_reason}` : ""}`));
    }
    if (d.sessions_ended) parts.push(h("span", { class: "muted" }, `${d.sessions_ended} session(s) ended`));
    const error = this.#rowErrors.get(d.id);
    if (error && error.version === version(d)) parts.push(h("span", { class: "row-error", role: "alert" }, error.message));
    else this.#rowErrors.delete(d.id);
    return parts;
  }

  /** A request waiting for a second supervisor: not in force, its deadline, and Confirm for the others. */
  #waiting(d) {
    const parts = [
      h(
        "span",
        { class: "lapse waiting" },
        h("strong", {}, "Not in force: nothing has stopped yet. "),
        "It starts when a second supervisor confirms it, and lapses in ",
        h("strong", { class: "lapse-countdown", "data-confirm-by": d.confirm_by }, "—"),
        " otherwise.",
      ),
    ];
    if (d.issued_by === this.#session.sub) {
      parts.push(h("span", { class: "muted" }, "You asked for it: a different supervisor must confirm it."));
    } else if (this.#session.role === "supervisor") {
      parts.push(this.#confirmButton(d, "Confirm and start the stop", "button--danger"));
    } else {
      parts.push(h("span", { class: "muted" }, `Asked by ${d.issued_by}: a supervisor other than them must confirm it.`));
    }
    return parts;
  }

  #confirmButton(d, label, kind) {
    const button = h(
      "button",
      { type: "button", class: `button button--small ${kind}`, "data-action": "confirm", "data-focus-key": `${d.id}:confirm` },
      label,
    );
    button.addEventListener("click", () => this.#confirm(d, button));
    return button;
  }

  async #confirm(d, button) {
    this.#rowErrors.delete(d.id);
    try {
      const confirmed = await busy(button, "Confirming…", () => this.#api.post(`/directives/${encodeURIComponent(d.id)}/confirm`, {}));
      const started = d.status === "pending" ? ` It is in force now: ${confirmed?.sessions_ended ?? 0} session(s) ended here.` : "";
      this.#announce(`Directive ${d.id} confirmed.${started}`);
    } catch (error) {
      const message = error instanceof ApiError ? `Refused: ${error.message}.` : String(error);
      this.#rowErrors.set(d.id, { message, version: version(this.#state.directives.get(d.id) ?? d) });
      this.render();
    }
  }

  #openLift(d) {
    const waiting = d.status === "pending"; // withdrawn before it started
    openDialog({
      title: waiting ? `Withdraw request ${d.id}?` : `Lift directive ${d.id}?`,
      build: (dialog, close) => {
        const form = h("form", { novalidate: true });
        const problems = problemBox();
        const reason = h("textarea", { rows: 3, maxlength: 2000, id: "lift-reason" });
        const submit = h("button", { type: "submit", class: "button button--primary" }, waiting ? "Withdraw request" : "Lift directive");
        const cancel = h("button", { type: "button", class: "button" }, "Cancel");
        cancel.addEventListener("click", close);
        form.append(
          h("p", {}, `${d.scope} · ${ACTION_WORDS[d.action] ?? d.action} · ${d.reason}`),
          problems,
          field({ label: waiting ? "Why withdraw it?" : "Why lift it now?", control: reason, hint: "Recorded in the audit log." }),
          h("div", { class: "actions" }, submit, cancel),
        );
        clearErrorsOnEdit(form);
        form.addEventListener("submit", async (event) => {
          event.preventDefault();
          const missing = waiting ? "Enter why the request is withdrawn." : "Enter why the directive is lifted.";
          if (!showProblems(form, problems, reason.value.trim() ? [] : [[reason, missing]])) return;
          try {
            await busy(submit, waiting ? "Withdrawing…" : "Lifting…", () => this.#api.post(`/directives/${encodeURIComponent(d.id)}/lift`, { reason: reason.value.trim() }));
          } catch (error) {
            showSummary(problems, error instanceof ApiError ? error.message : String(error));
            return;
          }
          close();
          this.#announce(waiting ? `Request ${d.id} withdrawn.` : `Directive ${d.id} lifted.`);
        });
        dialog.append(form);
        reason.focus();
      },
    });
  }
}

function cell(label, ...content) {
  return h("td", { "data-label": label }, content.map((c) => (typeof c === "string" ? h("span", {}, c) : c)));
}

/** What a refusal shown on a row was about: once the directive changes, the refusal goes. */
function version(d) {
  return `${d.status}|${d.confirmed_by ?? ""}|${d.closed_at ?? ""}`;
}

function byNewest(...keys) {
  const time = (d) => Math.max(...keys.map((k) => Date.parse(d[k] ?? "") || 0));
  return (a, b) => time(b) - time(a);
}
