// File transfer over the HTTP files API (docs/files-api.md): chunked,
// parallel and resumable uploads, authenticated downloads. Chat messages then
// carry only the FileInfo.
import { sha256 } from "@noble/hashes/sha2.js";
import { bytesToHex } from "@noble/hashes/utils.js";

const PARALLEL = 3;
const PART_RETRIES = 5;
const HASH_SLICE = 4 * 1024 * 1024;
const RESUME_PREFIX = "tongxin.upload.";

export class FilesError extends Error {
  constructor(status, body, fallback) {
    super((body && body.message) || fallback || `HTTP ${status}`);
    this.status = status;
    this.code = (body && body.error) || "";
  }
}

async function jsonOrNull(res) {
  try {
    return await res.json();
  } catch {
    return null;
  }
}

function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(new DOMException("aborted", "AbortError"));
      return;
    }
    const t = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => {
      clearTimeout(t);
      reject(new DOMException("aborted", "AbortError"));
    }, { once: true });
  });
}

export function humanSize(n) {
  if (n < 1024) return `${n} B`;
  const units = ["KB", "MB", "GB", "TB"];
  let v = n;
  let i = -1;
  do {
    v /= 1024;
    i++;
  } while (v >= 1024 && i < units.length - 1);
  return `${v.toFixed(v < 10 ? 1 : 0)} ${units[i]}`;
}

export class FilesApi {
  /** getToken: () => the current bearer token (it changes on re-login). */
  constructor(base, getToken) {
    this.base = base.replace(/\/$/, "");
    this.getToken = getToken;
  }

  headers(extra = {}) {
    return { Authorization: `Bearer ${this.getToken()}`, ...extra };
  }

  async call(method, path, body, signal) {
    const init = { method, headers: this.headers(), signal };
    if (body !== undefined) {
      init.body = JSON.stringify(body);
      init.headers["Content-Type"] = "application/json";
    }
    const res = await fetch(this.base + path, init);
    const data = res.status === 204 ? null : await jsonOrNull(res);
    if (!res.ok) throw new FilesError(res.status, data, `${method} ${path}: HTTP ${res.status}`);
    return data;
  }

  /** PUT one part with upload progress (fetch has none, XHR does). */
  putPart(uploadId, n, blob, onProgress, signal) {
    return new Promise((resolve, reject) => {
      if (signal?.aborted) {
        reject(new DOMException("aborted", "AbortError"));
        return;
      }
      const xhr = new XMLHttpRequest();
      xhr.open("PUT", `${this.base}/api/v1/files/uploads/${encodeURIComponent(uploadId)}/parts/${n}`);
      for (const [k, v] of Object.entries(this.headers({ "Content-Type": "application/octet-stream" }))) {
        xhr.setRequestHeader(k, v);
      }
      xhr.upload.onprogress = (ev) => onProgress(ev.loaded);
      xhr.onload = () => {
        let body = null;
        try {
          body = JSON.parse(xhr.responseText);
        } catch {
          /* not JSON */
        }
        if (xhr.status >= 200 && xhr.status < 300) resolve(body);
        else reject(new FilesError(xhr.status, body, `part ${n}: HTTP ${xhr.status}`));
      };
      xhr.onerror = () => reject(new FilesError(0, null, `part ${n}: network error`));
      xhr.onabort = () => reject(new DOMException("aborted", "AbortError"));
      signal?.addEventListener("abort", () => xhr.abort(), { once: true });
      xhr.send(blob);
    });
  }

  /**
   * Upload a File to a conversation and return the FileInfo the server
   * verified. progress({phase, done, total}) is called as it goes. A failed
   * or interrupted upload can be resumed by calling upload() again with the
   * same file (also after a page reload): the upload id is kept in
   * localStorage and only the parts the server lacks are sent.
   */
  async upload(file, conversationId, progress = () => {}, signal = undefined) {
    const key = `${RESUME_PREFIX}${conversationId}:${file.name}:${file.size}:${file.lastModified}`;
    let rec = null;
    try {
      rec = JSON.parse(localStorage.getItem(key) || "null");
    } catch {
      rec = null;
    }
    let status = null;
    if (rec && rec.expires_at_ms > Date.now() + 60000) {
      try {
        status = await this.call("GET", `/api/v1/files/uploads/${encodeURIComponent(rec.upload_id)}`, undefined, signal);
      } catch (err) {
        if (err.name === "AbortError") throw err;
        status = null; // expired or unknown: start over
      }
    }
    if (!status) {
      const digest = await this.hash(file, (done) => progress({ phase: "hashing", done, total: file.size }), signal);
      let created;
      try {
        created = await this.call("POST", "/api/v1/files", {
          conversation_id: conversationId, name: file.name, size: file.size,
          content_type: file.type || "application/octet-stream", sha256: digest,
        }, signal);
      } catch (err) {
        if (err instanceof FilesError && (err.status === 404 || err.status === 405) && !err.code) {
          throw new FilesError(err.status, { error: "NO_FILES_API", message: "file sharing is not available on this server" });
        }
        throw err;
      }
      rec = { upload_id: created.upload_id, expires_at_ms: created.expires_at_ms };
      localStorage.setItem(key, JSON.stringify(rec));
      status = { ...created, parts: [] };
    }
    let info;
    if (status.file_id) {
      // Completed before (the chat message may not have gone out): reuse it.
      info = await this.call("GET", `/api/v1/files/${encodeURIComponent(status.file_id)}/info`, undefined, signal);
      localStorage.removeItem(key);
      progress({ phase: "done", done: file.size, total: file.size });
      return info;
    }
    for (let attempt = 0; ; attempt++) {
      await this.sendParts(rec.upload_id, file, status, progress, signal);
      progress({ phase: "verifying", done: file.size, total: file.size });
      try {
        info = await this.call("POST", `/api/v1/files/uploads/${encodeURIComponent(rec.upload_id)}/complete`, undefined, signal);
        break;
      } catch (err) {
        // 409: parts missing or checksum mismatch; the upload stays resumable.
        if (!(err instanceof FilesError) || err.status !== 409 || attempt >= 1) throw err;
        status = await this.call("GET", `/api/v1/files/uploads/${encodeURIComponent(rec.upload_id)}`, undefined, signal);
      }
    }
    localStorage.removeItem(key);
    progress({ phase: "done", done: file.size, total: file.size });
    return info;
  }

  /** Whole-file SHA-256, streamed in slices (crypto.subtle is absent on plain-HTTP origins). */
  async hash(file, onProgress, signal) {
    const h = sha256.create();
    for (let at = 0; at < file.size; at += HASH_SLICE) {
      if (signal?.aborted) throw new DOMException("aborted", "AbortError");
      const buf = new Uint8Array(await file.slice(at, at + HASH_SLICE).arrayBuffer());
      h.update(buf);
      onProgress(Math.min(file.size, at + HASH_SLICE));
    }
    return bytesToHex(h.digest());
  }

  async sendParts(uploadId, file, status, progress, parent) {
    const partSize = status.part_size;
    const count = status.part_count ?? Math.ceil(file.size / partSize);
    const have = new Set(status.parts || []);
    const sizeOf = (n) => Math.min(partSize, file.size - (n - 1) * partSize);
    let doneBytes = 0;
    for (const n of have) doneBytes += sizeOf(n);
    const inflight = new Map();
    const report = () => {
      let sum = doneBytes;
      for (const v of inflight.values()) sum += v;
      progress({ phase: "uploading", done: Math.min(sum, file.size), total: file.size });
    };
    report();
    const queue = [];
    for (let n = 1; n <= count; n++) if (!have.has(n)) queue.push(n);
    // One part failing for good stops the others, so that a resume never
    // races parts still in flight from this attempt.
    const stop = new AbortController();
    const onAbort = () => stop.abort();
    parent?.addEventListener("abort", onAbort, { once: true });
    if (parent?.aborted) stop.abort();
    const signal = stop.signal;
    const worker = async () => {
      while (queue.length) {
        if (signal.aborted) throw new DOMException("aborted", "AbortError");
        const n = queue.shift();
        const blob = file.slice((n - 1) * partSize, (n - 1) * partSize + sizeOf(n));
        for (let attempt = 1; ; attempt++) {
          try {
            await this.putPart(uploadId, n, blob, (loaded) => {
              inflight.set(n, loaded);
              report();
            }, signal);
            break;
          } catch (err) {
            inflight.delete(n);
            const retriable = err instanceof FilesError && (err.status === 0 || err.status >= 500 || err.status === 429);
            if (!retriable || attempt >= PART_RETRIES) throw err;
            await sleep(500 * 2 ** attempt, signal);
          }
        }
        inflight.delete(n);
        doneBytes += sizeOf(n);
        report();
      }
    };
    const results = await Promise.allSettled(Array.from({ length: Math.min(PARALLEL, queue.length) }, () =>
      worker().catch((err) => {
        stop.abort();
        throw err;
      })));
    parent?.removeEventListener("abort", onAbort);
    const failed = results.find((r) => r.status === "rejected" && r.reason?.name !== "AbortError")
      || results.find((r) => r.status === "rejected");
    if (failed) throw failed.reason;
  }

  /** Download with the bearer token and hand the bytes to the browser as a file. */
  async download(info, onProgress = () => {}) {
    const blob = await this.fetchBlob(info, onProgress);
    this.save(blob, info.name);
    return blob;
  }

  /** The file's bytes as a Blob (an E2EE attachment is opened by the caller). */
  async fetchBlob(info, onProgress = () => {}) {
    const res = await fetch(`${this.base}/api/v1/files/${encodeURIComponent(info.fileId)}`, {
      headers: this.headers(),
    });
    if (!res.ok) throw new FilesError(res.status, await jsonOrNull(res), `download: HTTP ${res.status}`);
    const total = Number(res.headers.get("Content-Length")) || info.size || 0;
    const chunks = [];
    let done = 0;
    const reader = res.body.getReader();
    for (;;) {
      const { done: end, value } = await reader.read();
      if (end) break;
      chunks.push(value);
      done += value.length;
      onProgress(done, total);
    }
    return new Blob(chunks, { type: info.contentType || "application/octet-stream" });
  }

  /** Hand a Blob to the browser as a download named `name`. */
  save(blob, name) {
    const url = URL.createObjectURL(blob);
    const a = document.createElement("a");
    a.href = url;
    a.download = name || "file";
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  }
}
