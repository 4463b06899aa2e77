// Persistence of the E2EE device state in IndexedDB: identity and prekey
// private keys, pairwise sessions, group sender keys and the identity keys
// already seen of other devices. One database per (user, device), so two
// accounts used in one browser never share keys.
//
// Values are structured clones (Uint8Array survives as Uint8Array). Where
// IndexedDB is unavailable (a private window that forbids it, node tests)
// the store keeps state in memory only and says so through `persistent`, so
// the UI can warn that history will not decrypt after a reload.

const STORE = "kv";
// One open database per name for the page's lifetime: reconnects reuse it
// instead of piling up IndexedDB connections.
const opened = new Map();

function promisify(req) {
  return new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

export class KeyStore {
  /** Open (creating if needed) the store of one user's device. */
  static open(userId, deviceId) {
    const name = `tongxin-e2ee:${userId}:${deviceId}`;
    if (!opened.has(name)) opened.set(name, KeyStore.#open(name));
    return opened.get(name);
  }

  static async #open(name) {
    if (!globalThis.indexedDB) return new KeyStore(null);
    try {
      const req = indexedDB.open(name, 1);
      req.onupgradeneeded = () => req.result.createObjectStore(STORE);
      return new KeyStore(await promisify(req));
    } catch (err) {
      console.warn("tongxin: IndexedDB unavailable, E2EE keys kept in memory only", err);
      return new KeyStore(null);
    }
  }

  constructor(db) {
    this.db = db;
    this.memory = new Map();
  }

  get persistent() {
    return this.db !== null;
  }

  async get(key) {
    if (!this.db) return this.memory.get(key);
    const tx = this.db.transaction(STORE, "readonly");
    return promisify(tx.objectStore(STORE).get(key));
  }

  async put(key, value) {
    if (!this.db) {
      this.memory.set(key, value);
      return;
    }
    const tx = this.db.transaction(STORE, "readwrite");
    tx.objectStore(STORE).put(value, key);
    await new Promise((resolve, reject) => {
      tx.oncomplete = resolve;
      tx.onerror = () => reject(tx.error);
      tx.onabort = () => reject(tx.error);
    });
  }

  async delete(key) {
    if (!this.db) {
      this.memory.delete(key);
      return;
    }
    const tx = this.db.transaction(STORE, "readwrite");
    tx.objectStore(STORE).delete(key);
    await new Promise((resolve, reject) => {
      tx.oncomplete = resolve;
      tx.onerror = () => reject(tx.error);
    });
  }

  /** All keys starting with `prefix`. */
  async keys(prefix) {
    if (!this.db) return [...this.memory.keys()].filter((k) => k.startsWith(prefix));
    const tx = this.db.transaction(STORE, "readonly");
    const range = IDBKeyRange.bound(prefix, `${prefix}\uffff`);
    return promisify(tx.objectStore(STORE).getAllKeys(range));
  }

  close() {
    this.db?.close();
  }
}
