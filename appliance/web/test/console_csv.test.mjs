// The console's CSV account import parser (src/console/csv.js).
import assert from "node:assert/strict";
import { test } from "node:test";

import { accountsFromCsv, parseCsv } from "../src/console/csv.js";

test("quotes, commas and newlines inside quotes, CRLF, BOM, blank lines", () => {
  assert.deepEqual(parseCsv('\uFEFFa,"b,c","d ""e"""\r\n\r\n"x\ny",z\n'), [["a", "b,c", 'd "e"'], ["x\ny", "z"]]);
  assert.deepEqual(parseCsv("one"), [["one"]]);
});

test("accounts without and with a header row", () => {
  assert.deepEqual(accountsFromCsv("li,李四,Pass-word-1\n"), [{ username: "li", display_name: "李四", password: "Pass-word-1" }]);
  assert.deepEqual(accountsFromCsv("password,username\nP-1,wang\n"), [{ username: "wang", display_name: "", password: "P-1" }]);
});
