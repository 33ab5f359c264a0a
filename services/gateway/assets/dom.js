// Small DOM and formatting helpers shared by the dashboard's pages. Every
// text goes in through textContent (never innerHTML), so nothing a task,
// an agent or a tool wrote can become markup.

const SVG_NS = "http://www.w3.org/2000/svg";

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

function setAttrs(el, attrs) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.setAttribute("class", v);
    else if (k === "testid") el.dataset.testid = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "value" && "value" in el) el.value = v;
    else if (v === true) el.setAttribute(k, "");
    else el.setAttribute(k, String(v));
  }
}

/** An HTML element: h("a", {href: "#/x", class: "c"}, "text", child). */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

/** An SVG element, the same way. */
export function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

/** A line icon (24×24, stroked) from path data. */
export function icon(...paths) {
  return s("svg", { viewBox: "0 0 24 24", "aria-hidden": "true" }, paths.map((d) => s("path", { d })));
}

export const ICONS = {
  state: ["M12 3v4", "M12 17v4", "M3 12h4", "M17 12h4", "M12 8a4 4 0 1 0 0 8a4 4 0 0 0 0-8z"],
  message: ["M4 5h16v11H9l-5 4z"],
  tool: ["M14.7 6.3a4 4 0 0 0-5.4 5.4L3 18l3 3 6.3-6.3a4 4 0 0 0 5.4-5.4l-2.6 2.6-2.4-.6-.6-2.4z"],
  result: ["M4 12l5 5L20 6"],
  memory: ["M4 6c0-1.7 3.6-3 8-3s8 1.3 8 3-3.6 3-8 3-8-1.3-8-3z", "M4 6v12c0 1.7 3.6 3 8 3s8-1.3 8-3V6", "M4 12c0 1.7 3.6 3 8 3s8-1.3 8-3"],
  flow: ["M5 12h14", "M13 6l6 6-6 6"],
  verdict: ["M12 3l2.6 5.3 5.9.9-4.3 4.1 1 5.8L12 16.4 6.8 19.1l1-5.8L3.5 9.2l5.9-.9z"],
  tokens: ["M12 3a9 9 0 1 0 0 18a9 9 0 0 0 0-18z", "M9 9h6", "M9 15h6", "M12 7v10"],
  start: ["M7 4l12 8-12 8z"],
  done: ["M4 12l5 5L20 6"],
  fail: ["M6 6l12 12", "M18 6L6 18"],
  refresh: ["M20 11a8 8 0 1 0-2.3 5.7", "M20 4v7h-7"],
  sun: ["M12 8a4 4 0 1 0 0 8a4 4 0 0 0 0-8z", "M12 2v2", "M12 20v2", "M4.9 4.9l1.4 1.4", "M17.7 17.7l1.4 1.4", "M2 12h2", "M20 12h2", "M4.9 19.1l1.4-1.4", "M17.7 6.3l1.4-1.4"],
  moon: ["M21 12.8A9 9 0 1 1 11.2 3a7 7 0 0 0 9.8 9.8z"],
  approval: ["M12 3l8 3v6c0 4.8-3.4 8-8 9-4.6-1-8-4.2-8-9V6z", "M9 12l2 2 4-4"],
};

/** Replaces the children of `el`. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** "TASK_STATE_SUCCEEDED" → "Succeeded"; "BREAKER_STATE_HALF_OPEN" → "Half open". */
export function enumLabel(value, prefix) {
  if (!value) return "—";
  const bare = prefix && value.startsWith(prefix) ? value.slice(prefix.length) : value;
  const words = bare.toLowerCase().replaceAll("_", " ");
  return words.charAt(0).toUpperCase() + words.slice(1);
}

const STATE_TONE = {
  TASK_STATE_PENDING: "",
  TASK_STATE_QUEUED: "info",
  TASK_STATE_RUNNING: "info live",
  TASK_STATE_SUCCEEDED: "ok",
  TASK_STATE_FAILED: "err",
  TASK_STATE_CANCELLED: "warn",
  TASK_STATE_TIMED_OUT: "err",
  TASK_STATE_NEEDS_REVIEW: "violet",
  TASK_STATE_INPUT_REQUIRED: "attn live",
};

/** What a state means, where its name alone does not say. */
const STATE_HINT = {
  TASK_STATE_INPUT_REQUIRED: "A tool call waits for a person's approval",
  TASK_STATE_NEEDS_REVIEW: "A judge escalated the output for a person to review",
};

export const TERMINAL = new Set([
  "TASK_STATE_SUCCEEDED",
  "TASK_STATE_FAILED",
  "TASK_STATE_CANCELLED",
  "TASK_STATE_TIMED_OUT",
  "TASK_STATE_NEEDS_REVIEW",
]);

export const TASK_STATES = [
  "TASK_STATE_PENDING",
  "TASK_STATE_QUEUED",
  "TASK_STATE_RUNNING",
  "TASK_STATE_INPUT_REQUIRED",
  "TASK_STATE_SUCCEEDED",
  "TASK_STATE_FAILED",
  "TASK_STATE_CANCELLED",
  "TASK_STATE_TIMED_OUT",
  "TASK_STATE_NEEDS_REVIEW",
];

/** A task state as a coloured badge, with the raw state in data-state. */
export function stateBadge(state, testid) {
  const value = state || "TASK_STATE_UNSPECIFIED";
  return h(
    "span",
    { class: `badge ${STATE_TONE[value] || ""}`, testid, title: STATE_HINT[value], dataset: { state: value } },
    enumLabel(value, "TASK_STATE_"),
  );
}

/** A badge of a given tone. */
export function badge(text, tone = "", attrs = {}) {
  return h("span", { ...attrs, class: `badge ${tone}` }, text);
}

/** A number from a proto3 JSON value (64-bit integers arrive as strings). */
export function num(value) {
  const n = Number(value ?? 0);
  return Number.isFinite(n) ? n : 0;
}

export function fmtInt(value) {
  return num(value).toLocaleString("en-US");
}

export function fmtUsd(value) {
  const n = num(value);
  if (n === 0) return "$0";
  if (n < 0.01) return `$${n.toFixed(4)}`;
  return `$${n.toFixed(2)}`;
}

export function parseTime(value) {
  if (!value) return null;
  const t = Date.parse(value);
  return Number.isNaN(t) ? null : t;
}

/** "12s ago", "3m ago", "2h ago", else a date. */
export function ago(value, now = Date.now()) {
  const t = parseTime(value);
  if (t === null) return "—";
  const secs = Math.max(0, Math.round((now - t) / 1000));
  if (secs < 5) return "just now";
  if (secs < 60) return `${secs}s ago`;
  if (secs < 3600) return `${Math.floor(secs / 60)}m ago`;
  if (secs < 86400) return `${Math.floor(secs / 3600)}h ago`;
  return new Date(t).toLocaleDateString(undefined, { month: "short", day: "numeric" });
}

/** A time to come as "in 40s", "in 12m", "in 5h", "in 3d"; "passed" once it has. */
export function until(value, now = Date.now()) {
  const t = parseTime(value);
  if (t === null) return "—";
  const secs = Math.round((t - now) / 1000);
  if (secs <= 0) return "passed";
  if (secs < 60) return `in ${secs}s`;
  if (secs < 3600) return `in ${Math.floor(secs / 60)}m`;
  if (secs < 86400) return `in ${Math.floor(secs / 3600)}h`;
  return `in ${Math.floor(secs / 86400)}d`;
}

/** Re-renders the relative times under `root` (elements with data-ago or data-until). */
export function refreshTimes(root, now = Date.now()) {
  for (const el of root.querySelectorAll("[data-ago]")) el.textContent = ago(el.dataset.ago, now);
  for (const el of root.querySelectorAll("[data-until]")) el.textContent = until(el.dataset.until, now);
}

/** A duration in ms as "850 ms", "4.2 s", "3 m 10 s". */
export function fmtDuration(ms) {
  if (ms === null || ms === undefined || ms < 0) return "—";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
  const m = Math.floor(ms / 60000);
  const sec = Math.round((ms % 60000) / 1000);
  if (m < 60) return `${m} m ${sec} s`;
  return `${Math.floor(m / 60)} h ${m % 60} m`;
}

export function fmtTime(value) {
  const t = parseTime(value);
  if (t === null) return "—";
  return new Date(t).toLocaleString(undefined, {
    month: "short",
    day: "numeric",
    hour: "2-digit",
    minute: "2-digit",
    second: "2-digit",
  });
}

/** The first `n` characters of a text, with an ellipsis when cut. */
export function clip(text, n) {
  const t = String(text ?? "");
  return t.length > n ? `${t.slice(0, n - 1)}…` : t;
}

export function shortId(id) {
  const t = String(id ?? "");
  return t.length > 16 ? `${t.slice(0, 8)}…${t.slice(-6)}` : t;
}

/** JSON for people: pretty, and bounded. */
export function pretty(value, limit = 4000) {
  let text;
  try {
    text = typeof value === "string" ? value : JSON.stringify(value, null, 2);
  } catch {
    text = String(value);
  }
  return clip(text ?? "", limit);
}
