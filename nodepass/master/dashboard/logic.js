// The dashboard's logic without the page: building instance URLs from form fields, traffic
// rates from successive counters, search and filtering, and the formatting of figures.
// Nothing here touches the DOM, so the browser and `node --test` import the same module.

/** The id of the API key holder, which is not a tunnel and never listed. */
export const PSEUDO_ID = "********";

/** Log levels an instance URL may ask for (`info` is the default and is left out). */
export const LOG_LEVELS = ["info", "debug", "warn", "error", "event", "none"];

/** Seconds of traffic the chart keeps. */
export const HISTORY_SECONDS = 300;

const TARGET = /^(\[[0-9A-Fa-f:.]+\]|[^\s:/,[\]@?#]*):(\d{1,5})$/;
const HOST = /^(\[[0-9A-Fa-f:.]+\]|[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*|[^\s:/,[\]@?#]*)$/;
const DIGITS = /^\d+$/;

/** Split a comma-separated list of targets, trimming each and dropping empty ones. */
export function splitTargets(text) {
  return String(text ?? "")
    .split(",")
    .map((part) => part.trim())
    .filter((part) => part !== "");
}

function validPort(text) {
  if (!DIGITS.test(text)) return false;
  const port = Number(text);
  return port >= 1 && port <= 65535;
}

function hostPart(host) {
  // An IPv6 literal goes in brackets; a name, an IPv4 address or nothing goes as it is.
  if (host.includes(":") && !host.startsWith("[")) return `[${host}]`;
  return host;
}

function positive(fields, name, errors, label) {
  const value = String(fields[name] ?? "").trim();
  if (value === "") return "";
  if (!DIGITS.test(value) || Number(value) <= 0) {
    errors[name] = `${label} must be a whole number above 0`;
    return "";
  }
  return String(Number(value));
}

/**
 * Build a `server://` or `client://` URL from the create form's fields.
 *
 * Fields (all strings, or booleans for the switches): role, key (the tunnel key), host,
 * port, targets (comma-separated host:port), tls ("0", "1", "2"), crt, keyFile, mode
 * ("0", "1", "2"), log, type (server pool transport "0".."3"), min (client), max
 * (server), rate, slot, read (a duration such as "30s"), proxy, notcp, noudp.
 *
 * Parameters at their default are left out, so the URL is as short as the form allows.
 * Returns `{url, errors}`: `errors` maps a field name to what is wrong with it, and `url`
 * is "" while anything is.
 */
export function buildURL(fields) {
  const errors = {};
  const role = String(fields.role ?? "");
  if (role !== "server" && role !== "client") errors.role = "Choose server or client";
  const host = String(fields.host ?? "").trim();
  if (!HOST.test(host)) errors.host = "Not a host name or address";
  const port = String(fields.port ?? "").trim();
  if (!validPort(port)) errors.port = "A port from 1 to 65535";
  const targets = splitTargets(fields.targets);
  if (targets.length === 0) {
    errors.targets = "At least one target, as host:port";
  } else {
    const bad = targets.find((target) => {
      const match = TARGET.exec(target);
      return match === null || !validPort(match[2]);
    });
    if (bad !== undefined) errors.targets = `Not host:port: ${bad}`;
  }
  const params = [];
  const add = (name, value) => params.push(`${name}=${encodeURIComponent(value)}`);
  const tls = String(fields.tls ?? "0");
  if (role === "server" && (tls === "1" || tls === "2")) {
    add("tls", tls);
    if (tls === "2") {
      const crt = String(fields.crt ?? "").trim();
      const keyFile = String(fields.keyFile ?? "").trim();
      if (crt === "") errors.crt = "tls=2 needs a certificate file";
      if (keyFile === "") errors.keyFile = "tls=2 needs a key file";
      if (crt !== "") add("crt", crt);
      if (keyFile !== "") add("key", keyFile);
    }
  }
  const mode = String(fields.mode ?? "0");
  if (mode === "1" || mode === "2") add("mode", mode);
  const type = String(fields.type ?? "0");
  if (role === "server" && ["1", "2", "3"].includes(type)) add("type", type);
  const log = String(fields.log ?? "info");
  if (log !== "info" && LOG_LEVELS.includes(log)) add("log", log);
  const min = positive(fields, "min", errors, "Minimum pool");
  if (role === "client" && min !== "") add("min", min);
  const max = positive(fields, "max", errors, "Maximum pool");
  if (role === "server" && max !== "") add("max", max);
  const rate = positive(fields, "rate", errors, "Rate");
  if (rate !== "") add("rate", rate);
  const slot = positive(fields, "slot", errors, "Slots");
  if (slot !== "") add("slot", slot);
  const read = String(fields.read ?? "").trim();
  if (read !== "") {
    if (/^\d+(\.\d+)?(ms|s|m|h)$/.test(read)) add("read", read);
    else errors.read = "A duration such as 30s, 5m or 1h";
  }
  if (fields.proxy) add("proxy", "1");
  if (fields.notcp) add("notcp", "1");
  if (fields.noudp) add("noudp", "1");
  if (fields.notcp && fields.noudp) errors.noudp = "TCP and UDP cannot both be off";
  if (Object.keys(errors).length > 0) return { url: "", errors };
  const key = String(fields.key ?? "");
  const user = key === "" ? "" : `${encodeURIComponent(key)}@`;
  const query = params.length > 0 ? `?${params.join("&")}` : "";
  return { url: `${role}://${user}${hostPart(host)}:${port}/${targets.join(",")}${query}`, errors };
}

/**
 * The parts of an instance URL, for the instance page: role, tunnel address, targets and
 * the query parameters in order.  The tunnel key is never shown, only whether there is one.
 */
export function describeURL(url) {
  const text = String(url ?? "");
  const match = /^([a-z]+):\/\/(?:([^@/]*)@)?([^/?#]*)\/?([^?#]*)(?:\?([^#]*))?/.exec(text);
  if (match === null) return { role: "", hasKey: false, tunnel: "", targets: [], params: [] };
  const params = [];
  for (const pair of (match[5] ?? "").split("&")) {
    if (pair === "") continue;
    const at = pair.indexOf("=");
    const name = at < 0 ? pair : pair.slice(0, at);
    const value = at < 0 ? "" : pair.slice(at + 1);
    params.push([decodeComponent(name), decodeComponent(value)]);
  }
  return {
    role: match[1],
    hasKey: Boolean(match[2]),
    tunnel: match[3],
    targets: splitTargets(decodeComponent(match[4] ?? "")),
    params,
  };
}

function decodeComponent(text) {
  try {
    return decodeURIComponent(text.replace(/\+/g, " "));
  } catch {
    return text;
  }
}

/** An instance's traffic totals: TCP and UDP together, received and sent. */
export function totals(instance) {
  return {
    rx: Number(instance.tcprx || 0) + Number(instance.udprx || 0),
    tx: Number(instance.tcptx || 0) + Number(instance.udptx || 0),
  };
}

/**
 * Bytes per second between two readings `{time (ms), rx, tx}`, or null when no time passed.
 * A counter that went down (a reset) counts as no traffic rather than a negative rate.
 */
export function rateBetween(previous, current) {
  const seconds = (current.time - previous.time) / 1000;
  if (!(seconds > 0)) return null;
  return {
    rx: Math.max(0, current.rx - previous.rx) / seconds,
    tx: Math.max(0, current.tx - previous.tx) / seconds,
  };
}

/**
 * The traffic of one instance over the last `span` seconds: each reading of its counters
 * (from an event) adds a rate sample; older samples fall out.
 */
export class TrafficHistory {
  constructor(span = HISTORY_SECONDS) {
    this.span = span;
    this.samples = [];
    this.last = null;
  }

  /** Record the counters of `instance` seen at `time` (ms); return the new rate, if any. */
  add(instance, time) {
    const reading = { time, ...totals(instance) };
    const previous = this.last;
    if (previous !== null && time < previous.time) return null; // out of order: ignore
    this.last = reading;
    if (previous === null) return null;
    const rate = rateBetween(previous, reading);
    if (rate === null) return null;
    this.samples.push({ time, rx: rate.rx, tx: rate.tx });
    const oldest = time - this.span * 1000;
    while (this.samples.length > 0 && this.samples[0].time < oldest) this.samples.shift();
    return rate;
  }

  /** The latest rate, or zero before there are two readings. */
  current() {
    const sample = this.samples[this.samples.length - 1];
    return sample === undefined ? { rx: 0, tx: 0 } : { rx: sample.rx, tx: sample.tx };
  }

  /** The highest rate kept, either direction. */
  peak() {
    return this.samples.reduce((top, s) => Math.max(top, s.rx, s.tx), 0);
  }
}

/**
 * Parse the search box: `key=value` matches a tag exactly, `#key` (or `tag:key`) matches
 * instances with that tag, `status:running` their status, and any other word must appear
 * (ignoring case) in the alias, id, URL host part, or a tag key or value.
 */
export function parseQuery(text) {
  const query = { words: [], tags: [], status: "" };
  for (const token of String(text ?? "").trim().split(/\s+/)) {
    if (token === "") continue;
    const lower = token.toLowerCase();
    if (lower.startsWith("status:")) {
      query.status = lower.slice("status:".length);
    } else if (token.startsWith("#") && token.length > 1) {
      query.tags.push({ key: token.slice(1), value: null });
    } else if (lower.startsWith("tag:") && token.length > 4) {
      query.tags.push({ key: token.slice(4), value: null });
    } else if (token.indexOf("=") > 0) {
      const at = token.indexOf("=");
      query.tags.push({ key: token.slice(0, at), value: token.slice(at + 1) });
    } else {
      query.words.push(lower);
    }
  }
  return query;
}

/** Whether `instance` matches a parsed query and the status filter ("" for any). */
export function matches(instance, query, status = "") {
  const wanted = status || query.status;
  if (wanted && instance.status !== wanted) return false;
  const tags = instance.meta?.tags ?? {};
  for (const { key, value } of query.tags) {
    if (!Object.hasOwn(tags, key)) return false;
    if (value !== null && tags[key] !== value) return false;
  }
  const haystack = [
    instance.alias,
    instance.id,
    describeURL(instance.url).tunnel,
    ...Object.entries(tags).flat(),
  ]
    .join("\n")
    .toLowerCase();
  return query.words.every((word) => haystack.includes(word));
}

/** The instances (never the key holder) matching the search text and status, by alias then id. */
export function filterInstances(instances, text = "", status = "") {
  const query = parseQuery(text);
  return [...instances]
    .filter((instance) => instance.id !== PSEUDO_ID && matches(instance, query, status))
    .sort(
      (a, b) =>
        (a.alias || a.id).localeCompare(b.alias || b.id) || String(a.id).localeCompare(b.id),
    );
}

/**
 * Parse the tags field: `key=value` pairs separated by commas.  Returns `{tags, error}`;
 * `error` is "" when the text is fine.
 */
export function parseTags(text) {
  const tags = {};
  for (const part of String(text ?? "").split(",")) {
    const item = part.trim();
    if (item === "") continue;
    const at = item.indexOf("=");
    if (at <= 0) return { tags: {}, error: `Not key=value: ${item}` };
    const key = item.slice(0, at).trim();
    if (Object.hasOwn(tags, key)) return { tags: {}, error: `Tag ${key} given twice` };
    tags[key] = item.slice(at + 1).trim();
  }
  return { tags, error: "" };
}

/** Tags as the tags field shows them. */
export function formatTags(tags) {
  return Object.entries(tags ?? {})
    .map(([key, value]) => `${key}=${value}`)
    .join(", ");
}

const UNITS = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];

/** A byte count for people: 0 B, 999 B, 1.5 KiB, 12 MiB. */
export function formatBytes(value) {
  let amount = Math.max(0, Number(value) || 0);
  let unit = 0;
  while (amount >= 1024 && unit < UNITS.length - 1) {
    amount /= 1024;
    unit += 1;
  }
  if (unit === 0) return `${Math.round(amount)} B`;
  return `${amount < 10 ? amount.toFixed(1) : Math.round(amount)} ${UNITS[unit]}`;
}

/** A rate in bytes per second for people. */
export function formatRate(value) {
  return `${formatBytes(value)}/s`;
}

/** A duration in seconds for people: 42s, 5m 3s, 2h 10m, 3d 4h. */
export function formatDuration(seconds) {
  let rest = Math.max(0, Math.floor(Number(seconds) || 0));
  const days = Math.floor(rest / 86400);
  rest -= days * 86400;
  const hours = Math.floor(rest / 3600);
  rest -= hours * 3600;
  const minutes = Math.floor(rest / 60);
  const secs = rest - minutes * 60;
  if (days > 0) return `${days}d ${hours}h`;
  if (hours > 0) return `${hours}h ${minutes}m`;
  if (minutes > 0) return `${minutes}m ${secs}s`;
  return `${secs}s`;
}

/**
 * Apply one event of the stream (`{type, time, instance, logs}`) to `instances`, a Map
 * from id to instance object.  Returns what the page must redraw: `{kind, id, previous,
 * instance, before}`, where `before` is the object it replaces and `previous` its status
 * (both undefined for a new instance); the key holder is ignored (`kind` "ignored").
 */
export function applyEvent(instances, event) {
  const instance = event.instance;
  if (event.type === "shutdown") return { kind: "shutdown", id: "", previous: undefined };
  if (instance == null || instance.id === PSEUDO_ID) {
    return { kind: "ignored", id: "", previous: undefined };
  }
  const before = instances.get(instance.id);
  const previous = before?.status;
  if (event.type === "delete") {
    instances.delete(instance.id);
    return { kind: "delete", id: instance.id, previous, instance };
  }
  if (event.type === "log") {
    // A log event carries the instance too, but its figures are no news.
    return { kind: "log", id: instance.id, previous, instance: before ?? instance };
  }
  instances.set(instance.id, instance);
  const kind = before === undefined ? "create" : "update";
  return { kind, id: instance.id, previous, instance, before };
}
