// The modelfetch dashboard: models and their files, live download progress, source health,
// recent attempts and a throughput/latency chart. Plain ES module, no dependencies, no
// requests beyond this server. Every server-provided string reaches the page through
// textContent / text nodes, never as HTML.

const TOKEN_KEY = "modelfetch.token";
const API = new URL("api/", document.baseURI);
const REFRESH_MS = 5000; // health, summary, attempts and chart
const BACKOFF_MIN_MS = 500; // WebSocket reconnect: 0.5 s doubling up to 5 s
const BACKOFF_MAX_MS = 5000;
const ATTEMPT_ROWS = 50;
const CHART_ROW_LIMIT = 5000;
const MAX_BUCKETS = 60;
const LAYERS = [
  ["ipfs", "IPFS"],
  ["huggingface", "Hugging Face"],
];
const RANGES = { "6h": 6 * 3600e3, "1h": 3600e3, "15m": 15 * 60e3 };
const STEPS_S = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600];

const $ = (id) => document.getElementById(id);

const state = {
  token: readToken(),
  models: new Map(), // name -> model document (as /gm/api/models gives it)
  stopped: true, // true while no token is known for a server that needs one
  ws: null,
  live: false,
  everLive: false,
  reconnecting: false,
  backoff: BACKOFF_MIN_MS,
  reconnectTimer: 0,
  reconnectAttempts: 0,
  refreshTimer: 0,
  refreshSoonTimer: 0,
  refreshing: false,
  refreshAgain: false,
  windowHours: 24,
  last: { health: "", attempts: "", chart: "" },
  chart: null,
  leaving: false,
};

// -- small helpers ---------------------------------------------------------------------

/** An element with attributes and children (strings become text nodes: never HTML). */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.className = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

function readToken() {
  try {
    return sessionStorage.getItem(TOKEN_KEY);
  } catch {
    return null;
  }
}

function saveToken(token) {
  state.token = token;
  try {
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch {
    // storage disabled: the token lives as long as the page
  }
}

const UNITS = ["B", "KiB", "MiB", "GiB", "TiB"];

function fmtBytes(n) {
  if (n === null || n === undefined || !Number.isFinite(n)) return "—";
  let value = n;
  let unit = 0;
  while (Math.abs(value) >= 1024 && unit < UNITS.length - 1) {
    value /= 1024;
    unit += 1;
  }
  if (unit === 0) return `${Math.round(value)} B`;
  return `${value.toFixed(value < 10 ? 2 : value < 100 ? 1 : 0)} ${UNITS[unit]}`;
}

function fmtSpeed(bytesPerSec) {
  if (!bytesPerSec || bytesPerSec <= 0) return "—";
  return `${fmtBytes(bytesPerSec)}/s`;
}

function fmtEta(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "—";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

function fmtMs(ms) {
  if (ms === null || ms === undefined || !Number.isFinite(ms)) return "—";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  return `${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)} s`;
}

function fmtPct(value) {
  if (value === null || value === undefined || !Number.isFinite(value)) return "—";
  return `${Number.isInteger(value) ? value : value.toFixed(1)} %`;
}

function fmtTime(ms, withSeconds = true) {
  const options = { hour: "2-digit", minute: "2-digit" };
  if (withSeconds) options.second = "2-digit";
  return new Date(ms).toLocaleTimeString([], options);
}

function fmtDuration(ms) {
  const s = Math.round(ms / 1000);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.round(s / 60)} min`;
  const hours = s / 3600;
  return `${Number.isInteger(hours) ? hours : hours.toFixed(1)} h`;
}

function plural(n, word) {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

let announceTimer = 0;
/** Say `text` through the polite live region (status changes only, never progress ticks). */
function announce(text) {
  const region = $("announcer");
  clearTimeout(announceTimer);
  region.textContent = "";
  announceTimer = setTimeout(() => {
    region.textContent = text;
  }, 60);
}

function setConn(kind, text) {
  $("conn").dataset.state = kind;
  $("conn-text").textContent = text;
}

// -- the API ---------------------------------------------------------------------------

class AuthNeeded extends Error {}
class Unreachable extends Error {}
class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(path, { method = "GET" } = {}) {
  const headers = { Accept: "application/json" };
  if (state.token) headers.Authorization = `Bearer ${state.token}`;
  let resp;
  try {
    resp = await fetch(new URL(path, API), { method, headers, cache: "no-store" });
  } catch (err) {
    throw new Unreachable(err && err.message ? err.message : String(err));
  }
  if (resp.status === 401) {
    requireToken();
    throw new AuthNeeded("the server needs a token");
  }
  let body = null;
  try {
    body = await resp.json();
  } catch {
    body = null;
  }
  if (!resp.ok) {
    const message = body && typeof body.error === "string" ? body.error : resp.statusText;
    throw new ApiError(resp.status, `${resp.status}: ${message}`);
  }
  return body;
}

// -- token -----------------------------------------------------------------------------

function requireToken() {
  const refused = Boolean(state.token);
  saveToken(null);
  stopLive();
  const auth = $("auth");
  const error = $("auth-error");
  if (refused) error.textContent = "The server refused that token. Enter the current one.";
  else if (auth.hidden) error.textContent = "";
  $("main").hidden = true;
  $("forget-token").hidden = true;
  hideBanner();
  setConn("auth", "Token needed");
  if (auth.hidden) {
    auth.hidden = false;
    $("token-input").focus();
    announce("This server needs an access token.");
  }
}

function onTokenSubmit(event) {
  event.preventDefault();
  const input = $("token-input");
  const token = input.value.trim();
  if (!token) {
    $("auth-error").textContent = "Enter the token the server was started with.";
    input.focus();
    return;
  }
  saveToken(token);
  input.value = "";
  $("auth-error").textContent = "";
  $("auth").hidden = true;
  $("main").hidden = false;
  start();
}

function onForgetToken() {
  saveToken(null);
  requireToken();
}

// -- lifecycle -------------------------------------------------------------------------

async function start() {
  stopLive();
  state.stopped = false;
  setConn("connecting", "Connecting…");
  try {
    const doc = await api("models");
    applyModels(doc.models, true);
    hideModelsError();
  } catch (err) {
    if (err instanceof AuthNeeded) return;
    if (err instanceof ApiError) showModelsError(`Could not list the models: ${err.message}`);
    // Unreachable: the WebSocket loop below reports it and retries.
  }
  if (state.stopped) return;
  $("forget-token").hidden = !state.token;
  connect();
  refreshMetrics();
  state.refreshTimer = setInterval(() => {
    if (!document.hidden) refreshMetrics();
  }, REFRESH_MS);
}

function stopLive() {
  state.stopped = true;
  state.live = false;
  clearTimeout(state.reconnectTimer);
  clearTimeout(state.refreshSoonTimer);
  clearInterval(state.refreshTimer);
  const ws = state.ws;
  state.ws = null;
  if (ws) {
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    try {
      ws.close();
    } catch {
      // already closed
    }
  }
}

// -- the WebSocket ---------------------------------------------------------------------

function connect() {
  if (state.stopped) return;
  clearTimeout(state.reconnectTimer);
  const url = new URL("ws", API);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  if (state.token) url.searchParams.set("token", state.token);
  let ws;
  try {
    ws = new WebSocket(url);
  } catch {
    lostConnection();
    return;
  }
  state.ws = ws;
  ws.onmessage = (event) => {
    let message;
    try {
      message = JSON.parse(event.data);
    } catch {
      return;
    }
    if (message && typeof message === "object") handleMessage(message);
  };
  ws.onclose = () => {
    if (state.ws !== ws) return;
    state.ws = null;
    lostConnection();
  };
}

function lostConnection() {
  state.live = false;
  if (state.stopped || state.leaving) return;
  if (!state.reconnecting) {
    state.reconnecting = true;
    state.reconnectAttempts = 0;
    announce(
      state.everLive
        ? "Lost the connection to the server. Reconnecting."
        : "Cannot reach the server. Retrying.",
    );
  }
  setConn("reconnecting", "Reconnecting…");
  scheduleReconnect();
}

function scheduleReconnect() {
  clearTimeout(state.reconnectTimer);
  const delay = state.backoff;
  state.backoff = Math.min(BACKOFF_MAX_MS, state.backoff * 2);
  state.reconnectAttempts += 1;
  const what = state.everLive
    ? "Connection to the server lost. Reconnecting"
    : "Cannot reach the server. Retrying";
  showBanner(
    `${what} — try ${state.reconnectAttempts} in ${(delay / 1000).toFixed(1)} s. ` +
      "What you see may be out of date.",
  );
  state.reconnectTimer = setTimeout(reconnect, delay);
}

async function reconnect() {
  if (state.stopped) return;
  try {
    await api("metrics/downloads?limit=1"); // is it up, and does it take our token?
  } catch (err) {
    if (err instanceof AuthNeeded) return;
    if (err instanceof Unreachable) {
      scheduleReconnect();
      return;
    }
    // Any other answer means the server is up: connect.
  }
  connect();
}

function reconnectNow() {
  state.backoff = BACKOFF_MIN_MS;
  clearTimeout(state.reconnectTimer);
  reconnect();
}

function showBanner(text) {
  $("banner-text").textContent = text;
  $("banner").hidden = false;
}

function hideBanner() {
  $("banner").hidden = true;
}

function handleMessage(message) {
  switch (message.type) {
    case "snapshot":
      onSnapshot(message);
      break;
    case "model_download_started":
      onStarted(message);
      break;
    case "model_download_progress":
      onProgress(message);
      break;
    case "model_download_attempt":
      refreshSoon(1000);
      break;
    case "model_download_result":
      onResult(message);
      break;
    default:
      break;
  }
}

function onSnapshot(message) {
  const running = new Map((message.downloads || []).map((d) => [d.modelId, d]));
  const models = (message.models || []).map((m) => {
    const active = running.get(m.name);
    return {
      ...m,
      downloading: Boolean(m.downloading || active),
      progress: { ...(m.progress || {}), ...((active && active.progress) || {}) },
    };
  });
  if (message.error) {
    showModelsError(`The server could not read the models: ${message.error}`);
    applyModels(models, false);
  } else {
    hideModelsError();
    applyModels(models, true);
  }
  const wasReconnecting = state.reconnecting;
  state.live = true;
  state.everLive = true;
  state.reconnecting = false;
  state.backoff = BACKOFF_MIN_MS;
  hideBanner();
  setConn("live", "Live");
  if (wasReconnecting) announce("Reconnected. Showing the server's current state.");
  refreshMetrics();
}

function onStarted(message) {
  const model = state.models.get(message.modelId);
  if (!model) {
    fetchModel(message.modelId);
    return;
  }
  model.downloading = true;
  model.progress = {};
  model.startedAt = message.startedAt;
  renderModel(model.name);
  announce(`Download of ${model.name} started.`);
}

// The same rule as the server's inventory (ModelStatus.state), so a model's badge follows
// its files between two snapshots.
function modelState(files) {
  const states = new Set(files.map((f) => f.state));
  if (states.size === 1 && states.has("verified")) return "complete";
  if (states.size === 1 && states.has("missing")) return "missing";
  if (states.has("corrupt")) return "corrupt";
  return states.has("verified") ? "partial" : "unverified";
}

function onProgress(event) {
  const model = state.models.get(event.modelId);
  if (!model) return;
  if (!event.file) return; // the model-level "completed" / "error": the result follows
  model.progress = model.progress || {};
  model.progress[event.file] = event;
  if (event.status === "success") {
    const file = model.files.find((f) => f.path === event.file);
    if (file) {
      file.state = "verified";
      file.size = event.totalBytes ?? event.bytesDownloaded;
      file.reason = null;
    }
    model.state = modelState(model.files);
  }
  const card = cards.get(model.name);
  if (!card) return;
  const file = model.files.find((f) => f.path === event.file);
  if (file) updateFileRow(card, model, file);
  if (event.status === "success") updateHead(card, model);
  updateStatus(card, model);
}

function onResult(message) {
  const model = state.models.get(message.modelId);
  if (model) {
    model.downloading = false;
    model.last_result = message;
    renderModel(model.name);
  }
  if (message.ok) {
    announce(`${message.modelId}: download complete, ${plural(message.files.length, "file")} verified.`);
  } else {
    announce(
      `${message.modelId}: download failed with ${plural(message.errors.length, "error")}. ` +
        "A Retry button is available.",
    );
  }
  fetchModel(message.modelId);
  refreshMetrics();
}

async function fetchModel(name) {
  try {
    const doc = await api(`models/${encodeURIComponent(name)}`);
    applyModels([doc], false);
  } catch {
    // the next snapshot or refresh brings it
  }
}

// -- models ----------------------------------------------------------------------------

const cards = new Map(); // name -> the DOM parts of one model card
let cardSeq = 0;

function applyModels(models, replace) {
  const seen = new Set();
  for (const model of models || []) {
    if (!model || typeof model.name !== "string") continue;
    seen.add(model.name);
    const old = state.models.get(model.name);
    state.models.set(model.name, {
      ...model,
      files: Array.isArray(model.files) ? model.files : [],
      progress: model.progress || {},
      startedAt: old ? old.startedAt : undefined,
    });
    renderModel(model.name);
  }
  if (replace) {
    for (const name of [...state.models.keys()]) {
      if (!seen.has(name)) {
        state.models.delete(name);
        const card = cards.get(name);
        if (card) card.root.remove();
        cards.delete(name);
      }
    }
  }
  placeCards();
}

function placeCards() {
  const list = $("model-list");
  const names = [...state.models.keys()].sort((a, b) => a.localeCompare(b));
  if (!names.length) {
    list.replaceChildren(h("p", { class: "muted" }, "The catalog has no models."));
    return;
  }
  for (const child of [...list.children]) {
    if (!child.classList.contains("model")) child.remove();
  }
  // Move cards only when out of order, so a focused button keeps its focus.
  let previous = null;
  for (const name of names) {
    const root = cards.get(name).root;
    const expected = previous ? previous.nextElementSibling : list.firstElementChild;
    if (expected !== root) {
      if (previous) previous.after(root);
      else list.prepend(root);
    }
    previous = root;
  }
}

function buildCard(name) {
  const id = `m${++cardSeq}`;
  const heading = h("h3", { id: `${id}-name`, class: "model-name" }, name);
  const badge = h("span", { class: "badge state" });
  const meta = h("p", { class: "model-meta muted" });
  const button = h("button", {
    type: "button",
    class: "btn",
    "aria-describedby": `${id}-status`,
  });
  button.addEventListener("click", () => onDownloadClick(name));
  const status = h("p", { id: `${id}-status`, class: "model-status" });
  const errors = h("div", { class: "model-errors" });
  const tbody = h("tbody");
  const table = h(
    "table",
    { class: "files" },
    h("caption", { class: "visually-hidden" }, `Files of ${name}`),
    h(
      "thead",
      {},
      h(
        "tr",
        {},
        h("th", { scope: "col" }, "File"),
        h("th", { scope: "col", class: "num" }, "Size"),
        h("th", { scope: "col" }, "State"),
        h("th", { scope: "col", class: "progress-col" }, "Progress"),
        h("th", { scope: "col", class: "num" }, "Speed / ETA"),
        h("th", { scope: "col" }, "Source"),
      ),
    ),
    tbody,
  );
  const root = h(
    "article",
    { class: "model", "aria-labelledby": `${id}-name` },
    h("div", { class: "model-head" }, h("div", { class: "model-title" }, heading, badge), button),
    meta,
    status,
    errors,
    h("div", { class: "table-scroll" }, table),
  );
  root.dataset.model = name;
  return { id, root, badge, meta, button, status, errors, tbody, rows: new Map(), pending: false };
}

function renderModel(name) {
  const model = state.models.get(name);
  if (!model) return;
  let card = cards.get(name);
  if (!card) {
    card = buildCard(name);
    cards.set(name, card);
  }
  updateHead(card, model);
  updateButton(card, model);
  updateStatus(card, model);
  updateErrors(card, model);

  const paths = new Set(model.files.map((f) => f.path));
  for (const [path, row] of card.rows) {
    if (!paths.has(path)) {
      row.tr.remove();
      card.rows.delete(path);
    }
  }
  for (const file of model.files) updateFileRow(card, model, file);
  model.files.forEach((file, i) => {
    const tr = card.rows.get(file.path).tr;
    if (card.tbody.children[i] !== tr) card.tbody.insertBefore(tr, card.tbody.children[i] || null);
  });
}

function updateHead(card, model) {
  card.badge.textContent = model.state || "unknown";
  card.badge.className = `badge state state-${model.state || "unknown"}`;
  const verified = model.files.filter((f) => f.state === "verified");
  const bytes = verified.reduce((sum, f) => sum + (f.size || 0), 0);
  card.meta.textContent =
    `${model.dir} · ${verified.length} of ${plural(model.files.length, "file")} verified · ` +
    `${fmtBytes(Math.max(bytes, model.bytes || 0))} on disk`;
}

function updateButton(card, model) {
  const failed = Boolean(model.last_result && model.last_result.ok === false);
  const button = card.button;
  let label;
  if (card.pending) label = "Starting…";
  else if (model.downloading) label = "Downloading…";
  else if (failed) label = "Retry";
  else label = "Download";
  const busy = card.pending || model.downloading;
  button.textContent = label;
  button.setAttribute("aria-label", `${label.replace("…", "")} ${model.name}`);
  button.setAttribute("aria-disabled", busy ? "true" : "false");
  button.classList.toggle("retry", !busy && failed);
}

function updateStatus(card, model) {
  const status = card.status;
  const result = model.last_result;
  status.classList.remove("bad", "good");
  if (card.actionError) {
    status.textContent = card.actionError;
    status.classList.add("bad");
    return;
  }
  if (model.downloading) {
    const events = Object.values(model.progress || {});
    const done = events.filter((e) => e.status === "success").length;
    const total = model.files.length;
    const speed = events
      .filter((e) => e.status === "downloading")
      .reduce((sum, e) => sum + (e.downloadSpeed || 0), 0);
    status.textContent =
      `Downloading: ${done} of ${plural(total, "file")} done` +
      (speed > 0 ? ` · ${fmtSpeed(speed)}` : "") +
      (model.startedAt ? ` · started ${fmtTime(model.startedAt)}` : "");
    return;
  }
  if (result && result.ok === false) {
    status.textContent =
      `Last download failed at ${fmtTime(result.timestamp)}: ` +
      `${plural(result.errors.length, "error")}. Retry tries every source again.`;
    status.classList.add("bad");
    return;
  }
  if (result && result.ok) {
    status.textContent =
      `Downloaded at ${fmtTime(result.timestamp)}: ` +
      `${plural(result.files.length, "file")} verified.`;
    status.classList.add("good");
    return;
  }
  const text = {
    complete: "Every file is present and verified.",
    missing: "Not downloaded yet.",
    partial: "Some files are missing.",
    corrupt: "A file does not match its manifest: download again to repair it.",
    unverified: "Files are present but could not be checked against a manifest.",
  };
  status.textContent = text[model.state] || "";
}

function updateErrors(card, model) {
  const result = model.last_result;
  const key = result && result.ok === false && !model.downloading ? String(result.timestamp) : "";
  if (card.errorsKey === key) return;
  card.errorsKey = key;
  if (!key) {
    card.errors.replaceChildren();
    return;
  }
  const items = result.errors.map((error) => {
    const attempts = Array.isArray(error.attempts) ? error.attempts : [];
    return h(
      "li",
      {},
      h("strong", {}, error.file || error.model || ""),
      error.file ? ": " : "",
      h("span", { class: "error-type" }, error.error_type || "error"),
      ` — ${error.message || ""}`,
      attempts.length
        ? h(
            "details",
            {},
            h("summary", {}, `${plural(attempts.length, "attempt")} that failed`),
            h(
              "ul",
              {},
              attempts.map((a) =>
                h(
                  "li",
                  {},
                  `${a.layer || "?"}${a.gateway ? ` ${a.gateway}` : ""}: `,
                  h("span", { class: "error-type" }, a.error_type || "error"),
                  ` — ${a.message || ""}`,
                ),
              ),
            ),
          )
        : null,
    );
  });
  card.errors.replaceChildren(h("ul", { class: "error-list" }, items));
}

function buildRow(path) {
  const progress = h("progress", { max: "100", "aria-label": `${path} download progress` });
  const pct = h("span", { class: "pct" });
  const phase = h("span", { class: "phase" });
  const parts = {
    tr: h("tr"),
    size: h("td", { class: "num" }),
    stateBadge: h("span", { class: "badge" }),
    reason: h("span", { class: "reason muted" }),
    progress,
    pct,
    phase,
    progressWrap: h("div", { class: "bar" }, progress, pct),
    none: h("span", { class: "muted" }, "—"),
    speed: h("span", { class: "speed" }),
    eta: h("span", { class: "eta" }),
    layer: h("span", { class: "layer" }),
    gateway: h("span", { class: "gateway" }),
  };
  parts.tr.dataset.file = path;
  parts.tr.append(
    h("th", { scope: "row", class: "path" }, path),
    parts.size,
    h("td", {}, parts.stateBadge, parts.reason),
    h("td", { class: "progress-col" }, parts.progressWrap, parts.none, phase),
    h("td", { class: "num rate" }, parts.speed, parts.eta),
    h("td", { class: "source" }, parts.layer, parts.gateway),
  );
  return parts;
}

const PHASES = {
  attempting: "connecting",
  downloading: "",
  success: "verified",
  completed: "done",
  error: "failed",
};

function updateFileRow(card, model, file) {
  let row = card.rows.get(file.path);
  if (!row) {
    row = buildRow(file.path);
    card.rows.set(file.path, row);
    card.tbody.append(row.tr);
  }
  const event = (model.progress || {})[file.path];
  row.stateBadge.textContent = file.state;
  row.stateBadge.className = `badge state-${file.state}`;
  row.reason.textContent = file.reason && file.state !== "verified" ? file.reason : "";
  const size = file.size ?? (event ? event.totalBytes : null);
  row.size.textContent = fmtBytes(size);
  row.tr.dataset.status = event ? event.status : "";
  if (!event) {
    row.progressWrap.hidden = true;
    row.none.hidden = false;
    row.phase.textContent = "";
    row.speed.textContent = "—";
    row.eta.textContent = "";
    row.layer.textContent = "";
    row.gateway.textContent = "";
    return;
  }
  row.progressWrap.hidden = false;
  row.none.hidden = true;
  const known = event.totalBytes !== null && event.totalBytes !== undefined;
  const pct = Number(event.percentComplete) || 0;
  if (known || event.status === "success") {
    row.progress.value = Math.max(0, Math.min(100, pct));
    row.pct.textContent = fmtPct(pct);
  } else {
    row.progress.removeAttribute("value"); // indeterminate
    row.pct.textContent = fmtBytes(event.bytesDownloaded);
  }
  let phase = PHASES[event.status] ?? event.status;
  if (event.status === "attempting" && event.retryCount > 0) phase = `retry ${event.retryCount}`;
  if (event.status === "error" && event.error) phase = `failed: ${event.error}`;
  if (event.status === "downloading" && known) {
    phase = `${fmtBytes(event.bytesDownloaded)} of ${fmtBytes(event.totalBytes)}`;
  }
  row.phase.textContent = phase;
  row.phase.classList.toggle("bad", event.status === "error");
  const moving = event.status === "downloading";
  row.speed.textContent = moving ? fmtSpeed(event.downloadSpeed) : "—";
  row.eta.textContent = moving && event.eta !== null ? `${fmtEta(event.eta)} left` : "";
  row.layer.textContent = event.source || "";
  row.gateway.textContent = hostOf(event.currentGateway);
}

/** The host (and port) of a gateway URL: short enough for a table cell. */
function hostOf(url) {
  if (!url) return "";
  try {
    return new URL(url).host || url;
  } catch {
    return url;
  }
}

async function onDownloadClick(name) {
  const model = state.models.get(name);
  const card = cards.get(name);
  if (!model || !card || model.downloading || card.pending) return;
  card.pending = true;
  card.actionError = "";
  updateButton(card, model);
  updateStatus(card, model);
  try {
    const answer = await api(`models/${encodeURIComponent(name)}/download`, { method: "POST" });
    if (answer && answer.status === "joined") announce(`Joined the running download of ${name}.`);
    if (!state.live) fetchModel(name); // no live events now: show what the server says
  } catch (err) {
    if (err instanceof AuthNeeded) return;
    card.actionError =
      err instanceof Unreachable
        ? `Could not reach the server to start ${name}.`
        : `Could not start ${name}: ${err.message}`;
    announce(card.actionError);
  } finally {
    card.pending = false;
    const current = state.models.get(name);
    if (current) renderModel(name);
  }
}

function showModelsError(text) {
  const el = $("models-error");
  el.textContent = text;
  el.hidden = false;
}

function hideModelsError() {
  $("models-error").hidden = true;
}

// -- health, attempts, chart -----------------------------------------------------------

function refreshSoon(delay) {
  if (state.refreshSoonTimer) return;
  state.refreshSoonTimer = setTimeout(() => {
    state.refreshSoonTimer = 0;
    refreshMetrics();
  }, delay);
}

// The mirror's figures (`serve --mirror`); the panel stays hidden on a plain server (404).
async function refreshMirror() {
  let figures;
  try {
    figures = await api("mirror");
  } catch {
    $("mirror").hidden = true;
    return;
  }
  const rows = [
    ["Requests", String(figures.requests)],
    ["Bytes served", fmtBytes(figures.bytes_served)],
    ["Hit ratio", `${fmtPct(figures.hit_ratio * 100)} (${figures.hits} hits, ${figures.misses} misses)`],
    ["Pull-through transfers in flight", String(figures.pulls_in_flight)],
    ["Pull-through transfers", `${figures.pulls} (${figures.pulls_failed} failed)`],
    ["Clients (last 10 min)", String(figures.clients)],
  ];
  $("mirror-url").textContent = location.origin;
  $("mirror-body").replaceChildren(...rows.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
  $("mirror").hidden = false;
}

async function refreshMetrics() {
  if (state.stopped) return;
  refreshMirror();
  if (state.refreshing) {
    state.refreshAgain = true;
    return;
  }
  state.refreshing = true;
  try {
    const span = rangeMs();
    const since = Math.floor(Date.now() - span);
    const [health, summary, recent, windowed] = await Promise.all([
      api("metrics/downloads/health"),
      api("metrics/downloads/summary"),
      api(`metrics/downloads?limit=${ATTEMPT_ROWS}`),
      api(`metrics/downloads?since=${since}&limit=${CHART_ROW_LIMIT}`),
    ]);
    if (state.stopped) return;
    $("metrics-error").hidden = true;
    if (summary && Number(summary.window_hours) > 0) state.windowHours = Number(summary.window_hours);
    renderHealth(health);
    renderSummary(summary);
    renderAttempts(recent.metrics || []);
    renderChart(windowed.metrics || [], span);
  } catch (err) {
    if (err instanceof ApiError) {
      const el = $("metrics-error");
      el.textContent = `Could not load the records: ${err.message}`;
      el.hidden = false;
    }
    // AuthNeeded: the token form is up; Unreachable: the banner says so.
  } finally {
    state.refreshing = false;
    if (state.refreshAgain) {
      state.refreshAgain = false;
      setTimeout(refreshMetrics, 0);
    }
  }
}

function healthBadge(status) {
  const known = ["healthy", "degraded", "down", "unknown"].includes(status) ? status : "unknown";
  return h("span", { class: `badge health-${known}` }, known);
}

/** A gateway's score (0-100, from its recent attempts; the higher, the sooner it is asked). */
function fmtScore(g) {
  if (!Number.isFinite(g.score)) return "—";
  const speed = [
    Number.isFinite(g.ttfb_ms) ? `first byte ${fmtMs(g.ttfb_ms)}` : null,
    Number.isFinite(g.throughput_bps) ? fmtSpeed(g.throughput_bps) : null,
  ].filter(Boolean);
  return h(
    "span",
    { class: "score", title: speed.length ? speed.join(", ") : null },
    g.score.toFixed(1),
  );
}

/** One row per gateway (or hub) of a layer, best score first: status, success rate, p95,
 * attempts, score. */
function gatewayTable(label, what, gateways) {
  const head = h(
    "tr",
    {},
    h("th", { scope: "col" }, what),
    h("th", { scope: "col" }, "Status"),
    h("th", { scope: "col", class: "num" }, "Success"),
    h("th", { scope: "col", class: "num" }, "p95"),
    h("th", { scope: "col", class: "num", title: "Attempts in the window" }, "Tries"),
    h("th", { scope: "col", class: "num", title: "0-100: how soon it is asked, best first" }, "Score"),
  );
  const score = (g) => (Number.isFinite(g.score) ? g.score : -1);
  const ranked = gateways.slice().sort(([, a], [, b]) => score(b) - score(a));
  const rows = ranked.map(([url, g]) => {
    const tr = h(
      "tr",
      {},
      h("th", { scope: "row", class: "gateway" }, url),
      h("td", {}, healthBadge(g.status)),
      h("td", { class: "num" }, fmtPct(g.success_rate)),
      h("td", { class: "num" }, g.success_rate > 0 ? fmtMs(g.p95_latency_ms) : "—"),
      h("td", { class: "num" }, String(g.attempts ?? 0)),
      h("td", { class: "num score-cell" }, fmtScore(g)),
    );
    tr.dataset.gateway = url;
    tr.dataset.status = g.status;
    if (Number.isFinite(g.score)) tr.dataset.score = String(g.score);
    return tr;
  });
  return h(
    "table",
    { class: "gateways" },
    h("caption", { class: "visually-hidden" }, `${label}: each ${what.toLowerCase()}`),
    h("thead", {}, head),
    h("tbody", {}, rows),
  );
}

function renderHealth(health) {
  const key = JSON.stringify(health);
  if (key === state.last.health) return;
  state.last.health = key;
  const parts = [];
  for (const [layerKey, label] of LAYERS) {
    const layer = (health && health[layerKey]) || {};
    const headingId = `health-${layerKey}`;
    const gateways = Object.entries(layer.gateways || {});
    const what = layerKey === "ipfs" ? "Gateway" : "Hub";
    const body = gateways.length
      ? h("div", { class: "table-scroll" }, gatewayTable(label, what, gateways))
      : h("p", { class: "muted small" }, "No attempts in the window.");
    const section = h(
      "section",
      { class: "layer", "aria-labelledby": headingId },
      h("h3", { id: headingId }, label, " ", healthBadge(layer.status)),
      h(
        "p",
        { class: "layer-stats" },
        layer.success_rate > 0
          ? `${fmtPct(layer.success_rate)} success · p95 ${fmtMs(layer.p95_latency_ms)} · ` +
              `mean ${fmtMs(layer.avg_latency_ms)} · ${plural(layer.attempts ?? 0, "attempt")}`
          : `${fmtPct(layer.success_rate ?? 0)} success · ` +
              `${plural(layer.attempts ?? 0, "attempt")}, none successful`,
      ),
      body,
    );
    section.dataset.layer = layerKey;
    section.dataset.status = layer.status || "unknown";
    parts.push(section);
  }
  const cache = (health && health.cache) || {};
  parts.push(
    h(
      "p",
      { class: "cache-stats" },
      h("strong", {}, "Cache: "),
      cache.lookups
        ? `${fmtPct(cache.hit_rate)} hit rate (${plural(cache.hits, "hit")}, ` +
            `${cache.misses} ${cache.misses === 1 ? "miss" : "misses"})`
        : "no lookups yet",
    ),
  );
  $("health-body").replaceChildren(...parts);
}

function renderSummary(summary) {
  if (!summary) return;
  const bits = [
    `Retention window ${fmtDuration(state.windowHours * 3600e3)}`,
    plural(summary.total ?? 0, "attempt"),
    `${fmtBytes(summary.bytes_downloaded ?? 0)} downloaded`,
    plural(summary.cache_hits ?? 0, "cache hit"),
    `${summary.exhausted ?? 0} file${summary.exhausted === 1 ? "" : "s"} with every source failed`,
  ];
  $("summary").textContent = bits.join(" · ");
  const option = $("range").querySelector('option[value="window"]');
  option.textContent = `Retention window (${fmtDuration(state.windowHours * 3600e3)})`;
}

function attemptStatusBadge(status) {
  return h("span", { class: `badge attempt-${status}` }, status);
}

function renderAttempts(rows) {
  const key = JSON.stringify(rows);
  if (key === state.last.attempts) return;
  state.last.attempts = key;
  const body = $("attempts-body");
  if (!rows.length) {
    body.replaceChildren(h("p", { class: "muted" }, "No attempts recorded yet."));
    return;
  }
  const table = h(
    "table",
    { class: "attempts" },
    h("caption", { class: "visually-hidden" }, `The ${rows.length} latest attempts, newest first`),
    h(
      "thead",
      {},
      h(
        "tr",
        {},
        h("th", { scope: "col" }, "Time"),
        h("th", { scope: "col" }, "Model / file"),
        h("th", { scope: "col" }, "Layer"),
        h("th", { scope: "col" }, "Gateway"),
        h("th", { scope: "col" }, "Status"),
        h("th", { scope: "col", class: "num" }, "Latency"),
        h("th", { scope: "col", class: "num" }, "Bytes"),
        h("th", { scope: "col" }, "Error"),
      ),
    ),
    h(
      "tbody",
      {},
      rows.map((r) => {
        const at = Date.parse(r.timestamp);
        const tr = h(
          "tr",
          {},
          h(
            "td",
            { class: "nowrap" },
            h("time", { datetime: r.timestamp }, Number.isFinite(at) ? fmtTime(at) : r.timestamp),
          ),
          h("td", { class: "path" }, `${r.model} / ${r.file}`),
          h("td", {}, r.layer || "all"),
          h("td", { class: "gateway" }, r.gateway || "—"),
          h("td", {}, attemptStatusBadge(isCacheMiss(r) ? "miss" : r.status)),
          h("td", { class: "num" }, fmtMs(r.latency_ms)),
          h("td", { class: "num" }, r.bytes_downloaded ? fmtBytes(r.bytes_downloaded) : "—"),
          h(
            "td",
            { class: "error-cell" },
            r.error_type
              ? h("span", { class: isCacheMiss(r) || r.status === "skipped" ? "error-type miss" : "error-type" }, r.error_type)
              : "",
            r.error_message ? ` ${r.error_message}` : "",
          ),
        );
        tr.dataset.status = r.status;
        if (r.gateway) tr.dataset.gateway = r.gateway;
        return tr;
      }),
    ),
  );
  body.replaceChildren(table);
}

/** A cache miss is routine: it is recorded as an error of the cache layer, shown as "miss". */
function isCacheMiss(row) {
  return row.layer === "cache" && row.status === "error" && row.error_type === "CacheMiss";
}

function isFailure(row) {
  return (row.status === "error" && !isCacheMiss(row)) || row.status === "exhausted";
}

function rangeMs() {
  const value = $("range").value;
  return RANGES[value] ?? state.windowHours * 3600e3;
}

function rangeLabel() {
  const value = $("range").value;
  return value in RANGES
    ? `the last ${fmtDuration(RANGES[value])}`
    : `the retention window (${fmtDuration(state.windowHours * 3600e3)})`;
}

/** Attempts into at most MAX_BUCKETS equal intervals ending now. */
function bucketize(rows, span, now) {
  const step = (STEPS_S.find((s) => span / (s * 1000) <= MAX_BUCKETS) ?? STEPS_S.at(-1)) * 1000;
  const end = Math.ceil(now / step) * step;
  const count = Math.max(1, Math.ceil(span / step));
  const start = end - count * step;
  const buckets = Array.from({ length: count }, (_, i) => ({
    start: start + i * step,
    bytes: 0,
    attempts: 0,
    errors: 0,
    latencySum: 0,
    latencyCount: 0,
  }));
  for (const row of rows) {
    const t = Date.parse(row.timestamp);
    if (!(t >= start && t < end)) continue;
    const b = buckets[Math.floor((t - start) / step)];
    b.attempts += 1;
    b.bytes += Number(row.bytes_downloaded) || 0;
    if (isFailure(row)) b.errors += 1;
    if (row.status === "success" && Number.isFinite(row.latency_ms)) {
      b.latencySum += row.latency_ms;
      b.latencyCount += 1;
    }
  }
  for (const b of buckets) {
    b.throughput = b.bytes / (step / 1000);
    b.latency = b.latencyCount ? b.latencySum / b.latencyCount : null;
  }
  return { step, start, end, buckets, truncated: rows.length >= CHART_ROW_LIMIT };
}

function renderChart(rows, span) {
  const data = bucketize(rows, span, Date.now());
  const key = JSON.stringify([rows.length, rows[0] && rows[0].timestamp, data.start, data.step]);
  state.chart = data;
  drawChart();
  if (key === state.last.chart) return;
  state.last.chart = key;
  describeChart(data);
}

function describeChart(data) {
  const used = data.buckets.filter((b) => b.attempts > 0);
  const canvas = $("chart");
  const where = `${rangeLabel()}, in intervals of ${fmtDuration(data.step)}`;
  if (!used.length) {
    canvas.setAttribute("aria-label", `Throughput and latency over ${where}: no attempts.`);
    $("chart-table").replaceChildren(h("p", { class: "muted" }, "No attempts in this range."));
    return;
  }
  const peak = used.reduce((a, b) => (b.throughput > a.throughput ? b : a));
  const withLatency = used.filter((b) => b.latency !== null);
  const meanLatency = withLatency.length
    ? withLatency.reduce((s, b) => s + b.latency, 0) / withLatency.length
    : null;
  const errors = used.reduce((s, b) => s + b.errors, 0);
  canvas.setAttribute(
    "aria-label",
    `Throughput and latency over ${where}. Peak throughput ${fmtSpeed(peak.throughput)} ` +
      `at ${fmtTime(peak.start)}; mean latency ${fmtMs(meanLatency)}; ` +
      `${plural(errors, "failed attempt")}. The data follows as a table.`,
  );
  const table = h(
    "table",
    { class: "chart-rows" },
    h("caption", { class: "visually-hidden" }, `Throughput and latency over ${where}`),
    h(
      "thead",
      {},
      h(
        "tr",
        {},
        h("th", { scope: "col" }, "From"),
        h("th", { scope: "col", class: "num" }, "Throughput"),
        h("th", { scope: "col", class: "num" }, "Latency"),
        h("th", { scope: "col", class: "num" }, "Attempts"),
        h("th", { scope: "col", class: "num" }, "Failed"),
      ),
    ),
    h(
      "tbody",
      {},
      used
        .slice()
        .reverse()
        .map((b) =>
          h(
            "tr",
            {},
            h("th", { scope: "row" }, fmtTime(b.start)),
            h("td", { class: "num" }, fmtSpeed(b.throughput)),
            h("td", { class: "num" }, fmtMs(b.latency)),
            h("td", { class: "num" }, String(b.attempts)),
            h("td", { class: "num" }, String(b.errors)),
          ),
        ),
    ),
  );
  const note = data.truncated
    ? h("p", { class: "muted small" }, `Only the latest ${CHART_ROW_LIMIT} attempts are drawn.`)
    : null;
  $("chart-table").replaceChildren(...[table, note].filter(Boolean));
}

/** A round axis maximum at or above `value` (and `floor`). */
function niceMax(value, floor) {
  if (!(value > floor)) return floor;
  const magnitude = 10 ** Math.floor(Math.log10(value));
  for (const m of [1, 2, 2.5, 4, 5, 8, 10]) if (m * magnitude >= value) return m * magnitude;
  return 10 * magnitude;
}

/** The same for bytes: round in the unit the labels use (KiB, MiB, ...). */
function niceBytesMax(value, floor) {
  if (!(value > floor)) return floor;
  const unit = 1024 ** Math.min(UNITS.length - 1, Math.floor(Math.log(value) / Math.log(1024)));
  return niceMax(value / unit, 1) * unit;
}

function drawChart() {
  const canvas = $("chart");
  const data = state.chart;
  const width = canvas.clientWidth;
  const height = canvas.clientHeight;
  if (!data || !width || !height) return;
  const dpr = window.devicePixelRatio || 1;
  canvas.width = Math.round(width * dpr);
  canvas.height = Math.round(height * dpr);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, width, height);

  const css = getComputedStyle(document.documentElement);
  const color = (name) => css.getPropertyValue(name).trim() || "#888";
  const pad = { left: 78, right: 64, top: 14, bottom: 26 };
  const w = Math.max(10, width - pad.left - pad.right);
  const hgt = Math.max(10, height - pad.top - pad.bottom);
  const { buckets } = data;
  const maxT = niceBytesMax(Math.max(0, ...buckets.map((b) => b.throughput)), 1024);
  const maxL = niceMax(Math.max(0, ...buckets.map((b) => b.latency ?? 0)), 100);
  const y = (fraction) => pad.top + hgt - hgt * fraction;

  ctx.font = "12px system-ui, sans-serif";
  ctx.lineWidth = 1;
  for (let i = 0; i <= 4; i += 1) {
    const yy = Math.round(y(i / 4)) + 0.5;
    ctx.strokeStyle = color("--chart-grid");
    ctx.beginPath();
    ctx.moveTo(pad.left, yy);
    ctx.lineTo(pad.left + w, yy);
    ctx.stroke();
    ctx.fillStyle = color("--chart-bar-text");
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    ctx.fillText(fmtSpeed((maxT * i) / 4).replace("—", "0 B/s"), pad.left - 6, yy);
    ctx.fillStyle = color("--chart-line");
    ctx.textAlign = "left";
    ctx.fillText(i === 0 ? "0 ms" : fmtMs((maxL * i) / 4), pad.left + w + 6, yy);
  }

  const slot = w / buckets.length;
  ctx.fillStyle = color("--chart-bar");
  buckets.forEach((b, i) => {
    if (b.throughput <= 0) return;
    const top = y(b.throughput / maxT);
    ctx.fillRect(pad.left + i * slot + 1, top, Math.max(1, slot - 2), pad.top + hgt - top);
  });

  ctx.fillStyle = color("--chart-err");
  buckets.forEach((b, i) => {
    if (!b.errors) return;
    const cx = pad.left + (i + 0.5) * slot;
    const base = pad.top + hgt;
    ctx.beginPath();
    ctx.moveTo(cx, base - 9);
    ctx.lineTo(cx - 5, base);
    ctx.lineTo(cx + 5, base);
    ctx.closePath();
    ctx.fill();
  });

  ctx.strokeStyle = color("--chart-line");
  ctx.fillStyle = color("--chart-line");
  ctx.lineWidth = 2;
  ctx.beginPath();
  let drawing = false;
  buckets.forEach((b, i) => {
    if (b.latency === null) {
      drawing = false;
      return;
    }
    const cx = pad.left + (i + 0.5) * slot;
    const cy = y(b.latency / maxL);
    if (drawing) ctx.lineTo(cx, cy);
    else ctx.moveTo(cx, cy);
    drawing = true;
  });
  ctx.stroke();
  buckets.forEach((b, i) => {
    if (b.latency === null) return;
    ctx.beginPath();
    ctx.arc(pad.left + (i + 0.5) * slot, y(b.latency / maxL), 3, 0, 2 * Math.PI);
    ctx.fill();
  });

  ctx.fillStyle = color("--muted");
  ctx.textAlign = "center";
  ctx.textBaseline = "top";
  const every = Math.max(1, Math.ceil(buckets.length / Math.max(2, Math.floor(w / 90))));
  const seconds = data.step < 60e3;
  for (let i = 0; i <= buckets.length; i += every) {
    const x = pad.left + i * slot;
    ctx.fillText(fmtTime(data.start + i * data.step, seconds), x, pad.top + hgt + 6);
  }
  if (!buckets.some((b) => b.attempts > 0)) {
    ctx.fillStyle = color("--muted");
    ctx.textBaseline = "middle";
    ctx.fillText("No attempts in this range", pad.left + w / 2, pad.top + hgt / 2);
  }
}

// -- start -----------------------------------------------------------------------------

function init() {
  $("auth-form").addEventListener("submit", onTokenSubmit);
  $("forget-token").addEventListener("click", onForgetToken);
  $("reconnect-now").addEventListener("click", reconnectNow);
  $("range").addEventListener("change", () => {
    state.last.chart = "";
    refreshMetrics();
  });
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) refreshMetrics();
  });
  window.addEventListener("pagehide", () => {
    state.leaving = true;
  });
  window.addEventListener("pageshow", () => {
    state.leaving = false;
  });
  if ("ResizeObserver" in window) new ResizeObserver(() => drawChart()).observe($("chart"));
  else window.addEventListener("resize", drawChart);
  window.matchMedia("(prefers-color-scheme: dark)").addEventListener("change", drawChart);
  start();
}

init();
