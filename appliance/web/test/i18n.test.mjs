// The web client's message catalogues (src/i18n/zh-CN.json, src/i18n/en.json)
// and its language layer (src/i18n/index.js): both languages hold the same
// keys, nothing is empty, every key the client uses exists, the Chinese
// catalogue is Chinese, and the language is picked as docs/web-client.md says.
import assert from "node:assert/strict";
import { readFileSync, readdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

import {
  DEFAULT_LANGUAGE, detectLanguage, formatDateTime, formatList, formatNumber, formatTime, getLanguage, initI18n,
  normalizeLanguage, setLanguage, t,
} from "../src/i18n/index.js";

const web = join(dirname(fileURLToPath(import.meta.url)), "..");
const src = join(web, "src");
const zh = JSON.parse(readFileSync(join(src, "i18n", "zh-CN.json"), "utf8"));
const en = JSON.parse(readFileSync(join(src, "i18n", "en.json"), "utf8"));

function flatten(obj, prefix = "", out = new Map()) {
  for (const [k, v] of Object.entries(obj)) {
    const key = prefix ? `${prefix}.${k}` : k;
    if (v !== null && typeof v === "object") flatten(v, key, out);
    else out.set(key, v);
  }
  return out;
}

const zhFlat = flatten(zh);
const enFlat = flatten(en);

// Values that may rightly hold no Chinese: the language switch names each
// language in its own script ("English" under both).
const NOT_CHINESE = new Set(["lang.en"]);
const CJK = /[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]/;
const placeholders = (s) => [...s.matchAll(/\{\{\s*(\w+)\s*\}\}/g)].map((m) => m[1]).sort();

test("both catalogues have exactly the same keys", () => {
  const onlyZh = [...zhFlat.keys()].filter((k) => !enFlat.has(k));
  const onlyEn = [...enFlat.keys()].filter((k) => !zhFlat.has(k));
  assert.deepEqual(onlyZh, [], "keys only in zh-CN.json");
  assert.deepEqual(onlyEn, [], "keys only in en.json");
  assert.ok(zhFlat.size > 100, `only ${zhFlat.size} keys`);
});

test("no value is empty or anything but a string", () => {
  for (const [name, flat] of [["zh-CN", zhFlat], ["en", enFlat]]) {
    for (const [k, v] of flat) {
      assert.equal(typeof v, "string", `${name} ${k} is ${typeof v}`);
      assert.ok(v.trim(), `${name} ${k} is empty`);
    }
  }
});

test("both languages interpolate the same values", () => {
  for (const [k, v] of zhFlat) assert.deepEqual(placeholders(v), placeholders(enFlat.get(k)), k);
});

test("the zh-CN catalogue is Chinese wherever it says something", () => {
  const latin = [];
  for (const [k, v] of zhFlat) {
    const words = v.replace(/\{\{\s*\w+\s*\}\}/g, "");
    // "{{text}}。" carries no words of its own; everything with words must be Chinese.
    if (!/[A-Za-z]{2,}/.test(words) && !CJK.test(words)) continue;
    if (NOT_CHINESE.has(k)) continue;
    if (!CJK.test(words)) latin.push(`${k}: ${v}`);
  }
  assert.deepEqual(latin, [], "zh-CN values without Chinese");
});

// Every key the web client names: t("..."), the data-i18n* attributes of the
// page and of markup built in code, and keys kept as data (["e2ee.reason.x"],
// new FailureText("...")) that are translated later.
function sourcesOf(dir) {
  return readdirSync(dir, { withFileTypes: true }).flatMap((d) => {
    if (d.isDirectory()) return d.name === "console" ? [] : sourcesOf(join(dir, d.name)); // the console has its own catalogues
    return d.name.endsWith(".js") ? [join(dir, d.name)] : [];
  });
}

function usedKeys() {
  const namespaces = [...new Set([...zhFlat.keys()].map((k) => k.split(".")[0]))].join("|");
  const literal = new RegExp(`["'\`]((?:${namespaces})\\.[\\w.-]+)["'\`]`, "g");
  const used = new Map();
  const files = [...sourcesOf(src), join(web, "index.html")];
  for (const file of files) {
    const text = readFileSync(file, "utf8");
    const patterns = [
      /\bt\(\s*["'`]([^"'`$]+)["'`]/g,
      /data-i18n(?:-[a-z-]+)?["']?\s*[:=]\s*["']([^"']+)["']/g,
      literal,
    ];
    for (const re of patterns) {
      for (const m of text.matchAll(re)) {
        if (re === literal && /\.(bin|js|json|html|css)$/.test(m[1])) continue; // a file name ("e2ee.bin"), not a key
        used.set(m[1], file.slice(web.length + 1));
      }
    }
  }
  return used;
}

test("every key used in src/ and index.html exists in both catalogues", () => {
  const used = usedKeys();
  assert.ok(used.size > 100, `only ${used.size} keys found in the sources: is the scan broken?`);
  const missing = [...used].filter(([k]) => !zhFlat.has(k) || !enFlat.has(k)).map(([k, f]) => `${k} (${f})`);
  assert.deepEqual(missing, []);
});

test("every catalogue key is used (codes.* are looked up by the server's error code)", () => {
  const used = usedKeys();
  const unused = [...zhFlat.keys()].filter((k) => !k.startsWith("codes.") && !used.has(k));
  assert.deepEqual(unused, []);
});

test("index.html has no text of its own: every label comes from the catalogues", () => {
  const html = readFileSync(join(web, "index.html"), "utf8")
    .replace(/<svg[\s\S]*?<\/svg>/g, "")
    .replace(/<script[\s\S]*?<\/script>/g, "");
  const texts = [...html.matchAll(/>([^<>]+)</g)].map((m) => m[1].trim()).filter((s) => /[A-Za-z\u4e00-\u9fff]/.test(s));
  assert.deepEqual(texts, []);
  for (const attr of ["title", "placeholder", "aria-label", "alt"]) {
    const hard = [...html.matchAll(new RegExp(`\\s${attr}="([^"]+)"`, "g"))].map((m) => m[1]);
    assert.deepEqual(hard, [], `hard-coded ${attr}`);
  }
});

test("every server error code has a text in both languages", () => {
  const proto = readFileSync(join(web, "..", "src", "tongxin", "proto", "tongxin.proto"), "utf8");
  const body = /enum ErrorCode \{([\s\S]*?)\}/.exec(proto)[1];
  const codes = [...body.matchAll(/^\s*([A-Z_]+)\s*=/gm)].map((m) => m[1]);
  assert.ok(codes.length > 20);
  // The files API answers with the same names, plus its own INTEGRITY_FAILURE (docs/files-api.md).
  for (const code of [...codes, "INTEGRITY_FAILURE"]) {
    assert.ok(zhFlat.has(`codes.${code}`) && enFlat.has(`codes.${code}`), `codes.${code} missing`);
  }
});

test("the language: a remembered choice, else the browser's first zh* or en*, else zh-CN", () => {
  const store = (v) => ({ getItem: () => v });
  const nav = (...languages) => ({ languages, language: languages[0] });
  assert.equal(DEFAULT_LANGUAGE, "zh-CN");
  assert.equal(detectLanguage(nav("zh-CN"), store(null)), "zh-CN");
  assert.equal(detectLanguage(nav("zh-TW", "en"), store(null)), "zh-CN");
  assert.equal(detectLanguage(nav("zh"), store(null)), "zh-CN");
  assert.equal(detectLanguage(nav("en-US"), store(null)), "en");
  assert.equal(detectLanguage(nav("en-GB", "zh-CN"), store(null)), "en");
  assert.equal(detectLanguage(nav("de-DE", "en-US"), store(null)), "en");
  assert.equal(detectLanguage(nav("fr-FR", "de"), store(null)), "zh-CN");
  assert.equal(detectLanguage(nav(), store(null)), "zh-CN");
  assert.equal(detectLanguage(null, null), "zh-CN");
  assert.equal(detectLanguage(nav("zh-CN"), store("en")), "en");
  assert.equal(detectLanguage(nav("en-US"), store("zh-CN")), "zh-CN");
  assert.equal(detectLanguage(nav("en-US"), store("klingon")), "en");
  assert.equal(normalizeLanguage("zh_CN.UTF-8"), "zh-CN");
  assert.equal(normalizeLanguage("EN"), "en");
  assert.equal(normalizeLanguage("ja"), null);
});

test("lookups, interpolation and Intl formats follow the language", async () => {
  await initI18n({ "zh-CN": zh, en });
  await setLanguage("zh-CN");
  assert.equal(getLanguage(), "zh-CN");
  assert.equal(t("login.submit"), "登录");
  assert.equal(t("chat.typingOne", { name: "王伟" }), "王伟 正在输入…");
  const when = new Date(2026, 11, 5, 16, 5);
  assert.match(formatDateTime(when), /2026年12月5日/);
  assert.match(formatTime(when), /^16:05$/);
  assert.equal(formatNumber(1234567), "1,234,567");
  assert.equal(formatList(["甲", "乙", "丙"]), "甲、乙和丙");
  await setLanguage("en");
  assert.equal(getLanguage(), "en");
  assert.equal(t("login.submit"), "Log in");
  assert.match(formatDateTime(when), /Dec 5, 2026/);
  assert.match(formatTime(when), /^4:05\sPM$/);
  assert.equal(formatList(["A", "B", "C"]), "A, B, and C");
  // A second caller (the console) merges its own catalogue in.
  await initI18n({ "zh-CN": { extra: { hello: "你好" } }, en: { extra: { hello: "Hello" } } });
  assert.equal(t("extra.hello"), "Hello");
  assert.equal(t("login.submit"), "Log in");
  await setLanguage("zh-CN");
  assert.equal(t("extra.hello"), "你好");
});
