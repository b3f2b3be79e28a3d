// The family's appeal page, /appeal/{directive}.
//
// The family arrives here from the end screen of their call (same tab), so
// their visit token is in this tab's sessionStorage under the key join.js
// uses, "parlor.token.visit.<visit>". A token in the fragment (#token=...)
// also works and wins. Families cannot read directives from the API, so what
// happened is shown from the notice the call page kept, if it kept one
// ("parlor.notice.<directive>"); otherwise from the reference alone.

import { forgetToken, takeToken } from "./token.js";
import { formatDateTime, h } from "./ui.js";

const MAX = 2000;
const VISIT_TOKEN_PREFIX = "parlor.token.visit.";

const $ = (id) => document.getElementById(id);
const app = $("app");
const directiveId = directiveFromPath(location.pathname);
const fragmentKey = directiveId ? `parlor.token.appeal.${directiveId}` : null;
const fromFragment = fragmentKey ? takeToken(fragmentKey) : null;
const notice = directiveId ? readNotice(directiveId) : null;

function directiveFromPath(path) {
  const match = /^\/appeal\/([^/]+)\/?$/.exec(path);
  return match ? decodeURIComponent(match[1]) : null;
}

function storage(fn, fallback = null) {
  try {
    return fn(sessionStorage);
  } catch {
    return fallback;
  }
}

/** The directive notice the call page kept for this tab, if any. */
function readNotice(id) {
  const text = storage((s) => s.getItem(`parlor.notice.${id}`));
  if (!text) return null;
  try {
    const value = JSON.parse(text);
    return value && typeof value === "object" ? value : null;
  } catch {
    return null;
  }
}

/**
 * The tokens that might be the affected person's: the fragment's, else every
 * family token this tab holds, the visit named by the notice first.
 */
function candidateTokens() {
  if (fromFragment) return [{ key: fragmentKey, token: fromFragment }];
  const found = storage((s) => {
    const list = [];
    for (let i = 0; i < s.length; i += 1) {
      const key = s.key(i);
      if (key?.startsWith(VISIT_TOKEN_PREFIX)) list.push({ key, token: s.getItem(key) });
    }
    return list;
  }, []);
  const preferred = notice?.visit ? `${VISIT_TOKEN_PREFIX}${notice.visit}` : null;
  return found.filter((c) => c.token).sort((a, b) => (b.key === preferred) - (a.key === preferred));
}

const ACTION_WORDS = {
  suspend: "Facility staff stopped your call, and calls cannot be made again until the date below.",
  end: "Facility staff ended your call.",
  "audio-only": "Facility staff turned off video on your call. Sound could continue.",
};

function showWhatHappened() {
  const box = $("what-happened");
  const reference = h("p", {}, "Reference: ", h("strong", { id: "directive-ref" }, directiveId));
  if (notice) {
    box.replaceChildren(
      h("p", {}, ACTION_WORDS[notice.action] ?? "Facility staff stopped or restricted your call."),
      h(
        "dl",
        { class: "end-details", id: "notice-details" },
        h("div", {}, h("dt", {}, "Reason"), h("dd", { id: "notice-reason" }, notice.reason || "No reason was given.")),
        h("div", {}, h("dt", {}, "Legal basis"), h("dd", { id: "notice-legal-basis" }, notice.legal_basis || "Not given")),
        h(
          "div",
          {},
          h("dt", {}, "In effect until"),
          h("dd", { id: "notice-expires" }, notice.expires_at ? formatDateTime(notice.expires_at) : "Not given"),
        ),
      ),
      reference,
    );
  } else {
    box.replaceChildren(
      h(
        "p",
        {},
        "Facility staff stopped or restricted a video call. The reason, the rule it is based on and how long it lasts were shown on your call screen when it ended.",
      ),
      reference,
    );
  }
}

function showProblem(text) {
  const box = $("appeal-problem");
  box.textContent = text ?? "";
  box.hidden = !text;
}

/** The API's refusal in plain language. */
function explain(status, code, message) {
  if (status === 0) return "We could not reach the server. Check your internet connection and try again. What you wrote is still here.";
  if (status === 403 && code === "not-affected") return "This decision did not apply to your link.";
  if (status === 403) return "This link cannot be used to appeal. Please open the appeal link shown when your call ended.";
  if (status === 401) {
    return `Your visit link has expired, so we cannot accept an appeal from this window. Please contact the facility and give them the reference ${directiveId}.`;
  }
  if (status === 404) return `We could not find this decision (reference ${directiveId}). Check the link, or contact the facility.`;
  if (status === 409 && code === "appeal-open") return message;
  if (status === 429) return "Too many tries in a short time. Please wait a minute, then try again. What you wrote is still here.";
  if (status === 400 || status === 422) return `Please check what you wrote: ${message}`;
  return "Something went wrong on our side. Please try again in a few minutes. What you wrote is still here.";
}

async function send(token, text) {
  let response;
  try {
    response = await fetch(`/api/v1/directives/${encodeURIComponent(directiveId)}/appeals`, {
      method: "POST",
      headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify({ text }),
      cache: "no-store",
    });
  } catch {
    return { status: 0, code: "network", message: "" };
  }
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (response.ok) return { status: response.status, appeal: body };
  return { status: response.status, code: body?.error?.code ?? "", message: body?.error?.message ?? "" };
}

function showDone(appealId) {
  $("appeal-form").hidden = true;
  showProblem(null);
  const done = $("appeal-done");
  done.replaceChildren(
    h("strong", {}, `Your appeal was received (reference ${appealId}).`),
    " Keep this reference. You do not need to do anything else now.",
  );
  done.hidden = false;
  app.dataset.state = "sent";
  done.focus();
}

function countCharacters() {
  const used = $("appeal-text").value.length;
  $("appeal-count").textContent = `${used.toLocaleString()} of ${MAX.toLocaleString()} characters used`;
}

async function submit(event) {
  event.preventDefault();
  const textarea = $("appeal-text");
  const error = $("appeal-text-error");
  const text = textarea.value.trim();
  if (!text) {
    error.textContent = "Please write why you think this decision is wrong.";
    error.hidden = false;
    textarea.setAttribute("aria-invalid", "true");
    textarea.setAttribute("aria-describedby", "appeal-text-error appeal-hint appeal-count");
    textarea.focus();
    return;
  }
  error.hidden = true;
  textarea.removeAttribute("aria-invalid");
  textarea.setAttribute("aria-describedby", "appeal-hint appeal-count");
  showProblem(null);

  const button = $("appeal-submit");
  button.disabled = true;
  button.textContent = "Sending…";
  let last = null;
  try {
    for (const candidate of candidateTokens()) {
      last = await send(candidate.token, text);
      if (last.appeal) break;
      // Another visit's link in this tab: try the next one.
      if (!(last.status === 403 && last.code === "not-affected") && last.status !== 401) break;
    }
  } finally {
    button.disabled = false;
    button.textContent = "Send appeal";
  }
  if (last?.appeal) {
    storage((s) => s.setItem(`parlor.appeal.${directiveId}`, last.appeal.id));
    showDone(last.appeal.id);
    return;
  }
  if (last?.status === 401 && fragmentKey) forgetToken(fragmentKey);
  showProblem(last ? explain(last.status, last.code, last.message) : "This page cannot find your visit link.");
  app.dataset.state = "refused";
  // Trying again cannot change these answers: put the form away and say what can help.
  if (last && ([401, 403, 404].includes(last.status) || last.code === "appeal-open")) {
    $("appeal-form").hidden = true;
    if (last.status === 403) {
      $("appeal-problem").after(
        h("p", { id: "appeal-next" }, `If you think this is a mistake, contact the facility and give them the reference ${directiveId}.`),
      );
    }
  }
}

// --- go --------------------------------------------------------------------------------------

if (!directiveId) {
  $("what-happened").replaceChildren(h("p", {}, "This link is not complete. Open the appeal link shown when your call ended, exactly as it was."));
  app.dataset.state = "broken";
} else {
  showWhatHappened();
  const already = storage((s) => s.getItem(`parlor.appeal.${directiveId}`));
  if (already) {
    showDone(already);
  } else if (!candidateTokens().length) {
    showProblem(
      `We could not find your visit link in this browser window. Open the appeal link from the screen shown when your call ended, in the same window, or contact the facility and give them the reference ${directiveId}.`,
    );
    app.dataset.state = "no-token";
  } else {
    $("appeal-form").hidden = false;
    $("appeal-form").addEventListener("submit", submit);
    $("appeal-text").addEventListener("input", () => {
      countCharacters();
      const error = $("appeal-text-error");
      if (!error.hidden && $("appeal-text").value.trim()) {
        error.hidden = true;
        $("appeal-text").removeAttribute("aria-invalid");
        $("appeal-text").setAttribute("aria-describedby", "appeal-hint appeal-count");
      }
    });
    countCharacters();
    app.dataset.state = "ready";
  }
}
