// The policy page's form checks (src/console/policy.js), against the limits the node
// sends with GET /policy.
import assert from "node:assert/strict";
import { test } from "node:test";

import { checkField, formValues, policyChanges, reasonKey } from "../src/console/policy.js";

const doc = {
  rules: [
    { key: "password_min_length", value: 8 },
    { key: "password_max_age_days", value: 0 },
    { key: "lockout_duration", value: 900 },
    { key: "scrypt_n", value: 16384 },
  ],
  editable: {
    password_min_length: { min: 6, max: 128, integer: true, zero_off: false, unit: "" },
    password_max_age_days: { min: 1, max: 3650, integer: false, zero_off: true, unit: "days" },
    lockout_duration: { min: 60, max: 604800, integer: false, zero_off: false, unit: "seconds" },
  },
};
const { editable: lim } = doc;

test("the form starts from the values in force, editable settings only", () => {
  assert.deepEqual(formValues(doc), { password_min_length: "8", password_max_age_days: "0", lockout_duration: "900" });
  assert.deepEqual(formValues({}), {});
});

test("accepted values, edges included", () => {
  assert.deepEqual(checkField("6", lim.password_min_length), { value: 6 });
  assert.deepEqual(checkField(" 128 ", lim.password_min_length), { value: 128 });
  assert.deepEqual(checkField("12.0", lim.password_min_length), { value: 12 });
  assert.deepEqual(checkField("0", lim.password_max_age_days), { value: 0 });
  assert.deepEqual(checkField("1.5", lim.password_max_age_days), { value: 1.5 });
  assert.deepEqual(checkField("6e1", lim.lockout_duration), { value: 60 });
});

test("refused values say why, with the bounds", () => {
  const reason = (text, limit) => checkField(text, limit).error?.reason;
  assert.equal(reason("", lim.password_min_length), "required");
  assert.equal(reason("abc", lim.password_min_length), "number");
  assert.equal(reason("12abc", lim.password_min_length), "number");
  assert.equal(reason("0x10", lim.password_min_length), "number");
  assert.equal(reason("Infinity", lim.password_min_length), "number");
  assert.equal(reason("8.5", lim.password_min_length), "integer");
  assert.equal(reason("5", lim.password_min_length), "range");
  assert.equal(reason("129", lim.password_min_length), "range");
  assert.equal(reason("0.5", lim.password_max_age_days), "rangeOff");
  assert.equal(reason("59", lim.lockout_duration), "range");
  assert.equal(reason("0", lim.lockout_duration), "range");
  assert.deepEqual(checkField("200", lim.password_min_length), { error: { reason: "range", min: 6, max: 128 } });
});

test("only what changed is sent; one bad field is reported, the rest still parsed", () => {
  assert.deepEqual(policyChanges({ password_min_length: "8", password_max_age_days: "0", lockout_duration: "900" }, doc),
    { settings: {}, errors: {} });
  assert.deepEqual(policyChanges({ password_min_length: "12", password_max_age_days: "90", lockout_duration: "900" }, doc),
    { settings: { password_min_length: 12, password_max_age_days: 90 }, errors: {} });
  assert.deepEqual(policyChanges({ password_min_length: "3", lockout_duration: "1800", scrypt_n: "1024" }, doc),
    { settings: { lockout_duration: 1800 }, errors: { password_min_length: { reason: "range", min: 6, max: 128 } } });
});

test("the node's reasons map onto the catalogue's", () => {
  assert.equal(reasonKey({ reason: "range", zero_off: true }), "rangeOff");
  assert.equal(reasonKey({ reason: "range", zero_off: false }), "range");
  assert.equal(reasonKey({ reason: "fixed" }), "fixed");
  assert.equal(reasonKey({ reason: "something new" }), "invalid");
});
