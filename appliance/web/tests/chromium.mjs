// Debian's headless Chromium for the browser tests (e2e.mjs, e2ee_driver.mjs,
// failover.mjs, console.mjs), driven by playwright-core, which downloads no
// browser of its own.
import { existsSync } from "node:fs";
import { chromium } from "playwright-core";

export const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";

/** Exit 3 with the command that fixes it when Chromium is not installed. */
export function requireChromium() {
  if (!existsSync(executablePath)) {
    console.error(`FAILED: Chromium not found at ${executablePath}; install it with: apt-get install -y chromium`);
    process.exit(3);
  }
}

/** One headless browser. Playwright gives each launch a fresh --user-data-dir of its own. */
export function launchChromium() {
  return chromium.launch({
    executablePath,
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
}
