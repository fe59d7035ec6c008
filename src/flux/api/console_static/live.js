// The live connection: `/api/ws`, subscribed to every entity the token may read, resumed by
// version after a disconnect (docs/websocket.md). Messages are queued and handed to the
// listeners once per animation frame, as one batch, so hundreds of events a second cost one
// DOM update a frame. The time each batch takes is kept in `window.fluxConsole.stats` (the
// browser tests read it).
import { token } from "./api.js";

const listeners = new Set();
const stats = { batches: 0, messages: 0, lastBatchMs: 0, maxBatchMs: 0, totalBatchMs: 0, lastBatchSize: 0 };
window.fluxConsole = { stats, version: 0, connected: false };

let socket = null;
let queue = [];
let scheduled = false;
let lastVersion = null; // the highest version seen; resume from it
let retry = 0;
let statusListener = () => {};

export function onBatch(listener) {
  listeners.add(listener);
  return () => listeners.delete(listener);
}

export function onStatus(listener) {
  statusListener = listener;
}

function flush() {
  scheduled = false;
  const batch = queue;
  queue = [];
  const started = performance.now();
  for (const listener of listeners) {
    try {
      listener(batch);
    } catch (error) {
      console.error(error);
    }
  }
  const took = performance.now() - started;
  stats.batches += 1;
  stats.messages += batch.length;
  stats.lastBatchMs = took;
  stats.lastBatchSize = batch.length;
  stats.totalBatchMs += took;
  stats.maxBatchMs = Math.max(stats.maxBatchMs, took);
}

function receive(event) {
  let message;
  try {
    message = JSON.parse(event.data);
  } catch {
    return;
  }
  if (typeof message.version === "number" && message.type !== "subscribed") {
    // A resume from `since` = last version − 1 brings back the last version's messages.
    lastVersion = Math.max(lastVersion ?? 0, message.version);
    window.fluxConsole.version = lastVersion;
  }
  if (message.type === "subscribed") {
    if (lastVersion === null || message.version > lastVersion) lastVersion = message.version;
    window.fluxConsole.version = lastVersion;
    statusListener("live", message.version);
  }
  if (message.type === "error") statusListener("error", message.error);
  queue.push(message);
  if (!scheduled) {
    scheduled = true;
    requestAnimationFrame(flush);
  }
}

// (Re)connect. `fresh`: forget the resume point (a new token may read more, so the page
// reloads its state and starts over).
export function connect(fresh = false) {
  if (socket) {
    socket.onclose = null;
    socket.close();
  }
  if (fresh) lastVersion = null;
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  socket = new WebSocket(`${scheme}//${location.host}/api/ws`);
  socket.onopen = () => {
    retry = 0;
    window.fluxConsole.connected = true;
    const bearer = token();
    if (bearer) socket.send(JSON.stringify({ type: "auth", token: bearer }));
    const subscribe = { type: "subscribe", entity_id: "*" };
    // Resume: every change after the last version (−1: its other properties may be missing).
    if (lastVersion !== null) subscribe.since = Math.max(0, lastVersion - 1);
    socket.send(JSON.stringify(subscribe));
  };
  socket.onmessage = receive;
  socket.onclose = () => {
    window.fluxConsole.connected = false;
    statusListener("down");
    retry = Math.min(retry + 1, 5);
    setTimeout(() => connect(false), 500 * retry);
  };
}
