// The appeals queue: open appeals, oldest first, each with the directive it
// is against and a decision form (uphold, or lift the directive, with a note).
// The server refuses a decision by the directive's own issuer; its message
// is shown on the card.

import { ApiError } from "./console-api.js";
import { busy, checkedValue, choiceGroup, clearErrorsOnEdit, field, problemBox, showProblems, showSummary } from "./console-dialog.js";
import { formatWhen } from "./console-time.js";
import { h, placeAfter } from "./ui.js";

/** The server's refusal, said as one: "Refused: <the API's message>." */
function refusal(error) {
  if (!(error instanceof ApiError)) return String(error);
  return error.status >= 400 && error.status < 500 ? `Refused: ${error.message}.` : error.message;
}

export class AppealsView {
  #panel;
  #state;
  #api;
  #session;
  #announce;
  #el = {};
  #cards = new Map(); // appeal id -> {element, directiveSignature}

  constructor(panel, { state, api, session, announce }) {
    this.#panel = panel;
    this.#state = state;
    this.#api = api;
    this.#session = session;
    this.#announce = announce;
    this.#el.list = h("div", { class: "appeal-list", id: "appeal-list" });
    this.#el.empty = h("p", { class: "empty", id: "appeals-empty" }, "No open appeals.");
    this.#el.summary = h("p", { class: "appeals-summary", id: "appeals-summary", "aria-live": "polite" });
    this.#panel.replaceChildren(h("h2", {}, "Appeals queue"), this.#el.summary, this.#el.list, this.#el.empty);
  }

  count() {
    return this.#state.appeals.size;
  }

  render() {
    const appeals = [...this.#state.appeals.values()]
      .filter((a) => a.status === "open")
      .sort((a, b) => Date.parse(a.filed_at) - Date.parse(b.filed_at));
    const seen = new Set();
    let previous = null;
    for (const appeal of appeals) {
      seen.add(appeal.id);
      const directive = this.#state.directives.get(appeal.directive);
      const signature = JSON.stringify(directive ?? null);
      let entry = this.#cards.get(appeal.id);
      if (!entry) {
        entry = { element: this.#card(appeal), directiveSignature: "" };
        this.#cards.set(appeal.id, entry);
      }
      if (entry.directiveSignature !== signature) {
        // The directive's details can change (lifted, confirmed) while the form keeps what was typed.
        entry.element.querySelector(".appeal-directive").replaceWith(this.#directiveSummary(appeal, directive));
        entry.directiveSignature = signature;
      }
      placeAfter(this.#el.list, previous, entry.element);
      previous = entry.element;
    }
    for (const [id, entry] of this.#cards) {
      if (!seen.has(id)) {
        entry.element.remove();
        this.#cards.delete(id);
      }
    }
    this.#el.empty.hidden = appeals.length > 0;
    const text = appeals.length ? `${appeals.length} open appeal${appeals.length === 1 ? "" : "s"}.` : "";
    if (this.#el.summary.textContent !== text) this.#el.summary.textContent = text;
  }

  #directiveSummary(appeal, d) {
    if (!d) return h("p", { class: "appeal-directive" }, `Against directive ${appeal.directive}.`);
    return h(
      "dl",
      { class: "appeal-directive" },
      h("div", {}, h("dt", {}, "Directive"), h("dd", {}, `${d.id} · ${d.scope} · ${d.action} · ${d.status}`)),
      h("div", {}, h("dt", {}, "Reason"), h("dd", {}, d.reason)),
      h("div", {}, h("dt", {}, "Legal basis"), h("dd", {}, d.legal_basis)),
      h("div", {}, h("dt", {}, "Issued"), h("dd", {}, `${formatWhen(d.issued_at)} by ${d.issued_by}`)),
    );
  }

  #card(appeal) {
    const titleId = `appeal-${appeal.id}-title`;
    const filer = this.#state.subjectName(appeal.filed_by);
    const parts = [
      h("h3", { id: titleId }, `Appeal ${appeal.id}`),
      h("p", { class: "muted" }, `Filed by ${filer} (${appeal.filed_by}) on ${formatWhen(appeal.filed_at)}`),
      h("p", { class: "appeal-directive" }),
      h("blockquote", { class: "appeal-text" }, appeal.text),
    ];
    if (this.#session.canWrite) parts.push(this.#decisionForm(appeal));
    return h("article", { class: "appeal-card", "data-appeal": appeal.id, "aria-labelledby": titleId }, parts);
  }

  #decisionForm(appeal) {
    const form = h("form", { class: "decision-form", novalidate: true });
    const problems = problemBox();
    const decision = choiceGroup({
      name: `decision-${appeal.id}`,
      legend: "Decision",
      choices: [
        { value: "uphold", label: "Uphold the directive" },
        { value: "lift", label: "Lift the directive" },
      ],
    });
    const note = h("textarea", { rows: 2, maxlength: 2000, "data-role": "note" });
    const submit = h("button", { type: "submit", class: "button button--primary" }, "Record decision");
    const issuer = this.#state.directives.get(appeal.directive)?.issued_by;
    const own = issuer && issuer === this.#session.sub;
    form.append(
      problems,
      decision,
      field({ label: "Note to the family and the record", control: note }),
      ...(own ? [h("p", { class: "muted" }, "You issued this directive: someone else must decide this appeal.")] : []),
      h("div", { class: "actions" }, submit),
    );
    clearErrorsOnEdit(form);
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const choice = checkedValue(form, `decision-${appeal.id}`);
      const found = [];
      if (!choice) found.push([decision, "Choose uphold or lift."]);
      if (!note.value.trim()) found.push([note, "Enter a note explaining the decision."]);
      if (!showProblems(form, problems, found)) return;
      try {
        await busy(submit, "Recording…", () =>
          this.#api.post(`/appeals/${encodeURIComponent(appeal.id)}/decide`, { decision: choice, note: note.value.trim() }),
        );
      } catch (error) {
        showSummary(problems, refusal(error));
        return;
      }
      this.#announce(`Appeal ${appeal.id} ${choice === "lift" ? "granted: directive lifted" : "decided: directive upheld"}.`);
    });
    return form;
  }
}
