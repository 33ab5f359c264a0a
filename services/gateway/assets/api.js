// The REST API as the dashboard calls it: the API key from session storage
// as a bearer token, JSON errors turned into ApiError, and the task watch
// stream read as server-sent events over fetch (an EventSource cannot send
// an Authorization header), resumed with Last-Event-ID when the connection
// drops.

const KEY = "amaos.apiKey";
const WHO = "amaos.principal";

/** The signed-in key, kept in this tab's session storage only. */
export const session = {
  key() {
    return sessionStorage.getItem(KEY);
  },
  principal() {
    try {
      return JSON.parse(sessionStorage.getItem(WHO) || "null");
    } catch {
      return null;
    }
  },
  signIn(key, principal) {
    sessionStorage.setItem(KEY, key);
    sessionStorage.setItem(WHO, JSON.stringify(principal || null));
  },
  signOut() {
    sessionStorage.removeItem(KEY);
    sessionStorage.removeItem(WHO);
  },
};

/** An error answer of the API: `{code, message, details}` and the HTTP status. */
export class ApiError extends Error {
  constructor(status, body) {
    const message = body && body.message ? body.message : `HTTP ${status}`;
    super(message);
    this.status = status;
    this.code = body && body.code;
    this.details = (body && body.details) || [];
    this.body = body;
  }

  /** BadRequest field violations, as "field: description". */
  violations() {
    const out = [];
    for (const d of this.details) {
      for (const v of d.fieldViolations || []) {
        out.push(v.field ? `${v.field}: ${v.description}` : v.description);
      }
    }
    return out;
  }
}

/** Called when the API refuses the key (401): set by the app. */
let onUnauthenticated = () => {};
export function setUnauthenticatedHandler(f) {
  onUnauthenticated = f;
}

/** The error in `response`; a refused key (401) signs out, unless the call
 * carried no key (signing in). */
async function errorFrom(response, keySent = true) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = { message: `${response.status} ${response.statusText}` };
  }
  const error = new ApiError(response.status, body);
  if (response.status === 401 && keySent) onUnauthenticated(error);
  return error;
}

/** One call: `api("GET", "/v1/tasks", null, {pageSize: 20})`. */
export async function api(method, path, body = null, query = null, key = session.key()) {
  let url = path;
  if (query) {
    const params = new URLSearchParams();
    for (const [k, v] of Object.entries(query)) {
      if (v !== null && v !== undefined && v !== "") params.set(k, String(v));
    }
    const q = params.toString();
    if (q) url += `?${q}`;
  }
  const headers = { Accept: "application/json" };
  if (key) headers.Authorization = `Bearer ${key}`;
  if (body !== null) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(url, {
      method,
      headers,
      body: body === null ? undefined : JSON.stringify(body),
      cache: "no-store",
    });
  } catch (e) {
    throw new ApiError(0, { code: 14, message: `the gateway cannot be reached (${e.message})` });
  }
  if (!response.ok) throw await errorFrom(response, Boolean(key));
  if (response.status === 204) return {};
  return response.json();
}

/**
 * Follows a task's events: `onEvent(taskEvent)` for each, `onStatus(text)`
 * as the connection changes, `onEnd()` once the server ends the stream (the
 * task reached a terminal state), `onError(ApiError)` when it cannot go on.
 * Returns a function that stops it.
 */
export function watchTask(taskId, { onEvent, onStatus, onEnd, onError }) {
  const controller = new AbortController();
  let last = 0;
  let failures = 0;
  let stopped = false;

  const handle = (block) => {
    let event = "message";
    let id = null;
    const data = [];
    for (const line of block.split("\n")) {
      if (line === "" || line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "event") event = value;
      else if (field === "id") id = value;
      else if (field === "data") data.push(value);
    }
    if (block.split("\n").every((l) => l === "" || l.startsWith(":"))) {
      onStatus && onStatus("live");
      return "heartbeat";
    }
    if (event === "end") return "end";
    const text = data.join("\n");
    let json = null;
    try {
      json = text ? JSON.parse(text) : null;
    } catch {
      json = null;
    }
    if (event === "error") {
      onError && onError(new ApiError(0, json || { message: text }));
      return "error";
    }
    if (json && json.event) {
      const seq = Number(json.event.sequence || id || 0);
      if (seq > last) {
        last = seq;
        failures = 0;
        onEvent(json.event);
      }
    }
    return "event";
  };

  const run = async () => {
    while (!stopped) {
      let outcome = "dropped";
      try {
        const headers = { Accept: "text/event-stream", Authorization: `Bearer ${session.key()}` };
        if (last > 0) headers["Last-Event-ID"] = String(last);
        const response = await fetch(`/v1/tasks/${encodeURIComponent(taskId)}:watch`, {
          headers,
          signal: controller.signal,
          cache: "no-store",
        });
        if (!response.ok) {
          onError && onError(await errorFrom(response));
          return;
        }
        onStatus && onStatus("live");
        const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = "";
        read: for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += value.replaceAll("\r\n", "\n");
          let at;
          while ((at = buffer.indexOf("\n\n")) >= 0) {
            const block = buffer.slice(0, at);
            buffer = buffer.slice(at + 2);
            const what = handle(block);
            if (what === "end" || what === "error") {
              outcome = what;
              break read;
            }
          }
        }
        if (outcome !== "dropped") reader.cancel().catch(() => {});
      } catch {
        if (stopped) return;
        // A network failure: resumed below from the last event seen.
      }
      if (outcome === "end") {
        onStatus && onStatus("ended");
        onEnd && onEnd();
        return;
      }
      if (outcome === "error") return;
      failures += 1;
      if (failures > 5) {
        onError && onError(new ApiError(0, { message: "the event stream keeps dropping; reload to try again" }));
        return;
      }
      onStatus && onStatus("reconnecting");
      await new Promise((r) => setTimeout(r, Math.min(8000, 500 * 2 ** failures)));
    }
  };
  run();
  return () => {
    stopped = true;
    controller.abort();
  };
}
