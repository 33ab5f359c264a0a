// One task's events as a timeline: state changes and everything its team
// run emitted (messages, tool calls and results, memory, handoffs, speaker
// choices, verdicts, token usage, tool calls stopped for a person's
// approval), grouped by attempt.

import { h, icon, ICONS, enumLabel, fmtInt, fmtUsd, num, parseTime, pretty, stateBadge, clip } from "./dom.js";

/** Which filter group an event falls in, and how it is drawn. */
function describe(event) {
  if (event.stateChanged) {
    const c = event.stateChanged;
    return {
      kind: "state",
      group: "state",
      icon: ICONS.state,
      what: h("span", null, "State ", c.from ? [stateBadge(c.from), " → "] : null, stateBadge(c.to)),
      body: c.reason ? h("div", { class: "muted" }, c.reason) : null,
      attempt: c.attempt,
    };
  }
  const r = event.runEvent;
  if (!r) return { kind: "other", group: "other", icon: ICONS.state, what: "Event" };
  const who = r.agent || "";
  const base = { who, attempt: r.attempt };
  if (r.runStarted) {
    const p = r.runStarted;
    return {
      ...base,
      kind: "flow",
      group: "flow",
      icon: ICONS.start,
      what: `Run started: ${p.team} (${enumLabel(p.kind)})`,
      body: (p.agents || []).length ? h("div", null, (p.agents || []).map((a) => h("span", { class: "chip" }, a))) : null,
    };
  }
  if (r.taskStarted) {
    const p = r.taskStarted;
    return {
      ...base,
      kind: "flow",
      group: "flow",
      icon: ICONS.flow,
      what: `Task ${num(p.index)} of ${num(p.total)}: ${p.task}`,
      body: p.agent ? h("div", { class: "muted" }, `assigned to ${p.agent}`) : null,
    };
  }
  if (r.message) {
    const p = r.message;
    return {
      ...base,
      kind: "message",
      group: "messages",
      icon: ICONS.message,
      what: `${enumLabel(p.role || "assistant")} message`,
      body: h("div", { class: "text-block" }, clip(p.content || "", 6000)),
    };
  }
  if (r.toolCall) {
    const p = r.toolCall;
    return {
      ...base,
      kind: "tool",
      group: "tools",
      icon: ICONS.tool,
      what: h("span", null, "Tool call ", h("code", null, p.tool)),
      body: h("pre", { class: "text-block", testid: "tool-arguments" }, pretty(p.arguments || {})),
    };
  }
  if (r.toolResult) {
    const p = r.toolResult;
    return {
      ...base,
      kind: p.isError ? "fail" : "tool",
      group: "tools",
      icon: p.isError ? ICONS.fail : ICONS.result,
      what: h("span", null, p.isError ? "Tool failed " : "Tool result ", h("code", null, p.tool)),
      body: p.isError
        ? h("div", { class: "err-text" }, p.error || "failed")
        : h("pre", { class: "text-block", testid: "tool-result" }, pretty(p.result ?? null)),
    };
  }
  if (r.approvalRequested) {
    const p = r.approvalRequested;
    return {
      ...base,
      kind: "approval",
      group: "tools",
      icon: ICONS.approval,
      what: h("span", null, "Waiting for approval of ", h("code", null, p.tool)),
      body: h(
        "div",
        null,
        p.reason ? h("div", { class: "muted" }, p.reason) : null,
        h("pre", { class: "text-block", testid: "approval-request-arguments" }, pretty(p.arguments || {})),
        h("a", { href: `#/approvals?task=${encodeURIComponent(event.taskId || "")}` }, "Review it under Approvals"),
      ),
    };
  }
  if (r.memoryRecalled) {
    const p = r.memoryRecalled;
    return {
      ...base,
      kind: "memory",
      group: "memory",
      icon: ICONS.memory,
      what: `Recalled ${num(p.count)} ${num(p.count) === 1 ? "memory" : "memories"}`,
      body: (p.memoryIds || []).length
        ? h("div", null, p.memoryIds.map((m) => h("span", { class: "chip mono" }, clip(m, 18))))
        : null,
    };
  }
  if (r.memoryStored) {
    return {
      ...base,
      kind: "memory",
      group: "memory",
      icon: ICONS.memory,
      what: "Stored a memory",
      body: h("div", { class: "muted mono" }, r.memoryStored.memoryId || ""),
    };
  }
  if (r.handoff) {
    const p = r.handoff;
    return {
      ...base,
      kind: "flow",
      group: "flow",
      icon: ICONS.flow,
      what: `Handoff ${p.from} → ${p.to}`,
      body: p.reason ? h("div", { class: "muted" }, p.reason) : null,
    };
  }
  if (r.speakerSelected) {
    const p = r.speakerSelected;
    return {
      ...base,
      kind: "flow",
      group: "flow",
      icon: ICONS.flow,
      what: `Next speaker: ${p.speaker}`,
      body: p.method ? h("div", { class: "muted" }, `chosen by ${p.method.replaceAll("_", " ")}`) : null,
    };
  }
  if (r.verdict) {
    const p = r.verdict;
    const kind = p.kind || "VERDICT_KIND_UNSPECIFIED";
    return {
      ...base,
      kind: kind === "VERDICT_KIND_PASS" ? "verdict" : kind === "VERDICT_KIND_ESCALATE" ? "fail" : "tool",
      group: "verdicts",
      icon: ICONS.verdict,
      what: `Verdict: ${enumLabel(kind, "VERDICT_KIND_")} · score ${num(p.score).toFixed(2)} · revision ${num(p.revision)}`,
      body: p.feedback ? h("div", { class: "text-block" }, p.feedback) : null,
    };
  }
  if (r.tokenUsage) {
    const p = r.tokenUsage;
    return {
      ...base,
      kind: "tokens",
      group: "tokens",
      icon: ICONS.tokens,
      what: `Tokens: ${fmtInt(p.promptTokens)} in, ${fmtInt(p.completionTokens)} out`,
      body: h("div", { class: "muted" }, `model ${p.model || "—"}${num(p.costUsd) ? ` · ${fmtUsd(p.costUsd)}` : ""}`),
    };
  }
  if (r.taskCompleted) {
    const p = r.taskCompleted;
    return {
      ...base,
      kind: "done",
      group: "flow",
      icon: ICONS.done,
      what: `Task done: ${p.task}`,
      body: p.output ? h("div", { class: "text-block" }, clip(p.output, 4000)) : null,
    };
  }
  if (r.runCompleted) {
    return {
      ...base,
      kind: "done",
      group: "flow",
      icon: ICONS.done,
      what: "Run completed",
      body: r.runCompleted.output ? h("div", { class: "text-block" }, clip(r.runCompleted.output, 4000)) : null,
    };
  }
  if (r.runFailed) {
    const p = r.runFailed;
    return {
      ...base,
      kind: "fail",
      group: "flow",
      icon: ICONS.fail,
      what: `Run failed${p.class ? ` (${p.class})` : ""}`,
      body: h("div", { class: "err-text" }, p.reason || ""),
    };
  }
  return { ...base, kind: "other", group: "other", icon: ICONS.state, what: "Event" };
}

export const GROUPS = [
  ["all", "Everything"],
  ["messages", "Messages"],
  ["tools", "Tool calls"],
  ["memory", "Memory"],
  ["flow", "Tasks and handoffs"],
  ["verdicts", "Verdicts"],
  ["tokens", "Token usage"],
  ["state", "State changes"],
];

/** A timeline that events are added to as they arrive. */
export class Timeline {
  constructor() {
    this.list = h("ol", { class: "timeline", testid: "timeline", "aria-live": "polite" });
    this.start = null;
    this.attempt = 0;
    this.filter = "all";
    this.count = 0;
  }

  setFilter(group) {
    this.filter = group;
    for (const li of this.list.querySelectorAll("li.event")) {
      li.hidden = group !== "all" && li.dataset.group !== group;
    }
  }

  add(event) {
    const d = describe(event);
    const at = parseTime(event.at);
    if (this.start === null && at !== null) this.start = at;
    const attempt = num(d.attempt);
    if (attempt && attempt !== this.attempt) {
      this.attempt = attempt;
      this.list.append(h("li", { class: "attempt-divider", testid: "attempt-divider" }, `Attempt ${attempt}`));
    }
    const offset = at !== null && this.start !== null ? `+${((at - this.start) / 1000).toFixed(2)} s` : "";
    const li = h(
      "li",
      {
        class: `event k-${d.kind}`,
        testid: "timeline-event",
        dataset: { kind: d.kind, group: d.group, sequence: String(num(event.sequence)) },
      },
      h("span", { class: "dot" }, icon(...d.icon)),
      h(
        "div",
        { class: "content" },
        h(
          "div",
          { class: "head" },
          h("span", { class: "what" }, d.what),
          d.who ? h("span", { class: "who" }, d.who) : null,
          h("span", { class: "when", title: event.at || "" }, `#${num(event.sequence)} ${offset}`),
        ),
        d.body ? h("div", { class: "body" }, d.body) : null,
      ),
    );
    li.hidden = this.filter !== "all" && d.group !== this.filter;
    this.list.append(li);
    this.count += 1;
    return d;
  }
}
