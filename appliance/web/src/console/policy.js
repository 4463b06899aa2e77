// The policy page's form (pages/secadmin.js): what the security administrator typed,
// checked against the limits the node sends with the policy (GET /policy: `editable`,
// {min, max, integer, zero_off, unit} per setting), turned into the body of
// PUT /policy. The node checks every field again and refuses the whole change if one
// fails; checking here first only spares a TOTP step-up for a typo.
//
//   formValues(doc)            -> {key: "text"}: the value in force of each editable setting
//   checkField(text, limit)    -> {value: number} | {error: {reason, min, max}}
//   policyChanges(raw, doc)    -> {settings: {key: number}, errors: {key: {reason, min, max}}}
//                                 only the settings whose value differs from the one in force
// Reasons: required, number, integer, range, rangeOff (a range where 0 also turns the
// rule off) - the node's own are number, integer, range, fixed, unknown, empty.

const NUMBER = /^[+-]?(\d+(\.\d*)?|\.\d+)(e[+-]?\d+)?$/i;

export function formValues(doc) {
  const current = Object.fromEntries((doc.rules || []).map((r) => [r.key, r.value]));
  return Object.fromEntries(Object.keys(doc.editable || {}).map((k) => [k, String(current[k] ?? "")]));
}

export function checkField(text, limit) {
  const s = String(text ?? "").trim();
  const bounds = { min: limit.min, max: limit.max };
  if (s === "") return { error: { reason: "required", ...bounds } };
  const n = NUMBER.test(s) ? Number(s) : NaN;
  if (!Number.isFinite(n)) return { error: { reason: "number", ...bounds } };
  if (limit.integer && !Number.isInteger(n)) return { error: { reason: "integer", ...bounds } };
  if ((n < limit.min || n > limit.max) && !(limit.zero_off && n === 0)) {
    return { error: { reason: limit.zero_off ? "rangeOff" : "range", ...bounds } };
  }
  return { value: n };
}

export function policyChanges(raw, doc) {
  const current = Object.fromEntries((doc.rules || []).map((r) => [r.key, r.value]));
  const settings = {};
  const errors = {};
  for (const [key, limit] of Object.entries(doc.editable || {})) {
    if (!(key in raw)) continue;
    const got = checkField(raw[key], limit);
    if (got.error) errors[key] = got.error;
    else if (got.value !== current[key]) settings[key] = got.value;
  }
  return { settings, errors };
}

// The reason key of the console's catalogue for an error of either side (the node's
// range errors say zero_off instead of rangeOff).
export function reasonKey(error) {
  const reason = error.reason === "range" && error.zero_off ? "rangeOff" : error.reason;
  return ["required", "number", "integer", "range", "rangeOff", "fixed", "unknown", "empty"]
    .includes(reason) ? reason : "invalid";
}
