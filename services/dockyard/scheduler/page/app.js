// Dockyard's web page: the tenant's jobs with live status, and a job's log tailing live.
// Plain script, no build step. The API is this page's origin; the log relay is another one
// (from /config.json). The log follows the relay's WebSocket and, when it drops, reconnects
// with exponential backoff and jitter, resuming after the last seq shown: nothing is missed,
// nothing is shown twice.
"use strict";

const TOKEN_KEY = "dockyard.token";
const JOBS_POLL_MS = 2000;
const JOB_POLL_MS = 1500;
const MAX_LOG_LINES = 5000; // lines kept on screen; older ones are dropped from view
const FINISHED = new Set(["succeeded", "failed", "timed_out", "cancelled"]);

const $ = (id) => document.getElementById(id);
const state = { config: null, view: null, token: sessionStorage.getItem(TOKEN_KEY) || "" };

// -- the API

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error && body.error.message) || `HTTP ${status}`);
    this.status = status;
    this.code = body && body.error && body.error.code;
  }
}

async function api(path, { method = "GET", body, base = "" } = {}) {
  const headers = { Authorization: `Bearer ${state.token}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(base + path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let data = null;
  try {
    data = await response.json();
  } catch (_) {
    data = null;
  }
  if (!response.ok) {
    if (response.status === 401) askToken("The token was refused: enter a valid one.");
    throw new ApiError(response.status, data);
  }
  return data;
}

// -- the token, kept for this tab's session

function askToken(message) {
  const dialog = $("token-dialog");
  if (dialog.open) return;
  $("token-input").value = "";
  dialog.querySelector("p").textContent =
    message || "Kept in this browser tab only (session storage).";
  dialog.showModal();
}

function setupToken() {
  $("token-button").addEventListener("click", () => askToken());
  $("token-cancel").addEventListener("click", () => $("token-dialog").close());
  $("token-form").addEventListener("submit", (event) => {
    const token = $("token-input").value.trim();
    if (!token) {
      event.preventDefault();
      return;
    }
    state.token = token;
    sessionStorage.setItem(TOKEN_KEY, token);
    route();
  });
}

// -- small helpers

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function badge(status) {
  return el("span", { class: `badge ${status}`, text: status.replace("_", " ") });
}

function when(iso) {
  if (!iso) return "—";
  const date = new Date(iso);
  const today = new Date().toDateString() === date.toDateString();
  return today ? date.toLocaleTimeString() : date.toLocaleString();
}

function shortId(id) {
  return id.slice(-12);
}

function commandOf(spec) {
  const command = spec.command || [];
  if (command.length === 3 && command[0] === "sh" && command[1] === "-c") return command[2];
  return command.join(" ");
}

function notice(text) {
  const box = $("notice");
  box.textContent = text || "";
  box.hidden = !text;
}

// -- routing: #/ (jobs) and #/jobs/<id>

let stopView = () => {};

function route() {
  stopView();
  notice("");
  if (!state.token) askToken();
  const match = location.hash.match(/^#\/jobs\/([0-9a-f-]{36})$/i);
  $("jobs-view").hidden = !!match;
  $("job-view").hidden = !match;
  stopView = match ? showJob(match[1]) : showJobs();
}

// -- the jobs list

function showJobs() {
  let timer = null;
  let stopped = false;

  async function refresh() {
    if (!state.token) return;
    try {
      const page = await api("/v1/jobs?limit=100");
      renderJobs(page.jobs);
      $("jobs-updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
      notice("");
    } catch (error) {
      if (error.status !== 401) notice(`Could not load the jobs: ${error.message}`);
    }
  }

  async function loop() {
    await refresh();
    if (!stopped) timer = setTimeout(loop, JOBS_POLL_MS);
  }
  loop();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

function renderJobs(jobs) {
  const body = $("jobs-body");
  const rows = jobs.map((job) => {
    const row = el(
      "tr",
      { "data-id": job.id },
      el("td", { class: "id" }, el("a", { href: `#/jobs/${job.id}`, text: shortId(job.id) })),
      el("td", { class: "status" }, badge(job.status)),
      el(
        "td",
        { class: "what" },
        el("span", { class: "image", text: job.spec.image }),
        document.createTextNode(" "),
        document.createTextNode(commandOf(job.spec)),
      ),
      el("td", { class: "attempt", text: `${job.attempt}/${job.max_attempts}` }),
      el("td", { class: "created", text: when(job.created_at) }),
    );
    row.addEventListener("click", () => {
      location.hash = `#/jobs/${job.id}`;
    });
    return row;
  });
  body.replaceChildren(...rows);
  $("jobs-empty").hidden = jobs.length > 0;
}

function setupSubmit() {
  $("submit-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = event.target;
    const image = form.image.value.trim();
    const line = form.command.value.trim();
    const spec = { image };
    if (line) spec.command = ["sh", "-c", line];
    const error = $("submit-error");
    error.hidden = true;
    form.querySelector("button").disabled = true;
    try {
      const job = await api("/v1/jobs", { method: "POST", body: spec });
      location.hash = `#/jobs/${job.id}`;
    } catch (failure) {
      error.textContent = failure.message;
      error.hidden = false;
    } finally {
      form.querySelector("button").disabled = false;
    }
  });
}

// -- a job: its facts, history and live log

function showJob(jobId) {
  const stops = [];
  let stopped = false;
  $("job-id").textContent = jobId;
  $("job-status").replaceWith(el("span", { id: "job-status", class: "badge", text: "…" }));
  $("job-facts").replaceChildren();
  $("events").replaceChildren();
  $("spec").textContent = "";
  $("cancel-button").hidden = true;

  let lastVersion = 0;
  let timer = null;

  async function refresh() {
    try {
      const job = await api(`/v1/jobs/${jobId}`);
      renderJob(job);
      if (job.version !== lastVersion) {
        lastVersion = job.version;
        const history = await api(`/v1/jobs/${jobId}/events`);
        renderEvents(history.events);
        renderUsage(history.events, job);
      }
      if (FINISHED.has(job.status)) return false;
    } catch (error) {
      if (error.status === 404) notice("No such job (or it belongs to another tenant).");
      else if (error.status !== 401) notice(`Could not load the job: ${error.message}`);
    }
    return true;
  }

  async function loop() {
    const again = await refresh();
    if (again && !stopped) timer = setTimeout(loop, JOB_POLL_MS);
  }
  loop();
  stops.push(() => clearTimeout(timer));

  const log = new LogTail(jobId, () => {
    // The log ended: the job is finished; show its final state now.
    clearTimeout(timer);
    if (!stopped) refresh();
  });
  stops.push(() => log.stop());

  const cancel = $("cancel-button");
  const onCancel = async () => {
    cancel.disabled = true;
    try {
      renderJob(await api(`/v1/jobs/${jobId}/cancel`, { method: "POST" }));
    } catch (error) {
      notice(`Could not cancel: ${error.message}`);
    } finally {
      cancel.disabled = false;
    }
  };
  cancel.addEventListener("click", onCancel);
  stops.push(() => cancel.removeEventListener("click", onCancel));

  return () => {
    stopped = true;
    for (const stop of stops) stop();
  };
}

function renderJob(job) {
  $("job-status").replaceWith(
    Object.assign(badge(job.status), { id: "job-status" }),
  );
  const facts = [
    ["Image", job.spec.image],
    ["Command", commandOf(job.spec) || "(the image's)"],
    ["Attempt", `${job.attempt} of ${job.max_attempts}`],
    ["Exit code", job.exit_code === null ? "—" : String(job.exit_code)],
    ["Created", when(job.created_at)],
    ["Started", when(job.started_at)],
    ["Finished", when(job.finished_at)],
    ["Queue", job.spec.queue],
  ];
  if (job.reason) facts.push(["Reason", job.reason]);
  if (job.error) facts.push(["Error", job.error]);
  if (job.usage) facts.push(["Usage", usageWords(job)]);
  if (job.limits_hit && job.limits_hit.length) facts.push(["Limits hit", limitsWords(job.limits_hit)]);
  $("job-facts").replaceChildren(
    ...facts.map(([name, value]) =>
      el("div", name === "Command" ? { class: "wide" } : {}, el("dt", { text: name }), el("dd", { text: value })),
    ),
  );
  $("spec").textContent = JSON.stringify(job.spec, null, 2);
  $("cancel-button").hidden = FINISHED.has(job.status);
}

function renderEvents(events) {
  $("events").replaceChildren(
    ...events.map((event) =>
      el(
        "li",
        {},
        el("span", { class: "v", text: String(event.version) }),
        el("span", { class: "type", text: event.type.replaceAll("_", " ") }),
        el("span", { class: "at", text: when(event.at) }),
      ),
    ),
  );
}

// -- what the job used: in words, and a chart of CPU and memory drawn from its history

function figure(value) {
  const n = Number(value) || 0;
  if (n >= 10) return n.toFixed(0);
  return n < 1 ? String(Number(n.toPrecision(2))) : n.toFixed(1);
}

function usageWords(job) {
  const u = job.usage;
  const r = job.spec.resources || {};
  const parts = [
    `CPU ${figure(u.cpu_s)} s`,
    `peak ${figure(u.memory_peak_mb)} MiB` + (r.memory_mb ? ` of ${r.memory_mb}` : ""),
    r.pids ? `${u.pids_peak} of ${r.pids} processes` : `${u.pids_peak} processes`,
  ];
  if (u.io_read_mb || u.io_write_mb) {
    parts.push(`read ${figure(u.io_read_mb)} MiB, wrote ${figure(u.io_write_mb)} MiB`);
  }
  if (u.cpu_throttled_s) parts.push(`throttled ${figure(u.cpu_throttled_s)} s`);
  return parts.join(" · ");
}

const LIMIT_NAMES = { memory: "memory", pids: "processes", cpu: "CPU (throttled)" };

function limitsWords(hits) {
  return hits.map((hit) => (hit.startsWith("disk:") ? `${hit.slice(5)} full` : LIMIT_NAMES[hit] || hit)).join(", ");
}

// Samples of the last attempt: its usage_recorded events, and its end if that carried usage.
function usageSamples(events, job) {
  const points = [];
  for (const event of events) {
    const usage = event.data && event.data.usage;
    if (!usage || event.data.attempt !== job.attempt) continue;
    points.push({ t: Date.parse(event.at) / 1000, cpu: usage.cpu_s, memory: usage.memory_peak_mb });
  }
  if (job.started_at && points.length) points.unshift({ t: Date.parse(job.started_at) / 1000, cpu: 0, memory: 0 });
  return points;
}

function renderUsage(events, job) {
  const box = $("job-usage");
  const points = usageSamples(events, job);
  box.hidden = points.length < 2;
  if (box.hidden) return;
  const canvas = $("usage-chart");
  const limits = job.spec.resources || {};
  // CPU in cores over each interval between two samples, drawn as steps.
  const cores = [];
  for (let i = 1; i < points.length; i++) {
    const dt = points[i].t - points[i - 1].t;
    const v = dt > 0 ? Math.max(0, (points[i].cpu - points[i - 1].cpu) / dt) : 0;
    cores.push({ t: points[i - 1].t, v }, { t: points[i].t, v });
  }
  const memory = points.map((p) => ({ t: p.t, v: p.memory }));
  const cpuTop = Math.max(limits.cpus || 1, ...cores.map((p) => p.v));
  const memoryTop = Math.max(limits.memory_mb || 1, ...memory.map((p) => p.v));
  drawChart(canvas, points[0].t, points[points.length - 1].t, [
    { points: cores, top: cpuTop, colour: "#2457d6" },
    { points: memory, top: memoryTop, colour: "#d97706" },
  ]);
  canvas.dataset.samples = String(points.length);
  const lastCores = cores[cores.length - 1].v;
  $("usage-legend").replaceChildren(
    el("span", { class: "cpu", text: `■ CPU ${figure(lastCores)} of ${figure(limits.cpus || 1)} cores` }),
    " · ",
    el("span", { class: "memory", text: `■ peak memory ${figure(memory[memory.length - 1].v)} of ${limits.memory_mb} MiB` }),
    FINISHED.has(job.status) ? " (final)" : " (live)",
  );
}

function drawChart(canvas, start, end, series) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || canvas.width;
  const height = canvas.clientHeight || canvas.height;
  canvas.width = Math.round(width * ratio);
  canvas.height = Math.round(height * ratio);
  const g = canvas.getContext("2d");
  g.setTransform(ratio, 0, 0, ratio, 0, 0);
  g.clearRect(0, 0, width, height);
  const pad = 8;
  const span = Math.max(end - start, 1);
  g.strokeStyle = "#e2e5ea";
  g.lineWidth = 1;
  for (const f of [0, 0.5, 1]) {
    const y = pad + (height - 2 * pad) * f;
    g.beginPath();
    g.moveTo(pad, y);
    g.lineTo(width - pad, y);
    g.stroke();
  }
  for (const { points, top, colour } of series) {
    g.strokeStyle = colour;
    g.lineWidth = 2;
    g.beginPath();
    points.forEach((p, i) => {
      const x = pad + ((p.t - start) / span) * (width - 2 * pad);
      const y = height - pad - (p.v / top) * (height - 2 * pad);
      if (i === 0) g.moveTo(x, y);
      else g.lineTo(x, y);
    });
    g.stroke();
  }
}

// -- the live log

class LogTail {
  constructor(jobId, onEnd) {
    this.jobId = jobId;
    this.onEnd = onEnd;
    this.last = 0; // the last seq shown: every line up to it is on screen (or was)
    this.shown = 0;
    this.failures = 0;
    this.socket = null;
    this.timer = null;
    this.stopped = false;
    this.ended = false;
    this.pending = [];
    this.frame = null;
    this.box = $("log");
    this.box.replaceChildren();
    $("log-foot").textContent = "";
    this.setState("connecting");
    this.connect();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.frame) cancelAnimationFrame(this.frame);
    if (this.socket) this.socket.close(1000);
  }

  setState(text, cls = "") {
    const node = $("log-state");
    node.textContent = text;
    node.className = `log-state ${cls}`;
  }

  connect() {
    if (this.stopped) return;
    const base = state.config.logs_url.replace(/^http/, "ws");
    const url = `${base}/v1/jobs/${this.jobId}/logs/ws?after=${this.last}`;
    let opened = false;
    const socket = new WebSocket(url, ["dockyard.v1", `bearer.${state.token}`]);
    this.socket = socket;
    socket.onopen = () => {
      opened = true;
      this.failures = 0;
      this.setState("live", "live");
    };
    socket.onmessage = (message) => this.take(JSON.parse(message.data));
    socket.onclose = (event) => {
      if (this.socket !== socket || this.stopped || this.ended) return;
      if (!opened) this.explain(); // refused before the upgrade: find out why
      this.retry(event.code === 1013 ? 0 : this.failures++);
    };
  }

  async explain() {
    try {
      await api(`/v1/jobs/${this.jobId}/logs?after=${this.last}&limit=1`, {
        base: state.config.logs_url,
      });
    } catch (error) {
      if (error.status === 404) {
        this.stopped = true;
        this.setState("not found");
      }
    }
  }

  retry(failures) {
    if (this.stopped) return;
    // Exponential backoff with full jitter: 0.5 s, 1 s, 2 s ... up to 15 s.
    const cap = Math.min(15000, 500 * 2 ** failures);
    const delay = failures === 0 ? 100 : Math.round(cap / 2 + (Math.random() * cap) / 2);
    this.setState(`reconnecting in ${(delay / 1000).toFixed(1)} s`, "retrying");
    this.timer = setTimeout(() => this.connect(), delay);
  }

  take(frame) {
    if (frame.type === "end") {
      this.ended = true;
      this.flush();
      const code = frame.exit_code === null ? "" : `, exit code ${frame.exit_code}`;
      this.setState(`ended: ${frame.status.replace("_", " ")}${code}`);
      this.onEnd(frame);
      return;
    }
    for (const line of frame.lines) {
      if (line.seq <= this.last) continue; // already shown (a resend after a reconnect)
      this.last = line.seq;
      this.pending.push(line);
    }
    if (!this.frame) this.frame = requestAnimationFrame(() => this.flush());
  }

  flush() {
    this.frame = null;
    if (!this.pending.length) return;
    const box = this.box;
    const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
    const lines = this.pending.splice(0, this.pending.length);
    const fragment = document.createDocumentFragment();
    for (const line of lines.slice(-MAX_LOG_LINES)) {
      const row = document.createElement("div");
      row.className = `l ${line.stream}`;
      row.dataset.seq = line.seq;
      const n = document.createElement("span");
      n.className = "n";
      n.textContent = line.seq;
      const t = document.createElement("span");
      t.className = "t";
      t.textContent = line.text;
      row.append(n, t);
      fragment.append(row);
    }
    box.append(fragment);
    this.shown += lines.length;
    let extra = box.childElementCount - MAX_LOG_LINES;
    while (extra-- > 0) box.firstElementChild.remove();
    const hidden = this.shown - Math.min(this.shown, MAX_LOG_LINES);
    $("log-foot").textContent = hidden
      ? `${this.shown} lines; the first ${hidden} are no longer shown here.`
      : `${this.shown} lines`;
    if ($("follow").checked && atBottom) box.scrollTop = box.scrollHeight;
  }
}

// -- start

async function start() {
  setupToken();
  setupSubmit();
  state.config = await (await fetch("/config.json")).json();
  window.addEventListener("hashchange", route);
  route();
}

start();
