// The "issue a directive" dialog, used for a targeted suspension from a call
// and for the facility / system stop. Scope, action, reason, legal basis and
// duration are all required (SPEC §4); a broad stop also asks the operator to
// type the facility id, says before sending how much unconfirmed time the scope
// has left today (GET /scopes/{scope}/coverage: one person alone may restrict a
// broad scope for at most the confirmation window in 24 hours), and after
// issuing says when it will lapse unless a second supervisor confirms it. A
// refusal (e.g. `confirmation-required`) is shown in the server's own words;
// past the scope's unconfirmed time the dialog then offers to ask a second
// supervisor instead (`await_confirmation`): the request waits, in force
// nowhere, and the stop starts when another supervisor confirms it.

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
  DURATIONS,
  MAX_DIRECTIVE_SECONDS,
  UNITS,
  formatLength,
  formatWhen,
  minutesUntil,
  toRfc3339,
} from "./console-time.js";
import { h } from "./ui.js";

export const ACTIONS = [
  {
    value: "suspend",
    label: "Suspend",
    hint: "End the matching calls now and refuse new ones until the directive ends.",
  },
  { value: "end", label: "End now", hint: "End the matching calls now. New calls are still allowed." },
  { value: "audio-only", label: "Audio only", hint: "Turn video off on the matching calls. Sound goes on." },
];

/**
 * @param {object} options
 * @param {import("./console-api.js").Api} options.api
 * @param {string} options.title
 * @param {string} [options.intro]         a paragraph under the title
 * @param {{value, label, hint?}[]} options.scopes  the scope choices
 * @param {boolean} [options.broad]        the facility / system stop
 * @param {{scope?: string, action?: string}} [options.preset]  choices made already
 * @param {(directive) => void} [options.onIssued]
 */
export function openDirectiveDialog({ api, title, intro = "", scopes, broad = false, preset = {}, onIssued = () => {} }) {
  return openDialog({
    title,
    className: broad ? "dialog--broad" : "dialog--directive",
    build(dialog, close) {
      const form = h("form", { class: "directive-form", novalidate: true });
      const problems = problemBox();
      const offer = h("div", { class: "request-offer", id: "request-offer", hidden: true });

      const scopeGroup = choiceGroup({
        name: "scope",
        legend: broad ? "Where it applies" : "Who it applies to",
        choices: scopes,
        hint: broad ? null : "Choose the narrowest scope that deals with the problem.",
        className: "choices--scopes",
      });
      const actionGroup = choiceGroup({ name: "action", legend: "What happens", choices: ACTIONS, className: "choices--actions" });
      const reason = h("textarea", { name: "reason", rows: 3, maxlength: 2000, required: true });
      const legalBasis = h("input", { type: "text", name: "legal_basis", maxlength: 300, required: true, autocomplete: "off" });
      const duration = h(
        "select",
        { name: "duration", required: true },
        h("option", { value: "" }, "Choose how long…"),
        DURATIONS.map((d) => h("option", { value: d.value }, d.label)),
      );
      const customAmount = h("input", { type: "number", name: "custom_amount", min: 1, step: 1, inputmode: "numeric" });
      const customUnit = h("select", { name: "custom_unit" }, UNITS.map((u) => h("option", { value: u.value }, u.label)));
      customUnit.value = "3600";
      const custom = h(
        "div",
        { class: "custom-duration", hidden: true },
        field({ label: "Number", control: customAmount, className: "field--narrow" }),
        field({ label: "Unit", control: customUnit, className: "field--narrow" }),
      );
      const until = h("p", { class: "field-hint until", "aria-live": "polite" });

      const coverage = h("div", { class: "scope-coverage", id: "scope-coverage", "aria-live": "polite", hidden: true });
      let coverageFor = null; // the scope whose coverage was asked for last
      const showCoverage = async (scope) => {
        coverageFor = scope;
        let answer;
        try {
          answer = await api.get(`/scopes/${encodeURIComponent(scope)}/coverage`);
        } catch {
          answer = null; // the refusal, if any, comes with the answer to the directive itself
        }
        if (coverageFor !== scope) return;
        coverage.hidden = !answer;
        if (answer) coverage.replaceChildren(...describeCoverage(answer));
        coverage.dataset.refused = String(Boolean(answer?.refused));
      };

      const confirmInput = h("input", { type: "text", name: "confirm", autocomplete: "off", spellcheck: "false" });
      const confirmField = broad
        ? field({ label: "Type the facility id to confirm", control: confirmInput, hint: "Choose where it applies first." })
        : null;

      const submit = h(
        "button",
        { type: "submit", class: broad ? "button button--danger" : "button button--primary" },
        broad ? "Stop these calls" : "Issue directive",
      );
      const cancel = h("button", { type: "button", class: "button" }, "Cancel");
      cancel.addEventListener("click", close);

      const seconds = () => {
        if (duration.value === "custom") {
          const amount = Number(customAmount.value);
          return Number.isFinite(amount) && amount > 0 ? amount * Number(customUnit.value) : NaN;
        }
        return duration.value ? Number(duration.value) : NaN;
      };
      const showUntil = () => {
        custom.hidden = duration.value !== "custom";
        const s = seconds();
        until.textContent = Number.isFinite(s) ? `Ends ${formatWhen(toRfc3339(Date.now() + s * 1000))} (${formatLength(s)}).` : "";
      };
      for (const control of [duration, customAmount, customUnit]) {
        control.addEventListener("input", showUntil);
        control.addEventListener("change", showUntil);
      }
      const expected = () => {
        const scope = checkedValue(form, "scope");
        return scope === "system" ? "system" : scope.split(":")[1] ?? "";
      };
      if (broad) {
        scopeGroup.addEventListener("change", () => {
          const want = expected();
          confirmField.querySelector("label").textContent = want === "system" ? 'Type "system" to confirm' : `Type the facility id (${want}) to confirm`;
          confirmField.querySelector(".field-hint").textContent =
            want === "system" ? "This stops matching calls in every facility." : `This stops matching calls in every part of facility ${want}.`;
          showCoverage(checkedValue(form, "scope"));
        });
      }

      // (DOM append writes a null as the text "null": the parts this dialog lacks are left out)
      form.append(
        ...[
          intro ? h("p", { class: "dialog-intro" }, intro) : null,
          problems,
          broad ? offer : null,
          scopeGroup,
          broad ? coverage : null,
          actionGroup,
          field({ label: "Reason", control: reason, hint: "Shown to the people affected. Be specific." }),
          field({ label: "Legal basis", control: legalBasis, hint: "The rule or order this rests on, e.g. “Rule 34(2)”." }),
          h("div", { class: "duration-row" }, field({ label: "Duration", control: duration, hint: "At most 30 days." }), custom),
          until,
          broad
            ? h(
                "p",
                { class: "banner banner--warning broad-warning" },
                h("strong", {}, "This takes effect at once for every matching call. "),
                "It lapses automatically unless a second, different supervisor confirms it.",
              )
            : null,
          confirmField,
          h("div", { class: "actions" }, submit, cancel),
        ].filter(Boolean),
      );

      for (const [name, value] of Object.entries(preset)) {
        const choice = form.querySelector(`input[name="${name}"][value="${CSS.escape(value)}"]`);
        if (choice) choice.checked = true;
      }
      clearErrorsOnEdit(form);
      /** The request body from the form, or null after showing what is missing. */
      const read = () => {
        const found = [];
        const scope = checkedValue(form, "scope");
        const action = checkedValue(form, "action");
        if (!scope) found.push([scopeGroup, broad ? "Choose where it applies." : "Choose who it applies to."]);
        if (!action) found.push([actionGroup, "Choose what happens."]);
        if (!reason.value.trim()) found.push([reason, "Enter the reason."]);
        if (!legalBasis.value.trim()) found.push([legalBasis, "Enter the legal basis."]);
        const s = seconds();
        if (!duration.value) found.push([duration, "Choose how long it lasts."]);
        else if (!Number.isFinite(s)) found.push([customAmount, "Enter a whole number for the custom duration."]);
        else if (s > MAX_DIRECTIVE_SECONDS) found.push([customAmount, "A directive lasts at most 30 days."]);
        if (broad && scope && confirmInput.value.trim() !== expected()) {
          found.push([confirmInput, `Type ${expected()} exactly to confirm.`]);
        }
        if (!showProblems(form, problems, found)) return null;
        return {
          scope,
          action,
          reason: reason.value.trim(),
          legal_basis: legalBasis.value.trim(),
          expires_at: toRfc3339(Date.now() + s * 1000),
        };
      };
      const send = async (button, label, body) => {
        offer.hidden = true;
        let directive;
        try {
          directive = await busy(button, label, () => api.post("/directives", body));
        } catch (error) {
          showSummary(problems, error instanceof ApiError ? error.message : String(error));
          if (broad && error instanceof ApiError && error.code === "confirmation-required" && !body.await_confirmation) {
            showOffer();
          }
          problems.scrollIntoView({ block: "nearest" }); // the refusal is at the top of a long form
          if (broad) showCoverage(body.scope);
          return;
        }
        onIssued(directive);
        if (broad) {
          showBroadResult(dialog, directive, close);
        } else {
          close();
        }
      };
      // Past the scope's unconfirmed time: a second supervisor can still agree it is needed.
      const ask = h(
        "button",
        { type: "button", class: "button button--danger", id: "ask-confirmation" },
        "Ask a second supervisor to confirm — the stop starts when they do",
      );
      ask.addEventListener("click", () => {
        const body = read();
        if (body) send(ask, "Asking…", { ...body, await_confirmation: true });
      });
      const showOffer = () => {
        offer.replaceChildren(
          h(
            "p",
            {},
            "Nothing stops until another supervisor confirms the request in the directives list; then it stops at once. " +
              "If nobody confirms it in time, it lapses.",
          ),
          ask,
        );
        offer.hidden = false;
      };

      form.addEventListener("submit", async (event) => {
        event.preventDefault();
        const body = read();
        if (body) await send(submit, "Issuing…", body);
      });
      dialog.append(form);
    },
  });
}

/**
 * A broad scope's unconfirmed time today, in words: what is left and when a stop
 * issued now would lapse, or (refused) the server's explanation.
 */
function describeCoverage(c) {
  if (c.refused) {
    return [h("p", { class: "banner banner--warning", id: "coverage-refused" }, c.message)];
  }
  const left = formatLength(c.available_seconds);
  const used = formatLength(c.used_seconds);
  return [
    h(
      "p",
      { class: "field-hint", id: "coverage-left" },
      `Without a second supervisor, ${c.scope} can be restricted for ${left} more today ` +
        `(${used} of ${formatLength(c.budget_seconds)} used in the last 24 hours). ` +
        `A stop issued now lapses at ${formatWhen(c.lapse_at)} unless it is confirmed.`,
    ),
  ];
}

/** After a broad stop: what happened, and when it lapses unless confirmed. */
function showBroadResult(dialog, directive, close) {
  if (directive.status === "pending") {
    showRequestResult(dialog, directive, close);
    return;
  }
  const minutes = directive.confirm_by ? minutesUntil(directive.confirm_by) : null;
  const done = h("button", { type: "button", class: "button button--primary" }, "Close");
  done.addEventListener("click", close);
  const heading = dialog.querySelector("h2");
  heading.textContent = `Directive ${directive.id} is in effect`;
  dialog.querySelector("form").replaceWith(
    h(
      "div",
      { class: "broad-result", role: "status" },
      h("p", {}, `${directive.scope}: ${directive.action}. ${directive.sessions_ended ?? 0} session(s) ended.`),
      minutes !== null
        ? h(
            "p",
            { class: "banner banner--warning", id: "lapse-warning" },
            `This will lapse in ${minutes} minute${minutes === 1 ? "" : "s"} unless a second supervisor confirms it.`,
          )
        : null,
      h("p", {}, "The directives list shows the countdown and the Confirm button for the second supervisor."),
      h("div", { class: "actions" }, done),
    ),
  );
  done.focus();
}

/** After a request: nothing has stopped; it starts when a second supervisor confirms it. */
function showRequestResult(dialog, directive, close) {
  const minutes = minutesUntil(directive.confirm_by);
  const done = h("button", { type: "button", class: "button button--primary" }, "Close");
  done.addEventListener("click", close);
  dialog.querySelector("h2").textContent = `Request ${directive.id} is waiting for a second supervisor`;
  dialog.querySelector("form").replaceWith(
    h(
      "div",
      { class: "broad-result", role: "status" },
      h("p", {}, `${directive.scope}: ${directive.action}. Nothing has stopped yet.`),
      h(
        "p",
        { class: "banner banner--warning", id: "request-waiting" },
        `It starts when a second supervisor confirms it. If nobody has by ${formatWhen(directive.confirm_by)} ` +
          `(in ${minutes} minute${minutes === 1 ? "" : "s"}), it lapses.`,
      ),
      h("p", {}, "The directives list shows it with a Confirm button for the other supervisors."),
      h("div", { class: "actions" }, done),
    ),
  );
  done.focus();
}
