// Coordination (docs/coordination.md): the leases held (entity, holder, fencing token, time
// left, counting down), the presences (a WebSocket connection's `__presence__`, or a presence
// lease), and the entities with a time to live (`__ttl_ms__`). Read once from
// `GET /api/state/entities?has=…` (only the entities carrying the property, filtered on the
// server), then kept current by the live connection's batches: a lease released or expired, a
// presence gone, shows in the next frame.
import { api, query } from "./api.js";
import { h, notice, show } from "./dom.js";
import { onBatch } from "./live.js";

const LEASE = "__lease__";
const PRESENCE = "__presence__";
const TTL = "__ttl_ms__";
const TICK_MS = 200; // the countdowns' refresh

// id -> entity ({id, properties, lastUpdated, version}), for each kind of coordination data
let leases = new Map();
let presences = new Map();
let ttls = new Map();
let root = null;
let ticker = 0;
let loading = 0; // the load under way; a batch that arrives meanwhile is applied after it

function left(ms) {
  if (ms <= 0) return "expired";
  if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
  if (ms < 3600000) return `${Math.floor(ms / 60000)} min ${Math.floor((ms % 60000) / 1000)} s`;
  return `${(ms / 3600000).toFixed(1)} h`;
}

function link(id) {
  return h("a", { href: "#/entity/" + encodeURIComponent(id), class: "id" }, id);
}

// The properties an agent set itself, for the presence table (not Flux's `__…__` markers).
function own(properties) {
  return Object.entries(properties)
    .filter(([name]) => !name.startsWith("__"))
    .map(([name, value]) => `${name}=${show(value)}`)
    .join("  ");
}

function ttlDue(entity) {
  return Date.parse(entity.lastUpdated) + Number(entity.properties[TTL]);
}

function table(id, heads, rows, empty) {
  if (!rows.length) return h("p", { class: "hint", id: id + "-empty" }, empty);
  return h(
    "table",
    { id },
    h("thead", {}, h("tr", {}, heads.map((head) => h("th", {}, head)))),
    h("tbody", {}, rows),
  );
}

function draw() {
  if (!root || !root.isConnected) return;
  const byId = (a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);
  const leaseRows = [...leases.values()].sort(byId).map((entity) => {
    const lease = entity.properties[LEASE];
    return h(
      "tr",
      { dataset: { id: entity.id } },
      h("td", {}, link(entity.id)),
      h("td", { class: "holder" }, String(lease.owner)),
      h("td", { class: "token" }, String(lease.token)),
      h("td", { class: "left", dataset: { due: String(lease.expires_at) } }, left(lease.expires_at - Date.now())),
      h("td", {}, lease.presence ? "presence" : ""),
    );
  });
  const presenceRows = [...presences.values()].sort(byId).map((entity) => {
    const marker = entity.properties[PRESENCE];
    const lease = entity.properties[LEASE];
    const how = marker ? "connection" + (marker.node ? ` on ${marker.node}` : "") : `lease of ${lease.owner}`;
    const since = marker ? marker.since : lease.acquired_at;
    return h(
      "tr",
      { dataset: { id: entity.id } },
      h("td", {}, link(entity.id)),
      h("td", { class: "how" }, how),
      h("td", {}, typeof since === "number" ? new Date(since).toISOString() : ""),
      h("td", { class: "json" }, own(entity.properties)),
    );
  });
  const ttlRows = [...ttls.values()].sort(byId).map((entity) =>
    h(
      "tr",
      { dataset: { id: entity.id } },
      h("td", {}, link(entity.id)),
      h("td", {}, `${entity.properties[TTL]} ms`),
      h("td", { class: "left", dataset: { due: String(ttlDue(entity)) } }, left(ttlDue(entity) - Date.now())),
    ),
  );
  root.replaceChildren(
    h("h2", {}, `Leases (${leaseRows.length})`),
    table("leases", ["entity", "holder", "token", "time left", ""], leaseRows, "No lease is held."),
    h("h2", {}, `Presence (${presenceRows.length})`),
    table("presences", ["entity", "held by", "since", "properties"], presenceRows, "Nobody is present."),
    h("h2", {}, `Time to live (${ttlRows.length})`),
    table("ttls", ["entity", "ttl", "time left"], ttlRows, "No entity has a time to live."),
  );
}

function tick() {
  if (!root || !root.isConnected) {
    clearInterval(ticker);
    ticker = 0;
    return;
  }
  const now = Date.now();
  for (const cell of root.querySelectorAll("td.left")) cell.textContent = left(Number(cell.dataset.due) - now);
}

// Put `entity` in or out of each table, by what it carries now.
function place(entity) {
  const props = entity.properties;
  const lease = props[LEASE];
  if (lease) leases.set(entity.id, entity);
  else leases.delete(entity.id);
  if (props[PRESENCE] || (lease && lease.presence)) presences.set(entity.id, entity);
  else presences.delete(entity.id);
  if (props[TTL]) ttls.set(entity.id, entity);
  else ttls.delete(entity.id);
}

function forget(id) {
  leases.delete(id);
  presences.delete(id);
  ttls.delete(id);
}

function known(id) {
  return leases.get(id) || presences.get(id) || ttls.get(id);
}

const pending = [];
let last = { id: null, version: 0, properties: {} }; // the latest event of an entity not shown

function apply(batch) {
  if (!root || !root.isConnected) return;
  if (loading) {
    pending.push(...batch);
    return;
  }
  let changed = false;
  for (const message of batch) {
    const id = message.entity_id;
    if (message.type === "entity_deleted") {
      if (known(id) && message.version >= known(id).version) {
        forget(id);
        changed = true;
      }
    } else if (message.type === "state_update") {
      const coordination = message.property === LEASE || message.property === PRESENCE || message.property === TTL;
      let entity = known(id);
      if (!entity) {
        // Not shown yet: keep what this event set, in case one of its next properties is a
        // marker. An event's properties arrive one message each, one after the other (maybe
        // across two batches), so the last event's are all that need keeping.
        if (last.id !== id || last.version !== message.version) last = { id, version: message.version, properties: {} };
        last.properties[message.property] = message.value;
        if (!coordination) continue;
        entity = { id, properties: last.properties, lastUpdated: message.timestamp, version: message.version };
      }
      if (message.version < entity.version) continue;
      entity.properties[message.property] = message.value;
      entity.lastUpdated = message.timestamp;
      entity.version = message.version;
      place(entity);
      changed = true;
    } else if (message.type === "snapshot") {
      const entity = { id, properties: message.properties, lastUpdated: message.timestamp, version: message.version };
      if (known(id) || LEASE in message.properties || PRESENCE in message.properties || TTL in message.properties) {
        place(entity);
        changed = true;
      }
    } else if (message.type === "resync") {
      reload();
      return;
    }
  }
  if (changed) draw();
}

onBatch(apply);

export async function reload() {
  if (!root || !root.isConnected) return;
  const mine = ++loading;
  let found;
  try {
    found = await Promise.all([LEASE, PRESENCE, TTL].map((has) => api("/api/state/entities" + query({ has }))));
  } catch (error) {
    notice(error.message);
    found = [[], [], []];
  }
  if (mine !== loading) return;
  loading = 0;
  leases = new Map();
  presences = new Map();
  ttls = new Map();
  for (const list of found) for (const entity of list) place(entity);
  draw();
  // What arrived while the lists were read (versions older than the lists' are skipped).
  apply(pending.splice(0));
}

export function render(view) {
  root = h("section", { id: "coordination" }, h("p", {}, "loading…"));
  view.replaceChildren(root);
  if (!ticker) ticker = setInterval(tick, TICK_MS);
  reload();
}
