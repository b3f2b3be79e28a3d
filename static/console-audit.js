// The audit log, newest first, a page at a time, with new events added live
// while the newest page is shown; and "Verify chain", which asks the server
// to recompute the hash chain and replay it against the records (GET /audit/verify).

import { ApiError } from "./console-api.js";
import { busy } from "./console-dialog.js";
import { formatStamp } from "./console-time.js";
import { h } from "./ui.js";

const PAGE = 50;
const DATA_PREVIEW = 140;

export class AuditView {
  #panel;
  #api;
  #head;
  #el = {};
  #top = null; // seq of the newest event on the page; null = follow the newest
  #events = [];
  #unseen = 0;
  #loaded = false;
  #arrived = []; // live events that came while a page was loading

  /** `head()` returns the newest sequence number known (from the event stream). */
  constructor(panel, { api, head }) {
    this.#panel = panel;
    this.#api = api;
    this.#head = head;
    this.#build();
  }

  #build() {
    const el = this.#el;
    el.verify = h("button", { type: "button", class: "button", id: "verify-chain" }, "Verify chain");
    el.verifyResult = h("p", { class: "verify-result", id: "verify-result", role: "status" });
    el.verify.addEventListener("click", () => this.#verify());
    el.newest = h("button", { type: "button", class: "button button--small", id: "audit-newest" }, "Newest");
    el.newer = h("button", { type: "button", class: "button button--small", id: "audit-newer" }, "Newer");
    el.older = h("button", { type: "button", class: "button button--small", id: "audit-older" }, "Older");
    el.range = h("p", { class: "audit-range", id: "audit-range", "aria-live": "polite" });
    el.newest.addEventListener("click", () => this.load(null));
    el.newer.addEventListener("click", () => this.load(this.#top === null ? null : this.#top + PAGE));
    el.older.addEventListener("click", () => {
      const oldest = this.#events.at(-1)?.seq;
      if (oldest > 1) this.load(oldest - 1);
    });
    el.problem = h("div", { class: "banner banner--error", role: "alert", hidden: true });
    el.body = h("tbody", { id: "audit-rows" });
    this.#panel.replaceChildren(
      h("h2", {}, "Audit log"),
      h("div", { class: "toolbar" }, el.verify, el.verifyResult),
      el.problem,
      h("nav", { class: "pager", "aria-label": "Audit log pages" }, el.newest, el.newer, el.older, el.range),
      h(
        "table",
        { class: "data-table audit-table", id: "audit-table" },
        h("caption", { class: "visually-hidden" }, "Audit events, newest first"),
        h(
          "thead",
          {},
          h("tr", {}, ["#", "Time", "Actor", "Action", "Subject", "Details"].map((t) => h("th", { scope: "col" }, t))),
        ),
        el.body,
      ),
    );
  }

  get loaded() {
    return this.#loaded;
  }

  /** Show the page whose newest event is `top` (null: the newest page, followed live). */
  async load(top) {
    const head = this.#head() ?? 0;
    const newest = top === null || top >= head ? head : Math.max(1, top);
    const after = Math.max(0, newest - PAGE);
    this.#el.problem.hidden = true;
    let events = [];
    try {
      if (newest > 0) events = await this.#api.get(`/audit?after=${after}&limit=${newest - after}`);
    } catch (error) {
      this.#el.problem.textContent = error instanceof ApiError ? error.message : String(error);
      this.#el.problem.hidden = false;
      return;
    }
    this.#top = top === null || top >= head ? null : newest;
    this.#events = events.reverse();
    this.#unseen = 0;
    this.#loaded = true;
    this.#draw();
    // Events the stream delivered while the page loaded are newer than `head`.
    for (const event of this.#arrived.splice(0)) if (event.seq > newest) this.add(event);
  }

  /** A live event from the stream. */
  add(event) {
    if (!this.#loaded) {
      this.#arrived.push(event);
      if (this.#arrived.length > PAGE) this.#arrived.shift();
      return;
    }
    if (this.#top !== null) {
      this.#unseen += 1;
      this.#drawRange();
      return;
    }
    if (this.#events.some((e) => e.seq === event.seq)) return;
    this.#events.unshift(event);
    if (this.#events.length > PAGE) this.#events.length = PAGE;
    this.#el.body.prepend(this.#row(event));
    while (this.#el.body.rows.length > PAGE) this.#el.body.lastElementChild.remove();
    this.#drawRange();
  }

  #draw() {
    this.#el.body.replaceChildren(...this.#events.map((e) => this.#row(e)));
    this.#drawRange();
  }

  #drawRange() {
    const first = this.#events.at(-1)?.seq;
    const last = this.#events[0]?.seq;
    const head = Math.max(this.#head() ?? 0, last ?? 0);
    const newer = this.#top === null ? "" : ` · ${head - (last ?? 0)} newer event(s)`;
    this.#el.range.textContent = this.#events.length ? `Events ${first}–${last} of ${head}${newer}` : "No events yet.";
    this.#el.newer.disabled = this.#top === null;
    this.#el.newest.disabled = this.#top === null;
    this.#el.older.disabled = !(first > 1);
  }

  #row(event) {
    const json = JSON.stringify(event.data ?? {});
    const details =
      json.length > DATA_PREVIEW
        ? h("details", {}, h("summary", {}, h("code", {}, `${json.slice(0, DATA_PREVIEW)}…`)), h("pre", {}, JSON.stringify(event.data, null, 2)))
        : h("code", {}, json);
    return h(
      "tr",
      { "data-seq": event.seq, "data-action": event.action },
      h("td", { "data-label": "#" }, String(event.seq)),
      h("td", { "data-label": "Time" }, formatStamp(event.at)),
      h("td", { "data-label": "Actor" }, event.actor),
      h("td", { "data-label": "Action" }, h("span", { class: "audit-action" }, event.action)),
      h("td", { "data-label": "Subject" }, event.subject),
      h("td", { "data-label": "Details", class: "audit-data" }, details),
    );
  }

  async #verify() {
    const result = this.#el.verifyResult;
    result.className = "verify-result";
    result.textContent = "Checking the chain…";
    try {
      const report = await busy(this.#el.verify, "Verifying…", () => this.#api.get("/audit/verify"));
      result.dataset.ok = String(Boolean(report.ok));
      const rows = report.state?.disagreements ?? [];
      if (report.ok) {
        result.classList.add("is-ok");
        result.textContent = `Chain intact: all ${report.events} events verified, and every record agrees with them.`;
      } else {
        result.classList.add("is-bad");
        const parts = [];
        if (report.chain_ok === false || report.first_bad !== null) {
          parts.push(`Chain broken: the first bad event is #${report.first_bad} (of ${report.events}).`);
        }
        if (rows.length) {
          parts.push(`${rows.length} ${rows.length === 1 ? "record disagrees" : "records disagree"} with the audit chain (changed without an audit event):`);
        }
        const listed = rows.map((d) =>
          h("li", {}, `${d.table} ${d.id} ${d.field}: stored ${JSON.stringify(d.stored)}, the chain says ${JSON.stringify(d.implied)}`),
        );
        result.replaceChildren(
          ...parts.map((text) => h("span", {}, text, " ")),
          ...(rows.length ? [h("ul", { class: "verify-disagreements" }, listed)] : []),
        );
      }
    } catch (error) {
      result.classList.add("is-bad");
      result.textContent = error instanceof ApiError ? error.message : String(error);
    }
  }
}

/** The suspension report (GET /reports/suspensions) and the visits report
 * (GET /reports/visits), redrawn when directives, appeals, sessions or visits change. */
export class ReportView {
  #panel;
  #api;
  #body;
  #visits;
  #problem;

  constructor(panel, { api }) {
    this.#panel = panel;
    this.#api = api;
    this.#body = h("div", { class: "report", id: "report-body" }, h("p", {}, "Loading…"));
    this.#visits = h("div", { class: "report", id: "visits-report" });
    this.#problem = h("div", { class: "banner banner--error", role: "alert", hidden: true });
    panel.replaceChildren(h("h2", {}, "Suspension report"), this.#problem, this.#body, h("h2", { class: "section-title" }, "Visits report"), this.#visits);
  }

  async load() {
    let report, visits;
    try {
      [report, visits] = await Promise.all([this.#api.get("/reports/suspensions"), this.#api.get("/reports/visits")]);
    } catch (error) {
      this.#problem.textContent = error instanceof ApiError ? error.message : String(error);
      this.#problem.hidden = false;
      return;
    }
    this.#problem.hidden = true;
    this.#draw(report);
    this.#drawVisits(visits);
  }

  #drawVisits(r) {
    const status = r.by_status ?? {};
    const totals = [
      ["Visits", r.visits],
      ["Booked", status.booked ?? 0],
      ["Ended", status.ended ?? 0],
      ["No-shows", r.no_shows],
      ["Cancelled", status.cancelled ?? 0],
      ["Moved", r.moved],
    ];
    const byFacility = Object.fromEntries(
      Object.entries(r.by_facility ?? {}).map(([facility, counts]) => [facility, `${counts.ended ?? 0} ended · ${counts["no-show"] ?? 0} no-show · ${counts.cancelled ?? 0} cancelled`]),
    );
    this.#visits.replaceChildren(
      h("dl", { class: "report-totals", id: "visits-totals" }, totals.map(([k, v]) => h("div", {}, h("dt", {}, k), h("dd", {}, String(v))))),
      h("div", { class: "report-tables" }, countTable("Cancelled, by reason", "Reason", r.cancelled_by_reason), countTable("By kind", "Kind", r.by_kind), countTable("By facility", "Facility", byFacility)),
    );
  }

  #draw(r) {
    const length = (s) => (s === null || s === undefined ? "—" : formatSeconds(s));
    const appeals = r.appeals ?? {};
    const totals = [
      ["Directives", r.directives],
      ["Targeted", r.targeted],
      ["Broad (facility or system)", r.broad],
      ["Sessions ended by directives", r.sessions_ended],
      ["Median planned length", length(r.median_planned_seconds)],
      ["Median actual length", length(r.median_actual_seconds)],
      ["Appeals filed", appeals.filed ?? 0],
      ["Appeals open", appeals.open ?? 0],
      ["Appeals upheld", appeals.upheld ?? 0],
      ["Appeals granted (lifted)", appeals.lifted ?? 0],
    ];
    this.#body.replaceChildren(
      h("dl", { class: "report-totals", id: "report-totals" }, totals.map(([k, v]) => h("div", {}, h("dt", {}, k), h("dd", {}, String(v))))),
      h(
        "div",
        { class: "report-tables" },
        countTable("By scope", "Scope", r.by_scope_kind),
        countTable("By action", "Action", r.by_action),
        countTable("By status", "Status", r.by_status),
        countTable("By reason (top 20)", "Reason", r.by_reason),
        countTable("Broad stops asked of a second supervisor", "Outcome", requestOutcomes(r.requests)),
      ),
    );
  }
}

/** A report's `requests` (broad directives that waited for a second supervisor) by outcome, in words. */
function requestOutcomes(requests = {}) {
  const words = { pending: "Waiting", confirmed: "Confirmed (started)", lapsed: "Lapsed (never started)", withdrawn: "Withdrawn" };
  return Object.fromEntries(Object.entries(words).map(([key, text]) => [text, requests?.[key] ?? 0]));
}

function countTable(title, label, counts = {}) {
  const rows = Object.entries(counts ?? {}).sort((a, b) => (typeof b[1] === "number" ? b[1] - a[1] : a[0].localeCompare(b[0])));
  return h(
    "table",
    { class: "data-table count-table" },
    h("caption", {}, title),
    h("thead", {}, h("tr", {}, h("th", { scope: "col" }, label), h("th", { scope: "col" }, "Count"))),
    h(
      "tbody",
      {},
      rows.length
        ? rows.map(([k, v]) => h("tr", {}, h("th", { scope: "row" }, k), h("td", {}, String(v))))
        : h("tr", {}, h("td", { colspan: 2 }, "None")),
    ),
  );
}

function formatSeconds(s) {
  if (s < 3600) return `${Math.round(s / 60)} min`;
  if (s < 86400) return `${(s / 3600).toFixed(1)} h`;
  return `${(s / 86400).toFixed(1)} days`;
}
