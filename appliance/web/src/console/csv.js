// CSV for account import (RFC 4180: commas, double quotes, "" inside quotes, CRLF or LF).
// parseCsv(text) -> rows of fields; a first row naming "username" is a header.
export function parseCsv(text) {
  const rows = [];
  let row = [];
  let field = "";
  let quoted = false;
  const s = text.replace(/^\uFEFF/, ""); // the BOM spreadsheet programs write
  for (let i = 0; i < s.length; i++) {
    const c = s[i];
    if (quoted) {
      if (c === '"' && s[i + 1] === '"') {
        field += '"';
        i++;
      } else if (c === '"') quoted = false;
      else field += c;
    } else if (c === '"' && field === "") quoted = true;
    else if (c === ",") {
      row.push(field);
      field = "";
    } else if (c === "\n" || c === "\r") {
      if (c === "\r" && s[i + 1] === "\n") i++;
      row.push(field);
      rows.push(row);
      row = [];
      field = "";
    } else field += c;
  }
  if (field !== "" || row.length) {
    row.push(field);
    rows.push(row);
  }
  return rows.filter((r) => r.some((f) => f.trim() !== ""));
}

// Accounts from CSV rows: columns username, display_name, password (a header row may
// name them in another order).
export function accountsFromCsv(text) {
  const rows = parseCsv(text);
  let cols = { username: 0, display_name: 1, password: 2 };
  if (rows.length && rows[0].map((f) => f.trim().toLowerCase()).includes("username")) {
    const head = rows.shift().map((f) => f.trim().toLowerCase());
    cols = Object.fromEntries(Object.keys(cols).map((k) => [k, head.indexOf(k)]));
  }
  return rows.map((r) => ({
    username: (r[cols.username] ?? "").trim(),
    display_name: cols.display_name >= 0 ? (r[cols.display_name] ?? "").trim() : "",
    password: cols.password >= 0 ? (r[cols.password] ?? "") : "",
  }));
}
