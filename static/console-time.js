// Times and durations as staff read them: countdowns, "in 2 h 05 min",
// short local date-times, and the durations a directive may be issued for.

/** Durations offered for a directive; "custom" asks for a number and a unit. */
export const DURATIONS = [
  { value: "1800", label: "30 minutes" },
  { value: "7200", label: "2 hours" },
  { value: "86400", label: "1 day" },
  { value: "604800", label: "7 days" },
  { value: "custom", label: "Custom…" },
];
export const UNITS = [
  { value: "60", label: "minutes" },
  { value: "3600", label: "hours" },
  { value: "86400", label: "days" },
];
/** The server's default maximum (SPEC §4); the server has the last word. */
export const MAX_DIRECTIVE_SECONDS = 30 * 86400;

/** 05:09 under an hour, 1:05:09 under a day, else "2 d 4 h". */
export function formatTimeLeft(ms) {
  const total = Math.max(0, Math.ceil(ms / 1000));
  const days = Math.floor(total / 86400);
  const hours = Math.floor((total % 86400) / 3600);
  const minutes = Math.floor((total % 3600) / 60);
  const seconds = total % 60;
  const two = (n) => String(n).padStart(2, "0");
  if (days) return `${days} d ${hours} h`;
  if (hours) return `${hours}:${two(minutes)}:${two(seconds)}`;
  return `${two(minutes)}:${two(seconds)}`;
}

/** Words for a length of time: "30 minutes", "2 hours", "1 day 6 hours". */
export function formatLength(seconds) {
  const s = Math.max(0, Math.round(seconds));
  const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;
  if (s < 60) return plural(s, "second");
  // Round once, to the unit shown last, then split: never "2 hours 60 minutes".
  if (s < 86400) {
    const minutes = Math.round(s / 60);
    const h = Math.floor(minutes / 60);
    const m = minutes % 60;
    if (!h) return plural(m, "minute");
    return m ? `${plural(h, "hour")} ${plural(m, "minute")}` : plural(h, "hour");
  }
  const hours = Math.round(s / 3600);
  const d = Math.floor(hours / 24);
  const h = hours % 24;
  return h ? `${plural(d, "day")} ${plural(h, "hour")}` : plural(d, "day");
}

/** Whole minutes until `iso`, rounded up (for "lapses in N minutes"). */
export function minutesUntil(iso, now = Date.now()) {
  return Math.max(0, Math.ceil((Date.parse(iso) - now) / 60000));
}

/** A short local date and time: "1 Dec 2026, 14:05". */
export function formatWhen(iso) {
  const date = new Date(iso);
  if (!iso || Number.isNaN(date.getTime())) return "—";
  return new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" }).format(date);
}

/** A local time of day with seconds, for the audit log. */
export function formatStamp(iso) {
  const date = new Date(iso);
  if (!iso || Number.isNaN(date.getTime())) return String(iso ?? "");
  return new Intl.DateTimeFormat(undefined, { dateStyle: "short", timeStyle: "medium" }).format(date);
}

/** RFC 3339 UTC, as the API wants times. */
export function toRfc3339(ms) {
  return new Date(ms).toISOString().replace(/\.\d{3}Z$/, "Z");
}

/** A time of day, "14:05", in the reader's locale and time zone. */
export function formatClock(iso) {
  const date = new Date(iso);
  if (!iso || Number.isNaN(date.getTime())) return "—";
  return new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" }).format(date);
}

/** A day as staff read it: "Tuesday 1 December 2026". */
export function formatDay(date) {
  return new Intl.DateTimeFormat(undefined, { weekday: "long", day: "numeric", month: "long", year: "numeric" }).format(date);
}

/** Local midnight of the day `date` falls in. */
export function startOfDay(date) {
  return new Date(date.getFullYear(), date.getMonth(), date.getDate());
}

/** The value of an <input type="date"> for a local day: "2026-12-01". */
export function dayKey(date) {
  const two = (n) => String(n).padStart(2, "0");
  return `${date.getFullYear()}-${two(date.getMonth() + 1)}-${two(date.getDate())}`;
}

/** Local midnight of an <input type="date"> value, or null. */
export function fromDayKey(key) {
  const match = /^(\d{4})-(\d\d)-(\d\d)$/.exec(key ?? "");
  return match ? new Date(Number(match[1]), Number(match[2]) - 1, Number(match[3])) : null;
}

/** "HH:MM" of an <input type="time"> for a moment. */
export function timeKey(ms) {
  const date = new Date(ms);
  const two = (n) => String(n).padStart(2, "0");
  return `${two(date.getHours())}:${two(date.getMinutes())}`;
}

/** The moment of a local day and an <input type="time"> value, or NaN. */
export function atTime(day, time) {
  const match = /^(\d\d):(\d\d)$/.exec(time ?? "");
  if (!day || !match) return NaN;
  return new Date(day.getFullYear(), day.getMonth(), day.getDate(), Number(match[1]), Number(match[2])).getTime();
}

/** How long ago or until, in words: "in 2 h 10 min", "5 min ago", "now". */
export function formatFromNow(ms, now = Date.now()) {
  const diff = Math.round((ms - now) / 60000);
  if (diff === 0) return ms > now ? "in a minute" : "just now";
  const minutes = Math.abs(diff);
  const days = Math.floor(minutes / 1440);
  const hours = Math.floor((minutes % 1440) / 60);
  const rest = minutes % 60;
  const words = days ? `${days} d ${hours} h` : hours ? `${hours} h${rest ? ` ${rest} min` : ""}` : `${rest} min`;
  return diff > 0 ? `in ${words}` : `${words} ago`;
}

/** Replace RFC 3339 times inside a server message with short local ones ("1 Dec 2026, 14:05"). */
export function withLocalTimes(text) {
  return String(text ?? "").replace(/\d{4}-\d\d-\d\dT\d\d:\d\d(?::\d\d(?:\.\d+)?)?(?:Z|[+-]\d\d:\d\d)/g, formatWhen);
}
