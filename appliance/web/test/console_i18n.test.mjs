// The admin console's catalogues (src/console/i18n/zh-CN.json and en.json): both
// languages hold the same keys, nothing is empty, the Chinese one is Chinese, and
// every key the console's code asks for exists (literal t("...") calls and the
// key families it builds from names: pages, roles, states, outcomes, error codes).
import assert from "node:assert/strict";
import { readFileSync, readdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

const dir = join(dirname(fileURLToPath(import.meta.url)), "..", "src", "console");
const load = (lang) => JSON.parse(readFileSync(join(dir, "i18n", `${lang}.json`), "utf8"));

function flatten(obj, prefix = "", out = new Map()) {
  for (const [k, v] of Object.entries(obj)) {
    const key = prefix ? `${prefix}.${k}` : k;
    if (v !== null && typeof v === "object") flatten(v, key, out);
    else out.set(key, v);
  }
  return out;
}
const zh = flatten(load("zh-CN"));
const en = flatten(load("en"));

function sources(d) {
  return readdirSync(d, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? sources(join(d, e.name)) : e.name.endsWith(".js") ? [join(d, e.name)] : []);
}

test("both console catalogues hold the same keys, none empty", () => {
  assert.deepEqual([...zh.keys()].filter((k) => !en.has(k)), [], "keys only in zh-CN.json");
  assert.deepEqual([...en.keys()].filter((k) => !zh.has(k)), [], "keys only in en.json");
  for (const [k, v] of [...zh, ...en]) assert.ok(typeof v === "string" && v.trim(), `${k} is empty`);
});

test("the Chinese catalogue is Chinese", () => {
  const han = [...zh].filter(([, v]) => /\p{Script=Han}/u.test(v)).length;
  assert.ok(han / zh.size > 0.9, `only ${han} of ${zh.size} zh-CN strings have Chinese characters`);
});

test("every key the console uses exists in both languages", () => {
  const used = new Set();
  for (const file of sources(dir)) {
    for (const m of readFileSync(file, "utf8").matchAll(/\bt\(\s*"([^"]+)"/g)) used.add(m[1]);
  }
  assert.ok(used.size > 100, `only ${used.size} keys found in the console's code`);
  const pages = readFileSync(join(dir, "pages", "index.js"), "utf8");
  for (const m of pages.matchAll(/id: "(\w+)", role: "(\w+)"/g)) used.add(`nav.${m[1]}`).add(`role.${m[2]}`);
  for (const role of ["user", "sysadmin", "secadmin", "auditor"]) used.add(`role.${role}`);
  for (const s of ["active", "disabled", "locked"]) used.add(`state.${s}`);
  for (const s of ["active", "standby"]) used.add(`status.siteRole.${s}`);
  for (const o of ["ok", "denied", "failed"]) used.add(`audit.outcome_${o}`);
  // The audit page's download buttons, one a format of GET /audit/download.
  for (const f of ["jsonl", "csv"]) used.add(`audit.download_${f}`);
  for (const s of ["pass", "fail", "gap"]) used.add(`report.status_${s}`);
  for (const k of ["user", "conversation"]) used.add(`retention.kind_${k}`);
  // A member's role in a group (GET /groups/{id}/members: owner, admin, member).
  for (const r of ["owner", "admin", "member"]) used.add(`groups.role_${r}`);
  // The policy page: a label per setting of GET /policy's rules, a message per reason a
  // field is refused (src/console/policy.js reasonKey).
  for (const k of ["password_min_length", "password_min_classes", "password_history", "password_max_age_days",
    "lockout_threshold", "lockout_duration", "lockout_window", "session_idle_timeout", "token_ttl", "scrypt_n"]) {
    used.add(`policy.key.${k}`);
  }
  for (const r of ["required", "number", "integer", "range", "rangeOff", "fixed", "unknown", "empty", "invalid"]) {
    used.add(`policy.error.${r}`);
  }
  for (const code of ["FORBIDDEN", "STEP_UP_REQUIRED", "STEP_UP_FAILED", "AUTH_FAILED", "NO_SECOND_FACTOR",
    "PASSWORD_EXPIRED", "ACCOUNT_LOCKED", "NOT_FOUND", "UNAVAILABLE", "NOT_EMPTY", "CONFLICT",
    "INVALID_ARGUMENT"]) used.add(`error.${code}`);
  const missing = [...used].filter((k) => !zh.has(k) || !en.has(k));
  assert.deepEqual(missing, [], "keys the console uses that a catalogue lacks");
});
