// The API as the dashboard calls it: the key lives in sessionStorage only (never a cookie,
// never the URL) and goes out as a Bearer header; errors carry the API's own message.

const KEY_ITEM = "mlp-api-key";

export function getKey() {
  return sessionStorage.getItem(KEY_ITEM);
}

export function setKey(key) {
  sessionStorage.setItem(KEY_ITEM, key);
}

export function clearKey() {
  sessionStorage.removeItem(KEY_ITEM);
}

/** An error answer: `message` is the API's message; `detail` its field list (422). */
export class ApiError extends Error {
  constructor(status, message, body) {
    super(message);
    this.status = status;
    this.body = body;
    this.detail = body && Array.isArray(body.detail) ? body.detail : [];
  }
}

/** A URL of the API, relative to the page, so the service may live under a path prefix. */
export function apiUrl(path, query) {
  const url = new URL(path.replace(/^\//, ""), document.baseURI);
  for (const [k, v] of Object.entries(query || {})) {
    if (v !== undefined && v !== null && v !== "") url.searchParams.set(k, String(v));
  }
  return url;
}

function headers(extra) {
  const out = new Headers(extra || {});
  const key = getKey();
  if (key) out.set("Authorization", `Bearer ${key}`);
  return out;
}

async function errorOf(response) {
  let body = null;
  let message = `${response.status} ${response.statusText}`.trim();
  const text = await response.text().catch(() => "");
  try {
    body = JSON.parse(text);
    if (body && typeof body.message === "string") message = body.message;
    else if (body && typeof body.detail === "string") message = body.detail;
  } catch {
    if (text && text.length < 500) message = `${message}: ${text}`;
  }
  if (response.status === 401) window.dispatchEvent(new CustomEvent("mlp:unauthorized"));
  return new ApiError(response.status, message, body);
}

/** fetch() with the key; throws ApiError on an error answer, or on no answer at all. */
export async function request(path, { method = "GET", query, json, body, signal,
                                      headers: extra } = {}) {
  const hdrs = headers(extra);
  if (json !== undefined) {
    hdrs.set("Content-Type", "application/json");
    body = JSON.stringify(json);
  }
  let response;
  try {
    response = await fetch(apiUrl(path, query), { method, headers: hdrs, body, signal,
                                                  cache: "no-store" });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, `the service does not answer (${err.message})`, null);
  }
  if (!response.ok) throw await errorOf(response);
  return response;
}

export async function getJSON(path, options) {
  const response = await request(path, options);
  return response.status === 204 ? null : response.json();
}

export async function sendJSON(path, json, options = {}) {
  return getJSON(path, { method: "POST", json, ...options });
}

/** A binary answer (a plot, weights) as a Blob, with its headers. */
export async function getBlob(path, options) {
  const response = await request(path, options);
  return { blob: await response.blob(), headers: response.headers };
}

/**
 * Server-Sent Events over fetch(), because EventSource cannot send an Authorization
 * header. Calls onEvent(type, data, id) for each event; reconnects (with Last-Event-ID)
 * when the stream drops before its `end` event; stops when `signal` aborts.
 */
export async function streamEvents(path, { onEvent, onError, signal, retryMs = 2000 }) {
  let lastId = null;
  let ended = false;
  while (!ended && !signal.aborted) {
    try {
      const extra = lastId !== null ? { "Last-Event-ID": lastId } : {};
      const response = await request(path, {
        signal, headers: { Accept: "text/event-stream", ...extra } });
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buffer.search(/\r?\n\r?\n/)) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + (buffer[cut] === "\r" ? 4 : 2));
          const event = parseEvent(block);
          if (!event) continue;
          if (event.id !== null) lastId = event.id;
          if (event.type === "end") ended = true;
          onEvent(event.type, event.data, event.id);
        }
      }
    } catch (err) {
      if (signal.aborted || err.name === "AbortError") return;
      if (onError) onError(err);
      // 4xx other than 429: retrying would not help
      if (err instanceof ApiError && err.status >= 400 && err.status < 500
          && err.status !== 429) return;
    }
    if (!ended && !signal.aborted) await sleep(retryMs, signal);
  }
}

function parseEvent(block) {
  let type = "message";
  let id = null;
  const data = [];
  for (const line of block.split(/\r?\n/)) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") type = value;
    else if (field === "data") data.push(value);
    else if (field === "id") id = value;
  }
  if (!data.length) return null;
  let parsed;
  try {
    parsed = JSON.parse(data.join("\n"));
  } catch {
    parsed = data.join("\n");
  }
  return { type, data: parsed, id };
}

export function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    if (signal) signal.addEventListener("abort", () => { clearTimeout(timer); resolve(); },
                                        { once: true });
  });
}

/** Save a Blob as a file through a temporary blob: URL. */
export function saveBlob(blob, filename) {
  const url = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = url;
  link.download = filename;
  link.hidden = true;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

/** The hex sha256 of a Blob (Web Crypto; the page's origin is a secure context). */
export async function sha256Hex(blob) {
  if (!crypto.subtle) return null;
  const digest = await crypto.subtle.digest("SHA-256", await blob.arrayBuffer());
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** The filename of a Content-Disposition header, if it names one. */
export function filenameOf(headers, fallback) {
  const cd = headers.get("Content-Disposition") || "";
  const star = /filename\*=(?:UTF-8'')?([^;]+)/i.exec(cd);
  if (star) return decodeURIComponent(star[1].trim().replace(/^"|"$/g, ""));
  const plain = /filename="?([^";]+)"?/i.exec(cd);
  return plain ? plain[1] : fallback;
}
