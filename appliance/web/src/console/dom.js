// h(tag, attrs, ...children): a DOM element. attrs: class, text, onX handlers,
// boolean or string attributes; children: nodes, strings, arrays, null (skipped).
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "value") el.value = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : String(c));
  }
}

let uid = 0;
// A labelled form field: <label for=id>text</label><input id=id ...>.
export function field(label, attrs = {}, tag = "input") {
  const id = attrs.id || `f${++uid}`;
  const control = tag === "select" ? h("select", { ...attrs, id }, ...(attrs.options || []).map(
    ([value, text]) => h("option", { value }, text)))
    : h(tag, { ...attrs, id, options: null });
  if (tag === "select") control.removeAttribute("options");
  return h("div", { class: "field" }, h("label", { for: id }, label), control);
}

// Form values by name.
export function values(form) {
  return Object.fromEntries(new FormData(form).entries());
}

// A table: columns [{head, cell(row) -> node|string}], rows; caption for screen readers.
export function table(caption, columns, rows, empty) {
  // A wide table scrolls sideways: the region is focusable so the keyboard can scroll it too.
  return h("div", { class: "table-wrap", tabindex: "0", role: "region", "aria-label": caption }, h("table", {},
    h("caption", { class: "sr-only" }, caption),
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col" }, c.head)))),
    h("tbody", {}, rows.length ? rows.map((r) => h("tr", {}, columns.map((c) => h("td", {}, c.cell(r)))))
      : h("tr", {}, h("td", { colspan: columns.length, class: "empty" }, empty)))));
}

export function download(name, type, text) {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const a = h("a", { href: url, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}
