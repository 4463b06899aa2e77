// The status charts' recent history, kept in the tab's sessionStorage so that a reload
// of the page does not start the charts from nothing.
//
// Why in the browser, not on the node: the charts are this tab's view of the node that
// serves it, sampled only while the page is open. Keeping the points here needs no new
// API, no sampling task and no memory on every node for a page nobody may be watching,
// and sessionStorage has the lifetime wanted: it survives a reload, is the tab's own
// and is gone when the tab closes. What it cannot give (history from before the tab
// opened) the node's Prometheus metrics already do.
//
// Robust against what storage may hold: one key per chart group, versioned
// (KEY_PREFIX; a later format takes a new key and never reads this one); at most
// `keep` points a series and MAX_BYTES in all; points older than `maxAgeMs` dropped;
// another node's history (the same tab behind a balancer) not shown as this one's;
// anything that does not parse or does not have the expected shape is removed and the
// charts start empty. A storage that refuses (quota, disabled) only loses the history.
export const KEY_PREFIX = "tongxin.console.charts.v1.";
export const MAX_BYTES = 64 * 1024;
const SKEW_MS = 60000; // a point this far in the future is not ours

const isNum = (x) => typeof x === "number" && Number.isFinite(x);
const isObj = (x) => x !== null && typeof x === "object" && !Array.isArray(x);

function validSeries(points, now, maxAgeMs, keep) {
  if (!Array.isArray(points)) return null;
  let prev = -Infinity;
  for (const p of points) {
    if (!isObj(p) || !isNum(p.t) || !isNum(p.v) || p.v < 0 || p.t < prev || p.t > now + SKEW_MS) return null;
    prev = p.t;
  }
  return points.filter((p) => p.t >= now - maxAgeMs).slice(-keep).map((p) => ({ t: p.t, v: p.v }));
}

function forget(storage, key) {
  try {
    storage.removeItem(key);
  } catch {
    // nothing to do: the history is lost either way
  }
}

// restore(storage, name, {owner, now, names, keep, maxAgeMs}) -> {series: {name: points}, extra}
// `names` are the series expected; `extra` (an object of numbers, e.g. the last counter
// reading) or null. Empty series when nothing usable is stored.
export function restore(storage, name, { owner, now, names, keep, maxAgeMs }) {
  const empty = { series: Object.fromEntries(names.map((n) => [n, []])), extra: null };
  const key = KEY_PREFIX + name;
  let raw = null;
  try {
    raw = storage.getItem(key);
  } catch {
    return empty;
  }
  if (raw === null) return empty;
  let data;
  try {
    data = JSON.parse(raw);
  } catch {
    data = null;
  }
  if (!isObj(data) || data.v !== 1 || !isObj(data.series) || raw.length > MAX_BYTES) {
    forget(storage, key); // corrupt, or not ours: never shown
    return empty;
  }
  if (data.owner !== owner) return empty; // another node's: left until this one saves
  const series = {};
  for (const n of names) {
    const s = validSeries(data.series[n] ?? [], now, maxAgeMs, keep);
    if (s === null) {
      forget(storage, key);
      return empty;
    }
    series[n] = s;
  }
  const extra = isObj(data.extra) && Object.values(data.extra).every(isNum) && now - data.saved <= maxAgeMs
    ? data.extra : null;
  return { series, extra };
}

// save(storage, name, {owner, now, series, extra, keep}) -> whether it was stored.
export function save(storage, name, { owner, now, series, extra = null, keep }) {
  const key = KEY_PREFIX + name;
  const trimmed = Object.fromEntries(Object.entries(series).map(([n, pts]) => [n, pts.slice(-keep)]));
  const json = JSON.stringify({ v: 1, owner, saved: now, series: trimmed, extra });
  if (json.length > MAX_BYTES) {
    forget(storage, key);
    return false;
  }
  try {
    storage.setItem(key, json);
    return true;
  } catch {
    return false; // quota, or storage turned off: the charts go on without it
  }
}
