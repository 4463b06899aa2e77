// A downloaded audit search (GET /audit/download, docs/console.md): how many records
// the file holds and whether the node stopped at its cap. The last line of a capped
// file is a marker, not a record: JSON Lines {"truncated": true, ...} (a record always
// has "seq"), CSV a row whose first cell starts with "#truncated".
import { parseCsv } from "./csv.js";

export function summarise(format, text) {
  if (format === "csv") {
    const rows = parseCsv(text);
    const last = rows[rows.length - 1];
    const truncated = rows.length > 1 && String(last[0]).startsWith("#truncated");
    return { count: Math.max(0, rows.length - 1 - (truncated ? 1 : 0)), truncated };
  }
  const lines = text.split("\n").filter((l) => l.trim());
  let truncated = false;
  if (lines.length) {
    try {
      const tail = JSON.parse(lines[lines.length - 1]);
      truncated = tail.truncated === true && !("seq" in tail);
    } catch {
      truncated = false;
    }
  }
  return { count: lines.length - (truncated ? 1 : 0), truncated };
}
