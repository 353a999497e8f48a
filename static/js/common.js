// Shared by the panel's modules: DOM building, the API client, formatting.
// Every server-provided string reaches the page as text (textContent,
// never innerHTML); the Content-Security-Policy allows no inline script.

export const $ = (sel) => document.querySelector(sel);

// What the panel knows; each module reads and writes its own part.
export const state = {
  tasks: {}, settings: {}, strategies: {}, joined: {}, runId: null, runActive: false,
  report: {}, csrf: null, source: null,
};

// An element with attributes and children; strings become text nodes.
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "className") node.className = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function showError(message) {
  const box = $("#error");
  if (!message) { box.hidden = true; return; }
  box.textContent = message;
  box.hidden = false;
}

export class Unauthenticated extends Error {}

// An API refusal: the message, and the request field it is about, if any.
export class ApiError extends Error {
  constructor(message, key) { super(message); this.key = key || null; }
}

let onSignedOut = () => {};
export function whenSignedOut(handler) { onSignedOut = handler; }

// Same-origin requests carry the session cookie; changes also carry the
// session's CSRF token.
export async function api(path, options = {}) {
  const method = options.method || "GET";
  const headers = Object.assign({}, options.headers || {});
  if (method !== "GET" && state.csrf) headers["X-CSRF-Token"] = state.csrf;
  const response = await fetch(path, Object.assign({}, options, { headers, credentials: "same-origin" }));
  const text = await response.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (_) { body = { error: text }; }
  if (response.status === 401 && path !== "/api/login") {
    onSignedOut();
    throw new Unauthenticated((body && body.error) || "sign in first");
  }
  if (!response.ok) {
    throw new ApiError((body && body.error) || `${response.status} ${response.statusText}`, body && body.key);
  }
  return body;
}

export function reportError(prefix) {
  return (err) => { if (!(err instanceof Unauthenticated)) showError(`${prefix}: ${err.message}`); };
}

export function fmt(x, digits = 4) { return x === null || x === undefined ? "—" : Number(x).toFixed(digits); }

export function time(unix) { return unix ? new Date(unix * 1000).toLocaleTimeString() : "—"; }

// A node id as people read it: the host part of "name@host:port", in full on hover.
export function shortNode(node) {
  if (!node) return el("span", {}, "—");
  const at = node.lastIndexOf("@");
  return el("span", { title: node }, at >= 0 ? node.slice(at + 1) : node);
}
