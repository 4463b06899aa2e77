// Payload types generated from appliance/src/tongxin/proto/tongxin.proto and
// e2ee.proto by
// protobufjs-cli (`pbjs -t static-module --force-number`) at build time; see
// build.mjs. 64-bit fields (seqs, millisecond times, sizes) decode as JS
// numbers: every value the server sends stays below 2^53.
import $protobuf from "protobufjs/minimal.js";
import { tongxin } from "../build/tongxin_pb.js";

$protobuf.util.Long = null;
$protobuf.configure();

export const pb = tongxin.v1;
/** tongxin.e2ee.v1 (e2ee.proto): key directory payloads and the E2EE envelope. */
export const e2eePb = tongxin.e2ee.v1;
export const T = pb.FrameType;
export const E = pb.ErrorCode;

/** Name of an enum value, e.g. enumName(pb.ErrorCode, 9) === "AUTH_FAILED". */
export function enumName(en, value) {
  for (const [k, v] of Object.entries(en)) if (v === value) return k;
  return String(value);
}
