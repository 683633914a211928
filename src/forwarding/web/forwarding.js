// forwarding.js: the relay's JavaScript client, for browsers (docs/client.md, "JavaScript").
// An ES module with no build step and no dependencies; the relay serves it at /forwarding.js.
//
//   import { connect } from "/forwarding.js";
//   const ch = await connect(undefined, { chid: "alice", mode: "framed" });
//   ch.send("hello");                                  // to the recvers, or everyone
//   for await (const event of ch) console.log(event);  // {type: "data", sender, data}, presence, eof
//
// The wire protocol is docs/protocol.md (section 14 for WebSockets, 12 for frames, 10.1 for sealing).

const DATA = 1;
const CONTROL = 2;
const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** A refusal or an end, with the relay's `code` (for programs) and `desc` (for people). */
export class RelayError extends Error {
  constructor(code, desc) {
    super(`${desc} (${code})`);
    this.code = code;
    this.desc = desc;
  }
}

/** The WebSocket URL of the relay that served this page. */
export function relayURL() {
  return `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;
}

/**
 * Join the relay: resolves to a Channel once hs4 is OK, rejects with a RelayError otherwise.
 * options: chid (default: generated), recvers (default: everyone), mode ("raw" or "framed"),
 * wait (hold until every recver is online), hangup, timeout (idle seconds).
 */
export function connect(url = relayURL(), { chid, recvers, mode = "raw", wait = false, hangup = false, timeout } = {}) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url);
    ws.binaryType = "arraybuffer";
    ws.onopen = () => {
      const hs1 = { req: "hs1" };
      if (chid) hs1.chid = chid;
      const hs3 = { req: "hs3" };
      if (recvers && recvers.length) hs3.recvers = recvers;
      if (wait) hs3.wait = true;
      if (hangup) hs3.hangup = true;
      if (timeout) hs3.timeout = timeout;
      if (mode === "framed") hs3.mode = "framed";
      ws.send(JSON.stringify(hs1)); // each handshake line is one text message
      ws.send(JSON.stringify(hs3));
    };
    ws.onmessage = (event) => {
      if (typeof event.data !== "string") return;
      const reply = JSON.parse(event.data);
      if (reply.result === "FAIL") reject(new RelayError(reply.code, reply.desc));
      else if (reply.rsp === "hs4") resolve(new Channel(ws, reply, mode));
    };
    ws.onclose = (event) =>
      reject(new RelayError("closed", `the relay closed the connection (${event.code}${event.reason ? ": " + event.reason : ""})`));
  });
}

/** An established session. Iterate it (or await next()) for events, in order. */
export class Channel {
  constructor(ws, hs4, mode) {
    this.ws = ws;
    this.mode = mode;
    this.chid = hs4.chid;
    this.online = hs4.online ?? null; // which recvers were online at hs4
    this.peer = hs4.peer ?? null; // the other end, for a visit (docs/protocol.md, 13)
    this.maxFrame = hs4.max_frame ?? 65536;
    this.timeout = hs4.timeout;
    this.closed = null; // a RelayError once the session is over
    this._events = [];
    this._waiting = [];
    this._replies = new Map();
    this._nextId = 1;
    this._buffer = new Uint8Array(0);
    ws.onmessage = (event) => this._received(event.data);
    ws.onclose = (event) => this._ended(event);
  }

  /** Send bytes (Uint8Array, ArrayBuffer) or a string (as UTF-8): one message, split only over maxFrame. */
  send(data) {
    const bytes = typeof data === "string" ? encoder.encode(data) : new Uint8Array(data);
    if (this.mode !== "framed") {
      this.ws.send(bytes);
      return;
    }
    for (let i = 0; i === 0 || i < bytes.length; i += this.maxFrame) {
      this.ws.send(frame(DATA, bytes.subarray(i, i + this.maxFrame)));
    }
  }

  /** Bytes handed to send() not yet on the network: the browser's WebSocket has no other backpressure. */
  get bufferedAmount() {
    return this.ws.bufferedAmount;
  }

  /** Resolves once no more than `limit` bytes wait to be sent. */
  async drain(limit = 4 << 20) {
    while (this.ws.bufferedAmount > limit && this.ws.readyState === WebSocket.OPEN) {
      await new Promise((r) => setTimeout(r, 5));
    }
  }

  /** The next event, or null once the session is over:
   *  {type: "data", sender, data: Uint8Array} (sender is null in raw mode),
   *  {type: "online" | "offline", chid}, {type: "eof", chid} (framed). */
  next() {
    if (this._events.length) return Promise.resolve(this._events.shift());
    if (this.closed) return Promise.resolve(null);
    return new Promise((resolve) => this._waiting.push(resolve));
  }

  async *[Symbol.asyncIterator]() {
    for (let event; (event = await this.next()) !== null; ) yield event;
  }

  // -- framed-mode commands (docs/protocol.md, 12.2): each resolves to the relay's reply

  async setRecvers(recvers) {
    return (await this.command("recvers", { recvers: recvers ?? [] })).online;
  }

  async onlineNow() {
    return (await this.command("online")).online;
  }

  /** Presence events for the recvers (for broadcast: everyone) from now on; resolves to who is online. */
  async subscribe(presence = true) {
    return (await this.command("subscribe", { presence })).online ?? [];
  }

  /** Finished sending; go on receiving (the framed half-close). */
  async eof() {
    await this.command("eof");
  }

  command(cmd, fields = {}) {
    if (this.mode !== "framed") return Promise.reject(new RelayError("bad_request", "commands need mode: framed"));
    if (this.closed) return Promise.reject(this.closed);
    const id = this._nextId++;
    this.ws.send(frame(CONTROL, encoder.encode(JSON.stringify({ id, cmd, ...fields }))));
    return new Promise((resolve, reject) => this._replies.set(id, { resolve, reject }));
  }

  /** End the session (framed: with `reason` in the relay's log). */
  async close(reason) {
    if (this.mode === "framed" && !this.closed) {
      await Promise.race([this.command("close", reason ? { reason } : {}).catch(() => {}), sleep(2000)]);
    }
    this.ws.close(1000);
  }

  _push(event) {
    const waiter = this._waiting.shift();
    if (waiter) waiter(event);
    else this._events.push(event); // unbounded: a page must keep up with what it is sent
  }

  _received(data) {
    if (typeof data === "string") return; // the relay sends binary after hs4
    const bytes = new Uint8Array(data);
    if (this.mode !== "framed") {
      this._push({ type: "data", sender: null, data: bytes });
      return;
    }
    // Each message holds whole frames, but parse as a stream all the same.
    this._buffer = this._buffer.length ? concat([this._buffer, bytes]) : bytes;
    let at = 0;
    const view = new DataView(this._buffer.buffer, this._buffer.byteOffset, this._buffer.byteLength);
    while (this._buffer.length - at >= 8) {
      const type = view.getUint8(at);
      const chidLength = view.getUint16(at + 2);
      const length = view.getUint32(at + 4);
      const end = at + 8 + chidLength + length;
      if (this._buffer.length < end) break;
      const sender = decoder.decode(this._buffer.subarray(at + 8, at + 8 + chidLength));
      const payload = this._buffer.slice(at + 8 + chidLength, end);
      at = end;
      if (type === DATA) this._push({ type: "data", sender, data: payload });
      else if (type === CONTROL) this._control(JSON.parse(decoder.decode(payload)));
    }
    this._buffer = this._buffer.slice(at);
  }

  _control(message) {
    if (typeof message.id === "number" && this._replies.has(message.id)) {
      const { resolve, reject } = this._replies.get(message.id);
      this._replies.delete(message.id);
      if (message.ok) resolve(message);
      else reject(new RelayError(message.code ?? "bad_request", message.desc ?? "refused"));
    } else if (message.event === "close") {
      this.closed = new RelayError(message.code, message.desc);
    } else if (message.event) {
      this._push({ type: message.event, chid: message.chid, ticket: message.ticket });
    }
  }

  _ended(event) {
    this.closed ??= new RelayError(event.code === 1000 ? "closed" : "lost", event.reason || `connection closed (${event.code})`);
    for (const { reject } of this._replies.values()) reject(this.closed);
    this._replies.clear();
    for (const waiter of this._waiting.splice(0)) waiter(null);
  }
}

function frame(type, payload) {
  const out = new Uint8Array(8 + payload.length);
  const view = new DataView(out.buffer);
  view.setUint8(0, type);
  view.setUint32(4, payload.length); // reserved byte and chid length stay 0 from a client
  out.set(payload, 8);
  return out;
}

export function concat(parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// -- end-to-end sealing (docs/protocol.md, 10.1), with WebCrypto ---------------------------

const MAGIC = encoder.encode("FWE1");
const INFO = encoder.encode("forwarding-e2e-v1");
const MAX_RECORD = 65536;

/** The 32-byte key from `forwarding keygen` (URL-safe base64). */
export function keyFromText(text) {
  const b64 = text.trim().replace(/-/g, "+").replace(/_/g, "/");
  const raw = Uint8Array.from(atob(b64 + "=".repeat((4 - (b64.length % 4)) % 4)), (c) => c.charCodeAt(0));
  if (raw.length !== 32) throw new Error(`the key must decode to 32 bytes, not ${raw.length}`);
  return raw;
}

async function streamKey(key, salt) {
  const base = await crypto.subtle.importKey("raw", key, "HKDF", false, ["deriveKey"]);
  return crypto.subtle.deriveKey(
    { name: "HKDF", hash: "SHA-256", salt, info: INFO },
    base,
    { name: "AES-GCM", length: 256 },
    false,
    ["encrypt", "decrypt"],
  );
}

function nonce(counter, last) {
  const n = new Uint8Array(12);
  new DataView(n.buffer).setBigUint64(3, BigInt(counter)); // 11-byte big-endian counter...
  n[11] = last ? 1 : 0; // ...then the "last record" flag
  return n;
}

/** Seals one direction: `await seal(bytes)` and `await finish()` return what to send. */
export class Sealer {
  constructor(key) {
    this._key = key;
    this._aead = null;
    this._counter = 0;
    this._header = null;
  }

  async _start() {
    if (this._aead) return new Uint8Array(0);
    const salt = crypto.getRandomValues(new Uint8Array(16));
    this._aead = await streamKey(this._key, salt);
    return concat([MAGIC, salt]);
  }

  async _record(chunk, last) {
    const sealed = new Uint8Array(await crypto.subtle.encrypt({ name: "AES-GCM", iv: nonce(this._counter++, last) }, this._aead, chunk));
    const length = new Uint8Array(4);
    new DataView(length.buffer).setUint32(0, sealed.length);
    return concat([length, sealed]);
  }

  async seal(data) {
    const parts = [await this._start()];
    for (let i = 0; i < data.length; i += MAX_RECORD) parts.push(await this._record(data.subarray(i, i + MAX_RECORD), false));
    return concat(parts);
  }

  async finish() {
    return concat([await this._start(), await this._record(new Uint8Array(0), true)]);
  }
}

/** Opens one direction: `await feed(bytes)` returns the plaintext of every complete record; `finished` after the last. */
export class Opener {
  constructor(key) {
    this._key = key;
    this._aead = null;
    this._buffer = new Uint8Array(0);
    this._counter = 0;
    this.finished = false;
  }

  async feed(data) {
    if (this.finished && data.length) throw new Error("data after the end of the end-to-end stream");
    this._buffer = concat([this._buffer, data]);
    if (!this._aead) {
      if (this._buffer.length < 20) return new Uint8Array(0);
      if (MAGIC.some((b, i) => this._buffer[i] !== b)) throw new Error("not an end-to-end sealed stream (is the sender using the key?)");
      this._aead = await streamKey(this._key, this._buffer.slice(4, 20));
      this._buffer = this._buffer.slice(20);
    }
    const out = [];
    while (this._buffer.length >= 4 && !this.finished) {
      const size = new DataView(this._buffer.buffer, this._buffer.byteOffset).getUint32(0);
      if (size < 16 || size > MAX_RECORD + 16) throw new Error(`bad end-to-end record length ${size}`);
      if (this._buffer.length < 4 + size) break;
      const sealed = this._buffer.slice(4, 4 + size);
      this._buffer = this._buffer.slice(4 + size);
      out.push(await this._open(sealed));
    }
    return concat(out);
  }

  async _open(sealed) {
    for (const last of [false, true]) {
      try {
        const plain = await crypto.subtle.decrypt({ name: "AES-GCM", iv: nonce(this._counter, last) }, this._aead, sealed);
        this._counter++;
        this.finished = last;
        return new Uint8Array(plain);
      } catch {
        // the other flag, then give up
      }
    }
    throw new Error("end-to-end authentication failed: wrong key, or the stream was tampered with");
  }
}
