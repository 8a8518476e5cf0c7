// The taskfleet operator console: plain JavaScript over the API's own routes, rendered with DOM
// calls (textContent, never innerHTML), so nothing a task carries can run as markup here.
"use strict";

const TERMINAL = new Set(["COMPLETED", "FAILED", "CANCELLED"]);
const STATUSES = ["PENDING", "PROCESSING", "COMPLETED", "FAILED", "CANCELLED"];
const MEDIA = [
  [/\.(png|jpe?g|webp|gif|bmp|svg)$/i, "img"],
  [/\.(mp4|webm|mov|m4v)$/i, "video"],
  [/\.(wav|mp3|ogg|oga|flac|m4a|aac|opus)$/i, "audio"],
];

let cleanup = [];  // what the current page started (timers, event streams), undone on leaving it

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "class") node.className = value;
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function table(headers, rows) {
  return el("table", {}, el("thead", {}, el("tr", {}, headers.map((h) => el("th", {}, h)))),
    el("tbody", {}, rows.map((cells) => el("tr", {}, cells.map((c) => el("td", {}, c))))));
}

function cookie(name) {
  const found = document.cookie.split("; ").find((c) => c.startsWith(name + "="));
  return found ? decodeURIComponent(found.slice(name.length + 1)) : "";
}

class ApiError extends Error {}

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (method !== "GET") headers["X-CSRF-Token"] = cookie("taskfleet_csrf");
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method, headers, credentials: "same-origin", body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 401) {
    showLogin("Your session has ended: sign in again.");
    throw new ApiError("signed out");
  }
  const data = response.status === 204 ? null : await response.json();
  if (!response.ok) throw new ApiError(data && data.error ? `${data.error.code}: ${data.error.message}` : `HTTP ${response.status}`);
  return data;
}

function ago(iso) {
  if (!iso) return "";
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  return `${(s / 3600).toFixed(1)} h ago`;
}

function seconds(value) {
  return value === null || value === undefined ? "–" : `${Number(value).toFixed(2)} s`;
}

function statusBadge(status) {
  return el("span", { class: `status status-${status}` }, status);
}

function taskLink(id) {
  return el("a", { href: `#/task/${encodeURIComponent(id)}` }, id);
}

function show(...nodes) {
  document.getElementById("main").replaceChildren(...nodes);
}

function failure(error) {
  if (!(error instanceof ApiError && error.message === "signed out")) {
    show(el("p", { class: "error", role: "alert" }, String(error.message || error)));
  }
}

// -- sign-in ------------------------------------------------------------------------------
function showLogin(message) {
  stopPage();
  document.getElementById("nav").hidden = true;
  document.getElementById("main").replaceChildren();
  document.getElementById("login").hidden = false;
  document.getElementById("login-error").textContent = message || "";
  document.getElementById("token").focus();
}

async function signIn(event) {
  event.preventDefault();
  const input = document.getElementById("token");
  const response = await fetch("/ui/login", {
    method: "POST", credentials: "same-origin",
    headers: { "Content-Type": "application/json", Accept: "application/json" },
    body: JSON.stringify({ token: input.value }),
  });
  input.value = "";  // the token goes no further than this request
  if (!response.ok) {
    document.getElementById("login-error").textContent = "That is not an admin token.";
    return;
  }
  enter();
}

async function signOut() {
  await fetch("/ui/logout", { method: "POST", credentials: "same-origin", headers: { "X-CSRF-Token": cookie("taskfleet_csrf") } });
  showLogin("Signed out.");
}

function enter() {
  document.getElementById("login").hidden = true;
  document.getElementById("nav").hidden = false;
  route();
}

// -- pages --------------------------------------------------------------------------------
function stopPage() {
  for (const undo of cleanup) undo();
  cleanup = [];
}

function every(ms, fn) {
  const timer = setInterval(fn, ms);
  cleanup.push(() => clearInterval(timer));
}

async function overview() {
  const render = async () => {
    const [stats, fleet] = await Promise.all([api("GET", "/api/stats"), api("GET", "/api/consumers")]);
    show(
      el("h2", {}, "Queues"),
      table(
        ["workflow", "pending", "processing", "done 5 min", "failed 5 min", "done / min (5 min)", "done 1 h", "failed 1 h",
          "wait p50 / p95", "run p50 / p95", "oldest pending"],
        stats.workflows.map((w) => [
          el("a", { href: `#/tasks?workflow=${encodeURIComponent(w.workflow)}` }, w.workflow),
          w.pending, w.processing, w.completed_5m, w.failed_5m, w.completed_per_min_5m, w.completed_1h, w.failed_1h,
          `${seconds(w.wait_s.p50)} / ${seconds(w.wait_s.p95)}`, `${seconds(w.run_s.p50)} / ${seconds(w.run_s.p95)}`,
          w.pending ? seconds(w.oldest_pending_age_s) : "–",
        ]),
      ),
      el("p", { class: "muted" }, `${fleet.consumers.length} consumer(s) reporting · `,
        el("a", { href: "#/consumers" }, "consumers and model servers"), ` · updated ${new Date().toLocaleTimeString()}`),
    );
  };
  await render();
  every(5000, () => render().catch(failure));
}

function tasksHash(params) {
  const query = new URLSearchParams(Object.entries(params).filter(([, v]) => v)).toString();
  return `#/tasks${query ? "?" + query : ""}`;
}

async function tasks(params) {
  const status = params.get("status") || "";
  const workflow = params.get("workflow") || "";
  const cursor = params.get("cursor") || "";
  const query = new URLSearchParams({ limit: "25" });
  if (status) query.set("status", status);
  if (workflow) query.set("workflow", workflow);
  if (cursor) query.set("cursor", cursor);
  const [page, stats] = await Promise.all([api("GET", `/api/tasks?${query}`), api("GET", "/api/stats")]);
  const statusSelect = el("select", { id: "filter-status", "aria-label": "status" }, el("option", { value: "" }, "any status"),
    STATUSES.map((s) => el("option", { value: s, selected: s === status }, s)));
  const workflowSelect = el("select", { id: "filter-workflow", "aria-label": "workflow" }, el("option", { value: "" }, "any workflow"),
    stats.workflows.map((w) => el("option", { value: w.workflow, selected: w.workflow === workflow }, w.workflow)));
  const filters = el("form", { class: "filters", onsubmit: (e) => {
    e.preventDefault();
    location.hash = tasksHash({ status: statusSelect.value, workflow: workflowSelect.value });
  } }, statusSelect, workflowSelect, el("button", { type: "submit" }, "Filter"));
  const pages = el("p", { class: "pages" },
    cursor ? el("a", { href: tasksHash({ status, workflow }) }, "« newest") : null,
    cursor ? el("a", { href: "#", onclick: (e) => { e.preventDefault(); history.back(); } }, "‹ previous") : null,
    page.next_cursor ? el("a", { id: "next-page", href: tasksHash({ status, workflow, cursor: page.next_cursor }) }, "next ›") : null);
  show(
    el("h2", {}, "Tasks"),
    filters,
    page.items.length === 0 ? el("p", { class: "muted" }, "No tasks.") : table(
      ["task", "workflow", "status", "progress", "attempts", "created", "updated"],
      page.items.map((t) => [taskLink(t.task_id), t.workflow, statusBadge(t.status),
        t.status === "PROCESSING" ? `${Math.round(t.progress.percent)}%` : "", `${t.attempts}/${t.max_attempts}`,
        ago(t.created_at), ago(t.updated_at)]),
    ),
    pages,
  );
}

function mediaKind(url) {
  const path = url.split(/[?#]/)[0];
  for (const [pattern, kind] of MEDIA) if (pattern.test(path)) return kind;
  return null;
}

function resultUrls(value, found = []) {
  if (typeof value === "string") {
    if (/^https?:\/\//i.test(value) || value.startsWith("/files/")) found.push(value);
  } else if (Array.isArray(value)) {
    value.forEach((v) => resultUrls(v, found));
  } else if (value && typeof value === "object") {
    Object.values(value).forEach((v) => resultUrls(v, found));
  }
  return found;
}

function previews(output) {
  const items = [];
  for (const url of [...new Set(resultUrls(output))]) {
    const kind = mediaKind(url);
    if (!kind) continue;
    const media = kind === "img" ? el("img", { src: url, alt: "result image", loading: "lazy" })
      : el(kind, { src: url, controls: true, preload: "metadata" });
    items.push(el("figure", { class: "preview" }, media, el("figcaption", {}, el("a", { href: url, target: "_blank", rel: "noopener" }, url))));
  }
  return items.length ? el("section", {}, el("h3", {}, "Previews"), items) : null;
}

function renderTask(task, actions) {
  const progress = task.status === "PROCESSING" || task.progress.percent > 0
    ? el("p", {}, el("progress", { id: "progress", max: "100", value: String(task.progress.percent) }),
      ` ${Math.round(task.progress.percent)}% ${task.progress.message || ""}`)
    : null;
  return [
    el("h2", {}, "Task ", el("code", { id: "task-id" }, task.task_id)),
    el("p", {}, statusBadge(task.status), ` · ${task.workflow} · attempt ${task.attempts} of ${task.max_attempts}`,
      task.cancel_requested && !TERMINAL.has(task.status) ? " · cancel requested" : "",
      task.parent_id ? el("span", {}, " · stage ", task.stage, " of ", taskLink(task.parent_id)) : null),
    progress,
    actions,
    task.error ? el("p", { class: "error" }, `${task.error.code}: ${task.error.message}`) : null,
    task.stages ? el("section", {}, el("h3", {}, "Stages"), table(["stage", "status", "done", "tasks"],
      task.stages.map((s) => [s.name, statusBadge(s.status), `${s.completed}/${s.total}`,
        el("span", {}, s.task_ids.map((id, i) => [i ? " " : "", taskLink(id)]))]))) : null,
    previews(task.output),
    el("h3", {}, "Input"), el("pre", {}, JSON.stringify(task.input, null, 2)),
    el("h3", {}, "Output"), el("pre", { id: "output" }, JSON.stringify(task.output, null, 2)),
    el("h3", {}, "History"),
    task.history.length ? table(["consumer", "host", "started", "ended", "outcome", "error"],
      task.history.map((h) => [h.consumer_id, h.host, h.started_at, h.ended_at || "", h.outcome || "running",
        h.error ? `${h.error.code}: ${h.error.message}` : ""])) : el("p", { class: "muted" }, "Not started yet."),
    el("p", { class: "muted" }, `created ${task.created_at} · updated ${task.updated_at}`,
      task.finished_at ? ` · finished ${task.finished_at}` : ""),
  ];
}

async function taskPage(id) {
  let current = null;
  const message = el("p", { role: "status", class: "muted" });
  const act = (verb) => async () => {
    try {
      await api("POST", `/api/tasks/${encodeURIComponent(id)}/${verb}`);
      message.textContent = verb === "cancel" ? "Cancel sent." : "Sent back to the queue.";
      if (verb === "retry") follow();  // its stream had closed at the terminal state
    } catch (error) {
      message.textContent = error.message;
    }
  };
  const actions = () => el("div", { class: "actions" },
    !TERMINAL.has(current.status) ? el("button", { id: "cancel", onclick: act("cancel") }, "Cancel") : null,
    current.status === "FAILED" || current.status === "CANCELLED" ? el("button", { id: "retry", onclick: act("retry") }, "Retry") : null,
    message);
  const render = () => show(...renderTask(current, actions()));
  const follow = () => {
    // The events stream sends the task at once and on every change; it closes after the end,
    // and EventSource would reconnect, so it is closed here at the terminal state.
    const stream = new EventSource(`/api/tasks/${encodeURIComponent(id)}/events`);
    cleanup.push(() => stream.close());
    stream.addEventListener("task", (event) => {
      current = JSON.parse(event.data);
      if (TERMINAL.has(current.status)) stream.close();
      render();
    });
    stream.onerror = () => {
      if (stream.readyState === EventSource.CLOSED && current === null) show(el("p", { class: "error" }, `No task ${id}.`));
    };
  };
  current = await api("GET", `/api/tasks/${encodeURIComponent(id)}`);
  render();
  if (!TERMINAL.has(current.status)) follow();
}

async function consumers() {
  const render = async () => {
    const fleet = await api("GET", "/api/consumers");
    const servers = new Map();
    for (const c of fleet.consumers) {
      for (const s of c.model_servers) {
        const seen = servers.get(s.url) || { ...s, in_flight: 0, consumers: [] };
        seen.in_flight += s.in_flight;
        seen.consumers.push(c.consumer_id);
        servers.set(s.url, seen);
      }
    }
    show(
      el("h2", {}, "Consumers"),
      fleet.consumers.length === 0 ? el("p", { class: "muted" }, "No consumer has reported recently.") : table(
        ["consumer", "host", "workflows", "in flight", "last seen", "model servers"],
        fleet.consumers.map((c) => [c.consumer_id, c.host || "", c.workflows.join(", "), `${c.in_flight} / ${c.concurrency}`,
          ago(c.last_seen), c.model_servers.map((s) => el("div", {}, `${s.workflow} ${s.url}: `, el("span", { class: s.status === "healthy" ? "" : "error" }, s.status)))]),
      ),
      el("h2", {}, "Model servers"),
      servers.size === 0 ? el("p", { class: "muted" }, "None reported.") : table(
        ["server", "kind", "status", "circuit", "our calls / capacity", "used by"],
        [...servers.values()].map((s) => [s.url, s.workflow, el("span", { class: s.status === "healthy" ? "" : "error" }, s.status),
          s.circuit || "", `${s.in_flight} / ${s.capacity}`, s.consumers.join(", ")]),
      ),
    );
  };
  await render();
  every(5000, () => render().catch(failure));
}

async function route() {
  stopPage();
  const [path, query] = (location.hash.slice(1) || "/").split("?");
  const params = new URLSearchParams(query || "");
  try {
    if (path.startsWith("/task/")) await taskPage(decodeURIComponent(path.slice("/task/".length)));
    else if (path === "/tasks") await tasks(params);
    else if (path === "/consumers") await consumers();
    else await overview();
  } catch (error) {
    failure(error);
  }
}

async function start() {
  document.getElementById("login-form").addEventListener("submit", signIn);
  document.getElementById("logout").addEventListener("click", signOut);
  document.getElementById("search").addEventListener("submit", (event) => {
    event.preventDefault();
    const id = document.getElementById("search-id").value.trim();
    if (id) location.hash = `#/task/${encodeURIComponent(id)}`;
  });
  window.addEventListener("hashchange", () => {
    if (document.getElementById("login").hidden) route();
  });
  const session = await (await fetch("/ui/session", { credentials: "same-origin" })).json();
  if (session.open) document.getElementById("logout").hidden = true;
  if (session.signed_in) enter();
  else showLogin();
}

start();
