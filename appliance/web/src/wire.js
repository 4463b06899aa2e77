// Frame layer of the Tongxin wire protocol, mirroring tongxin/wire/frame.py and codec.py.
//
// Every WebSocket binary message is an 11-byte big-endian header followed by a payload:
//   version u8 | type u8 | seq u32 | flags u8 | length u32 | payload
// A payload may be zstd-compressed (FLAG_COMPRESSED, whole message before
// splitting) and a message larger than max_frame_payload travels as consecutive
// frames with the same type and seq, FLAG_FRAGMENT on each and FLAG_FINAL on the last.
import { decompress } from "fzstd";

export const VERSION = 1;
export const HEADER_SIZE = 11;
export const FLAG_COMPRESSED = 0x01;
export const FLAG_FRAGMENT = 0x02;
export const FLAG_FINAL = 0x04;
export const KNOWN_FLAGS = FLAG_COMPRESSED | FLAG_FRAGMENT | FLAG_FINAL;
export const MAX_SEQ = 0xffffffff;

export class WireError extends Error {}

/** One frame: header fields plus its payload bytes. */
export function encodeFrame(type, seq, flags, payload) {
  const out = new Uint8Array(HEADER_SIZE + payload.length);
  const dv = new DataView(out.buffer);
  dv.setUint8(0, VERSION);
  dv.setUint8(1, type);
  dv.setUint32(2, seq >>> 0);
  dv.setUint8(6, flags);
  dv.setUint32(7, payload.length);
  out.set(payload, HEADER_SIZE);
  return out;
}

/**
 * A whole message as the frames to send. Outgoing payloads are never
 * compressed (the server accepts uncompressed payloads of any size up to its
 * limits); they are split above maxFramePayload.
 */
export function encodeMessage(type, seq, payload, maxFramePayload) {
  if (payload.length <= maxFramePayload) return [encodeFrame(type, seq, 0, payload)];
  const frames = [];
  for (let start = 0; start < payload.length; start += maxFramePayload) {
    const last = start + maxFramePayload >= payload.length;
    const flags = FLAG_FRAGMENT | (last ? FLAG_FINAL : 0);
    frames.push(encodeFrame(type, seq, flags, payload.subarray(start, start + maxFramePayload)));
  }
  return frames;
}

export function decodeFrame(buf) {
  const data = buf instanceof Uint8Array ? buf : new Uint8Array(buf);
  if (data.length < HEADER_SIZE) throw new WireError(`frame of ${data.length} bytes is shorter than the header`);
  const dv = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const version = dv.getUint8(0);
  const type = dv.getUint8(1);
  const seq = dv.getUint32(2);
  const flags = dv.getUint8(6);
  const length = dv.getUint32(7);
  if (version !== VERSION) throw new WireError(`protocol version ${version} is not supported`);
  if (flags & ~KNOWN_FLAGS) throw new WireError(`unknown flag bits 0x${flags.toString(16)}`);
  if (flags & FLAG_FINAL && !(flags & FLAG_FRAGMENT)) throw new WireError("FINAL flag without FRAGMENT flag");
  if (length !== data.length - HEADER_SIZE) {
    throw new WireError(`header says ${length} payload bytes, frame carries ${data.length - HEADER_SIZE}`);
  }
  return { type, seq, flags, payload: data.subarray(HEADER_SIZE) };
}

/** Reassembles fragments and decompresses; feed() returns a whole message or null. */
export class Reassembler {
  constructor(maxMessageSize = 8 * 1024 * 1024) {
    this.maxMessageSize = maxMessageSize;
    this.partial = null;
  }

  feed(buf) {
    const f = decodeFrame(buf);
    const p = this.partial;
    if (!(f.flags & FLAG_FRAGMENT)) {
      if (p) {
        this.partial = null;
        throw new WireError(`unfragmented frame seq ${f.seq} inside fragmented seq ${p.seq}`);
      }
      return this.finish(f.type, f.seq, f.flags, f.payload);
    }
    if (!p) {
      this.partial = { type: f.type, seq: f.seq, flags: f.flags, chunks: [], size: 0 };
    } else if (p.seq !== f.seq || p.type !== f.type || (p.flags & FLAG_COMPRESSED) !== (f.flags & FLAG_COMPRESSED)) {
      this.partial = null;
      throw new WireError(`fragment seq ${f.seq} does not continue seq ${p.seq}`);
    }
    const q = this.partial;
    q.size += f.payload.length;
    if (q.size > this.maxMessageSize) {
      this.partial = null;
      throw new WireError(`fragmented message exceeds ${this.maxMessageSize} bytes`);
    }
    q.chunks.push(f.payload.slice());
    if (!(f.flags & FLAG_FINAL)) return null;
    this.partial = null;
    const whole = new Uint8Array(q.size);
    let at = 0;
    for (const c of q.chunks) {
      whole.set(c, at);
      at += c.length;
    }
    return this.finish(q.type, q.seq, q.flags, whole);
  }

  finish(type, seq, flags, payload) {
    if (flags & FLAG_COMPRESSED) {
      try {
        payload = decompress(payload);
      } catch (err) {
        throw new WireError(`corrupt zstd payload: ${err.message || err}`);
      }
    }
    if (payload.length > this.maxMessageSize) throw new WireError(`payload exceeds ${this.maxMessageSize} bytes`);
    return { type, seq, payload };
  }
}
