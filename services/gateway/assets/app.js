// The AMAOS dashboard: a small single-page app over the REST API (served
// by services/gateway/src/dashboard.rs; no build step). Hash routes:
//   #/signin  #/tasks  #/tasks/<id>  #/approvals  #/submit  #/teams
//   #/teams/<name>  #/workers  #/audit
// Each page renders into #app and returns a function that stops its timers
// and streams when the page is left.

import { api, ApiError, session, setUnauthenticatedHandler, watchTask } from "./api.js";
import {
  h, fill, icon, ICONS, badge, stateBadge, enumLabel, TASK_STATES, TERMINAL, num, fmtInt, fmtUsd,
  ago, until, refreshTimes, fmtTime, fmtDuration, parseTime, clip, shortId, pretty,
} from "./dom.js";
import { drawGraph, LEGEND, kindName } from "./graph.js";
import { Timeline, GROUPS } from "./timeline.js";

const app = document.getElementById("app");
const nav = document.querySelector("[data-testid=nav]");
const whoami = document.querySelector("[data-testid=whoami]");
const signout = document.querySelector("[data-testid=signout]");
const themeToggle = document.querySelector("[data-testid=theme-toggle]");

const REFRESH_MS = 4000;

// ---- theme: the system's, unless the toggle chose one (kept across visits) ----

function systemDark() {
  return window.matchMedia && window.matchMedia("(prefers-color-scheme: dark)").matches;
}

function effectiveTheme() {
  return document.documentElement.dataset.theme || (systemDark() ? "dark" : "light");
}

function applyTheme(theme) {
  if (theme) document.documentElement.dataset.theme = theme;
  else delete document.documentElement.dataset.theme;
  const dark = effectiveTheme() === "dark";
  fill(themeToggle, icon(...(dark ? ICONS.sun : ICONS.moon)));
  themeToggle.title = dark ? "Switch to light" : "Switch to dark";
  themeToggle.setAttribute("aria-label", themeToggle.title);
}

applyTheme(localStorage.getItem("amaos.theme"));
themeToggle.addEventListener("click", () => {
  const next = effectiveTheme() === "dark" ? "light" : "dark";
  localStorage.setItem("amaos.theme", next);
  applyTheme(next);
});
if (window.matchMedia) {
  window.matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () =>
    applyTheme(localStorage.getItem("amaos.theme")),
  );
}

// ---- session ----

function roles() {
  return (session.principal() || {}).roles || [];
}

function can(...wanted) {
  const have = roles();
  return have.includes("admin") || wanted.some((r) => have.includes(r));
}

let signInNotice = null;

setUnauthenticatedHandler((error) => {
  session.signOut();
  signInNotice = `Signed out: ${error.message}`;
  go("#/signin");
});

signout.addEventListener("click", () => {
  session.signOut();
  signInNotice = "Signed out.";
  go("#/signin");
});

function renderShell(route) {
  const signedIn = Boolean(session.key());
  nav.hidden = !signedIn;
  signout.hidden = !signedIn;
  const p = session.principal();
  fill(
    whoami,
    signedIn && p ? [h("strong", null, p.name || p.subject || "key"), ` · ${p.tenant} · ${(p.roles || []).join(", ")}`] : null,
  );
  for (const a of nav.querySelectorAll("a")) {
    a.classList.toggle("active", a.dataset.route === route);
    if (a.dataset.route === "workers") a.hidden = !can("operator");
    if (a.dataset.route === "audit") a.hidden = !can("operator");
  }
}

// ---- errors ----

/** A visible error: the API's message, its code and field violations, and
 * a `hint` saying what it means here, when the page knows. */
function errorBanner(error, { onClose, hint } = {}) {
  const e = error instanceof ApiError ? error : new ApiError(0, { message: String(error && error.message ? error.message : error) });
  const violations = e.violations();
  const banner = h(
    "div",
    { class: "banner err", role: "alert", testid: "error-banner" },
    h(
      "div",
      null,
      h("div", { class: "title" }, e.status ? `Error ${e.status}${e.code !== undefined ? ` (code ${e.code})` : ""}` : "Error"),
      hint ? h("div", { class: "body hint", testid: "error-hint" }, hint) : null,
      h("div", { class: "body", testid: "error-message" }, e.message),
      violations.length ? h("ul", { class: "body" }, violations.map((v) => h("li", null, v))) : null,
    ),
    h("button", { class: "close", type: "button", "aria-label": "Dismiss", onclick: () => { banner.remove(); onClose && onClose(); } }, "×"),
  );
  return banner;
}

/** A slot for one error at a time. */
function errorSlot() {
  const slot = h("div", { class: "error-slot" });
  slot.show = (error, hint) => fill(slot, error ? errorBanner(error, { hint }) : null);
  slot.clear = () => fill(slot);
  return slot;
}

function pageHead(title, sub, ...actions) {
  return h(
    "div",
    { class: "page-head" },
    h("div", null, h("h1", null, title), sub ? h("div", { class: "sub" }, sub) : null),
    actions.length ? h("div", { class: "actions" }, actions) : null,
  );
}

// ---- the router ----

let stopPage = () => {};

function go(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

function parseHash() {
  const raw = location.hash.replace(/^#\/?/, "");
  const [path, query = ""] = raw.split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  return { parts, query: new URLSearchParams(query) };
}

function route() {
  stopPage();
  stopPage = () => {};
  const { parts, query } = parseHash();
  let page = parts[0] || "tasks";
  if (!session.key() && page !== "signin") {
    page = "signin";
  }
  if (page === "signin" && session.key()) page = "tasks";
  renderShell(page === "task" ? "tasks" : page);
  window.scrollTo(0, 0);
  const pages = {
    signin: () => signInPage(),
    tasks: () => (parts[1] ? taskPage(parts[1]) : tasksPage(query)),
    approvals: () => approvalsPage(query),
    submit: () => submitPage(query),
    teams: () => teamsPage(parts[1]),
    workers: () => workersPage(),
    audit: () => auditPage(),
  };
  const render = pages[page] || (() => notFoundPage());
  const stop = render();
  if (typeof stop === "function") stopPage = stop;
}

window.addEventListener("hashchange", route);

function notFoundPage() {
  fill(app, h("div", { class: "page" }, pageHead("Not found", "There is no such page."), h("a", { href: "#/tasks" }, "Back to tasks")));
}

// ---- sign-in ----

function signInPage() {
  const errors = errorSlot();
  const key = h("input", {
    type: "password",
    name: "key",
    autocomplete: "off",
    placeholder: "amaos_…",
    required: true,
    testid: "signin-key",
  });
  const button = h("button", { class: "primary", type: "submit", testid: "signin-submit" }, "Sign in");
  const form = h(
    "form",
    { testid: "signin-form" },
    h("div", null, h("h1", null, "Sign in"), h("p", null, "Use an AMAOS API key. It is kept in this browser tab only, and forgotten when the tab closes.")),
    signInNotice ? h("div", { class: "banner warn", testid: "signin-notice" }, h("div", { class: "body" }, signInNotice)) : null,
    errors,
    h("label", null, "API key", key),
    button,
  );
  signInNotice = null;
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    errors.clear();
    button.disabled = true;
    const secret = key.value.trim();
    try {
      // Who the key belongs to (and whether it works at all).
      const answer = await api("POST", "/v1/auth:authenticate", { apiKey: secret }, null, null);
      session.signIn(secret, answer.principal || null);
      go("#/tasks");
    } catch (e) {
      errors.show(e);
    } finally {
      button.disabled = false;
    }
  });
  fill(app, h("div", { class: "signin", testid: "signin-page" }, h("div", { class: "panel" }, form)));
  key.focus();
}

// ---- tasks ----

function taskDuration(task) {
  const start = parseTime(task.startedAt) ?? parseTime(task.createdAt);
  const end = parseTime(task.finishedAt) ?? (TERMINAL.has(task.state) ? parseTime(task.updatedAt) : Date.now());
  return start === null || end === null ? null : end - start;
}

function tasksPage(query) {
  const state = query.get("state") || "";
  const team = query.get("team") || "";
  // The tokens of the pages before this one, to go back.
  let tokens = [""];
  let auto = true;
  let timer = null;
  let stopped = false;

  const errors = errorSlot();
  const stateSelect = h(
    "select",
    { testid: "filter-state", "aria-label": "State" },
    h("option", { value: "" }, "All states"),
    TASK_STATES.map((s) => h("option", { value: s }, enumLabel(s, "TASK_STATE_"))),
  );
  stateSelect.value = state;
  const teamSelect = h("select", { testid: "filter-team", "aria-label": "Team" }, h("option", { value: "" }, "All teams"));
  if (team) teamSelect.append(h("option", { value: team }, team));
  teamSelect.value = team;
  const apply = () => {
    const q = new URLSearchParams();
    if (stateSelect.value) q.set("state", stateSelect.value);
    if (teamSelect.value) q.set("team", teamSelect.value);
    go(`#/tasks${q.toString() ? `?${q}` : ""}`);
  };
  stateSelect.addEventListener("change", apply);
  teamSelect.addEventListener("change", apply);
  api("GET", "/v1/teams")
    .then((answer) => {
      for (const t of answer.teams || []) {
        if (t.name !== team) teamSelect.append(h("option", { value: t.name }, t.name));
      }
    })
    .catch(() => {});

  const autoBox = h("input", { type: "checkbox", checked: true, testid: "auto-refresh" });
  autoBox.addEventListener("change", () => {
    auto = autoBox.checked;
    schedule();
  });
  const refresh = h("button", { class: "icon", type: "button", title: "Refresh", "aria-label": "Refresh", testid: "tasks-refresh", onclick: () => load() }, icon(...ICONS.refresh));
  const body = h("tbody", { testid: "tasks-body" });
  const prev = h("button", { type: "button", testid: "page-prev", disabled: true }, "← Newer");
  const next = h("button", { type: "button", testid: "page-next", disabled: true }, "Older →");
  const pageInfo = h("span", { testid: "page-info" }, "");
  let nextToken = "";

  prev.addEventListener("click", () => {
    tokens.pop();
    load();
  });
  next.addEventListener("click", () => {
    tokens.push(nextToken);
    load();
  });

  const row = (task) =>
    h(
      "tr",
      {
        class: "clickable",
        testid: "task-row",
        dataset: { taskId: task.taskId, state: task.state || "" },
        onclick: () => go(`#/tasks/${encodeURIComponent(task.taskId)}`),
      },
      h("td", null, stateBadge(task.state)),
      h("td", { class: "mono nowrap hide-sm" }, h("a", { href: `#/tasks/${encodeURIComponent(task.taskId)}` }, shortId(task.taskId))),
      h("td", { class: "nowrap" }, task.team || "—"),
      h("td", { class: "truncate hide-sm", title: task.input || "" }, task.input || ""),
      h("td", { class: "nowrap muted", title: fmtTime(task.createdAt) }, ago(task.createdAt)),
      h("td", { class: "num nowrap muted hide-sm" }, fmtDuration(taskDuration(task))),
    );

  async function load() {
    clearTimeout(timer);
    try {
      const answer = await api("GET", "/v1/tasks", null, {
        pageSize: 20,
        pageToken: tokens[tokens.length - 1],
        state,
        team,
      });
      if (stopped) return;
      errors.clear();
      const tasks = answer.tasks || [];
      nextToken = answer.nextPageToken || "";
      fill(
        body,
        tasks.length
          ? tasks.map(row)
          : h("tr", null, h("td", { colspan: 6, class: "empty", testid: "tasks-empty" }, state || team ? "No task matches these filters." : "No task yet. Submit one to a team.")),
      );
      prev.disabled = tokens.length <= 1;
      next.disabled = !nextToken;
      pageInfo.textContent = `Page ${tokens.length} · ${tasks.length} task${tasks.length === 1 ? "" : "s"}`;
    } catch (e) {
      if (!stopped) errors.show(e);
    }
    schedule();
  }

  function schedule() {
    clearTimeout(timer);
    // Only the first page moves on its own; older pages stay put.
    if (auto && !stopped && tokens.length === 1) timer = setTimeout(load, REFRESH_MS);
  }

  fill(
    app,
    h(
      "div",
      { class: "page", testid: "tasks-page" },
      pageHead(
        "Tasks",
        "Newest first. The first page refreshes itself.",
        h("a", { class: "button primary", href: "#/submit", testid: "tasks-submit" }, "Submit a task"),
      ),
      errors,
      h(
        "div",
        { class: "panel" },
        h(
          "div",
          { class: "panel-title" },
          h("div", { class: "filters" }, stateSelect, teamSelect),
          h("div", { class: "actions" }, h("label", { class: "toggle" }, autoBox, "Auto-refresh"), refresh),
        ),
        h(
          "div",
          { class: "table-wrap" },
          h(
            "table",
            { testid: "tasks-table" },
            h("thead", null, h("tr", null, h("th", null, "State"), h("th", { class: "hide-sm" }, "Task"), h("th", null, "Team"), h("th", { class: "hide-sm" }, "Input"), h("th", null, "Created"), h("th", { class: "num hide-sm" }, "Duration"))),
            body,
          ),
        ),
        h("div", { class: "pager" }, pageInfo, h("div", { class: "actions" }, prev, next)),
      ),
    ),
  );
  fill(body, h("tr", null, h("td", { colspan: 6, class: "empty" }, "Loading…")));
  load();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

// ---- one task ----

function fact(k, v, testid) {
  return h("div", { class: "fact" }, h("div", { class: "k" }, k), h("div", { class: "v", testid }, v));
}

function taskPage(taskId) {
  const errors = errorSlot();
  const header = h("div", { testid: "task-header" });
  const facts = h("div", { class: "facts", testid: "task-facts" });
  const inputBlock = h("pre", { class: "text-block", testid: "task-input" }, "");
  const outputPanel = h("div", { class: "panel-body", testid: "task-output" }, h("span", { class: "muted" }, "No output yet."));
  const usage = h("div", { class: "usage", testid: "task-usage" });
  const liveBadge = h("span", { testid: "stream-status" }, badge("Connecting", "info"));
  const timeline = new Timeline();
  const filter = h("select", { "aria-label": "Show", testid: "timeline-filter" }, GROUPS.map(([v, l]) => h("option", { value: v }, l)));
  filter.addEventListener("change", () => timeline.setFilter(filter.value));
  const cancel = h("button", { class: "danger", type: "button", testid: "task-cancel", disabled: true }, "Cancel task");
  const empty = h("div", { class: "empty", testid: "timeline-empty" }, "Waiting for the first event…");
  // The task's pending approvals, decided here as on the Approvals page.
  const outcome = h("div", { testid: "approval-outcome-slot" });
  const approvalCards = h("div", { class: "approvals" });
  const approvalsBox = h(
    "section",
    { class: "task-approvals", testid: "task-approvals", hidden: true },
    h(
      "div",
      { class: "banner warn" },
      h(
        "div",
        null,
        h("div", { class: "title" }, "Waiting for a person"),
        h("div", { class: "body" }, "The run stopped before a tool call that needs approval. Approve it to run the call with exactly these arguments, or reject it. ", h("a", { href: `#/approvals?task=${encodeURIComponent(taskId)}` }, "All of this task's approvals")),
      ),
    ),
    approvalCards,
  );
  const showApprovals = approvalList(approvalCards, {
    onDecided(answer, decision) {
      fill(outcome, outcomeBanner(answer, decision, () => fill(outcome)));
      loadTask();
    },
    onStale(e, hint) {
      errors.show(e, hint);
      loadTask();
    },
  });

  let task = null;
  let stopped = false;
  let refreshTimer = null;
  const totals = { prompt: 0, completion: 0, cost: 0, calls: 0 };

  const renderUsage = () =>
    fill(
      usage,
      h("div", null, h("div", { class: "n", testid: "usage-prompt" }, fmtInt(totals.prompt)), h("div", { class: "k" }, "prompt tokens")),
      h("div", null, h("div", { class: "n", testid: "usage-completion" }, fmtInt(totals.completion)), h("div", { class: "k" }, "completion tokens")),
      h("div", null, h("div", { class: "n" }, fmtInt(totals.calls)), h("div", { class: "k" }, "model calls")),
      h("div", null, h("div", { class: "n", testid: "usage-cost" }, fmtUsd(totals.cost)), h("div", { class: "k" }, "estimated cost")),
    );
  renderUsage();

  const renderTask = () => {
    if (!task) return;
    fill(
      header,
      pageHead(
        h("span", null, "Task on ", h("a", { href: `#/teams/${encodeURIComponent(task.team || "")}` }, task.team || "—")),
        h("span", null, h("span", { class: "mono", testid: "task-id" }, task.taskId), ` · submitted ${ago(task.createdAt)}`),
        stateBadge(task.state, "task-state"),
        cancel,
      ),
    );
    cancel.disabled = TERMINAL.has(task.state);
    const pending = (task.approvals || [])
      .filter((a) => a.state === "APPROVAL_STATE_PENDING")
      .map((a) => ({ ...a, taskId: a.taskId || task.taskId, team: a.team || task.team }));
    showApprovals(pending);
    approvalsBox.hidden = pending.length === 0;
    fill(
      facts,
      fact("Attempt", String(num(task.attempt) || "—"), "task-attempt"),
      fact("Worker", task.workerId ? shortId(task.workerId) : "—"),
      fact("Created", fmtTime(task.createdAt)),
      fact("Started", fmtTime(task.startedAt)),
      fact("Finished", fmtTime(task.finishedAt)),
      fact("Duration", fmtDuration(taskDuration(task))),
    );
    inputBlock.textContent = task.input || "";
    if (task.output) {
      fill(outputPanel, h("div", { class: "text-block", testid: "task-output-text" }, task.output));
    } else if (task.error) {
      fill(
        outputPanel,
        h("div", { class: "banner err", testid: "task-error" }, h("div", null, h("div", { class: "title" }, enumLabel(task.error.class, "ERROR_CLASS_")), h("div", { class: "body" }, task.error.message || ""))),
      );
    }
  };

  const loadTask = async () => {
    try {
      task = (await api("GET", `/v1/tasks/${encodeURIComponent(taskId)}`)).task;
      if (!stopped) renderTask();
    } catch (e) {
      if (!stopped) errors.show(e);
    }
  };

  // Events can come in bursts: fetch the task at most every half second.
  const refreshSoon = () => {
    if (refreshTimer) return;
    refreshTimer = setTimeout(() => {
      refreshTimer = null;
      loadTask();
    }, 500);
  };

  cancel.addEventListener("click", async () => {
    cancel.disabled = true;
    try {
      task = (await api("POST", `/v1/tasks/${encodeURIComponent(taskId)}:cancel`, { reason: "cancelled from the dashboard" })).task;
      renderTask();
    } catch (e) {
      errors.show(e);
      cancel.disabled = false;
    }
  });

  fill(
    app,
    h(
      "div",
      { class: "page", testid: "task-page", dataset: { taskId } },
      h("div", { class: "muted" }, h("a", { href: "#/tasks" }, "← Tasks")),
      header,
      errors,
      outcome,
      approvalsBox,
      facts,
      h(
        "div",
        { class: "task-grid" },
        h(
          "section",
          { class: "panel" },
          h("div", { class: "panel-title" }, h("span", null, "Timeline ", liveBadge), h("div", { class: "timeline-tools" }, filter)),
          empty,
          timeline.list,
        ),
        h(
          "aside",
          { class: "side" },
          h("section", { class: "panel" }, h("div", { class: "panel-title" }, "Output"), outputPanel),
          h("section", { class: "panel" }, h("div", { class: "panel-title" }, "Input"), h("div", { class: "panel-body" }, inputBlock)),
          h("section", { class: "panel" }, h("div", { class: "panel-title" }, "Token usage"), h("div", { class: "panel-body" }, usage)),
        ),
      ),
    ),
  );
  fill(header, pageHead("Task", h("span", { class: "mono" }, taskId)));
  loadTask();

  const stop = watchTask(taskId, {
    onEvent(event) {
      empty.remove();
      const d = timeline.add(event);
      if (event.runEvent && event.runEvent.tokenUsage) {
        const u = event.runEvent.tokenUsage;
        totals.prompt += num(u.promptTokens);
        totals.completion += num(u.completionTokens);
        totals.cost += num(u.costUsd);
        totals.calls += 1;
        renderUsage();
      }
      if (d.kind === "state") refreshSoon();
    },
    onStatus(status) {
      const tone = { live: "info live", reconnecting: "warn", ended: "ok plain" }[status] || "";
      const text = { live: "Live", reconnecting: "Reconnecting", ended: "Complete" }[status] || status;
      fill(liveBadge, badge(text, tone, { dataset: { status } }));
    },
    onEnd() {
      loadTask();
    },
    onError(e) {
      errors.show(e);
      fill(liveBadge, badge("Stopped", "err", { dataset: { status: "error" } }));
    },
  });
  return () => {
    stopped = true;
    clearTimeout(refreshTimer);
    stop();
  };
}

// ---- approvals ----

const APPROVAL_TONE = {
  APPROVAL_STATE_PENDING: "attn",
  APPROVAL_STATE_APPROVED: "ok",
  APPROVAL_STATE_REJECTED: "err",
  APPROVAL_STATE_EXPIRED: "warn",
};

function approvalBadge(state) {
  const value = state || "APPROVAL_STATE_UNSPECIFIED";
  return badge(enumLabel(value, "APPROVAL_STATE_"), APPROVAL_TONE[value] || "", { testid: "approval-state", dataset: { state: value } });
}

/** A refused decision because the approval is no longer pending (FAILED_PRECONDITION, or a 409). */
function staleDecision(error) {
  return error instanceof ApiError && (error.code === 9 || error.status === 409);
}

/** What a refused decision means, in words. */
function decisionHint(error, approval) {
  if (!(error instanceof ApiError)) return null;
  if (error.status === 403) {
    return `You may not decide this call: it needs the "${approval.requiredPermission || "approve"}" permission on the team ${approval.team || ""}. Ask someone who has it.`;
  }
  if (staleDecision(error)) {
    return "This call is no longer waiting: someone else decided it, it expired, or the task moved on.";
  }
  if (error.status === 404) return "The task or the approval is gone (or belongs to another tenant).";
  return null;
}

/** A time as "in 5h" (or "5m ago") that refreshTimes keeps current, with the date as its title. */
function relTime(value, future) {
  return h(
    "span",
    { title: fmtTime(value), dataset: future ? { until: value || "" } : { ago: value || "" } },
    future ? until(value) : ago(value),
  );
}

/**
 * One approval as a card: the call (tool, agent, task, team), its exact
 * arguments, why it waits and until when; while it is pending, a comment
 * and the Reject / Approve buttons. `onDecided(answer, decision)` after a
 * decision, `onStale(error, hint)` when it was no longer pending; other
 * refusals (403 among them) show on the card itself.
 */
function approvalCard(a, { onDecided, onStale }) {
  const pending = a.state === "APPROVAL_STATE_PENDING";
  const errors = errorSlot();
  const taskHref = `#/tasks/${encodeURIComponent(a.taskId || "")}`;
  const comment = h("input", {
    type: "text",
    maxlength: 4096,
    placeholder: "Optional; the agent sees it with a rejection",
    testid: "approval-comment",
  });
  const approve = h("button", { class: "primary", type: "button", testid: "approval-approve" }, icon(...ICONS.done), "Approve");
  const reject = h("button", { class: "danger", type: "button", testid: "approval-reject" }, icon(...ICONS.fail), "Reject");

  const decide = async (decision) => {
    errors.clear();
    approve.disabled = true;
    reject.disabled = true;
    card.dataset.busy = "true";
    try {
      const answer = await api(
        "POST",
        `/v1/tasks/${encodeURIComponent(a.taskId)}/approvals/${encodeURIComponent(a.approvalId)}:decide`,
        { decision, comment: comment.value.trim() },
      );
      onDecided && onDecided(answer, decision);
    } catch (e) {
      approve.disabled = false;
      reject.disabled = false;
      if (staleDecision(e) && onStale) onStale(e, decisionHint(e, a));
      else errors.show(e, decisionHint(e, a));
    } finally {
      delete card.dataset.busy;
    }
  };
  approve.addEventListener("click", () => decide("DECISION_APPROVE"));
  reject.addEventListener("click", () => decide("DECISION_REJECT"));

  const decided = !pending && a.decidedAt;
  const card = h(
    "section",
    {
      class: `panel approval${pending ? " pending" : ""}`,
      testid: "approval-card",
      dataset: { approvalId: a.approvalId || "", taskId: a.taskId || "", state: a.state || "" },
    },
    h(
      "div",
      { class: "panel-title" },
      h("span", { class: "approval-what" }, h("strong", null, a.agent || "An agent"), " calls ", h("code", { testid: "approval-tool" }, a.tool || "—")),
      approvalBadge(a.state),
    ),
    h(
      "div",
      { class: "approval-body" },
      h(
        "div",
        { class: "facts" },
        fact("Task", h("a", { class: "mono", href: taskHref, title: a.taskId || "" }, shortId(a.taskId)), "approval-task"),
        fact("Team", a.team ? h("a", { href: `#/teams/${encodeURIComponent(a.team)}` }, a.team) : "—", "approval-team"),
        fact("Agent", a.agent || "—", "approval-agent"),
        fact("Attempt", String(num(a.attempt) || "—")),
        fact("Requested", relTime(a.requestedAt, false)),
        pending
          ? fact("Expires", relTime(a.expiresAt, true), "approval-expires")
          : fact("Decided", decided ? relTime(a.decidedAt, false) : "—"),
      ),
      a.reason ? h("div", null, h("h3", null, "Why it waits"), h("div", { testid: "approval-reason" }, a.reason)) : null,
      h(
        "div",
        null,
        h("h3", null, "Arguments"),
        h("pre", { class: "text-block code-block", testid: "approval-arguments" }, pretty(a.arguments || {}, Infinity)),
        a.argumentsSha256
          ? h("div", { class: "hash hash-line", title: "SHA-256 of the tool's name and its canonical JSON arguments: the call runs only with exactly these" }, `sha256 ${a.argumentsSha256}`)
          : null,
      ),
      pending
        ? null
        : h(
            "div",
            { class: "approval-decision", testid: "approval-decision" },
            `${enumLabel(a.state, "APPROVAL_STATE_")} by `,
            h("strong", null, a.decidedBy || "—"),
            a.comment ? h("div", { class: "quote", testid: "approval-decision-comment" }, a.comment) : null,
          ),
      errors,
    ),
    pending
      ? h(
          "div",
          { class: "approval-foot" },
          h("label", null, "Comment", comment),
          h("div", { class: "actions" }, reject, approve),
        )
      : null,
  );
  return card;
}

/**
 * Keeps the approval cards in `container` in step with a listing: a card
 * whose approval did not change stays as it is (with a comment being
 * typed), new ones come in, gone ones leave. Returns `update(approvals)`.
 */
function approvalList(container, handlers) {
  let cards = new Map();
  return (approvals) => {
    const next = new Map();
    const wanted = [];
    for (const a of approvals) {
      const key = JSON.stringify([a.state, a.decidedAt, a.expiresAt, a.attempt, a.argumentsSha256]);
      const old = cards.get(a.approvalId);
      const card = old && old.key === key ? old.card : approvalCard(a, handlers);
      next.set(a.approvalId, { key, card });
      wanted.push(card);
    }
    const keep = new Set(wanted);
    for (const el of [...container.children]) if (!keep.has(el)) el.remove();
    let at = container.firstChild;
    for (const card of wanted) {
      if (card === at) at = at.nextSibling;
      else container.insertBefore(card, at);
    }
    cards = next;
    refreshTimes(container);
  };
}

/** What a decision did: the approval as decided and where the task went. */
function outcomeBanner(answer, decision, onClose) {
  const a = answer.approval || {};
  const t = answer.task || {};
  const approved = decision === "DECISION_APPROVE";
  const taskId = t.taskId || a.taskId || "";
  const banner = h(
    "div",
    {
      class: `banner ${approved ? "ok" : "warn"}`,
      role: "status",
      testid: "approval-outcome",
      dataset: { decision, state: a.state || "", taskId },
    },
    h(
      "div",
      null,
      h("div", { class: "title" }, `${approved ? "Approved" : "Rejected"}: `, h("code", null, a.tool || "the call"), a.agent ? ` of ${a.agent}` : ""),
      h(
        "div",
        { class: "body" },
        approved ? "The task resumes on a new attempt and runs the call with exactly these arguments. " : "The task resumes without the call. ",
        "Task ",
        h("a", { class: "mono", href: `#/tasks/${encodeURIComponent(taskId)}`, testid: "approval-outcome-task" }, shortId(taskId)),
        " is now ",
        stateBadge(t.state),
        a.comment ? h("div", { class: "muted" }, `Comment: ${a.comment}`) : null,
      ),
    ),
    h("button", { class: "close", type: "button", "aria-label": "Dismiss", onclick: () => onClose() }, "×"),
  );
  return banner;
}

function approvalsPage(query) {
  const team = query.get("team") || "";
  const taskId = query.get("task") || "";
  const decided = query.get("decided") === "1";
  let auto = true;
  let timer = null;
  let stopped = false;
  let loading = false;
  let again = false;

  // Errors of listing (cleared by the next good listing) and of decisions
  // (kept until dismissed or the next decision).
  const loadErrors = errorSlot();
  const errors = errorSlot();
  const outcome = h("div", { testid: "approval-outcome-slot" });
  const list = h("div", { class: "approvals", testid: "approvals-list", dataset: { busy: "false" } });
  const empty = h("div", { class: "panel empty", testid: "approvals-empty", hidden: true }, "");
  const count = h("span", { testid: "approvals-count" }, "");

  const teamSelect = h("select", { testid: "approvals-team", "aria-label": "Team" }, h("option", { value: "" }, "All teams"));
  if (team) teamSelect.append(h("option", { value: team }, team));
  teamSelect.value = team;
  const decidedBox = h("input", { type: "checkbox", checked: decided, testid: "approvals-decided" });
  const autoBox = h("input", { type: "checkbox", checked: true, testid: "approvals-auto" });
  const apply = (changes = {}) => {
    const q = new URLSearchParams();
    const wanted = { team: teamSelect.value, task: taskId, decided: decidedBox.checked ? "1" : "", ...changes };
    for (const [k, v] of Object.entries(wanted)) if (v) q.set(k, v);
    go(`#/approvals${q.toString() ? `?${q}` : ""}`);
  };
  teamSelect.addEventListener("change", () => apply());
  decidedBox.addEventListener("change", () => apply());
  autoBox.addEventListener("change", () => {
    auto = autoBox.checked;
    schedule();
  });
  api("GET", "/v1/teams")
    .then((answer) => {
      for (const t of answer.teams || []) {
        if (t.name !== team) teamSelect.append(h("option", { value: t.name }, t.name));
      }
    })
    .catch(() => {});
  const refresh = h("button", { class: "icon", type: "button", title: "Refresh", "aria-label": "Refresh", testid: "approvals-refresh", onclick: () => load() }, icon(...ICONS.refresh));

  const update = approvalList(list, {
    onDecided(answer, decision) {
      errors.clear();
      fill(outcome, outcomeBanner(answer, decision, () => fill(outcome)));
      load();
    },
    onStale(e, hint) {
      fill(outcome);
      errors.show(e, `${hint} The list has been refreshed.`);
      load();
    },
  });

  async function load() {
    clearTimeout(timer);
    // One listing at a time; a call meanwhile asks for one more after it.
    if (loading) {
      again = true;
      return;
    }
    loading = true;
    list.dataset.busy = "true";
    try {
      const answer = await api("GET", "/v1/approvals", null, {
        team,
        taskId,
        includeDecided: decided ? "true" : "",
        pageSize: 100,
      });
      if (stopped) return;
      loadErrors.clear();
      const approvals = answer.approvals || [];
      update(approvals);
      const waiting = approvals.filter((a) => a.state === "APPROVAL_STATE_PENDING").length;
      count.textContent = `${waiting} waiting${decided ? ` · ${approvals.length - waiting} decided` : ""}`;
      empty.hidden = approvals.length > 0;
      empty.textContent = team || taskId
        ? "No tool call of these filters waits for a person."
        : decided
          ? "No tool call has needed a person yet."
          : "No tool call waits for a person. Calls of agents with `approval: required` (or of gated tools) show here.";
    } catch (e) {
      if (!stopped) loadErrors.show(e);
    } finally {
      loading = false;
    }
    if (stopped) return;
    if (again) {
      again = false;
      load();
      return;
    }
    list.dataset.busy = "false";
    schedule();
  }

  function schedule() {
    clearTimeout(timer);
    if (auto && !stopped) timer = setTimeout(load, REFRESH_MS);
  }

  fill(
    app,
    h(
      "div",
      { class: "page", testid: "approvals-page" },
      pageHead(
        "Approvals",
        "Tool calls that wait for a person before they run, newest first. Approving runs the call with exactly the arguments shown.",
      ),
      loadErrors,
      errors,
      outcome,
      h(
        "div",
        { class: "panel approvals-bar" },
        h(
          "div",
          { class: "panel-title" },
          h(
            "div",
            { class: "filters" },
            teamSelect,
            taskId
              ? h("a", { class: "chip", href: "#", testid: "approvals-task-filter", title: "Show every task's approvals", onclick: (ev) => { ev.preventDefault(); apply({ task: "" }); } }, `Task ${shortId(taskId)} ×`)
              : null,
            h("label", { class: "toggle" }, decidedBox, "Show decided"),
          ),
          h("div", { class: "actions" }, count, h("label", { class: "toggle" }, autoBox, "Auto-refresh"), refresh),
        ),
      ),
      list,
      empty,
    ),
  );
  load();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

// ---- submit ----

function submitPage(query) {
  const errors = errorSlot();
  const teamSelect = h("select", { name: "team", required: true, testid: "submit-team" });
  const input = h("textarea", { name: "input", required: true, placeholder: "What should the team work on?", testid: "submit-input" });
  const session_ = h("input", { name: "session", placeholder: "optional", testid: "submit-session" });
  const button = h("button", { class: "primary", type: "submit", testid: "submit-button" }, "Submit task");
  const preview = h("div", { class: "graph-box", testid: "submit-preview" });
  const about = h("div", { class: "desc", testid: "submit-team-about" });
  let teams = [];

  const showTeam = () => {
    const t = teams.find((x) => x.name === teamSelect.value);
    fill(about, t ? [h("strong", null, t.name), " · ", enumLabel(t.kind), t.description ? h("div", { class: "muted" }, t.description) : null] : null);
    fill(preview, t && t.graph ? drawGraph(t.graph, { compact: true }) : null);
  };
  teamSelect.addEventListener("change", showTeam);

  api("GET", "/v1/teams")
    .then((answer) => {
      teams = answer.teams || [];
      fill(teamSelect, teams.map((t) => h("option", { value: t.name }, t.name)));
      const wanted = query.get("team");
      if (wanted && teams.some((t) => t.name === wanted)) teamSelect.value = wanted;
      showTeam();
    })
    .catch((e) => errors.show(e));

  const form = h(
    "form",
    { class: "form", testid: "submit-form" },
    h("label", null, "Team", teamSelect),
    h("label", null, "Input", h("span", { class: "hint" }, "Given to the team as its task; `{input}` in the spec is replaced by it."), input),
    h("div", { class: "form-row" }, h("label", null, "Memory session", h("span", { class: "hint" }, "Scopes the agents' memory; empty for none."), session_)),
    h("div", { class: "form-foot" }, h("a", { class: "button", href: "#/tasks" }, "Cancel"), button),
  );
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    errors.clear();
    button.disabled = true;
    try {
      const answer = await api("POST", "/v1/tasks", {
        team: { name: teamSelect.value },
        input: input.value,
        sessionId: session_.value.trim(),
        idempotencyKey: crypto.randomUUID(),
      });
      go(`#/tasks/${encodeURIComponent(answer.taskId)}`);
    } catch (e) {
      errors.show(e);
      button.disabled = false;
    }
  });
  fill(
    app,
    h(
      "div",
      { class: "page", testid: "submit-page" },
      pageHead("Submit a task", "Run a team on an input; you are taken to its live timeline."),
      errors,
      h(
        "div",
        { class: "submit-grid" },
        h("section", { class: "panel" }, form),
        h("aside", { class: "panel" }, h("div", { class: "panel-title" }, "The team"), about, preview),
      ),
    ),
  );
  input.focus();
}

// ---- teams ----

function legend() {
  return h("div", { class: "legend" }, LEGEND.map(([cls, text]) => h("span", null, h("i", { class: `n-${cls}` }), text)));
}

function teamsPage(selected) {
  const errors = errorSlot();
  const content = h("div", null, h("div", { class: "empty" }, "Loading…"));
  fill(
    app,
    h(
      "div",
      { class: "page", testid: selected ? "team-page" : "teams-page" },
      selected ? h("div", { class: "muted" }, h("a", { href: "#/teams" }, "← Teams")) : null,
      pageHead(selected || "Teams", selected ? "Click a node for its details." : "The teams the workers serve by name, drawn from their specs."),
      selected ? null : legend(),
      errors,
      content,
    ),
  );
  api("GET", "/v1/teams")
    .then((answer) => {
      const teams = answer.teams || [];
      if (selected) {
        const t = teams.find((x) => x.name === selected);
        if (!t) {
          fill(content, h("div", { class: "panel empty" }, `No worker serves a team called ${selected}.`));
          return;
        }
        const detail = h("div", { class: "node-detail", testid: "node-detail" }, h("span", { class: "muted" }, "Select a node."));
        const graph = drawGraph(t.graph || {}, {
          onSelect: (n) =>
            fill(detail, h("div", { class: "k" }, kindName(n.kind)), h("div", null, h("strong", null, n.label)), n.detail ? h("div", { class: "muted" }, n.detail) : null),
        });
        fill(
          content,
          h(
            "section",
            { class: "panel card", testid: "team-card", dataset: { team: t.name } },
            h("div", { class: "panel-title" }, h("span", null, h("span", { class: "name" }, t.name), " ", badge(enumLabel(t.kind), "plain")), h("a", { class: "button primary", href: `#/submit?team=${encodeURIComponent(t.name)}` }, "Run")),
            t.description ? h("div", { class: "desc" }, t.description) : null,
            h("div", { class: "graph-box large" }, graph),
            legend(),
            detail,
          ),
        );
        return;
      }
      if (!teams.length) {
        fill(content, h("div", { class: "panel empty" }, "No worker serves a team by name yet."));
        return;
      }
      fill(
        content,
        h(
          "div",
          { class: "cards" },
          teams.map((t) =>
            h(
              "section",
              { class: "panel card", testid: "team-card", dataset: { team: t.name } },
              h("div", { class: "panel-title" }, h("a", { class: "name", href: `#/teams/${encodeURIComponent(t.name)}` }, t.name), badge(enumLabel(t.kind), "plain")),
              t.description ? h("div", { class: "desc" }, t.description) : null,
              h("div", { class: "graph-box" }, drawGraph(t.graph || {}, { compact: true })),
              h(
                "div",
                { class: "foot" },
                h("a", { class: "button", href: `#/teams/${encodeURIComponent(t.name)}`, testid: "team-open" }, "Open"),
                h("a", { class: "button primary", href: `#/submit?team=${encodeURIComponent(t.name)}` }, "Run"),
              ),
            ),
          ),
        ),
      );
    })
    .catch((e) => {
      errors.show(e);
      fill(content);
    });
}

// ---- workers ----

function workersPage() {
  const errors = errorSlot();
  const stats = h("div", { class: "stats", testid: "worker-stats" });
  const body = h("tbody", { testid: "workers-body" });
  const expired = h("input", { type: "checkbox", testid: "workers-expired" });
  let timer = null;
  let stopped = false;

  const breakerTone = { BREAKER_STATE_CLOSED: "ok", BREAKER_STATE_OPEN: "err", BREAKER_STATE_HALF_OPEN: "warn" };
  const stateTone = { WORKER_STATE_LIVE: "ok", WORKER_STATE_DRAINING: "warn", WORKER_STATE_EXPIRED: "" };

  const load = async () => {
    clearTimeout(timer);
    try {
      const answer = await api("GET", "/v1/workers", null, { includeExpired: expired.checked ? "true" : "" });
      if (stopped) return;
      errors.clear();
      const workers = answer.workers || [];
      const live = workers.filter((w) => w.state === "WORKER_STATE_LIVE");
      const capacity = live.reduce((a, w) => a + num(w.capacity), 0);
      const inFlight = live.reduce((a, w) => a + num(w.inFlight), 0);
      const open = workers.filter((w) => w.breaker === "BREAKER_STATE_OPEN").length;
      fill(
        stats,
        h("div", { class: "panel stat" }, h("div", { class: "n", testid: "stat-live" }, String(live.length)), h("div", { class: "k" }, "live workers")),
        h("div", { class: "panel stat" }, h("div", { class: "n" }, `${inFlight} / ${capacity}`), h("div", { class: "k" }, "runs in flight / capacity")),
        h("div", { class: "panel stat" }, h("div", { class: "n" }, String(open)), h("div", { class: "k" }, "open breakers")),
      );
      fill(
        body,
        workers.length
          ? workers.map((w) => {
              const cap = num(w.capacity);
              const used = num(w.inFlight);
              const ratio = cap ? Math.min(1, used / cap) : 0;
              const fillBar = h("span");
              fillBar.style.width = `${Math.round(ratio * 100)}%`;
              return h(
                "tr",
                { testid: "worker-row", dataset: { workerId: w.workerId, state: w.state || "" } },
                h("td", null, h("div", { class: "mono" }, shortId(w.workerId)), h("div", { class: "faint mono" }, w.address || "")),
                h("td", null, badge(enumLabel(w.state, "WORKER_STATE_"), stateTone[w.state] || "")),
                h(
                  "td",
                  { testid: "worker-load" },
                  h("div", { class: "load" }, h("div", { class: `bar ${ratio >= 1 ? "full" : ratio >= 0.75 ? "hot" : ""}` }, fillBar), h("span", { class: "mono nowrap" }, `${used}/${cap}`)),
                ),
                h("td", { class: "hide-sm" }, (w.teams || []).map((t) => (t === "*" ? h("span", { class: "chip" }, "any inline spec") : h("a", { class: "chip", href: `#/teams/${encodeURIComponent(t)}` }, t)))),
                h("td", { testid: "worker-breaker" }, badge(enumLabel(w.breaker, "BREAKER_STATE_"), breakerTone[w.breaker] || "", { dataset: { breaker: w.breaker || "" } })),
                h("td", { class: "muted nowrap hide-sm", title: fmtTime(w.lastHeartbeatAt) }, ago(w.lastHeartbeatAt)),
              );
            })
          : h("tr", null, h("td", { colspan: 6, class: "empty" }, "No worker is registered.")),
      );
    } catch (e) {
      if (!stopped) errors.show(e);
    }
    if (!stopped) timer = setTimeout(load, REFRESH_MS);
  };
  expired.addEventListener("change", load);

  fill(
    app,
    h(
      "div",
      { class: "page", testid: "workers-page" },
      pageHead("Workers", "Agents workers registered with the router; refreshes itself.", h("label", { class: "toggle" }, expired, "Show expired")),
      errors,
      stats,
      h(
        "div",
        { class: "panel table-wrap" },
        h(
          "table",
          { testid: "workers-table" },
          h("thead", null, h("tr", null, h("th", null, "Worker"), h("th", null, "State"), h("th", null, "Load"), h("th", { class: "hide-sm" }, "Teams"), h("th", null, "Breaker"), h("th", { class: "hide-sm" }, "Heartbeat"))),
          body,
        ),
      ),
    ),
  );
  load();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

// ---- audit ----

function verificationBanner(v) {
  if (!v) return h("div", { class: "banner warn", testid: "audit-verification", dataset: { ok: "false", state: "" } }, h("div", { class: "body" }, "The server sent no verification."));
  const state = v.state || "AUDIT_CHAIN_STATE_UNSPECIFIED";
  const records = num(v.recordsChecked);
  const title = v.ok
    ? `Chain verified: ${records ? `${fmtInt(records)} records ` : ""}intact`
    : `Chain ${enumLabel(state, "AUDIT_CHAIN_STATE_").toLowerCase()}${state === "AUDIT_CHAIN_STATE_BROKEN" ? ` at record ${num(v.firstBadIndex)}` : ""}`;
  return h(
    "div",
    { class: `banner ${v.ok ? "ok" : state === "AUDIT_CHAIN_STATE_BROKEN" ? "err" : "warn"}`, testid: "audit-verification", dataset: { ok: String(Boolean(v.ok)), state } },
    h(
      "div",
      null,
      h("div", { class: "title" }, title),
      h(
        "div",
        { class: "body" },
        v.ok
          ? "Every record is keyed (HMAC-SHA256) and chained to the one before, and the trail's ends agree with its checkpoint."
          : "The trail does not verify as a whole; see why below.",
        v.reason ? h("div", { class: "muted", testid: "audit-reason" }, v.reason) : null,
        v.checkedAt ? h("div", { class: "faint" }, `Checked ${ago(v.checkedAt)} (${fmtTime(v.checkedAt)}).`) : null,
      ),
    ),
  );
}

function auditPage() {
  const errors = errorSlot();
  const verification = h("div", { testid: "audit-verification-slot" });
  const body = h("tbody", { testid: "audit-body" });
  const action = h("input", { placeholder: "Action, e.g. keys.create", testid: "audit-action", "aria-label": "Action" });
  const prev = h("button", { type: "button", testid: "audit-prev", disabled: true }, "← Older");
  const next = h("button", { type: "button", testid: "audit-next", disabled: true }, "Newer →");
  const newest = h("button", { type: "button", testid: "audit-newest" }, "Newest");
  const info = h("span", null, "");
  const PAGE = 50;
  // after_index of each page shown so far (0: from the beginning).
  let starts = [0];
  let lastIndex = 0;
  let total = 0;

  prev.addEventListener("click", () => {
    starts.pop();
    load();
  });
  next.addEventListener("click", () => {
    starts.push(lastIndex);
    load();
  });
  newest.addEventListener("click", () => {
    starts = [0, Math.max(0, total - PAGE - 1)];
    load();
  });
  action.addEventListener("change", () => {
    starts = [0];
    load();
  });

  async function load() {
    try {
      const answer = await api("GET", "/v1/audit", null, {
        pageSize: PAGE,
        afterIndex: starts[starts.length - 1] || "",
        action: action.value.trim(),
      });
      errors.clear();
      const records = answer.records || [];
      const v = answer.verification;
      total = num(v && v.recordsChecked);
      fill(verification, verificationBanner(v));
      lastIndex = records.length ? num(records[records.length - 1].index) : lastIndex;
      fill(
        body,
        records.length
          ? records.map((r) =>
              h(
                "tr",
                { testid: "audit-row", dataset: { index: String(num(r.index)) } },
                h("td", { class: "num mono" }, String(num(r.index))),
                h("td", { class: "nowrap muted" }, fmtTime(r.at)),
                h("td", null, h("code", null, r.action || "")),
                h("td", { class: "truncate", title: r.object || "" }, r.object || ""),
                h("td", null, badge(r.decision || "—", r.decision === "allow" ? "ok" : "err")),
                h("td", { class: "mono truncate hide-sm", title: r.principal || "" }, shortId(r.principal)),
                h("td", { class: "hide-sm" }, r.tenant || ""),
                h("td", { class: "hash hide-sm", title: r.hash || "" }, clip(r.hash || "", 12)),
              ),
            )
          : h("tr", null, h("td", { colspan: 8, class: "empty" }, "No records.")),
      );
      prev.disabled = starts.length <= 1;
      next.disabled = records.length < PAGE;
      info.textContent = records.length
        ? `Records ${num(records[0].index)}–${num(records[records.length - 1].index)}${total ? ` · ${fmtInt(total)} in the trail` : ""}`
        : "";
    } catch (e) {
      errors.show(e);
    }
  }

  fill(
    app,
    h(
      "div",
      { class: "page", testid: "audit-page" },
      pageHead("Audit trail", "Privileged actions, oldest first; the chain is verified as a whole.", h("div", { class: "filters" }, action), h("button", { class: "icon", type: "button", title: "Refresh", "aria-label": "Refresh", testid: "audit-refresh", onclick: () => load() }, icon(...ICONS.refresh))),
      errors,
      verification,
      h(
        "div",
        { class: "panel" },
        h(
          "div",
          { class: "table-wrap" },
          h(
            "table",
            { testid: "audit-table" },
            h("thead", null, h("tr", null, h("th", { class: "num" }, "#"), h("th", null, "When"), h("th", null, "Action"), h("th", null, "Object"), h("th", null, "Decision"), h("th", { class: "hide-sm" }, "Principal"), h("th", { class: "hide-sm" }, "Tenant"), h("th", { class: "hide-sm" }, "Hash"))),
            body,
          ),
        ),
        h("div", { class: "pager" }, info, h("div", { class: "actions" }, prev, next, newest)),
      ),
    ),
  );
  load();
}

route();
