// A remote control of the web client in headless Chromium, for
// tests/browser/test_web_e2ee.py: the Python test drives Python SDK clients
// and, through this script, browser pages, and interleaves the two.
//
//   node tests/e2ee_driver.mjs http://127.0.0.1:PORT ARTIFACTS_DIR
//
// Reads one JSON command per line on stdin ({id, op, page, ...}) and answers
// each with one JSON line on stdout ({id, ok, result} or {id, ok: false,
// error}). Nothing else is written to stdout. Screenshots go to ARTIFACTS_DIR.
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { launchChromium, requireChromium } from "./chromium.mjs";

const [base, artifactsArg] = process.argv.slice(2);
const artifacts = resolve(artifactsArg || "test-artifacts/browser");
mkdirSync(artifacts, { recursive: true });
if (!base) {
  console.error("usage: node tests/e2ee_driver.mjs http://HOST:PORT ARTIFACTS");
  process.exit(2);
}
requireChromium();
const T = 20000;
const scratch = mkdtempSync(join(tmpdir(), "tongxin-e2ee-"));
const browser = await launchChromium();
const pages = new Map();
const consoleErrors = [];
// What the page's Content-Security-Policy refused (docs/security.md): any fails the
// command that was running when it was reported, and every one after it.
const cspViolations = [];

function page(label) {
  const p = pages.get(label);
  if (!p) throw new Error(`no page ${label}`);
  return p;
}

function msgWith(p, text, own = false) {
  return p.locator(`#messages .msg${own ? ".own" : ""}[data-seq]`).filter({ has: p.locator(".text", { hasText: text }) }).last();
}

function fileMsg(p, name) {
  return p.locator("#messages .msg[data-seq]").filter({ has: p.locator(".file-name", { hasText: name }) }).last();
}

/** Log in, or register when `name` is given; resolves once key setup has ended either way. */
async function signIn(p, { username, password, name = null }) {
  await p.goto(base);
  await p.locator("#login-form").waitFor();
  if (name !== null) await p.click("#switch-mode");
  await p.fill("#username", username);
  await p.fill("#password", password);
  if (name !== null) await p.fill("#display-name", name);
  await p.click("#login-submit");
  await p.locator('#conn-status[data-state="online"]').waitFor();
  // Key setup ends with the state line saying so (or a failure banner).
  await p.locator('#e2ee-state[data-state="on"], #e2ee-state[data-state="error"], #e2ee-state[data-state="unavailable"]').waitFor();
  return p.evaluate(() => ({ status: window.tongxinE2EE?.status, reason: window.tongxinE2EE?.reason, notSigned: window.tongxinE2EE?.notSigned }));
}

const ops = {
  async page({ page: label }) {
    // English pages: the checks read E2EE banners and reasons in the en catalogue.
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 }, acceptDownloads: true, locale: "en-US" });
    const p = await context.newPage();
    p.setDefaultTimeout(T);
    p.on("pageerror", (err) => consoleErrors.push(`${label}: ${err.message}`));
    p.on("console", (msg) => {
      if (msg.type() === "error") consoleErrors.push(`${label}: ${msg.text()}`);
      if (/Content Security Policy/i.test(msg.text())) cspViolations.push(`${label}: ${msg.text()}`);
    });
    pages.set(label, p);
    return true;
  },

  async register({ page: label, username, password, name }) {
    return signIn(page(label), { username, password, name });
  },

  /** Log in as an existing user (a new browser: a new device of that user). */
  async login({ page: label, username, password }) {
    return signIn(page(label), { username, password });
  },

  /** The cross-signing banner (docs/e2ee.md 9.1): unsigned devices, this device unsigned. */
  async expectDeviceBanner({ page: label, text }) {
    const b = page(label).locator("#device-banner");
    await b.filter({ hasText: text }).waitFor();
    return (await b.textContent()).trim();
  },

  /** Type the key backup passphrase into the banner's form; resolves once signed. */
  async restoreKey({ page: label, passphrase }) {
    const p = page(label);
    await p.fill("#backup-passphrase", passphrase);
    await p.click('#restore-key button[type="submit"]');
    // Done when the form has gone (signed) or a toast says why not. Not a wait for
    // "the form or a toast to be visible": a restore that ended before that wait
    // looked left neither, and the wait ran out (CI, 2026-12-07).
    // scrypt (N = 2^15) runs in the page's JavaScript: allow for a loaded machine.
    await p.waitForFunction(() => !document.getElementById("restore-key")
      || document.querySelector("#toasts .toast.error"), null, { timeout: 3 * T });
    const failed = await p.locator("#toasts .toast.error").allTextContents();
    if (failed.length) throw new Error(`restoring the key failed: ${failed.join(" | ")}`);
    return p.evaluate(() => window.tongxinE2EE?.notSigned);
  },

  /** Open the safety number dialog of the open direct conversation; the number and QR. */
  async safetyNumber({ page: label, markVerified = false }) {
    const p = page(label);
    await p.click("#verify-btn");
    const number = p.locator("#safety-number");
    await p.waitForFunction(() => /^(\d{5} ){5}\d{5}$/.test(document.getElementById("safety-number")?.textContent || ""));
    await p.waitForFunction(() => (document.getElementById("safety-qr")?.src || "").startsWith("data:image/png"));
    if (markVerified) {
      await p.click("#mark-verified");
      await p.locator("#verify-status", { hasText: "Verified" }).waitFor();
    }
    const result = { number: (await number.textContent()).trim(), status: (await p.textContent("#verify-status")).trim(), qr: await p.getAttribute("#safety-qr", "src") };
    await p.screenshot({ path: join(artifacts, `safety-number-${label}.png`) });
    await p.click("#verify-dialog [data-close]");
    return result;
  },

  /** E2EE state as the page shows it. */
  async state({ page: label }) {
    const p = page(label);
    return {
      status: await p.getAttribute("#e2ee-state", "data-state"),
      escrow: await p.getAttribute("#e2ee-state", "data-escrow"),
      line: (await p.textContent("#e2ee-state"))?.trim(),
      escrowIndicatorVisible: await p.locator("#escrow-indicator").isVisible(),
    };
  },

  async startDirect({ page: label, peer, title }) {
    const p = page(label);
    await p.click("#new-chat");
    await p.fill("#direct-user", peer);
    await p.click('#direct-form button[type="submit"]');
    await p.locator("#chat-title", { hasText: title }).waitFor();
    return true;
  },

  async openConv({ page: label, title }) {
    const p = page(label);
    await p.locator(`#conv-list .conv[data-title="${title}"]`).click();
    await p.locator("#chat-title", { hasText: title }).waitFor();
    return true;
  },

  /** Send text; resolves once acknowledged, with whether it shows the E2EE lock. */
  async send({ page: label, text }) {
    const p = page(label);
    await p.fill("#text", text);
    await p.press("#text", "Enter");
    const m = msgWith(p, text, true);
    await m.waitFor();
    return { locked: (await m.locator(".e2ee-lock").count()) > 0 };
  },

  /** Send text that must NOT go out; resolves with the failure the page shows. */
  async sendRefused({ page: label, text }) {
    const p = page(label);
    await p.fill("#text", text);
    await p.press("#text", "Enter");
    const pending = p.locator("#messages .msg.pending.failed").filter({ hasText: text }).last();
    await pending.waitFor();
    return (await pending.textContent()).trim();
  },

  async expectMessage({ page: label, text }) {
    const m = msgWith(page(label), text);
    await m.waitFor();
    return { locked: (await m.locator(".e2ee-lock").count()) > 0 };
  },

  async expectSystem({ page: label, text }) {
    await page(label).locator("#messages .system", { hasText: text }).last().waitFor();
    return true;
  },

  async expectUndecryptable({ page: label }) {
    const m = page(label).locator("#messages .msg[data-seq] .e2ee-error").last();
    await m.waitFor();
    return (await m.textContent()).trim();
  },

  async sendFile({ page: label, name, b64 }) {
    const p = page(label);
    await p.setInputFiles("#file-input", { name, mimeType: "application/octet-stream", buffer: Buffer.from(b64, "base64") });
    const m = p.locator("#messages .msg.own[data-seq]").filter({ has: p.locator(".file-name", { hasText: name }) }).last();
    await m.waitFor({ timeout: 60000 });
    return { locked: (await m.locator(".e2ee-lock").count()) > 0 };
  },

  /** Download a file message's attachment through the page; returns its bytes (base64). */
  async download({ page: label, name }) {
    const p = page(label);
    const m = fileMsg(p, name);
    await m.waitFor();
    const [dl] = await Promise.all([p.waitForEvent("download", { timeout: 60000 }), m.locator("a.download").click()]);
    const saved = join(scratch, `dl-${Date.now()}`);
    await dl.saveAs(saved);
    return { b64: readFileSync(saved).toString("base64"), suggested: dl.suggestedFilename() };
  },

  async expectIdentityBanner({ page: label }) {
    const b = page(label).locator("#identity-banner");
    await b.waitFor();
    return (await b.textContent()).trim();
  },

  async acceptIdentity({ page: label }) {
    const p = page(label);
    await p.click("#identity-banner .accept-identity");
    await p.locator("#identity-banner").waitFor({ state: "hidden" });
    return true;
  },

  async retryFailed({ page: label, text }) {
    const p = page(label);
    const pending = p.locator("#messages .msg.pending.failed").filter({ hasText: text }).last();
    await pending.locator("button", { hasText: "Retry" }).click();
    await msgWith(p, text, true).waitFor();
    return true;
  },

  async shot({ page: label, name }) {
    await page(label).screenshot({ path: join(artifacts, `${name}.png`) });
    return true;
  },

  async consoleErrors() {
    return consoleErrors;
  },
};

const rl = createInterface({ input: process.stdin });
const answer = (obj) => process.stdout.write(`${JSON.stringify(obj)}\n`);
for await (const line of rl) {
  if (!line.trim()) continue;
  let cmd;
  try {
    cmd = JSON.parse(line);
  } catch (err) {
    answer({ id: null, ok: false, error: `bad command: ${err.message}` });
    continue;
  }
  if (cmd.op === "quit") break;
  try {
    const fn = ops[cmd.op];
    if (!fn) throw new Error(`unknown op ${cmd.op}`);
    const result = await fn(cmd);
    if (cspViolations.length) throw new Error(`Content Security Policy violations:\n  ${cspViolations.join("\n  ")}`);
    answer({ id: cmd.id, ok: true, result });
  } catch (err) {
    const label = cmd.page && pages.has(cmd.page) ? cmd.page : null;
    if (label) await pages.get(label).screenshot({ path: join(artifacts, `e2ee-failure-${label}.png`) }).catch(() => {});
    answer({ id: cmd.id, ok: false, error: String(err.message || err), console: consoleErrors });
  }
}
await browser.close();
rmSync(scratch, { recursive: true, force: true });
// Without it the driver outlived "quit" by the fixture's whole 30 s grace period
// (stdin, still open in the test, kept Node's loop alive).
process.exit(0);
