"use strict";
// DOM helpers. Every node is made with createElement and filled with text nodes: nothing from the data is ever
// parsed as markup. Links are only ever built from numbers and fixed paths, never from the data.
window.__swepost_ep = window.__swepost_ep || {};
window.__swepost_search = window.__swepost_search || {};
window.__swepost_raw = window.__swepost_raw || {};

const SAFE_LINK = /^#\/[a-z]*(\/\d+)?$/;

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.className = value;
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "href") {
      if (!SAFE_LINK.test(value)) throw new Error("refused link " + value);
      el.setAttribute("href", value);
    } else if (key === "src" || key.startsWith("style")) throw new Error("refused attribute " + key);
    else el.setAttribute(key, String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : String(c));  // a string becomes a text node
  }
  return el;
}

function clear(el) { while (el.firstChild) el.removeChild(el.firstChild); return el; }

// A capped text from the data: {t: text, n: full length when cut}
function capText(c) { return c === null || c === undefined ? "" : String(c.t); }
function capNote(c) {
  return c && c.n ? h("span", {class: "cut"}, `… ${(c.n - c.t.length).toLocaleString()} more characters in the raw JSON`) : null;
}

// Load a data file of this site (a plain script: works from file:// too). Resolves when it has run.
const loaded = {};
function loadScript(path) {
  if (!loaded[path]) {
    loaded[path] = new Promise((resolve, reject) => {
      const s = document.createElement("script");
      s.src = path;  // always a fixed path with a number in it, made here
      s.onload = () => resolve();
      s.onerror = () => { delete loaded[path]; reject(new Error("could not load " + path)); };
      document.head.appendChild(s);
    });
  }
  return loaded[path];
}

function fmtNum(v, digits) {
  if (v === null || v === undefined) return "–";
  if (digits !== undefined) return Number(v).toFixed(digits);
  return Number(v).toLocaleString();
}

const KNOWN_STATUS = new Set(["submitted", "max_turns", "context_overflow", "timeout", "format_error",
  "sandbox_error", "policy_error", "deadline", "unfinished", "unreadable"]);
function statusClass(st) { return "st st-" + (KNOWN_STATUS.has(st) ? st : "other"); }
function resolvedClass(res) {
  return "res " + (res === "RESOLVED_FULL" ? "res-yes" : res === "RESOLVED_NO" ? "res-no" : res ? "res-other" : "res-none");
}

// A long text folded: the first lines, and a button for the rest.
const FOLD_LINES = 30, FOLD_CHARS = 3000;
function foldedPre(cap, cls) {
  const text = capText(cap);
  const lines = text.split("\n");
  const pre = h("pre", {class: cls || "text"});
  if (lines.length <= FOLD_LINES + 5 && text.length <= FOLD_CHARS * 1.5) {
    return h("div", {}, append(pre, [text]), capNote(cap));
  }
  const head = lines.slice(0, FOLD_LINES).join("\n").slice(0, FOLD_CHARS);
  pre.append(head);
  const button = h("button", {class: "fold"}, `show all ${lines.length.toLocaleString()} lines (${text.length.toLocaleString()} characters)`);
  button.addEventListener("click", () => { clear(pre).append(text); button.remove(); });
  return h("div", {class: "folded"}, pre, button, capNote(cap));
}
