// A team's shape (TeamSummary.graph) drawn as SVG. The layout is layered:
// a node's column is the longest path to it over the flow edges (task
// order, delegation, turns, judging), an agent assigned to a task sits in
// its task's column below it, and each nested team of a hybrid gets a band
// of rows of its own, boxed. Back edges (a judge's revise loop) and context
// from further back are drawn dashed.

import { s, clip } from "./dom.js";

/** Node size and spacing: full, and for the cards' previews. */
const FULL = { W: 176, H: 58, GAP_X: 64, GAP_Y: 26, PAD: 20, BAND_GAP: 34 };
const COMPACT = { W: 150, H: 46, GAP_X: 40, GAP_Y: 16, PAD: 10, BAND_GAP: 30 };
let W = FULL.W;
let H = FULL.H;
let GAP_X = FULL.GAP_X;
let GAP_Y = FULL.GAP_Y;
let PAD = FULL.PAD;
let BAND_GAP = FULL.BAND_GAP;

function use(dims) {
  ({ W, H, GAP_X, GAP_Y, PAD, BAND_GAP } = dims);
}

/** The graph without its root (the team itself), for a card titled with it. */
function withoutRoot(graph) {
  const root = (graph.nodes || [])[0];
  if (!root || root.kind !== "TEAM_NODE_KIND_TEAM") return graph;
  return {
    nodes: graph.nodes.slice(1),
    edges: (graph.edges || []).filter((e) => e.from !== root.id && e.to !== root.id),
  };
}

/** Edges drawn from a node to the one below it, in the same column. */
const BELOW = new Set(["assigned", "hint"]);
/** Edges that do not place nodes. */
const LOOSE = new Set(["revise", "context"]);

const KIND = {
  TEAM_NODE_KIND_TEAM: ["team", "TEAM"],
  TEAM_NODE_KIND_AGENT: ["agent", "AGENT"],
  TEAM_NODE_KIND_TASK: ["task", "TASK"],
  TEAM_NODE_KIND_MANAGER: ["manager", "MANAGER"],
  TEAM_NODE_KIND_SELECTOR: ["selector", "SELECTOR"],
  TEAM_NODE_KIND_JUDGE: ["judge", "JUDGE"],
  TEAM_NODE_KIND_CHAT: ["chat", "GROUP CHAT"],
};

export const LEGEND = [
  ["team", "Team"],
  ["task", "Crew task"],
  ["agent", "Agent"],
  ["manager", "Manager / selector"],
  ["chat", "Group chat"],
  ["judge", "Judge"],
];

/** Where each node goes: {id: {x, y, col, band}}, the bands' boxes, the size. */
export function layout(graph, root = "team") {
  const nodes = graph.nodes || [];
  const edges = (graph.edges || []).filter((e) => e.from !== e.to);
  const byId = new Map(nodes.map((n, i) => [n.id, { ...n, order: i }]));
  const flow = edges.filter((e) => !BELOW.has(e.label) && !LOOSE.has(e.label));

  // Columns: longest path over flow edges from nodes without incoming
  // ones; a cycle (not drawn by the service, but possible) is cut where the
  // walk meets a node it is inside of.
  const incoming = new Map(nodes.map((n) => [n.id, []]));
  for (const e of flow) if (incoming.has(e.to) && byId.has(e.from)) incoming.get(e.to).push(e.from);
  const col = new Map();
  const visiting = new Set();
  const column = (id) => {
    if (col.has(id)) return col.get(id);
    if (visiting.has(id)) return 0;
    visiting.add(id);
    let c = 0;
    for (const from of incoming.get(id) || []) c = Math.max(c, column(from) + 1);
    visiting.delete(id);
    col.set(id, c);
    return c;
  };
  // Attached nodes take their first task's column.
  const attachedTo = new Map();
  for (const e of edges) {
    if (BELOW.has(e.label) && !attachedTo.has(e.to) && (incoming.get(e.to) || []).length === 0) {
      attachedTo.set(e.to, e.from);
    }
  }
  for (const n of nodes) if (!attachedTo.has(n.id)) column(n.id);
  for (const [id, from] of attachedTo) col.set(id, column(from));

  // Bands: the top level, then each nested team (its node and its nodes).
  const bandOf = new Map();
  const bands = [""];
  for (const n of nodes) {
    const owner = n.parent || (n.kind === "TEAM_NODE_KIND_TEAM" && n.id !== root ? n.id : "");
    if (!bands.includes(owner)) bands.push(owner);
    bandOf.set(n.id, bands.indexOf(owner));
  }

  // Rows inside a band's column: flow nodes first, attached ones after.
  const cells = new Map();
  const sorted = [...nodes].sort((a, b) => {
    const attached = Number(attachedTo.has(a.id)) - Number(attachedTo.has(b.id));
    return attached || byId.get(a.id).order - byId.get(b.id).order;
  });
  const row = new Map();
  for (const n of sorted) {
    const key = `${bandOf.get(n.id)}:${col.get(n.id)}`;
    const r = cells.get(key) || 0;
    cells.set(key, r + 1);
    row.set(n.id, r);
  }
  const bandRows = bands.map((_, b) => {
    let most = 0;
    for (const [key, count] of cells) if (key.startsWith(`${b}:`)) most = Math.max(most, count);
    return most;
  });
  const bandY = [];
  let y = PAD;
  bands.forEach((owner, b) => {
    if (b > 0) y += BAND_GAP - GAP_Y + (owner ? 18 : 0);
    bandY.push(y);
    y += bandRows[b] * (H + GAP_Y);
  });

  const at = new Map();
  let width = 0;
  for (const n of nodes) {
    const x = PAD + col.get(n.id) * (W + GAP_X);
    const ny = bandY[bandOf.get(n.id)] + row.get(n.id) * (H + GAP_Y);
    at.set(n.id, { x, y: ny, col: col.get(n.id), band: bandOf.get(n.id) });
    width = Math.max(width, x + W + PAD);
  }
  const boxes = [];
  bands.forEach((owner, b) => {
    if (!owner) return;
    const members = nodes.filter((n) => bandOf.get(n.id) === b).map((n) => at.get(n.id));
    if (!members.length) return;
    const x0 = Math.min(...members.map((m) => m.x)) - 12;
    const y0 = Math.min(...members.map((m) => m.y)) - 26;
    const x1 = Math.max(...members.map((m) => m.x + W)) + 12;
    const y1 = Math.max(...members.map((m) => m.y + H)) + 12;
    boxes.push({ owner, label: byId.get(owner)?.label || owner, x: x0, y: y0, w: x1 - x0, h: y1 - y0 });
    width = Math.max(width, x1 + PAD);
  });
  // Room under the last row for the arcs of back edges.
  const arcs = edges.some((e) => LOOSE.has(e.label)) ? 44 : 0;
  const height = y - GAP_Y + PAD + arcs;
  return { at, boxes, width: Math.max(width, W + 2 * PAD), height: Math.max(height, H + 2 * PAD) };
}

function edgePath(a, b, label) {
  if (BELOW.has(label) && a.col === b.col) {
    const x = a.x + W / 2;
    return { d: `M${x},${a.y + H} L${x},${b.y - 2}`, lx: x, ly: (a.y + H + b.y) / 2, back: false };
  }
  if (b.col > a.col) {
    const x1 = a.x + W;
    const y1 = a.y + H / 2;
    const x2 = b.x - 2;
    const y2 = b.y + H / 2;
    const dx = Math.max(30, (x2 - x1) / 2);
    return {
      d: `M${x1},${y1} C${x1 + dx},${y1} ${x2 - dx},${y2} ${x2},${y2}`,
      lx: (x1 + x2) / 2,
      ly: (y1 + y2) / 2,
      back: false,
    };
  }
  // Backwards or within a column: an arc under the two nodes.
  const x1 = a.x + W / 2;
  const x2 = b.x + W / 2;
  const yb = Math.max(a.y, b.y) + H;
  const depth = 26 + Math.abs(a.col - b.col) * 6;
  return {
    d: `M${x1},${a.y + H} C${x1},${yb + depth} ${x2},${yb + depth} ${x2},${b.y + H + 2}`,
    lx: (x1 + x2) / 2,
    ly: yb + depth * 0.75,
    back: true,
  };
}

/**
 * The SVG of `graph`; `onSelect(node)` is called when a node is clicked.
 * `compact` drops edge labels of the obvious kinds, for cards.
 */
export function drawGraph(full, { onSelect, compact = false } = {}) {
  use(compact ? COMPACT : FULL);
  const graph = compact ? withoutRoot(full) : full;
  const { at, boxes, width, height } = layout(graph);
  const id = `g${Math.random().toString(36).slice(2, 8)}`;
  const svg = s("svg", {
    class: "graph",
    viewBox: `0 0 ${width} ${height}`,
    width,
    height,
    role: "img",
    "aria-label": "The team's graph",
    testid: "team-graph",
  });
  // Shrunk to fit a card, but never below 60% of its size (it scrolls
  // instead): past that its text cannot be read.
  if (compact) svg.style.minWidth = `${Math.round(width * 0.6)}px`;
  svg.append(
    s(
      "defs",
      null,
      s("marker", { id: `${id}-arrow`, viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" },
        s("path", { d: "M0,0 L10,5 L0,10 z", class: "arrow" })),
      s("marker", { id: `${id}-back`, viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" },
        s("path", { d: "M0,0 L10,5 L0,10 z", class: "arrow-back" })),
    ),
  );
  for (const box of boxes) {
    svg.append(
      s("rect", { class: "group", x: box.x, y: box.y, width: box.w, height: box.h, rx: 12 }),
      s("text", { class: "group-label", x: box.x + 12, y: box.y + 16 }, `nested · ${box.label}`),
    );
  }
  const labels = [];
  for (const e of graph.edges || []) {
    const a = at.get(e.from);
    const b = at.get(e.to);
    if (!a || !b || e.from === e.to) continue;
    const p = edgePath(a, b, e.label);
    const kind = e.label === "revise" ? "back" : e.label === "context" ? "context" : "";
    svg.append(
      s("path", {
        class: `edge ${kind}`,
        d: p.d,
        "marker-end": `url(#${id}-${kind === "back" ? "back" : "arrow"})`,
        dataset: { from: e.from, to: e.to, label: e.label },
      }),
    );
    // A card has room for the labels that change how it reads only.
    const telling = ["runs", "judges", "revise", "asks"].includes(e.label);
    if (e.label && (!compact || telling)) labels.push({ text: e.label, x: p.lx, y: p.ly });
  }
  for (const l of labels) {
    const w = l.text.length * 5.8 + 8;
    svg.append(
      s("rect", { class: "edge-label-bg", x: l.x - w / 2, y: l.y - 8, width: w, height: 15, rx: 4 }),
      s("text", { class: "edge-label", x: l.x, y: l.y + 3.5, "text-anchor": "middle" }, l.text),
    );
  }
  for (const n of graph.nodes || []) {
    const p = at.get(n.id);
    const [cls, kindLabel] = KIND[n.kind] || ["other", "NODE"];
    const g = s(
      "g",
      {
        class: `node n-${cls}`,
        transform: `translate(${p.x},${p.y})`,
        tabindex: 0,
        testid: "graph-node",
        dataset: { nodeId: n.id, kind: cls },
      },
      s("title", null, n.detail ? `${n.label}: ${n.detail}` : n.label),
      s("rect", { class: "box", width: W, height: H, rx: 9 }),
      s("rect", { class: "stripe", x: 0, y: 8, width: 4, height: H - 16, rx: 2 }),
      s("text", { class: "kind", x: 14, y: compact ? 16 : 17 }, kindLabel),
      s("text", { class: "label", x: 14, y: compact ? 33 : 34 }, clip(n.label, compact ? 17 : 21)),
      compact ? null : s("text", { class: "detail", x: 14, y: 49 }, clip(n.detail || "", 28)),
    );
    if (onSelect) {
      const select = () => {
        for (const other of svg.querySelectorAll(".node.selected")) other.classList.remove("selected");
        g.classList.add("selected");
        onSelect(n);
      };
      g.addEventListener("click", select);
      g.addEventListener("keydown", (ev) => {
        if (ev.key === "Enter" || ev.key === " ") select();
      });
    }
    svg.append(g);
  }
  return svg;
}

/** A one-word name of a node's kind, for people. */
export function kindName(kind) {
  return (KIND[kind] || ["node"])[0];
}
