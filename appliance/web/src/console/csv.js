// CSV for account import, parsed by Papa Parse (RFC 4180: commas, double quotes, ""
// inside quotes, CRLF or LF, the BOM spreadsheet programs write).
// parseCsv(text) -> rows of fields, blank rows dropped; a first row naming "username"
// is a header.
import Papa from "papaparse";

export function parseCsv(text) {
  // One line ending for the whole file: Papa Parse guesses it from the first line, and
  // a file edited on two systems mixes them.
  const { data } = Papa.parse(text.replace(/^\uFEFF/, "").replace(/\r\n?/g, "\n"),
    { newline: "\n", skipEmptyLines: true });
  return data.filter((r) => r.some((f) => f.trim() !== ""));
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
