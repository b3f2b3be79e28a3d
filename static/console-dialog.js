// Modal dialogs and form fields for the console: every control has a label,
// hints and errors are tied to their control with aria-describedby, and a
// form that cannot be sent says why in an alert and moves focus to the
// first field to fix.

import { h } from "./ui.js";

let counter = 0;
const uid = (prefix) => `${prefix}-${++counter}`;

/**
 * A modal <dialog> appended to <body> and removed when closed.
 * Focus returns to the element that opened it (the browser does this for showModal).
 */
export function openDialog({ title, className = "", labelId, build }) {
  const titleId = labelId ?? uid("dialog-title");
  const dialog = h("dialog", { class: `dialog console-dialog ${className}`.trim(), "aria-labelledby": titleId });
  const heading = h("h2", { id: titleId }, title);
  dialog.append(heading);
  const close = () => dialog.close();
  build(dialog, close);
  dialog.addEventListener("close", () => dialog.remove());
  document.body.append(dialog);
  dialog.showModal();
  return dialog;
}

/** A labelled field: label, optional hint, the control, and a slot for its error. */
export function field({ label, control, hint = null, className = "" }) {
  const id = control.id || uid("field");
  control.id = id;
  const hintEl = hint ? h("p", { class: "field-hint", id: `${id}-hint` }, hint) : null;
  const errorEl = h("p", { class: "field-error", id: `${id}-error`, hidden: true });
  describe(control, hintEl?.id);
  return h(
    "div",
    { class: `field ${className}`.trim(), "data-field": id },
    h("label", { for: id }, label),
    hintEl,
    errorEl,
    control,
  );
}

/**
 * A group of radio buttons in a fieldset with a legend.
 * `choices`: [{value, label, hint?}]. The group's error goes under the legend.
 */
export function choiceGroup({ name, legend, choices, hint = null, className = "" }) {
  // `choices`: [{value, label, key?, hint?}]; `key` is shown in code type (a scope key).
  const groupId = uid(name);
  const hintEl = hint ? h("p", { class: "field-hint", id: `${groupId}-hint` }, hint) : null;
  const errorEl = h("p", { class: "field-error", id: `${groupId}-error`, hidden: true });
  const items = choices.map((choice) => {
    const id = uid(`${name}-choice`);
    const input = h("input", { type: "radio", name, id, value: choice.value, "data-group": groupId });
    const hintId = choice.hint || choice.key ? `${id}-hint` : null;
    if (hintId) input.setAttribute("aria-describedby", hintId);
    const hint = hintId
      ? h("span", { class: "choice-hint", id: hintId }, choice.key ? h("code", {}, choice.key) : null, choice.key && choice.hint ? " · " : null, choice.hint)
      : null;
    return h("div", { class: "choice" }, input, h("label", { for: id }, choice.label, hint));
  });
  return h(
    "fieldset",
    {
      class: `field choices ${className}`.trim(),
      id: groupId,
      "data-field": groupId,
      "aria-describedby": [hintEl?.id, errorEl.id].filter(Boolean).join(" ") || null,
    },
    h("legend", {}, legend),
    hintEl,
    errorEl,
    h("div", { class: "choice-list" }, items),
  );
}

function describe(control, ...ids) {
  const current = (control.getAttribute("aria-describedby") ?? "").split(" ").filter(Boolean);
  for (const id of ids) if (id && !current.includes(id)) current.push(id);
  if (current.length) control.setAttribute("aria-describedby", current.join(" "));
}

/** Once a field with an error is changed, its error goes (the summary stays until the next try). */
export function clearErrorsOnEdit(form) {
  const clear = (event) => {
    const wrapper = event.target.closest("[data-field]");
    const error = wrapper?.querySelector(":scope > .field-error");
    if (!error || error.hidden) return;
    error.hidden = true;
    error.textContent = "";
    for (const invalid of wrapper.querySelectorAll("[aria-invalid]")) invalid.removeAttribute("aria-invalid");
  };
  form.addEventListener("input", clear);
  form.addEventListener("change", clear);
}

/** The value of the checked radio named `name` in `form`, or "". */
export function checkedValue(form, name) {
  return form.querySelector(`input[name="${CSS.escape(name)}"]:checked`)?.value ?? "";
}

/**
 * Show field errors (`{fieldElementOrControl: message}` as [[element, message]])
 * and a summary; focus the first problem. Returns true if there were none.
 */
export function showProblems(form, summary, problems) {
  for (const error of form.querySelectorAll(".field-error")) {
    error.hidden = true;
    error.textContent = "";
  }
  for (const invalid of form.querySelectorAll("[aria-invalid]")) invalid.removeAttribute("aria-invalid");
  if (!problems.length) {
    summary.hidden = true;
    summary.replaceChildren();
    return true;
  }
  for (const [control, message] of problems) {
    const wrapper = control.closest("[data-field]");
    const error = wrapper?.querySelector(":scope > .field-error");
    if (error) {
      error.textContent = message;
      error.hidden = false;
      if (control.matches("input, select, textarea")) describe(control, error.id);
    }
    if (control.matches("fieldset")) {
      for (const input of control.querySelectorAll("input")) input.setAttribute("aria-invalid", "true");
    } else {
      control.setAttribute("aria-invalid", "true");
    }
  }
  showSummary(summary, "Please fix the following:", problems.map(([, message]) => message));
  const first = problems[0][0];
  (first.matches("fieldset") ? first.querySelector("input") : first)?.focus();
  return false;
}

/** An alert box with a heading line and an optional list. */
export function showSummary(summary, text, lines = []) {
  summary.replaceChildren(h("p", { class: "summary-title" }, text));
  if (lines.length) summary.append(h("ul", {}, lines.map((line) => h("li", {}, line))));
  summary.hidden = false;
}

/** The alert region a form shows its problems in (API errors included). */
export function problemBox() {
  return h("div", { class: "banner banner--error form-problems", role: "alert", hidden: true });
}

/** Disable a submit button while `work` runs; returns what `work` returned. */
export async function busy(button, label, work) {
  const before = button.textContent;
  button.disabled = true;
  button.setAttribute("aria-busy", "true");
  button.textContent = label;
  try {
    return await work();
  } finally {
    button.disabled = false;
    button.removeAttribute("aria-busy");
    button.textContent = before;
  }
}
