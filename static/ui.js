// Words and numbers shown to people: countdowns, dates, and why a call ended.
// Pure functions plus a few small DOM helpers; no state, no network.

/** The last five minutes of a visit are shown in a warning colour. */
export const WARNING_MS = 5 * 60 * 1000;

/** Time left as mm:ss (minutes may exceed 59 for long visits). */
export function formatCountdown(ms) {
  const total = Math.max(0, Math.ceil(ms / 1000));
  const minutes = Math.floor(total / 60);
  const seconds = total % 60;
  return `${String(minutes).padStart(2, "0")}:${String(seconds).padStart(2, "0")}`;
}

/** A date and time in the reader's own language and time zone. */
export function formatDateTime(iso) {
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return String(iso ?? "");
  return new Intl.DateTimeFormat(undefined, { dateStyle: "full", timeStyle: "short" }).format(date);
}

/** A time of day (today's visits) in the reader's locale. */
export function formatTime(iso) {
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return String(iso ?? "");
  return new Intl.DateTimeFormat(undefined, { timeStyle: "short" }).format(date);
}

/**
 * When a visit is, for its family: "Today 14:00", "Tomorrow 09:30", or
 * "Friday 4 December, 14:00", in the reader's language and time zone.
 */
export function formatVisitDay(iso, now = new Date()) {
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return String(iso ?? "");
  const day = (d) => new Date(d.getFullYear(), d.getMonth(), d.getDate()).getTime();
  const days = Math.round((day(date) - day(now)) / 86_400_000);
  const time = formatTime(iso);
  if (days === 0) return `Today ${time}`;
  if (days === 1) return `Tomorrow ${time}`;
  if (days === -1) return `Yesterday ${time}`;
  const long = new Intl.DateTimeFormat(undefined, { weekday: "long", day: "numeric", month: "long", ...(date.getFullYear() !== now.getFullYear() ? { year: "numeric" } : {}) }).format(date);
  return `${long}, ${time}`;
}

/** How long until a moment: "in 2 h 10 min", "in 5 min", "in less than a minute". */
export function formatIn(ms) {
  if (ms <= 0) return "now";
  const minutes = Math.ceil(ms / 60_000);
  if (ms < 60_000) return "in less than a minute";
  const days = Math.floor(minutes / 1440);
  const hours = Math.floor((minutes % 1440) / 60);
  const rest = minutes % 60;
  if (days) return `in ${days} day${days === 1 ? "" : "s"}${hours ? ` ${hours} h` : ""}`;
  if (hours) return `in ${hours} h${rest ? ` ${rest} min` : ""}`;
  return `in ${rest} min`;
}

/** Replace RFC 3339 times inside a server message with the reader's local time. */
export function localizeTimes(text) {
  return String(text ?? "").replace(/\d{4}-\d\d-\d\dT\d\d:\d\d(?::\d\d(?:\.\d+)?)?(?:Z|[+-]\d\d:\d\d)/g, formatDateTime);
}

/** "Jane", "Jane and Sam", "Jane, Sam and Lee". */
export function listNames(names) {
  const clean = names.filter(Boolean);
  if (clean.length <= 1) return clean.join("");
  return `${clean.slice(0, -1).join(", ")} and ${clean[clean.length - 1]}`;
}

/**
 * Turn how a call ended into plain words.
 *
 * `ending` comes from CallClient's `ended` event: {kind, reason, code, message, directive}.
 * `audience` is "family" or "kiosk": the kiosk user cannot fetch a new link.
 * Returns {title, detail, directive, canRejoin}.
 */
export function describeEnd(ending, audience = "family") {
  const { reason = "", code, message = "", directive = null } = ending;
  const kiosk = audience === "kiosk";

  if (ending.kind === "unsupported") {
    return {
      title: "This browser cannot make the video call.",
      detail: kiosk ? "Please tell a member of staff." : message,
      directive,
      canRejoin: false,
    };
  }

  if (directive || reason.startsWith("directive:")) {
    return {
      title: "This call was stopped by facility staff.",
      detail: directive?.reason || message,
      directive,
      canRejoin: false,
    };
  }
  if (reason === "approval-withdrawn" || ending.errorCode === "not-approved") {
    const during = ending.kind === "terminated";
    return {
      title: kiosk ? "This visit cannot go on." : during ? "The facility ended this call." : "You cannot join this visit.",
      detail: kiosk ? "Please tell a member of staff." : message || "The facility has withdrawn your approval to visit.",
      directive,
      canRejoin: false,
    };
  }
  if (reason === "guardian-left") {
    return {
      title: "The call ended because your guardian left.",
      detail: message || "You can join again when your guardian is back in the call.",
      directive,
      canRejoin: true,
    };
  }
  if (ending.errorCode === "guardian-required") {
    return { title: "You cannot join this visit without your guardian.", detail: message, directive, canRejoin: false };
  }
  if (ending.errorCode === "visit-cancelled" || /cancelled this visit/.test(message)) {
    return { title: "This visit was cancelled.", detail: message, directive, canRejoin: false };
  }
  if (reason === "visit-ended" || code === 4410) {
    return { title: "Your visit time is over.", detail: "Thank you for visiting.", directive, canRejoin: false };
  }
  if (reason === "replaced" || code === 4409) {
    return {
      title: kiosk ? "This visit was opened on another screen." : "You joined this call from another window or device.",
      detail: kiosk ? "" : "The call goes on there. You can close this window.",
      directive,
      canRejoin: false,
    };
  }
  if (reason === "left") {
    return { title: "You left the call.", detail: "", directive, canRejoin: true };
  }
  if (reason.startsWith("operator:")) {
    return { title: "Facility staff ended this call.", detail: message, directive, canRejoin: false };
  }
  if (code === 4401) {
    return {
      title: kiosk
        ? "This kiosk is not signed in. Please tell a member of staff."
        : "Your link has expired or is not valid. Ask the facility for a new link.",
      detail: "",
      directive,
      canRejoin: false,
    };
  }
  if (ending.errorCode === "not-open-yet") {
    return {
      title: "Your visit has not started yet.",
      detail: `${localizeTimes(message)}. Please join again closer to the start time.`.replace(/^\w/, (c) => c.toUpperCase()),
      directive,
      canRejoin: true,
    };
  }
  if (code === 4403) {
    return { title: "You cannot join this call right now.", detail: message, directive, canRejoin: false };
  }
  if (ending.kind === "network") {
    return {
      title: "We lost the connection to the call.",
      detail: kiosk
        ? "The visit could not be reconnected. Please tell a member of staff if this keeps happening."
        : "We tried to reconnect several times. Check your internet connection, then select Join again.",
      directive,
      canRejoin: true,
    };
  }
  if (reason === "error") {
    return { title: "The call ended because of a problem.", detail: message, directive, canRejoin: true };
  }
  return { title: "The call has ended.", detail: message, directive, canRejoin: true };
}

/**
 * Build an element: h("p", {class: "note", id: "x"}, "text", child).
 * Attributes with value false/null are skipped; true sets an empty attribute.
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === false || value === null || value === undefined) continue;
    el.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/**
 * Put `element` in `container` right after `previous` (first when `previous`
 * is null), leaving it alone if it is already there.
 */
export function placeAfter(container, previous, element) {
  const want = previous ? previous.nextSibling : container.firstChild;
  if (want === element) return;
  if (previous) previous.after(element);
  else container.prepend(element);
}

/** Put `track` into `stream` in place of any track of the same kind. */
export function putTrack(stream, track) {
  for (const old of stream.getTracks().filter((t) => t.kind === track.kind)) stream.removeTrack(old);
  stream.addTrack(track);
}

/**
 * Remove the video tile `id` ({element, video}) from `tiles` and the page.
 * Returns false if there was no such tile.
 */
export function removeTile(tiles, id) {
  const tile = tiles.get(id);
  if (!tile) return false;
  tile.video.srcObject = null;
  tile.element.remove();
  tiles.delete(id);
  return true;
}
