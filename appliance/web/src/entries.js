// The installation's entry points (one per site) in the order the page tries
// them, and the back-off between rounds (docs/protocol.md section 15). The
// page's own origin comes first: it is the entry the user chose; GET
// /api/v1/info adds the others (server.client_endpoints).

/** The WebSocket URL of the entry that served the page. */
export function ownEntry(loc) {
  return `${loc.protocol === "https:" ? "wss" : "ws"}://${loc.host}/ws`;
}

/** `own` first, then the published entries in their order, each once. */
export function entryList(own, published = []) {
  const out = [own];
  for (const raw of published || []) {
    const url = String(raw || "").trim();
    if (/^wss?:\/\//.test(url) && !out.includes(url)) out.push(url);
  }
  return out;
}

export const BACKOFF = { initialMs: 250, factor: 2, capMs: 5000, jitter: 0.5 };

/**
 * Milliseconds to wait before reconnect round `attempt` (0: at once). Doubles
 * from initialMs up to capMs, scaled down by up to `jitter` at random so that
 * a site's users, dropped together, do not all come back in the same instant.
 */
export function backoffDelay(attempt, opts = BACKOFF, random = Math.random) {
  if (attempt <= 0) return 0;
  const base = Math.min(opts.capMs, opts.initialMs * opts.factor ** Math.min(attempt - 1, 64));
  return base * (1 - opts.jitter * random());
}

/** What the user is shown of an entry: its host. */
export function entryLabel(url) {
  try {
    return new URL(url).host;
  } catch {
    return url;
  }
}
