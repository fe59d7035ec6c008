// An entity's page: its properties, version, last update, the source that last wrote it, and
// its history (`GET /api/events?entity=…`), kept current by the live connection.
import { api, entityPath, query } from "./api.js";
import { ago, flash, h, notice, show } from "./dom.js";
import { onBatch } from "./live.js";

let current = null; // {id, root, props: Map(name -> cell), timer}

function time(ms) {
  return typeof ms === "number" ? new Date(ms).toISOString() : String(ms ?? "");
}

// The entity's coordination markers (docs/coordination.md) in words: who holds its lease
// until when, which connection keeps it present, its time to live.
function coordinationFacts(properties) {
  const facts = [];
  const lease = properties.__lease__;
  if (lease) {
    const kind = lease.presence ? "presence lease" : "lease";
    facts.push(h("dt", {}, kind), h("dd", { class: "lease" }, `held by ${lease.owner}, token ${lease.token}, until ${time(lease.expires_at)}`));
  }
  const presence = properties.__presence__;
  if (presence) {
    facts.push(h("dt", {}, "present"), h("dd", { class: "presence" }, `connection ${presence.connection}${presence.node ? " on " + presence.node : ""} since ${time(presence.since)}`));
  }
  if (properties.__ttl_ms__) {
    facts.push(h("dt", {}, "time to live"), h("dd", { class: "ttl" }, `${properties.__ttl_ms__} ms after its last change`));
  }
  return facts;
}

async function load() {
  const page = current;
  let entity = null;
  let history = [];
  try {
    [entity, history] = await Promise.all([
      api(entityPath(page.id)).catch((error) => {
        if (error.status === 404) return null;
        throw error;
      }),
      api("/api/events" + query({ entity: page.id, limit: 100 })),
    ]);
  } catch (error) {
    notice(error.message);
    return;
  }
  if (current !== page) return;
  const newest = [...history].sort((a, b) => (b.timestamp ?? 0) - (a.timestamp ?? 0));
  page.props = new Map();
  const facts = entity
    ? [
        h("dt", {}, "version"), h("dd", { class: "version" }, String(entity.version)),
        h("dt", {}, "last update"), h("dd", { class: "updated" }, `${entity.lastUpdated} (${ago(entity.lastUpdated)})`),
        h("dt", {}, "source"), h("dd", { class: "source" }, newest.length ? newest[0].source : "(not in the last day's history)"),
        ...coordinationFacts(entity.properties),
      ]
    : [h("dt", {}, "state"), h("dd", { class: "deleted" }, "deleted (or never written)")];
  const props = entity
    ? Object.entries(entity.properties).map(([name, value]) => {
        const cell = h("td", { class: "value" }, show(value));
        page.props.set(name, cell);
        return h("tr", { dataset: { name } }, h("th", {}, name), cell);
      })
    : [];
  const historyRows = newest.map((event) =>
    h(
      "tr",
      {},
      h("td", {}, time(event.timestamp)),
      h("td", {}, event.source ?? ""),
      h("td", { class: "json" }, JSON.stringify(event.payload?.properties ?? event.payload ?? {})),
    ),
  );
  page.root.replaceChildren(
    h("p", {}, h("a", { href: "#/" }, "← entities")),
    h("h2", { class: "entity-id" }, page.id),
    h("dl", { class: "facts" }, facts),
    h("h3", {}, "Properties"),
    h("table", { class: "props" }, h("tbody", {}, props)),
    h("h3", {}, `History (last ${newest.length}, newest first)`),
    h(
      "table",
      { class: "history" },
      h("thead", {}, h("tr", {}, h("th", {}, "time"), h("th", {}, "source"), h("th", {}, "properties"))),
      h("tbody", {}, historyRows),
    ),
  );
}

onBatch((batch) => {
  const page = current;
  if (!page || !page.root.isConnected) return;
  let touched = false;
  for (const message of batch) {
    if (message.entity_id !== page.id) continue;
    touched = true;
    const cell = message.type === "state_update" ? page.props?.get(message.property) : null;
    if (cell) {
      cell.textContent = show(message.value);
      flash(cell);
    }
  }
  // Reload (at most every half second) for the new version, source and history.
  if (touched && !page.timer) page.timer = setTimeout(() => ((page.timer = 0), load()), 500);
});

export function render(view, id) {
  const root = h("section", { id: "entity" }, h("p", {}, "loading…"));
  view.replaceChildren(root);
  current = { id, root, props: new Map(), timer: 0 };
  load();
}
