// Tongxin's language layer for the web client and the administrators'
// console: i18next (npm, pinned) holds the catalogues and does the lookups and
// interpolation; this module only decides which language a page starts in,
// remembers the user's choice and formats dates, times and numbers with Intl
// for that language. docs/web-client.md, "Language".
//
// Stable API (both bundles import it):
//   initI18n(resources)   resources = {"zh-CN": {...}, en: {...}}; may be
//                         called more than once, catalogues are deep-merged
//   t(key, vars)          the string for key in the current language
//   getLanguage()         "zh-CN" or "en"
//   setLanguage(lang)     switch, remember (localStorage), set <html lang>,
//                         fire `tongxin:language` on window ({detail: {language}})
//   formatDateTime(date), formatTime(date), formatNumber(n)
// and, for the web client: formatDate(date, options), formatList(items),
// translateDom(root) (fills elements marked data-i18n*).
import i18next from "i18next";

export const LANGUAGES = ["zh-CN", "en"];
export const DEFAULT_LANGUAGE = "zh-CN";
export const STORAGE_KEY = "tongxin.language";
export const LANGUAGE_EVENT = "tongxin:language";

const i18n = i18next.createInstance();
let ready = null;

// "zh", "zh-CN", "zh-Hans-SG", "zh-TW" -> zh-CN (the one Chinese catalogue is
// Simplified); "en", "en-US", "en-GB" -> en; anything else -> null.
export function normalizeLanguage(tag) {
  const t = String(tag || "").trim().toLowerCase();
  if (t === "zh" || t.startsWith("zh-") || t.startsWith("zh_")) return "zh-CN";
  if (t === "en" || t.startsWith("en-") || t.startsWith("en_")) return "en";
  return null;
}

function storage() {
  try {
    return typeof window !== "undefined" && window.localStorage ? window.localStorage : null;
  } catch {
    return null; // storage disabled (privacy mode, sandboxed frame)
  }
}

// The user's remembered choice first, then the browser's preference list
// (the first zh* or en* entry wins), otherwise Simplified Chinese.
export function detectLanguage(navigatorLike = typeof navigator !== "undefined" ? navigator : null, store = storage()) {
  const saved = store ? store.getItem(STORAGE_KEY) : null;
  if (LANGUAGES.includes(saved)) return saved;
  const prefs = navigatorLike ? [...(navigatorLike.languages || []), navigatorLike.language] : [];
  for (const p of prefs) {
    const lang = normalizeLanguage(p);
    if (lang) return lang;
  }
  return DEFAULT_LANGUAGE;
}

function setDocumentLanguage(lang) {
  if (typeof document !== "undefined" && document.documentElement) document.documentElement.lang = lang;
}

export async function initI18n(resources = {}) {
  if (!ready) {
    const lng = detectLanguage();
    ready = i18n.init({
      lng,
      fallbackLng: DEFAULT_LANGUAGE,
      supportedLngs: LANGUAGES,
      resources: {},
      // Strings go into the DOM as text (textContent), never as HTML.
      interpolation: { escapeValue: false },
      returnNull: false,
    });
    await ready;
    setDocumentLanguage(lng);
  } else {
    await ready;
  }
  for (const [lang, bundle] of Object.entries(resources)) {
    i18n.addResourceBundle(lang, "translation", bundle, true, true);
  }
}

export function t(key, vars) {
  return i18n.t(key, vars);
}

export function getLanguage() {
  const lang = i18n.resolvedLanguage || i18n.language;
  return LANGUAGES.includes(lang) ? lang : DEFAULT_LANGUAGE;
}

export async function setLanguage(lang) {
  const next = LANGUAGES.includes(lang) ? lang : normalizeLanguage(lang) || DEFAULT_LANGUAGE;
  await i18n.changeLanguage(next);
  const store = storage();
  if (store) {
    try {
      store.setItem(STORAGE_KEY, next);
    } catch {
      /* quota or disabled storage: the switch still applies to this page */
    }
  }
  setDocumentLanguage(next);
  if (typeof window !== "undefined" && typeof window.dispatchEvent === "function") {
    window.dispatchEvent(new CustomEvent(LANGUAGE_EVENT, { detail: { language: next } }));
  }
}

const toDate = (d) => (d instanceof Date ? d : new Date(d));

// 2026年12月5日 16:52 / Dec 5, 2026, 4:52 PM
export function formatDateTime(date) {
  return new Intl.DateTimeFormat(getLanguage(), { dateStyle: "medium", timeStyle: "short" }).format(toDate(date));
}

// 16:52 / 4:52 PM
export function formatTime(date) {
  return new Intl.DateTimeFormat(getLanguage(), { hour: "numeric", minute: "2-digit" }).format(toDate(date));
}

// 12,345.6 in both; Intl picks the grouping for the locale.
export function formatNumber(n, options) {
  return new Intl.NumberFormat(getLanguage(), options).format(n);
}

// Any other Intl date format in the current language (e.g. { weekday: "short" }).
export function formatDate(date, options) {
  return new Intl.DateTimeFormat(getLanguage(), options).format(toDate(date));
}

// ["Alice", "Bob", "Carol"] -> "Alice, Bob, and Carol" / "Alice、Bob和Carol"
export function formatList(items) {
  return new Intl.ListFormat(getLanguage(), { style: "long", type: "conjunction" }).format(items.map(String));
}

// Static markup: elements carrying data-i18n (text), data-i18n-placeholder,
// data-i18n-title, data-i18n-aria-label or data-i18n-alt get the catalogue's string. Call it
// after initI18n and again on `tongxin:language`.
export function translateDom(root = typeof document !== "undefined" ? document : null) {
  if (!root) return;
  const attrs = [
    ["data-i18n-placeholder", "placeholder"],
    ["data-i18n-title", "title"],
    ["data-i18n-aria-label", "aria-label"],
    ["data-i18n-alt", "alt"],
  ];
  for (const el of root.querySelectorAll("[data-i18n]")) el.textContent = t(el.getAttribute("data-i18n"));
  for (const [data, attr] of attrs) {
    for (const el of root.querySelectorAll(`[${data}]`)) el.setAttribute(attr, t(el.getAttribute(data)));
  }
}
