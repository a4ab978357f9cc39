// The NodePass dashboard: the page's wiring.  The logic it relies on lives in logic.js
// (tested under node); this module talks to the API with the session cookie and the CSRF
// token, follows the event stream and keeps the DOM up to date.  The API key is typed once
// into the sign-in form and sent in one POST; it is never stored by the page.

import { drawTraffic } from "./chart.js";
import {
  HISTORY_SECONDS,
  PSEUDO_ID,
  TrafficHistory,
  applyEvent,
  buildURL,
  describeURL,
  filterInstances,
  formatBytes,
  formatDuration,
  formatRate,
  formatTags,
  parseTags,
  totals,
} from "./logic.js";

const API = location.pathname.replace(/\/dashboard\/[^/]*$/, "");
const LOG_LINES = 200;
const CREATE_FIELDS = [
  "role", "mode", "host", "port", "targets", "key", "tls", "crt", "keyFile", "log", "type",
  "min", "max", "rate", "slot", "read",
];
const CREATE_SWITCHES = ["proxy", "notcp", "noudp"];

const state = {
  csrf: "",
  instances: new Map(),
  histories: new Map(),
  logs: new Map(),
  rows: new Map(),
  source: null,
  retry: null,
  retryDelay: 1000,
  view: "",
  detailId: "",
  connectionsSupported: true,
};

const $ = (id) => document.getElementById(id);

function element(tag, properties = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(properties)) {
    if (name === "dataset") Object.assign(node.dataset, value);
    else if (name in node && !name.startsWith("aria")) node[name] = value;
    else node.setAttribute(name, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function announce(text) {
  const announcer = $("announcer");
  announcer.textContent = "";
  // A fresh text node each time, so screen readers announce a repeated message too.
  requestAnimationFrame(() => {
    announcer.textContent = text;
  });
}

// -- the API ---------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(method, path, body) {
  const headers = {};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && method !== "HEAD" && state.csrf) headers["X-CSRF-Token"] = state.csrf;
  let response;
  try {
    response = await fetch(API + path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "same-origin",
      cache: "no-store",
    });
  } catch (error) {
    throw new ApiError(0, `The master cannot be reached (${error.message})`);
  }
  const text = await response.text();
  let value = null;
  if (text !== "") {
    try {
      value = JSON.parse(text);
    } catch {
      value = null;
    }
  }
  if (!response.ok) {
    const message = value !== null && typeof value.error === "string" ? value.error : text.trim();
    if (response.status === 401 && !path.startsWith("/dashboard/session")) {
      signedOut("Your session has ended; sign in again.");
    }
    throw new ApiError(response.status, message || `HTTP ${response.status}`);
  }
  return value;
}

function showError(id, error) {
  $(id).textContent = error instanceof ApiError || error instanceof Error ? error.message : "";
}

// -- signing in and out ----------------------------------------------------------------------

async function start() {
  bindStaticHandlers();
  try {
    const session = await api("GET", "/dashboard/session");
    signedIn(session);
  } catch {
    signedOut("");
  }
}

function signedIn(session) {
  state.csrf = session.csrf;
  $("nav").hidden = false;
  $("signout").hidden = false;
  connectStream();
  route();
}

function signedOut(message) {
  state.csrf = "";
  if (state.source !== null) state.source.close();
  state.source = null;
  clearTimeout(state.retry);
  state.instances.clear();
  state.histories.clear();
  state.logs.clear();
  state.rows.clear();
  $("instances-body").replaceChildren();
  $("nav").hidden = true;
  $("signout").hidden = true;
  setStream("", "");
  showView("signin");
  $("signin-error").textContent = message;
  $("signin-key").focus();
}

async function signIn(event) {
  event.preventDefault();
  const input = $("signin-key");
  const key = input.value;
  $("signin-error").textContent = "";
  if (key === "") {
    $("signin-error").textContent = "Enter the API key.";
    input.setAttribute("aria-invalid", "true");
    return;
  }
  try {
    const session = await api("POST", "/dashboard/session", { key });
    input.value = "";
    input.removeAttribute("aria-invalid");
    signedIn(session);
    announce("Signed in");
  } catch (error) {
    input.setAttribute("aria-invalid", "true");
    const text =
      error.status === 401
        ? `Sign-in refused: ${error.message}.`
        : error.status === 429
          ? `${error.message}.`
          : error.message;
    $("signin-error").textContent = text;
    input.select();
  }
}

async function signOut() {
  try {
    await api("DELETE", "/dashboard/session");
  } finally {
    signedOut("");
    announce("Signed out");
  }
}

// -- the event stream ------------------------------------------------------------------------

function setStream(text, kind) {
  const stream = $("stream");
  stream.textContent = text;
  stream.className = `stream ${kind}`;
}

function connectStream() {
  if (state.source !== null) state.source.close();
  clearTimeout(state.retry);
  const source = new EventSource(`${API}/events`);
  state.source = source;
  setStream("Connecting…", "down");
  source.addEventListener("open", () => {
    state.retryDelay = 1000;
    setStream("Live", "live");
    reconcile();
  });
  source.addEventListener("instance", (message) => {
    let event;
    try {
      event = JSON.parse(message.data);
    } catch {
      return;
    }
    handleEvent(event);
  });
  source.addEventListener("error", () => {
    if (state.source !== source) return;
    setStream("Reconnecting…", "down");
    if (source.readyState === EventSource.CLOSED) {
      // The browser gave up (the master refused or went away): check the session, then
      // try again with a growing delay.
      state.retry = setTimeout(recover, state.retryDelay);
      state.retryDelay = Math.min(state.retryDelay * 2, 30000);
    }
  });
}

async function recover() {
  try {
    await api("GET", "/dashboard/session");
  } catch (error) {
    if (error.status === 401) {
      // Signed out elsewhere, expired, or the key was regenerated.
      signedOut("Your session has ended; sign in again.");
    } else {
      state.retry = setTimeout(recover, state.retryDelay);
      state.retryDelay = Math.min(state.retryDelay * 2, 30000);
    }
    return;
  }
  if (state.csrf) connectStream();
}

async function reconcile() {
  // After a (re)connection the initial events bring every instance; one list drops the
  // ones deleted while the stream was down.
  let list;
  try {
    list = await api("GET", "/instances");
  } catch {
    return;
  }
  const ids = new Set(list.map((instance) => instance.id));
  for (const id of [...state.instances.keys()]) {
    if (!ids.has(id)) {
      state.instances.delete(id);
      removeRow(id);
    }
  }
  for (const instance of list) {
    if (instance.id !== PSEUDO_ID && !state.instances.has(instance.id)) {
      state.instances.set(instance.id, instance);
    }
  }
  renderList();
}

function handleEvent(event) {
  const change = applyEvent(state.instances, event);
  if (change.kind === "ignored" || change.kind === "shutdown") return;
  const { id, instance } = change;
  if (change.kind === "log") {
    addLog(id, event.logs);
    return;
  }
  if (change.kind === "delete") {
    state.histories.delete(id);
    state.logs.delete(id);
    removeRow(id);
    announce(`${instance.alias || id} was deleted`);
    if (state.view === "instance" && state.detailId === id) {
      $("d-error").textContent = "This instance was deleted.";
    }
    updateCount();
    return;
  }
  let history = state.histories.get(id);
  if (history === undefined) {
    history = new TrafficHistory(HISTORY_SECONDS);
    state.histories.set(id, history);
  }
  const time = Date.parse(event.time);
  history.add(instance, Number.isNaN(time) ? Date.now() : time);
  if (change.previous !== undefined && change.previous !== instance.status) {
    announce(`${instance.alias || id} is now ${instance.status}`);
  }
  refreshRow(instance, change.before);
  if (state.view === "instance" && state.detailId === id) renderDetail();
}

function addLog(id, line) {
  let lines = state.logs.get(id);
  if (lines === undefined) {
    lines = [];
    state.logs.set(id, lines);
  }
  lines.push(line);
  if (lines.length > LOG_LINES) lines.shift();
  if (state.view === "instance" && state.detailId === id) {
    const list = $("d-logs");
    const atBottom = list.scrollTop + list.clientHeight >= list.scrollHeight - 4;
    list.append(element("li", { textContent: line }));
    while (list.childElementCount > LOG_LINES) list.firstElementChild.remove();
    if (atBottom) list.scrollTop = list.scrollHeight;
  }
}

// -- views -----------------------------------------------------------------------------------

function showView(name) {
  state.view = name;
  for (const view of ["loading", "signin", "instances", "instance", "master"]) {
    $(`view-${view}`).hidden = view !== name;
  }
  for (const [link, view] of [
    ["nav-instances", "instances"],
    ["nav-master", "master"],
  ]) {
    if (view === name || (name === "instance" && view === "instances")) {
      $(link).setAttribute("aria-current", "page");
    } else {
      $(link).removeAttribute("aria-current");
    }
  }
}

function route() {
  if (!state.csrf) return;
  const hash = location.hash || "#/instances";
  const match = /^#\/instance\/([^/]+)$/.exec(hash);
  if (match !== null) {
    openDetail(decodeURIComponent(match[1]));
  } else if (hash === "#/master") {
    showView("master");
    document.title = "Master · NodePass dashboard";
    loadMaster();
  } else {
    showView("instances");
    document.title = "Instances · NodePass dashboard";
    renderList();
  }
}

// -- the instance list -----------------------------------------------------------------------

function describeRoute(instance) {
  const parts = describeURL(instance.url);
  return `${parts.tunnel || "?"} → ${parts.targets.join(", ") || "?"}`;
}

function actionButtons(instance, container) {
  const name = instance.alias || instance.id;
  const running = instance.status === "running";
  const buttons = [
    ["start", "Start", !running && instance.status !== "error"],
    ["stop", "Stop", instance.status !== "stopped"],
    ["restart", "Restart", true],
    ["reset", "Reset traffic", true],
  ];
  const existing = container.querySelectorAll("button[data-action]");
  if (existing.length === 0) {
    for (const [action, label] of buttons) {
      container.append(
        element("button", {
          type: "button",
          textContent: label,
          dataset: { action, id: instance.id },
        }),
      );
    }
    container.append(
      element("button", {
        type: "button",
        className: "danger",
        textContent: "Delete",
        dataset: { action: "delete", id: instance.id },
      }),
    );
  }
  for (const button of container.querySelectorAll("button[data-action]")) {
    const spec = buttons.find(([action]) => action === button.dataset.action);
    button.disabled = spec !== undefined && !spec[2];
    button.setAttribute("aria-label", `${button.textContent} ${name}`);
  }
}

function newRow(id) {
  const row = element("tr", { dataset: { id } });
  const cell = (label, className = "") => element("td", { className, dataset: { label } });
  const nameCell = cell("Instance");
  nameCell.append(element("a", { href: `#/instance/${encodeURIComponent(id)}` }));
  nameCell.append(element("span", { className: "sub" }));
  const statusCell = cell("Status");
  statusCell.append(element("span", { className: "badge" }));
  const actions = cell("Actions");
  actions.append(element("div", { className: "actions" }));
  row.append(
    nameCell,
    statusCell,
    cell("Route", "route"),
    cell("Receive", "num"),
    cell("Send", "num"),
    cell("Tags"),
    actions,
  );
  return row;
}

function fillRow(row, instance) {
  const [nameCell, statusCell, routeCell, rxCell, txCell, tagsCell, actionsCell] = row.cells;
  const link = nameCell.firstElementChild;
  link.textContent = instance.alias || instance.id;
  nameCell.lastElementChild.textContent = `${instance.type} · ${instance.id}`;
  const badge = statusCell.firstElementChild;
  badge.textContent = instance.status;
  badge.className = `badge ${instance.status}`;
  routeCell.textContent = describeRoute(instance);
  const history = state.histories.get(instance.id);
  const rate = history ? history.current() : { rx: 0, tx: 0 };
  const total = totals(instance);
  rxCell.textContent = formatRate(rate.rx);
  rxCell.append(element("span", { className: "sub", textContent: formatBytes(total.rx) }));
  txCell.textContent = formatRate(rate.tx);
  txCell.append(element("span", { className: "sub", textContent: formatBytes(total.tx) }));
  tagsCell.replaceChildren(
    ...Object.entries(instance.meta?.tags ?? {}).map(([key, value]) =>
      element("span", { className: "tag", textContent: `${key}=${value}` }),
    ),
  );
  actionButtons(instance, actionsCell.firstElementChild);
}

function renderList() {
  if (state.view !== "instances") return;
  const body = $("instances-body");
  const shown = filterInstances(state.instances.values(), $("search").value, $("status-filter").value);
  const wanted = [];
  for (const instance of shown) {
    let row = state.rows.get(instance.id);
    if (row === undefined) {
      row = newRow(instance.id);
      state.rows.set(instance.id, row);
    }
    fillRow(row, instance);
    wanted.push(row);
  }
  // Reorder only when needed, so focus stays on a button the user is on.
  const current = [...body.rows];
  if (current.length !== wanted.length || current.some((row, n) => row !== wanted[n])) {
    for (const row of current) if (!wanted.includes(row)) row.remove();
    wanted.forEach((row, n) => {
      if (body.rows[n] !== row) body.insertBefore(row, body.rows[n] ?? null);
    });
  }
  updateCount(shown.length);
}

/**
 * Redraw after one instance changed: only its row when it stays where it was (the usual
 * traffic update), the whole list when it may move, appear or disappear.
 */
function refreshRow(instance, before) {
  if (state.view !== "instances") return;
  const row = state.rows.get(instance.id);
  const same =
    before !== undefined &&
    before.alias === instance.alias &&
    before.status === instance.status &&
    JSON.stringify(before.meta?.tags) === JSON.stringify(instance.meta?.tags) &&
    before.url === instance.url;
  if (row !== undefined && row.isConnected && same) fillRow(row, instance);
  else renderList();
}

function updateCount(shown) {
  const all = [...state.instances.keys()].filter((id) => id !== PSEUDO_ID).length;
  const count = shown ?? $("instances-body").rows.length;
  const text = `${count} of ${all} instances shown`;
  // Only on a change: the line is a live region, and the same words need no announcing.
  if ($("instances-count").textContent !== text) $("instances-count").textContent = text;
  $("instances-empty").hidden = count !== 0;
}

function removeRow(id) {
  const row = state.rows.get(id);
  if (row !== undefined) row.remove();
  state.rows.delete(id);
}

function confirmDelete(name) {
  const dialog = $("confirm");
  $("confirm-text").textContent = `Delete ${name}? It stops and its settings are gone.`;
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.returnValue = "cancel";
    dialog.showModal();
    $("confirm-cancel").focus();
  });
}

async function act(id, action, errorId) {
  const instance = state.instances.get(id);
  const name = instance?.alias || id;
  $(errorId).textContent = "";
  try {
    if (action === "delete") {
      if (!(await confirmDelete(name))) return;
      await api("DELETE", `/instances/${encodeURIComponent(id)}`);
      announce(`${name} deleted`);
      if (state.view === "instance") location.hash = "#/instances";
      return;
    }
    await api("PATCH", `/instances/${encodeURIComponent(id)}`, { action });
    announce(`${action} sent to ${name}`);
  } catch (error) {
    showError(errorId, error);
  }
}

// -- creating --------------------------------------------------------------------------------

function createFields() {
  const form = $("create-form");
  const fields = {};
  for (const name of CREATE_FIELDS) fields[name] = form.elements[name].value;
  for (const name of CREATE_SWITCHES) fields[name] = form.elements[name].checked;
  return fields;
}

function updatePreview() {
  const fields = createFields();
  $("c-crt-field").hidden = fields.tls !== "2";
  $("c-keyfile-field").hidden = fields.tls !== "2";
  const { url, errors } = buildURL(fields);
  $("c-url").textContent = url || "(incomplete)";
  return { url, errors };
}

function markFields(errors, touchedOnly) {
  const form = $("create-form");
  for (const name of [...CREATE_FIELDS, ...CREATE_SWITCHES]) {
    const holder = $(`c-${name}-error`);
    const input = form.elements[name];
    const message = errors[name] ?? "";
    const show = !touchedOnly || input.dataset.touched === "yes";
    if (holder !== null) holder.textContent = show ? message : "";
    if (show && message) input.setAttribute("aria-invalid", "true");
    else input.removeAttribute("aria-invalid");
  }
}

async function create(event) {
  event.preventDefault();
  const { url, errors } = updatePreview();
  markFields(errors, false);
  $("create-error").textContent = "";
  if (!url) {
    $("create-error").textContent = "Some fields need attention.";
    const first = Object.keys(errors)[0];
    $(`c-${first}`)?.focus();
    return;
  }
  const alias = $("c-alias").value.trim();
  try {
    const instance = await api("POST", "/instances", alias ? { url, alias } : { url });
    if (!state.instances.has(instance.id)) state.instances.set(instance.id, instance);
    renderList();
    announce(`Created ${instance.alias || instance.id}`);
    $("create-form").reset();
    for (const input of $("create-form").elements) delete input.dataset.touched;
    updatePreview();
  } catch (error) {
    $("create-error").textContent = `The master refused: ${error.message}`;
  }
}

// -- one instance ----------------------------------------------------------------------------

async function openDetail(id) {
  const first = state.detailId !== id || state.view !== "instance";
  state.detailId = id;
  showView("instance");
  if (first) {
    $("d-error").textContent = "";
    $("d-edit-error").textContent = "";
    $("d-actions").replaceChildren();
    $("d-logs").replaceChildren(
      ...(state.logs.get(id) ?? []).map((line) => element("li", { textContent: line })),
    );
    if (!state.instances.has(id)) {
      try {
        const instance = await api("GET", `/instances/${encodeURIComponent(id)}`);
        state.instances.set(id, instance);
      } catch (error) {
        showError("d-error", error);
        return;
      }
    }
    fillEditForms(state.instances.get(id));
    loadConnections();
  }
  renderDetail();
  $("instance-title").focus?.();
}

function fillEditForms(instance) {
  $("e-alias").value = instance.alias;
  $("e-tags").value = formatTags(instance.meta?.tags);
  $("e-restart").checked = instance.restart;
  $("e-url").value = instance.url;
}

function definitions(target, pairs) {
  target.replaceChildren(
    ...pairs.flatMap(([term, value]) => [
      element("dt", { textContent: term }),
      element("dd", { textContent: String(value) }),
    ]),
  );
}

function renderDetail() {
  const instance = state.instances.get(state.detailId);
  if (instance === undefined) return;
  const name = instance.alias || instance.id;
  $("instance-title").textContent = name;
  document.title = `${name} · NodePass dashboard`;
  const badge = $("d-status");
  badge.textContent = instance.status;
  badge.className = `badge ${instance.status}`;
  $("d-id").textContent = `${instance.type} · ${instance.id}`;
  actionButtons(instance, $("d-actions"));
  const history = state.histories.get(instance.id) ?? new TrafficHistory(HISTORY_SECONDS);
  const rate = history.current();
  const total = totals(instance);
  definitions($("d-figures"), [
    ["Receive rate", formatRate(rate.rx)],
    ["Send rate", formatRate(rate.tx)],
    ["TCP received", formatBytes(instance.tcprx)],
    ["TCP sent", formatBytes(instance.tcptx)],
    ["UDP received", formatBytes(instance.udprx)],
    ["UDP sent", formatBytes(instance.udptx)],
    ["Total received", `${total.rx} bytes`],
    ["Total sent", `${total.tx} bytes`],
    ["Pool connections", instance.pool],
    ["Ping", `${instance.ping} ms`],
    ["TCP connections", instance.tcps],
    ["UDP sessions", instance.udps],
    ["Run mode", instance.mode],
    ["Restart flag", instance.restart ? "on: starts with the master" : "off"],
  ]);
  const parts = describeURL(instance.url);
  definitions($("d-params"), [
    ["Role", parts.role],
    ["Tunnel address", parts.tunnel || "(none)"],
    ["Tunnel key", parts.hasKey ? "set (hidden)" : "derived from the port"],
    ["Targets", parts.targets.join(", ") || "(none)"],
    ...parts.params.map(([key, value]) => [key, value]),
    ["Tags", formatTags(instance.meta?.tags) || "(none)"],
  ]);
  const canvas = $("d-chart");
  drawTraffic(canvas, history.samples, Date.now(), HISTORY_SECONDS);
  canvas.setAttribute(
    "aria-label",
    `Traffic chart of the last 5 minutes; now receiving ${formatRate(rate.rx)}, ` +
      `sending ${formatRate(rate.tx)}; peak ${formatRate(history.peak())}`,
  );
}

async function saveSettings(event) {
  event.preventDefault();
  const id = state.detailId;
  $("d-edit-error").textContent = "";
  const { tags, error } = parseTags($("e-tags").value);
  if (error) {
    $("d-edit-error").textContent = error;
    $("e-tags").setAttribute("aria-invalid", "true");
    $("e-tags").focus();
    return;
  }
  $("e-tags").removeAttribute("aria-invalid");
  const body = { restart: $("e-restart").checked, meta: { tags } };
  const alias = $("e-alias").value.trim();
  if (alias) body.alias = alias;
  try {
    const instance = await api("PATCH", `/instances/${encodeURIComponent(id)}`, body);
    state.instances.set(id, instance);
    fillEditForms(instance);
    renderDetail();
    announce("Settings saved");
  } catch (error) {
    showError("d-edit-error", error);
  }
}

async function replaceURL(event) {
  event.preventDefault();
  const id = state.detailId;
  $("d-edit-error").textContent = "";
  try {
    const instance = await api("PUT", `/instances/${encodeURIComponent(id)}`, {
      url: $("e-url").value.trim(),
    });
    state.instances.set(id, instance);
    fillEditForms(instance);
    renderDetail();
    announce("URL replaced");
  } catch (error) {
    showError("d-edit-error", error);
  }
}

// Open connections come from GET P/v1/instances/{id}/connections; a master without that
// route answers 404, and the section says so instead.
async function loadConnections() {
  const id = state.detailId;
  const note = $("d-connections-note");
  const table = $("d-connections-table");
  if (!state.connectionsSupported) {
    note.textContent = "This master does not list open connections.";
    table.hidden = true;
    $("d-connections-refresh").hidden = true;
    return;
  }
  let connections;
  try {
    connections = await api("GET", `/instances/${encodeURIComponent(id)}/connections`);
  } catch (error) {
    if (error.status === 404 || error.status === 405) {
      state.connectionsSupported = false;
      loadConnections();
      return;
    }
    note.textContent = error.message;
    return;
  }
  if (id !== state.detailId || !Array.isArray(connections)) return;
  table.hidden = connections.length === 0;
  note.textContent = connections.length === 0 ? "No open connection." : "";
  $("d-connections-body").replaceChildren(
    ...connections.map((c) =>
      element(
        "tr",
        {},
        element("td", { textContent: c.proto }),
        element("td", { className: "route", textContent: c.remote }),
        element("td", { className: "route", textContent: c.target }),
        element("td", { className: "num", textContent: formatBytes(c.rx) }),
        element("td", { className: "num", textContent: formatBytes(c.tx) }),
        element("td", { textContent: since(c.since) }),
        element(
          "td",
          {},
          element("button", {
            type: "button",
            className: "danger",
            textContent: "Close",
            "aria-label": `Close the connection from ${c.remote}`,
            dataset: { connection: c.id },
          }),
        ),
      ),
    ),
  );
}

function since(value) {
  // Unix seconds, as the connections route gives it; anything else is shown as it is.
  if (typeof value !== "number") return String(value ?? "");
  return `${formatDuration(Date.now() / 1000 - value)} ago`;
}

async function closeConnection(connectionId) {
  const id = state.detailId;
  try {
    await api(
      "DELETE",
      `/instances/${encodeURIComponent(id)}/connections/${encodeURIComponent(connectionId)}`,
    );
    announce("Connection closed");
  } catch (error) {
    showError("d-error", error);
  }
  loadConnections();
}

// -- the master ------------------------------------------------------------------------------

async function loadMaster() {
  $("m-error").textContent = "";
  try {
    const info = await api("GET", "/info");
    definitions($("m-info"), [
      ["Version", info.ver],
      ["Alias", info.alias || "(none)"],
      ["Master ID", info.mid],
      ["Address", info.name || "(every address)"],
      ["Uptime", formatDuration(info.uptime)],
      ["System", `${info.os}/${info.arch}, up ${formatDuration(info.sysup)}`],
      ["CPU", info.cpu < 0 ? "unknown" : `${info.cpu}%`],
      ["Memory", `${formatBytes(info.mem_used)} of ${formatBytes(info.mem_total)}`],
      ["Swap", `${formatBytes(info.swap_used)} of ${formatBytes(info.swap_total)}`],
      ["Network", `${formatBytes(info.netrx)} in, ${formatBytes(info.nettx)} out`],
      ["Disk", `${formatBytes(info.diskr)} read, ${formatBytes(info.diskw)} written`],
      ["API TLS", info.tls],
      ["Log level", info.log],
    ]);
  } catch (error) {
    showError("m-error", error);
  }
  loadHooks();
}

async function loadHooks() {
  let hooks;
  try {
    hooks = await api("GET", "/webhooks");
  } catch (error) {
    showError("w-error", error);
    return;
  }
  $("m-hooks-empty").hidden = hooks.length !== 0;
  $("m-hooks-body").replaceChildren(
    ...hooks.map((hook) =>
      element(
        "tr",
        {},
        element("td", { className: "route", textContent: hook.url }),
        element("td", { textContent: hook.events.join(", ") }),
        element("td", { textContent: hook.signed ? "yes" : "no" }),
        element("td", { className: "num", textContent: String(hook.queued) }),
        element("td", { className: "num", textContent: String(hook.dropped) }),
        element(
          "td",
          {},
          element(
            "div",
            { className: "actions" },
            element("button", {
              type: "button",
              textContent: "Deliveries",
              "aria-label": `Last deliveries to ${hook.url}`,
              dataset: { hook: hook.id, hookAction: "deliveries" },
            }),
            element("button", {
              type: "button",
              className: "danger",
              textContent: "Delete",
              "aria-label": `Delete the webhook to ${hook.url}`,
              dataset: { hook: hook.id, hookAction: "delete", url: hook.url },
            }),
          ),
        ),
      ),
    ),
  );
}

async function hookAction(button) {
  const id = button.dataset.hook;
  $("w-error").textContent = "";
  try {
    if (button.dataset.hookAction === "delete") {
      if (!(await confirmDelete(`the webhook to ${button.dataset.url}`))) return;
      await api("DELETE", `/webhooks/${encodeURIComponent(id)}`);
      $("m-deliveries").hidden = true;
      announce("Webhook deleted");
      loadHooks();
      return;
    }
    const deliveries = await api("GET", `/webhooks/${encodeURIComponent(id)}/deliveries`);
    $("m-deliveries").hidden = false;
    $("m-deliveries-body").replaceChildren(
      ...deliveries.map((d) =>
        element(
          "tr",
          {},
          element("td", { textContent: d.event }),
          element("td", { textContent: d.time }),
          element("td", { className: "num", textContent: String(d.attempt) }),
          element("td", { textContent: d.status === null ? "—" : String(d.status) }),
          element("td", { textContent: d.error ?? "" }),
          element("td", { className: "num", textContent: String(d.duration) }),
        ),
      ),
    );
    if (deliveries.length === 0) {
      $("m-deliveries-body").append(
        element("tr", {}, element("td", { colSpan: 6, textContent: "No delivery yet." })),
      );
    }
  } catch (error) {
    showError("w-error", error);
  }
}

async function addHook(event) {
  event.preventDefault();
  const form = $("m-hook-form");
  const events = [...form.querySelectorAll("input[name=events]:checked")].map((i) => i.value);
  const body = { url: $("w-url").value.trim(), events };
  if ($("w-secret").value) body.secret = $("w-secret").value;
  $("w-error").textContent = "";
  try {
    await api("POST", "/webhooks", body);
    form.reset();
    announce("Webhook added");
    loadHooks();
  } catch (error) {
    showError("w-error", error);
  }
}

// -- wiring ----------------------------------------------------------------------------------

function bindStaticHandlers() {
  $("signin-form").addEventListener("submit", signIn);
  $("signout").addEventListener("click", signOut);
  $("search").addEventListener("input", renderList);
  $("status-filter").addEventListener("change", renderList);
  $("instances-body").addEventListener("click", (event) => {
    const button = event.target.closest("button[data-action]");
    if (button !== null) act(button.dataset.id, button.dataset.action, "list-error");
  });
  $("d-actions").addEventListener("click", (event) => {
    const button = event.target.closest("button[data-action]");
    if (button !== null) act(button.dataset.id, button.dataset.action, "d-error");
  });
  const form = $("create-form");
  form.addEventListener("input", (event) => {
    if (event.target.name) event.target.dataset.touched = "yes";
    markFields(updatePreview().errors, true);
  });
  form.addEventListener("change", () => markFields(updatePreview().errors, true));
  form.addEventListener("submit", create);
  $("d-edit").addEventListener("submit", saveSettings);
  $("d-url").addEventListener("submit", replaceURL);
  $("d-connections-refresh").addEventListener("click", loadConnections);
  $("d-connections-body").addEventListener("click", (event) => {
    const button = event.target.closest("button[data-connection]");
    if (button !== null) closeConnection(button.dataset.connection);
  });
  $("m-refresh").addEventListener("click", loadMaster);
  $("m-hook-form").addEventListener("submit", addHook);
  $("m-hooks-body").addEventListener("click", (event) => {
    const button = event.target.closest("button[data-hook]");
    if (button !== null) hookAction(button);
  });
  window.addEventListener("hashchange", route);
  window.addEventListener("resize", () => {
    if (state.view === "instance") renderDetail();
  });
  updatePreview();
}

start();
