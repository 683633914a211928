// The page at / : chat in framed mode with presence, and files in the format of
// `forwarding send` / `forwarding recv` (docs/protocol.md, 10.2), sealed with the same key.
import { Opener, Sealer, concat, connect, keyFromText } from "./forwarding.js";

const $ = (id) => document.getElementById(id);
const encoder = new TextEncoder();
const decoder = new TextDecoder();
let chat = null;

function line(text, kind = "") {
  const row = document.createElement("div");
  row.className = kind;
  row.textContent = text;
  $("log").append(row);
  $("log").scrollTop = $("log").scrollHeight;
}

function recvers(text) {
  const list = text.split(/[\s,]+/).filter(Boolean);
  return list.length ? list : undefined;
}

function key() {
  const text = $("key").value.trim();
  return text ? keyFromText(text) : null;
}

// -- chat ---------------------------------------------------------------------------

$("join").onclick = async () => {
  if (chat) {
    await chat.close("left the page");
    return;
  }
  try {
    chat = await connect(undefined, { chid: $("chid").value.trim() || undefined, recvers: recvers($("to").value), mode: "framed" });
  } catch (error) {
    line(`could not join: ${error.desc ?? error.message}`, "error");
    return;
  }
  $("chid").value = chat.chid;
  $("join").textContent = "leave";
  $("say").disabled = $("send-message").disabled = false;
  line(`joined as ${chat.chid}`, "note");
  const online = await chat.subscribe();
  line(online.length ? `here: ${online.join(", ")}` : "nobody else is here yet", "note");
  for await (const event of chat) {
    if (event.type === "data") line(`${event.sender}: ${decoder.decode(event.data)}`);
    else if (event.type === "online") line(`${event.chid} joined`, "note");
    else if (event.type === "offline") line(`${event.chid} left`, "note");
  }
  line(`left: ${chat.closed?.desc ?? "the session ended"}`, "note");
  chat = null;
  $("join").textContent = "join";
  $("say").disabled = $("send-message").disabled = true;
};

$("chat-form").onsubmit = (event) => {
  event.preventDefault();
  const text = $("say").value;
  if (!chat || !text) return;
  chat.send(text);
  line(`${chat.chid}: ${text}`, "mine");
  $("say").value = "";
};

// -- files ----------------------------------------------------------------------------

async function sha256Hex(bytes) {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

function status(id, text, kind = "") {
  $(id).textContent = text;
  $(id).className = kind;
}

/** Send the chosen file to one receiver; done only when it confirms (as forwarding send). */
$("send-form").onsubmit = async (event) => {
  event.preventDefault();
  const file = $("file").files[0];
  const to = $("send-to").value.trim();
  if (!file || !to) return;
  const k = key();
  const out = k ? new Sealer(k) : null;
  const back = k ? new Opener(k) : null;
  const seal = async (bytes) => (out ? out.seal(bytes) : bytes);
  status("send-status", `waiting for ${to}...`);
  let ch;
  try {
    ch = await connect(undefined, { recvers: [to], wait: true, hangup: true });
  } catch (error) {
    status("send-status", `could not reach ${to}: ${error.desc ?? error.message}`, "error");
    return;
  }
  const content = new Uint8Array(await file.arrayBuffer());
  const header = encoder.encode(JSON.stringify({ name: file.name, size: content.length }) + "\n");
  ch.send(await seal(header));
  const step = 256 * 1024;
  for (let at = 0; at < content.length; at += step) {
    ch.send(await seal(content.subarray(at, at + step)));
    await ch.drain();
    $("send-progress").value = Math.min(1, (at + step) / Math.max(content.length, 1));
  }
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", content));
  ch.send(concat([await seal(digest), out ? await out.finish() : new Uint8Array(0)]));
  $("send-progress").value = 1;
  let answer = new Uint8Array(0);
  for await (const e of ch) {
    answer = concat([answer, back ? await back.feed(e.data) : e.data]);
    if (answer.includes(10)) break;
  }
  await ch.close();
  const newline = answer.indexOf(10);
  const reply = newline >= 0 ? JSON.parse(decoder.decode(answer.subarray(0, newline))) : null;
  const hex = await sha256Hex(content);
  if (reply?.ok && reply.sha256 === hex && reply.size === content.length) {
    status("send-status", `${to} has ${file.name}: ${content.length} bytes, sha256 ${hex}`, "ok");
  } else if (reply) {
    status("send-status", `${to} refused the transfer: ${reply.error ?? JSON.stringify(reply)}`, "error");
  } else {
    status("send-status", `${to} left without confirming`, "error");
  }
};

/** Wait as a chid for one file (as forwarding recv), check it, confirm, and offer it for download. */
$("recv-form").onsubmit = async (event) => {
  event.preventDefault();
  const k = key();
  const opener = k ? new Opener(k) : null;
  const answerSealer = k ? new Sealer(k) : null;
  let ch;
  try {
    ch = await connect(undefined, { chid: $("recv-as").value.trim() || undefined, mode: "framed" });
  } catch (error) {
    status("recv-status", `could not join: ${error.desc ?? error.message}`, "error");
    return;
  }
  $("recv-as").value = ch.chid;
  status("recv-status", `waiting as ${ch.chid} for a file...`);
  let sender = null;
  let buffer = new Uint8Array(0);
  let header = null;
  let parts = [];
  let got = 0;
  const answer = async (message) => {
    if (!sender) return;
    await ch.setRecvers([sender]);
    const bytes = encoder.encode(JSON.stringify(message) + "\n");
    ch.send(answerSealer ? concat([await answerSealer.seal(bytes), await answerSealer.finish()]) : bytes);
  };
  try {
    for await (const e of ch) {
      if (e.type === "eof" && e.chid === sender) throw new Error(`${sender} left after ${got} of ${header?.size ?? "?"} bytes`);
      if (e.type !== "data") continue;
      sender ??= e.sender;
      if (e.sender !== sender) continue; // not our sender: never part of the file
      buffer = concat([buffer, opener ? await opener.feed(e.data) : e.data]);
      if (!header) {
        const newline = buffer.indexOf(10);
        if (newline < 0) continue;
        header = JSON.parse(decoder.decode(buffer.subarray(0, newline)));
        buffer = buffer.slice(newline + 1);
        status("recv-status", `receiving ${header.name} (${header.size} bytes) from ${sender}`);
      }
      const take = Math.min(buffer.length, header.size - got);
      if (take) {
        parts.push(buffer.slice(0, take));
        buffer = buffer.slice(take);
        got += take;
        $("recv-progress").value = got / Math.max(header.size, 1);
      }
      if (got === header.size && buffer.length >= 32 && (!opener || opener.finished)) break;
    }
    if (!header || got < header.size || buffer.length < 32) throw new Error(`${sender ?? "the sender"} left before the end`);
    const content = concat(parts);
    parts = [];
    const hex = await sha256Hex(content);
    const theirs = Array.from(buffer.subarray(0, 32), (b) => b.toString(16).padStart(2, "0")).join("");
    if (hex !== theirs) {
      await answer({ ok: false, error: "the SHA-256 of what arrived is not the sender's" });
      throw new Error(`SHA-256 mismatch: ${sender}'s is ${theirs}, the received bytes' is ${hex}`);
    }
    await answer({ ok: true, size: content.length, sha256: hex });
    const link = $("download");
    link.href = URL.createObjectURL(new Blob([content]));
    link.download = safeName(header.name);
    link.textContent = `save ${link.download}`;
    link.hidden = false;
    status("recv-status", `received ${header.name} from ${sender}: ${content.length} bytes, sha256 ${hex}`, "ok");
  } catch (error) {
    status("recv-status", error.message, "error");
  } finally {
    await ch.close();
  }
};

function safeName(name) {
  const base = String(name).split(/[\\/]/).pop();
  return !base || base.startsWith(".") || /[\0-\x1f]/.test(base) ? "received.bin" : base;
}
