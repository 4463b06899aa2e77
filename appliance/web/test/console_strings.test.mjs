// No user-visible text hard-coded in the admin console's code (src/console/**/*.js): what
// a page shows comes from the catalogues (src/console/i18n/zh-CN.json and en.json, through
// t()). The scanner reads each file's tokens and looks only where text reaches the page:
//
//   * assigned to textContent, innerText, innerHTML, title, placeholder, alt, ariaLabel;
//   * setAttribute("title" | "placeholder" | "alt" | "aria-label" | "aria-description", X);
//   * the children of the DOM helper h(tag, attrs, ...children) (not of h("code") or
//     h("pre"), which show identifiers as they are), append/prepend/replaceChildren/
//     createTextNode/alert/confirm/prompt arguments, the label of field(label, ...), the
//     caption and empty text of table(caption, columns, rows, empty), and what the pages'
//     reporters show (say*(text));
//   * properties that carry text into the DOM helpers: text, title, placeholder,
//     aria-label, aria-description, alt, label, head, cell (a table column's value: the
//     body of its arrow function), help, submit.
//
// An array literal and an arrow function's body in parentheses are looked into (a list
// of children, a cell's value).
//
// There, a string or template literal with a letter in its fixed part is reported as
// file:line, unless it is inside a call (t("key"), a formatter, a join) that is not
// itself one of these sinks, or compared with (x === "done" ? ...: a state, not text). Class names, ids, keys, URLs, element names, event names and
// API paths are in none of these places, so they are not looked at. A line may opt out
// with a comment "i18n-exempt: <why>" on it or on the line above (language names shown in
// their own language).
import assert from "node:assert/strict";
import { readFileSync, readdirSync } from "node:fs";
import { dirname, join, relative } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

const dir = join(dirname(fileURLToPath(import.meta.url)), "..", "src", "console");

const LETTER = /\p{L}/u;
const ASSIGN_SINKS = new Set(["textContent", "innerText", "innerHTML", "title", "placeholder", "alt", "ariaLabel"]);
const ATTR_SINKS = new Set(["title", "placeholder", "alt", "aria-label", "aria-description"]);
const PROP_SINKS = new Set(["text", "title", "placeholder", "aria-label", "aria-description", "alt", "label",
  "head", "cell", "help", "submit"]);
const ALL_ARGS = new Set(["append", "prepend", "replaceChildren", "createTextNode", "alert", "confirm", "prompt"]);
// Words after which a "/" starts a regular expression, not a division.
const BEFORE_REGEX = new Set(["return", "typeof", "case", "do", "else", "in", "of", "new", "delete", "void", "throw", "yield", "await"]);

// Tokens: {type: "str" | "id" | "num" | "punc", value, line}. A template literal is one
// "str" token (its fixed parts) followed by the tokens of its ${} expressions, which are
// wrapped in "(" ")" so that they count as nested, like a call's arguments.
export function tokenize(src) {
  const out = [];
  let i = 0;
  let line = 1;
  const push = (type, value, at) => out.push({ type, value, line: at });
  const regexAllowed = () => {
    const p = out[out.length - 1];
    if (!p) return true;
    if (p.type === "str" || p.type === "num") return false;
    if (p.type === "id") return BEFORE_REGEX.has(p.value);
    return !(p.value === ")" || p.value === "]" || p.value === "}");
  };
  function template() {
    const at = line;
    let text = "";
    const inner = [];
    i++; // `
    while (i < src.length && src[i] !== "`") {
      if (src[i] === "\\") { text += src[i + 1]; i += 2; continue; }
      if (src[i] === "$" && src[i + 1] === "{") {
        i += 2;
        let depth = 1;
        const start = i;
        while (i < src.length && depth) {
          if (src[i] === "`") { skipNested(); continue; }
          if (src[i] === "'" || src[i] === "\"") { skipQuoted(src[i]); continue; }
          if (src[i] === "{") depth++;
          else if (src[i] === "}") depth--;
          if (src[i] === "\n") line++;
          i++;
        }
        const expr = src.slice(start, i - 1);
        inner.push({ type: "punc", value: "(", line: at }, ...tokenize(expr).map((t) => ({ ...t, line: t.line + at - 1 })),
          { type: "punc", value: ")", line: at });
        text += " ";
        continue;
      }
      if (src[i] === "\n") line++;
      text += src[i++];
    }
    i++; // closing `
    push("str", text, at);
    out.push(...inner);
  }
  function skipNested() { // a template inside ${}: only its extent matters here
    i++;
    while (i < src.length && src[i] !== "`") {
      if (src[i] === "\\") i++;
      else if (src[i] === "\n") line++;
      i++;
    }
    i++;
  }
  function skipQuoted(q) {
    i++;
    while (i < src.length && src[i] !== q) i += src[i] === "\\" ? 2 : 1;
    i++;
  }
  while (i < src.length) {
    const c = src[i];
    if (c === "\n") { line++; i++; continue; }
    if (/\s/.test(c)) { i++; continue; }
    if (c === "/" && src[i + 1] === "/") { while (i < src.length && src[i] !== "\n") i++; continue; }
    if (c === "/" && src[i + 1] === "*") {
      const end = src.indexOf("*/", i + 2);
      line += (src.slice(i, end).match(/\n/g) || []).length;
      i = end + 2;
      continue;
    }
    if (c === "'" || c === "\"") {
      let j = i + 1;
      let text = "";
      while (j < src.length && src[j] !== c) {
        if (src[j] === "\\") { text += src[j + 1]; j += 2; } else text += src[j++];
      }
      push("str", text, line);
      i = j + 1;
      continue;
    }
    if (c === "`") { template(); continue; }
    if (c === "/" && regexAllowed()) {
      let j = i + 1;
      let cls = false;
      while (j < src.length && (cls || src[j] !== "/")) {
        if (src[j] === "\\") j++;
        else if (src[j] === "[") cls = true;
        else if (src[j] === "]") cls = false;
        j++;
      }
      j++;
      while (/[a-z]/i.test(src[j] || "")) j++;
      push("regex", src.slice(i, j), line);
      i = j;
      continue;
    }
    const id = /^[A-Za-z_$][\w$]*/.exec(src.slice(i, i + 100));
    if (id) { push("id", id[0], line); i += id[0].length; continue; }
    const num = /^\d[\w.]*/.exec(src.slice(i, i + 50));
    if (num) { push("num", num[0], line); i += num[0].length; continue; }
    const op = /^(\?\.|\.\.\.|===|!==|=>|==|!=|<=|>=|&&|\|\||\?\?|[-+*%]=|.)/s.exec(src.slice(i, i + 3));
    push("punc", op[0], line);
    i += op[0].length;
  }
  return out;
}

const OPEN = new Set(["(", "[", "{"]);
const COMPARE = new Set(["===", "!==", "==", "!="]);
const CLOSE = new Set([")", "]", "}"]);

// The tokens of one argument or value starting at k: up to a "," or a closing bracket of
// the enclosing level (or ";" for a statement).
function extent(tokens, k) {
  let depth = 0;
  let j = k;
  for (; j < tokens.length; j++) {
    const v = tokens[j].type === "punc" ? tokens[j].value : null;
    if (v && OPEN.has(v)) depth++;
    else if (v && CLOSE.has(v)) { if (depth === 0) break; depth--; }
    else if (depth === 0 && (v === "," || v === ";")) break;
  }
  return [k, j];
}

// String literals with a letter in [from, to) that are not inside a nested call, a member
// access by index or an object's nested value (those are looked at on their own).
function visibleStrings(tokens, from, to) {
  const found = [];
  let depth = 0;
  const transparent = []; // per open bracket: whether it counts as a level
  for (let j = from; j < to; j++) {
    const tok = tokens[j];
    const prev = tokens[j - 1];
    if (tok.type === "punc" && OPEN.has(tok.value)) {
      // An arrow function's body in parentheses and an array literal are what is shown
      // (a cell's value, children given as a list); a call's arguments, an index and an
      // object are not.
      const through = (tok.value === "(" && prev?.value === "=>")
        || (tok.value === "[" && !(prev && (prev.type === "id" || prev.type === "str" || [")", "]", "?."].includes(prev.value)))
          && ![".", "?."].includes(tokens[closing(tokens, j) + 1]?.value)); // ["a", "b"].map(...): data
      transparent.push(through);
      if (!through) depth++;
    } else if (tok.type === "punc" && CLOSE.has(tok.value)) {
      if (!transparent.pop()) depth--;
    }
    else if (tok.type === "str" && depth === 0 && LETTER.test(tok.value)) {
      const next = tokens[j + 1];
      if (next?.value === ":" && (prev?.value === "{" || prev?.value === ",")) continue; // an object key
      // A value compared with (a state, a type), not shown: x === "done" ? ... : ...
      if (COMPARE.has(next?.value) || COMPARE.has(prev?.value)) continue;
      found.push(tok);
    }
  }
  return found;
}

// The index of the bracket that closes the one at k.
function closing(tokens, k) {
  let depth = 0;
  for (let j = k; j < tokens.length; j++) {
    const v = tokens[j].type === "punc" ? tokens[j].value : null;
    if (v && OPEN.has(v)) depth++;
    else if (v && CLOSE.has(v) && --depth === 0) return j;
  }
  return tokens.length;
}

// The arguments of the call whose "(" is at k: [[from, to], ...] and the index after ")".
function args(tokens, k) {
  const out = [];
  let j = k + 1;
  if (tokens[j]?.value === ")") return [out, j + 1];
  for (;;) {
    const [from, to] = extent(tokens, j);
    out.push([from, to]);
    if (tokens[to]?.value !== ",") return [out, to + 1];
    j = to + 1;
  }
}

export function scan(src) {
  const tokens = tokenize(src);
  tokens.forEach((tok, idx) => { tok.idx = idx; });
  const hits = [];
  const report = (toks) => hits.push(...toks);
  for (let k = 0; k < tokens.length; k++) {
    const tok = tokens[k];
    const next = tokens[k + 1];
    const prev = tokens[k - 1];
    // x.textContent = ..., document.title = ...
    if (tok.type === "id" && ASSIGN_SINKS.has(tok.value) && prev?.value === "." && next?.value === "=") {
      const [from, to] = extent(tokens, k + 2);
      report(visibleStrings(tokens, from, to));
      continue;
    }
    // { text: ..., "aria-label": ... }
    if ((tok.type === "id" || tok.type === "str") && PROP_SINKS.has(tok.value) && next?.value === ":"
      && (prev?.value === "{" || prev?.value === ",")) {
      const [from, to] = extent(tokens, k + 2);
      report(visibleStrings(tokens, from, to));
      continue;
    }
    if (tok.type !== "id" || next?.value !== "(") continue;
    const [list] = args(tokens, k + 1);
    const name = tok.value;
    const pick = (i) => (list[i] ? report(visibleStrings(tokens, ...list[i])) : null);
    if (name === "h") {
      const tag = tokens[list[0]?.[0]];
      if (tag?.type === "str" && (tag.value === "code" || tag.value === "pre")) continue;
      for (let i = 2; i < list.length; i++) pick(i);
    } else if (name === "setAttribute") {
      const attr = tokens[list[0]?.[0]];
      if (attr?.type === "str" && ATTR_SINKS.has(attr.value)) pick(1);
    } else if (ALL_ARGS.has(name) || /^say/.test(name)) {
      for (let i = 0; i < list.length; i++) pick(i);
    } else if (name === "field") {
      pick(0);
    } else if (name === "table") {
      pick(0);
      pick(3);
    }
  }
  const lines = src.split("\n");
  const seen = new Set();
  return hits.sort((a, b) => a.idx - b.idx).filter((t) => {
    const key = `${t.line}:${t.value}`;
    const exempt = (n) => /\/\/.*i18n-exempt:\s*\S/.test(lines[n - 1] || "");
    if (seen.has(key) || exempt(t.line) || exempt(t.line - 1)) return false;
    seen.add(key);
    return true;
  }).map((t) => ({ line: t.line, text: t.value.trim() }));
}

function sources(d) {
  return readdirSync(d, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? sources(join(d, e.name)) : e.name.endsWith(".js") ? [join(d, e.name)] : []);
}

test("the scanner finds text where it reaches the page, and only there", () => {
  const sample = [
    'el.textContent = "Saved";', // 1
    'el.textContent = t("users.saved", { name: "x" });', // 2 (a key and a parameter)
    'h("p", { class: "lead help", id: "a-b" }, "Hello", t("x.y"));', // 3
    'h("code", {}, "keys.kms_command");', // 4 (an identifier, shown as it is)
    'h("button", { type: "button", title: "Close it", "aria-label": `Close ${name}` }, "—");', // 5
    'status.textContent = ok ? t("a.b") : "failed";', // 6
    'say(`Done: ${formatNumber(n)} rows`);', // 7
    'const url = `/users/${encodeURIComponent(name)}/sessions`; api.call("DELETE", url);', // 8
    'if (r.state === "done") el.classList.add("state-active");', // 9
    'const re = /^[a-z]+ "x"$/; el.setAttribute("aria-label", "Menu"); el.setAttribute("data-x", "y");', // 10
    'field("Username", { name: "username", placeholder: "e.g. zhangsan" });', // 11
    'table(t("c"), [{ head: "Name", cell: (r) => r.name }], rows, "Nothing");', // 12
    'h("option", { value: "en" }, "English"); // i18n-exempt: the language\'s own name', // 13
    'el.title = `${a} · ${b}`;', // 14 (no letters of its own)
    'ask({ title: t("x"), help: "Are you sure?", fields: [{ name: "totp", label: "Code" }] });', // 15
    'h("dd", {}, u.state === "disabled" ? t("a.b") : "Active");', // 16 (a state compared, then text)
    'table(t("c"), [{ head: t("h"), cell: (u) => (u.totp ? "TOTP" : x["name"]) }], rows, t("e"));', // 17
    'h("p", {}, ["Two", " ", t("k")], ["a", "b"].map((r) => r));', // 18 (an array: children; a call on one: not)
  ].join("\n");
  assert.deepEqual(scan(sample), [
    { line: 1, text: "Saved" }, { line: 3, text: "Hello" }, { line: 5, text: "Close it" },
    { line: 5, text: "Close" }, { line: 6, text: "failed" }, { line: 7, text: "Done:   rows" },
    { line: 10, text: "Menu" }, { line: 11, text: "Username" }, { line: 11, text: "e.g. zhangsan" },
    { line: 12, text: "Name" }, { line: 12, text: "Nothing" }, { line: 15, text: "Are you sure?" },
    { line: 15, text: "Code" }, { line: 16, text: "Active" }, { line: 17, text: "TOTP" },
    { line: 18, text: "Two" },
  ]);
});

test("no user-visible string is hard-coded in the console's code", () => {
  const files = sources(dir);
  assert.ok(files.length >= 10, `only ${files.length} files under src/console`);
  const found = files.flatMap((file) => scan(readFileSync(file, "utf8")).map((hit) =>
    `${relative(join(dir, "..", ".."), file)}:${hit.line}: ${JSON.stringify(hit.text)}`));
  assert.deepEqual(found, [], `user-visible text outside the catalogues (move it to src/console/i18n/zh-CN.json and en.json):\n${found.join("\n")}`);
});
