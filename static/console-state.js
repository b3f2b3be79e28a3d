// ConsoleState: what the console knows — roster, visits, live sessions,
// directives, appeals — loaded once over the REST API and then kept current
// by the audit events of the staff event stream.
//
// Session, visit and kiosk-presence events carry everything needed and are
// applied directly; directive, appeal, approval and roster events trigger one
// reload of that list (the event says *that* it changed; the list says what
// it is now).
//
// Emits `change` with detail {parts: Set<"roster"|"visits"|"sessions"|"directives"|
// "appeals"|"approvals"|"presence"|"report">}.

const RELOAD_DELAY_MS = 60;

export class ConsoleState extends EventTarget {
  facilities = new Map();
  devices = new Map();
  inmates = new Map();
  contacts = new Map();
  visits = new Map();
  sessions = new Map();
  directives = new Map();
  appeals = new Map(); // open appeals only
  approvals = new Map(); // every approval, by "contact|inmate"
  loaded = false;

  #api;
  #pending = new Set();
  #reloadTimer = null;
  #reloads = new Set();
  #changeTimer = null;

  constructor(api) {
    super();
    this.#api = api;
  }

  /** Load everything (first start, or after the audit log was reset). */
  async loadAll() {
    const [facilities, devices, inmates, contacts, visits, sessions, directives, appeals, approvals] = await Promise.all([
      this.#api.get("/facilities"),
      this.#api.get("/devices"),
      this.#api.get("/inmates"),
      this.#api.get("/contacts"),
      this.#api.get("/visits"),
      this.#api.get("/sessions"),
      this.#api.get("/directives"),
      this.#api.get("/appeals?status=open"),
      this.#api.get("/approvals"),
    ]);
    fill(this.facilities, facilities);
    fill(this.devices, devices);
    fill(this.inmates, inmates);
    fill(this.contacts, contacts);
    fill(this.visits, visits);
    fill(this.sessions, sessions);
    fill(this.directives, directives);
    fill(this.appeals, appeals);
    fillApprovals(this.approvals, approvals);
    this.loaded = true;
    this.#changed("roster", "visits", "sessions", "directives", "appeals", "approvals", "presence", "report");
  }

  /** Apply one audit event from the stream. */
  apply(event) {
    const { action, data = {}, actor, subject, at } = event;
    const visitId = subject?.startsWith("visit:") ? subject.slice(6) : null;
    switch (action) {
      case "session.started":
        if (data.session && visitId) {
          this.sessions.set(data.session, {
            id: data.session,
            visit: visitId,
            sub: actor,
            role: data.role,
            mode: data.mode ?? "participant",
            node: data.node,
            started_at: at,
            ended_at: null,
          });
          if (!this.visits.has(visitId)) this.#reload("visits");
          this.#changed("sessions");
        }
        break;
      case "session.ended":
        if (this.sessions.delete(data.session)) this.#changed("sessions");
        this.#changed("report");
        break;
      case "session.orphans-closed":
        for (const id of data.sessions ?? []) this.sessions.delete(id);
        this.#changed("sessions");
        break;
      case "visit.created":
        if (data.id) {
          this.visits.set(data.id, data);
          this.#changed("visits");
        }
        break;
      case "visit.rescheduled":
      case "visit.cancelled":
      case "visit.kind-changed":
      case "visit.ended":
      case "visit.no-show":
        // Each carries the whole visit as it is now; an older copy never replaces a newer one.
        if (data.visit?.id && (this.visits.get(data.visit.id)?.version ?? 0) <= data.visit.version) {
          this.visits.set(data.visit.id, data.visit);
          this.#changed("visits", "report");
        }
        break;
      case "device.online":
      case "device.offline": {
        const device = this.devices.get(data.device);
        if (device) {
          const online = action === "device.online";
          device.presence = { state: online ? "online" : "offline", node: data.node, since: data.since ?? at, last_seen: online ? at : data.last_seen };
          this.#changed("presence");
        } else {
          this.#reload("roster");
        }
        break;
      }
      case "approval.set":
        this.#reload("roster", "approvals");
        break;
      case "facility.created":
      case "device.created":
      case "inmate.created":
      case "contact.created":
      case "facility.updated":
      case "inmate.updated":
      case "contact.updated":
      case "contact.guardians-set":
        this.#reload("roster");
        break;
      case "appeal.filed":
        this.#reload("appeals");
        break;
      case "appeal.decided":
        this.#reload("appeals", "directives");
        break;
      default:
        if (action?.startsWith("directive.")) this.#reload("directives");
        break;
    }
  }

  // --- names --------------------------------------------------------------------------

  facilityName(id) {
    return this.facilities.get(id)?.name ?? id;
  }

  inmateName(id) {
    return this.inmates.get(id)?.name ?? id;
  }

  contactName(id) {
    return this.contacts.get(id)?.name ?? id;
  }

  /** The visits of a day (local midnight to midnight) at a facility, by start. */
  visitsOn(facility, dayStart) {
    const from = dayStart.getTime();
    const to = from + 24 * 3600_000;
    return [...this.visits.values()]
      .filter((v) => (!facility || v.facility === facility) && Date.parse(v.starts_at) < to && Date.parse(v.ends_at) > from)
      .sort((a, b) => Date.parse(a.starts_at) - Date.parse(b.starts_at) || a.id.localeCompare(b.id));
  }

  /** What a visit is now: booked, live, ended, cancelled or no-show (live: a session of it is). */
  visitState(visit) {
    if (visit.status !== "booked") return visit.status;
    const live = [...this.sessions.values()].some((s) => s.visit === visit.id && !s.ended_at && s.mode !== "monitor");
    if (live) return "live";
    return Date.parse(visit.ends_at) <= Date.now() ? "ended" : "booked";
  }

  /** The live participant session of a kiosk, if it is in a call. */
  kioskCall(deviceId) {
    return [...this.sessions.values()].find((s) => s.sub === `device:${deviceId}` && !s.ended_at && s.mode !== "monitor") ?? null;
  }

  /** Active directives in force on a kiosk (device scope) that stop its calls. */
  outOfService(deviceId) {
    return [...this.directives.values()].filter((d) => d.status === "active" && d.scope === `device:${deviceId}` && d.action === "suspend");
  }

  /** "Contact 1" for contact:C1, "Kiosk K1" for device:K1, else the subject itself. */
  subjectName(sub) {
    const [kind, id] = String(sub ?? "").split(/:(.*)/s);
    if (kind === "contact") return this.contactName(id);
    if (kind === "device") return `Kiosk ${id}`;
    return sub;
  }

  // --- the live calls ---------------------------------------------------------------------

  /** One entry per visit with a live session, newest first. */
  calls() {
    const byVisit = new Map();
    for (const session of this.sessions.values()) {
      if (session.ended_at) continue;
      let call = byVisit.get(session.visit);
      if (!call) {
        const visit = this.visits.get(session.visit) ?? { id: session.visit, contacts: [] };
        call = { visit, participants: [], monitors: [] };
        byVisit.set(session.visit, call);
      }
      (session.mode === "monitor" ? call.monitors : call.participants).push(session);
    }
    const calls = [...byVisit.values()];
    for (const call of calls) {
      const subs = new Set(call.participants.map((s) => s.sub));
      call.kioskPresent = subs.has(`device:${call.visit.device}`);
      call.contactsPresent = (call.visit.contacts ?? []).filter((c) => subs.has(`contact:${c}`));
      call.startedAt = Math.min(...[...call.participants, ...call.monitors].map((s) => Date.parse(s.started_at) || 0));
    }
    calls.sort((a, b) => b.startedAt - a.startedAt || String(a.visit.id).localeCompare(b.visit.id));
    return calls;
  }

  // --- reloads -------------------------------------------------------------------------------

  #reload(...parts) {
    for (const part of parts) this.#reloads.add(part);
    if (this.#reloadTimer) return;
    this.#reloadTimer = setTimeout(() => this.#runReloads(), RELOAD_DELAY_MS);
  }

  async #runReloads() {
    this.#reloadTimer = null;
    const parts = [...this.#reloads];
    this.#reloads.clear();
    const jobs = parts.map(async (part) => {
      try {
        if (part === "roster") {
          const [facilities, devices, inmates, contacts] = await Promise.all([
            this.#api.get("/facilities"),
            this.#api.get("/devices"),
            this.#api.get("/inmates"),
            this.#api.get("/contacts"),
          ]);
          fill(this.facilities, facilities);
          fill(this.devices, devices);
          fill(this.inmates, inmates);
          fill(this.contacts, contacts);
        } else if (part === "visits") {
          fill(this.visits, await this.#api.get("/visits"));
        } else if (part === "directives") {
          fill(this.directives, await this.#api.get("/directives"));
        } else if (part === "appeals") {
          fill(this.appeals, await this.#api.get("/appeals?status=open"));
        } else if (part === "approvals") {
          fillApprovals(this.approvals, await this.#api.get("/approvals"));
        }
        this.#changed(part, "report");
      } catch (error) {
        console.warn("parlor: reloading", part, "failed", error);
      }
    });
    await Promise.all(jobs);
  }

  /** Coalesce changes into one `change` event per task, so a burst of events draws once. */
  #changed(...parts) {
    for (const part of parts) this.#pending.add(part);
    if (this.#changeTimer) return;
    this.#changeTimer = setTimeout(() => {
      this.#changeTimer = null;
      const detail = { parts: new Set(this.#pending) };
      this.#pending.clear();
      this.dispatchEvent(new CustomEvent("change", { detail }));
    }, 0);
  }
}

function fill(map, items) {
  map.clear();
  for (const item of items ?? []) map.set(item.id, item);
}

function fillApprovals(map, items) {
  map.clear();
  for (const item of items ?? []) map.set(`${item.contact}|${item.inmate}`, item);
}
