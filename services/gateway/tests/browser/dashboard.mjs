// Drives the AMAOS dashboard in headless Debian Chromium, as a person would:
// sign in, submit the research crew from the page, watch its timeline reach
// SUCCEEDED live, open the team graph, the workers and the audit trail, and
// take screenshots (1280×800 light and dark, and a phone's width). Then the
// approvals: run `approved-payout`, whose second agent's tool call waits for
// a person, see it listed, see a viewer's Approve refused and a stale one
// refused, approve it, and see the task resume to SUCCEEDED.
//
//   node dashboard.mjs <gateway url> <api key> <screenshot dir> [<viewer key>]
//
// The viewer key (a `viewer` of the same tenant) is for the refused
// decision; without it that check is skipped.
//
// Exits 0 when every check passed; otherwise prints what failed and exits 1.
// Run by cli/tests/dashboard.rs against an in-process mesh.

import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";

const [base, key, out, viewerKey] = process.argv.slice(2);
if (!base || !key || !out) {
  console.error("usage: node dashboard.mjs <gateway url> <api key> <screenshot dir> [<viewer key>]");
  process.exit(2);
}
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
mkdirSync(out, { recursive: true });

const TIMEOUT = 30_000;
// Longer than the dashboard's refresh period (REFRESH_MS in app.js).
const REFRESH_WAIT = 4_500;
const problems = [];

function check(ok, what) {
  if (!ok) throw new Error(what);
  console.log(`ok - ${what}`);
}

/** A page that fails the run on any console error (a CSP refusal among them) or uncaught exception. */
async function openPage(browser, options) {
  const context = await browser.newContext({ baseURL: base, ...options });
  const page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT);
  page.on("console", (msg) => {
    if (msg.type() === "error") problems.push(`console error: ${msg.text()}`);
  });
  page.on("pageerror", (error) => problems.push(`uncaught: ${error.message}`));
  return { context, page };
}

/** Forgets the console errors a deliberate refusal (HTTP `status`) logged since `from`. */
function expectRefusals(from, status) {
  const kept = problems.filter((p, i) => i < from || !p.includes(`status of ${status}`));
  problems.length = 0;
  problems.push(...kept);
}

/** A REST call from the page, with its signed-in key (as another client would make it). */
async function callApi(page, method, path, body = null) {
  return page.evaluate(
    async ([method, path, body]) => {
      const r = await fetch(path, {
        method,
        headers: {
          Authorization: `Bearer ${sessionStorage.getItem("amaos.apiKey")}`,
          "Content-Type": "application/json",
          Accept: "application/json",
        },
        body: body === null ? undefined : JSON.stringify(body),
      });
      const json = await r.json().catch(() => null);
      if (!r.ok) throw new Error(`${method} ${path}: HTTP ${r.status} ${json && json.message}`);
      return json;
    },
    [method, path, body],
  );
}

async function signIn(page, as = key) {
  await page.goto("/");
  await page.getByTestId("signin-form").waitFor();
  await page.getByTestId("signin-key").fill(as);
  await page.getByTestId("signin-submit").click();
  await page.getByTestId("tasks-page").waitFor();
}

async function shot(page, name) {
  // Let transitions and the last fetches settle.
  await page.waitForTimeout(300);
  const path = join(out, `${name}.png`);
  await page.screenshot({ path, fullPage: false });
  console.log(`screenshot ${path}`);
}

const browser = await chromium.launch({
  executablePath,
  headless: true,
  // As root in a container, Chromium's own sandbox cannot start.
  args: ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
});

let taskId = null;
try {
  // ---- light, 1280×800: the whole flow ----
  const light = await openPage(browser, { viewport: { width: 1280, height: 800 }, colorScheme: "light" });
  const page = light.page;

  // A wrong key is refused visibly.
  await page.goto("/");
  await page.getByTestId("signin-key").fill("amaos_not_a_key");
  await page.getByTestId("signin-submit").click();
  await page.getByTestId("error-banner").waitFor();
  check((await page.getByTestId("error-message").textContent()).length > 0, "a wrong key shows the API's error message");
  // That refusal is a 401 the browser logs itself; it is expected.
  problems.length = 0;

  await shot(page, "signin-light");
  await signIn(page);
  check(await page.getByTestId("nav-audit").isVisible(), "an admin sees the audit page in the navigation");
  check(
    !(await page.evaluate(() => Object.keys(localStorage).some((k) => localStorage.getItem(k)?.includes("amaos_")))),
    "the key is not in local storage",
  );
  check(await page.evaluate(() => Boolean(sessionStorage.getItem("amaos.apiKey"))), "the key is in session storage");

  // Submit the research crew from the page.
  await page.getByTestId("nav-submit").click();
  await page.getByTestId("submit-page").waitFor();
  await page.locator("[data-testid=submit-team] option[value=research-crew]").waitFor({ state: "attached" });
  await page.getByTestId("submit-team").selectOption("research-crew");
  await page.locator("[data-testid=submit-preview] [data-testid=graph-node]").first().waitFor();
  await page.getByTestId("submit-input").fill("vector databases");
  await shot(page, "submit-light");
  await page.getByTestId("submit-button").click();
  await page.waitForURL(/#\/tasks\/[^/?]+$/);
  taskId = decodeURIComponent(page.url().split("#/tasks/")[1]);
  check(Boolean(taskId), `submitting opens the task's page (${taskId})`);
  await page.getByTestId("task-page").waitFor();

  // The timeline fills while the task runs, without a reload: record what
  // the state badge and the event count were each time they changed.
  const seen = await page.evaluate(
    () =>
      new Promise((resolve, reject) => {
        const states = [];
        const counts = [];
        const look = () => {
          const badge = document.querySelector("[data-testid=task-state]");
          const state = badge ? badge.dataset.state : null;
          const count = document.querySelectorAll("[data-testid=timeline-event]").length;
          if (state && states[states.length - 1] !== state) states.push(state);
          if (counts[counts.length - 1] !== count) counts.push(count);
          const stream = document.querySelector("[data-testid=stream-status] .badge");
          if (state === "TASK_STATE_SUCCEEDED" && stream && stream.dataset.status === "ended") {
            observer.disconnect();
            clearTimeout(timer);
            resolve({ states, counts, navigations: performance.getEntriesByType("navigation").length });
          }
        };
        const observer = new MutationObserver(look);
        observer.observe(document.body, { subtree: true, childList: true, attributes: true });
        const timer = setTimeout(() => {
          observer.disconnect();
          reject(new Error(`the task did not reach SUCCEEDED in time: states ${states.join(" → ")}`));
        }, 90_000);
        look();
      }),
  );
  console.log(`states seen: ${seen.states.join(" → ")}; event counts: ${seen.counts.join(", ")}`);
  check(seen.states.at(-1) === "TASK_STATE_SUCCEEDED", "the task page reaches SUCCEEDED");
  check(seen.counts.length >= 3, "events arrived over time (the timeline grew live, not in one piece)");
  const kinds = await page.$$eval("[data-testid=timeline-event]", (els) => els.map((e) => e.dataset.kind));
  check(kinds.includes("tool"), "the timeline shows tool calls");
  check(kinds.includes("message") || kinds.includes("done"), "the timeline shows the agents' messages or outputs");
  check(kinds.includes("state"), "the timeline shows state changes");
  check(kinds.filter((k) => k === "done").length >= 2, "the timeline shows the crew's tasks completing");
  const args = await page.getByTestId("tool-arguments").first().textContent();
  check(args.includes("notes.md"), "a tool call shows its arguments");
  await page.getByTestId("task-output-text").waitFor();
  check((await page.getByTestId("task-output-text").textContent()).includes("vector databases"), "the output is shown");
  check((await page.getByTestId("task-input").textContent()) === "vector databases", "the input is shown");
  check(await page.getByTestId("task-cancel").isDisabled(), "Cancel is off for a finished task");
  await shot(page, "task-light");

  // Filtering the timeline hides the other kinds.
  await page.getByTestId("timeline-filter").selectOption("tools");
  const visible = await page.$$eval("[data-testid=timeline-event]:not([hidden])", (els) => els.map((e) => e.dataset.group));
  check(visible.length > 0 && visible.every((g) => g === "tools"), "the timeline filter shows tool calls only");
  await page.getByTestId("timeline-filter").selectOption("all");

  // The tasks list shows it, newest first, and filters by state and team.
  await page.getByTestId("nav-tasks").click();
  await page.locator(`[data-testid=task-row][data-task-id="${taskId}"]`).waitFor();
  const first = await page.getByTestId("task-row").first().getAttribute("data-task-id");
  check(first === taskId, "the new task is first in the list");
  await page.getByTestId("filter-state").selectOption("TASK_STATE_FAILED");
  await page.getByTestId("tasks-empty").waitFor();
  check(true, "filtering by another state hides it");
  await page.getByTestId("filter-state").selectOption("TASK_STATE_SUCCEEDED");
  await page.locator(`[data-testid=task-row][data-task-id="${taskId}"]`).waitFor();
  await page.locator("[data-testid=filter-team] option[value=research-crew]").waitFor({ state: "attached" });
  await page.getByTestId("filter-team").selectOption("research-crew");
  await page.locator(`[data-testid=task-row][data-task-id="${taskId}"]`).waitFor();
  check(page.url().includes("team=research-crew"), "filters by state and team, kept in the address");
  await page.getByTestId("filter-state").selectOption("");
  await page.getByTestId("filter-team").selectOption("");
  await page.locator(`[data-testid=task-row][data-task-id="${taskId}"]`).waitFor();
  await shot(page, "tasks-light");

  // ---- approvals: a tool call that waits for a person ----
  await page.getByTestId("nav-submit").click();
  await page.getByTestId("submit-page").waitFor();
  await page.locator("[data-testid=submit-team] option[value=approved-payout]").waitFor({ state: "attached" });
  await page.getByTestId("submit-team").selectOption("approved-payout");
  await page.getByTestId("submit-input").fill("invoice 1042");
  await page.getByTestId("submit-button").click();
  await page.waitForURL(/#\/tasks\/[^/?]+$/);
  const payoutId = decodeURIComponent(page.url().split("#/tasks/")[1]);
  check(Boolean(payoutId) && payoutId !== taskId, `approved-payout is submitted (${payoutId})`);
  await page.getByTestId("task-page").waitFor();
  const waiting = page.locator("[data-testid=task-state][data-state=TASK_STATE_INPUT_REQUIRED]");
  await waiting.waitFor({ timeout: 90_000 });
  check((await waiting.getAttribute("class")).split(" ").includes("attn"), "the task page shows INPUT_REQUIRED distinctly");
  const taskApproval = page.locator("[data-testid=task-approvals] [data-testid=approval-card]");
  await taskApproval.waitFor();
  check(
    (await taskApproval.getByTestId("approval-tool").textContent()) === "file_write" &&
      (await taskApproval.getByTestId("approval-arguments").textContent()).includes("ledger.md"),
    "the task page shows the call that waits, with its arguments",
  );
  await page.locator("[data-testid=timeline-event][data-kind=approval]").waitFor();
  check(true, "the timeline shows the run stopping for approval");
  await shot(page, "task-approval-light");

  // The tasks list shows the state distinctly, and filters by it.
  await page.getByTestId("nav-tasks").click();
  await page.getByTestId("tasks-page").waitFor();
  const payoutRow = page.locator(`[data-testid=task-row][data-task-id="${payoutId}"]`);
  await payoutRow.waitFor();
  check(
    (await payoutRow.getAttribute("data-state")) === "TASK_STATE_INPUT_REQUIRED" && (await payoutRow.locator(".badge.attn").count()) === 1,
    "the tasks list shows INPUT_REQUIRED distinctly",
  );
  await page.getByTestId("filter-state").selectOption("TASK_STATE_INPUT_REQUIRED");
  await page.waitForURL(/state=TASK_STATE_INPUT_REQUIRED/);
  await page.locator(`[data-testid=task-row][data-task-id="${payoutId}"][data-state=TASK_STATE_INPUT_REQUIRED]`).waitFor();
  check(true, "the tasks list filters by INPUT_REQUIRED");
  await page.getByTestId("filter-state").selectOption("");

  // A second one, to be decided behind the page's back.
  const staleId = (await callApi(page, "POST", "/v1/tasks", {
    team: { name: "approved-payout" },
    input: "invoice 1043",
    idempotencyKey: `stale-${Date.now()}`,
  })).taskId;

  // A viewer sees the call but may not decide it: refused, visibly, on the card.
  if (viewerKey) {
    const viewer = await openPage(browser, { viewport: { width: 1280, height: 800 }, colorScheme: "light" });
    await signIn(viewer.page, viewerKey);
    await viewer.page.getByTestId("nav-approvals").click();
    await viewer.page.getByTestId("approvals-page").waitFor();
    const viewed = viewer.page.locator(`[data-testid=approval-card][data-task-id="${payoutId}"]`);
    await viewed.waitFor();
    const from = problems.length;
    await viewed.getByTestId("approval-approve").click();
    const refusal = viewed.getByTestId("error-banner");
    await refusal.waitFor();
    const text = await refusal.textContent();
    check(text.includes("403") && text.includes("permission"), `a viewer's Approve is refused on the card (${text})`);
    expectRefusals(from, 403);
    await viewer.page.waitForTimeout(REFRESH_WAIT);
    check(
      (await viewed.getAttribute("data-state")) === "APPROVAL_STATE_PENDING" && (await viewed.getByTestId("error-banner").count()) === 1,
      "the call still waits, and the refusal stays on its card across refreshes",
    );
    await shot(viewer.page, "approvals-refused-light");
    await viewer.context.close();
  }

  // The Approvals page lists both calls.
  await page.getByTestId("nav-approvals").click();
  await page.getByTestId("approvals-page").waitFor();
  check(
    (await page.locator("[data-testid=nav] a.active").getAttribute("data-route")) === "approvals",
    "the Approvals page is in the navigation",
  );
  const payoutCard = page.locator(`[data-testid=approval-card][data-task-id="${payoutId}"]`);
  const staleCard = page.locator(`[data-testid=approval-card][data-task-id="${staleId}"]`);
  await payoutCard.waitFor();
  await staleCard.waitFor({ timeout: 90_000 });
  check(
    (await payoutCard.getAttribute("data-state")) === "APPROVAL_STATE_PENDING" &&
      (await payoutCard.getByTestId("approval-tool").textContent()) === "file_write" &&
      (await payoutCard.getByTestId("approval-agent").textContent()) === "treasurer" &&
      (await payoutCard.getByTestId("approval-team").textContent()) === "approved-payout",
    "a waiting call shows its tool, agent and team",
  );
  const shown = await payoutCard.getByTestId("approval-arguments").textContent();
  check(shown.includes('"path": "ledger.md"') && shown.includes("PAID: invoice 1042"), `its arguments are shown as JSON (${shown.replaceAll("\n", " ")})`);
  check((await payoutCard.getByTestId("approval-reason").textContent()).length > 0, "and why it waits");
  check(/^in \d+[smhd]$/.test(await payoutCard.getByTestId("approval-expires").textContent()), "and when it expires");

  // Decided elsewhere meanwhile: this page's Approve is refused as stale.
  await page.getByTestId("approvals-auto").uncheck();
  await page.locator("[data-testid=approvals-list][data-busy=false]").waitFor();
  const staleApproval = await staleCard.getAttribute("data-approval-id");
  await callApi(page, "POST", `/v1/tasks/${encodeURIComponent(staleId)}/approvals/${encodeURIComponent(staleApproval)}:decide`, {
    decision: "DECISION_REJECT",
    comment: "decided elsewhere",
  });
  let from = problems.length;
  await staleCard.getByTestId("approval-approve").click();
  const staleBanner = page.locator("[data-testid=approvals-page] > .error-slot [data-testid=error-banner]");
  await staleBanner.waitFor();
  const staleText = await staleBanner.textContent();
  check(staleText.includes("400") && staleText.includes("no longer waiting"), `approving a call decided elsewhere is refused visibly (${staleText})`);
  await staleCard.waitFor({ state: "detached" });
  check(true, "and the list is refreshed without it");
  expectRefusals(from, 400);
  await staleBanner.locator("button.close").click();
  await page.getByTestId("approvals-auto").check();

  // Approve, with a comment: the outcome shows, the call leaves the list.
  await payoutCard.getByTestId("approval-comment").fill("checked against invoice 1042");
  await shot(page, "approvals-light");
  await payoutCard.getByTestId("approval-approve").click();
  const outcome = page.getByTestId("approval-outcome");
  await outcome.waitFor();
  check(
    (await outcome.getAttribute("data-decision")) === "DECISION_APPROVE" &&
      (await outcome.getAttribute("data-state")) === "APPROVAL_STATE_APPROVED" &&
      (await outcome.getAttribute("data-task-id")) === payoutId,
    `approving shows the outcome (${await outcome.textContent()})`,
  );
  await payoutCard.waitFor({ state: "detached" });
  check(true, "the approved call leaves the waiting list");
  await page.getByTestId("approvals-decided").check();
  await page.waitForURL(/decided=1/);
  const decidedCard = page.locator(`[data-testid=approval-card][data-task-id="${payoutId}"][data-state=APPROVAL_STATE_APPROVED]`);
  await decidedCard.waitFor();
  check(
    (await decidedCard.getByTestId("approval-decision-comment").textContent()) === "checked against invoice 1042" &&
      (await decidedCard.getByTestId("approval-approve").count()) === 0,
    "a decided call shows its decision and comment, without buttons",
  );
  await page.locator(`[data-testid=approval-card][data-task-id="${staleId}"][data-state=APPROVAL_STATE_REJECTED]`).waitFor();
  await shot(page, "approvals-decided-light");

  // The approved task resumes on a new attempt and succeeds.
  await page.goto(`/#/tasks/${encodeURIComponent(payoutId)}`);
  await page.locator("[data-testid=task-state][data-state=TASK_STATE_SUCCEEDED]").waitFor({ timeout: 90_000 });
  await page.locator("[data-testid=stream-status] .badge[data-status=ended]").waitFor();
  const done = await callApi(page, "GET", `/v1/tasks/${encodeURIComponent(payoutId)}`);
  check(done.task.state === "TASK_STATE_SUCCEEDED", "the approved task reaches TASK_STATE_SUCCEEDED");
  check((await page.getByTestId("task-attempt").textContent()) === "2", "on a new attempt");
  check(await page.getByTestId("task-approvals").isHidden(), "and asks for nothing any more");
  await page.getByTestId("task-output-text").waitFor();
  check((await page.getByTestId("task-output-text").textContent()).includes("invoice 1042"), "its output is shown");

  // The team's graph.
  await page.getByTestId("nav-teams").click();
  await page.getByTestId("teams-page").waitFor();
  const card = page.locator("[data-testid=team-card][data-team=research-crew]");
  await card.waitFor();
  const nodes = await card.locator("[data-testid=graph-node]").evaluateAll((els) => els.map((e) => e.dataset.nodeId));
  check(
    ["task:research", "task:write", "agent:researcher", "agent:writer"].every((n) => nodes.includes(n)),
    `the research crew is drawn as a graph (${nodes.join(", ")})`,
  );
  const edges = await card.locator("path.edge").evaluateAll((els) => els.map((e) => `${e.dataset.from}>${e.dataset.to}`));
  check(
    edges.includes("task:research>task:write") && edges.includes("task:research>agent:researcher"),
    "its tasks are drawn in order, each with its agent",
  );
  await shot(page, "teams-light");
  await card.getByTestId("team-open").click();
  await page.getByTestId("team-page").waitFor();
  await page.locator("[data-testid=graph-node][data-node-id=team]").waitFor();
  await page.locator("[data-testid=graph-node][data-node-id='task:research']").click();
  check((await page.getByTestId("node-detail").textContent()).includes("research"), "a node's details show when it is clicked");
  const hybrid = await page.evaluate(async () => {
    const r = await fetch("/v1/teams", { headers: { Authorization: `Bearer ${sessionStorage.getItem("amaos.apiKey")}` } });
    return (await r.json()).teams.map((t) => t.name);
  });
  if (hybrid.includes("hybrid-launch")) {
    await page.goto("/#/teams/hybrid-launch");
    await page.locator("[data-testid=graph-node][data-node-id='team:debate']").waitFor();
    check(true, "a hybrid team draws its nested team");
    await shot(page, "team-hybrid-light");
  }

  // Workers.
  await page.getByTestId("nav-workers").click();
  await page.getByTestId("workers-page").waitFor();
  await page.getByTestId("worker-row").first().waitFor();
  check((await page.getByTestId("worker-row").first().getAttribute("data-state")) === "WORKER_STATE_LIVE", "a live worker is listed");
  check((await page.getByTestId("worker-load").first().textContent()).includes("/"), "its load is shown");
  check((await page.getByTestId("worker-breaker").first().textContent()).length > 0, "its breaker state is shown");
  await shot(page, "workers-light");

  // The audit trail, verified.
  await page.getByTestId("nav-audit").click();
  await page.getByTestId("audit-page").waitFor();
  await page.getByTestId("audit-row").first().waitFor();
  const verification = page.getByTestId("audit-verification");
  await verification.waitFor();
  check(
    (await verification.getAttribute("data-ok")) === "true",
    `the audit chain is verified (${await verification.textContent()})`,
  );
  await shot(page, "audit-light");

  // The theme toggle flips the page to dark and back.
  const before = await page.evaluate(() => getComputedStyle(document.body).backgroundColor);
  await page.getByTestId("theme-toggle").click();
  const after = await page.evaluate(() => getComputedStyle(document.body).backgroundColor);
  check(before !== after && (await page.evaluate(() => document.documentElement.dataset.theme)) === "dark", "the toggle switches to dark");
  await page.getByTestId("theme-toggle").click();
  check((await page.evaluate(() => document.documentElement.dataset.theme)) === "light", "and back to light");

  // Signing out forgets the key.
  await page.getByTestId("signout").click();
  await page.getByTestId("signin-form").waitFor();
  check(await page.evaluate(() => sessionStorage.getItem("amaos.apiKey") === null), "signing out forgets the key");
  await light.context.close();

  // ---- dark (from the system), 1280×800 ----
  const dark = await openPage(browser, { viewport: { width: 1280, height: 800 }, colorScheme: "dark" });
  await signIn(dark.page);
  const darkBg = await dark.page.evaluate(() => getComputedStyle(document.body).backgroundColor);
  check(darkBg !== "rgb(245, 246, 248)", `the system's dark scheme is followed (${darkBg})`);
  await shot(dark.page, "tasks-dark");
  await dark.page.goto(`/#/tasks/${encodeURIComponent(taskId)}`);
  await dark.page.locator("[data-testid=stream-status] .badge[data-status=ended]").waitFor();
  await shot(dark.page, "task-dark");
  await dark.page.goto("/#/teams");
  await dark.page.locator("[data-testid=team-card]").first().waitFor();
  await shot(dark.page, "teams-dark");
  await dark.page.goto("/#/audit");
  await dark.page.getByTestId("audit-verification").waitFor();
  await shot(dark.page, "audit-dark");
  await dark.page.goto("/#/approvals?decided=1");
  await dark.page.getByTestId("approval-card").first().waitFor();
  await shot(dark.page, "approvals-dark");
  await dark.context.close();

  // ---- a phone's width ----
  const phone = await openPage(browser, {
    viewport: { width: 390, height: 844 },
    deviceScaleFactor: 2,
    isMobile: true,
    hasTouch: true,
    colorScheme: "light",
  });
  await signIn(phone.page);
  const overflow = await phone.page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  check(overflow <= 0, `the tasks page fits a phone's width (overflow ${overflow}px)`);
  await shot(phone.page, "tasks-phone");
  await phone.page.goto(`/#/tasks/${encodeURIComponent(taskId)}`);
  await phone.page.locator("[data-testid=stream-status] .badge[data-status=ended]").waitFor();
  const taskOverflow = await phone.page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  check(taskOverflow <= 0, `the task page fits a phone's width (overflow ${taskOverflow}px)`);
  await shot(phone.page, "task-phone");
  await phone.page.goto("/#/workers");
  await phone.page.getByTestId("worker-row").first().waitFor();
  await shot(phone.page, "workers-phone");
  await phone.page.goto("/#/approvals?decided=1");
  await phone.page.getByTestId("approval-card").first().waitFor();
  const approvalsOverflow = await phone.page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  check(approvalsOverflow <= 0, `the approvals page fits a phone's width (overflow ${approvalsOverflow}px)`);
  await shot(phone.page, "approvals-phone");
  await phone.context.close();

  check(problems.length === 0, `no console errors or uncaught exceptions${problems.length ? `: ${problems.join("; ")}` : ""}`);
} catch (error) {
  console.error(`FAILED: ${error.message}`);
  if (problems.length) console.error(`console: ${problems.join("; ")}`);
  await browser.close();
  process.exit(1);
}
await browser.close();
console.log("dashboard: all checks passed");
