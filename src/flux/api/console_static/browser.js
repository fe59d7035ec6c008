// The entity browser: the id tree a level at a time (`GET /api/state/groups`: grouped and
// paged on the server, so 100,000 entities never reach the page at once), a filter box, and
// live updates applied in batches (live.js).
import { api, query } from "./api.js";
import { ago, flash, h, notice, show } from "./dom.js";
import { onBatch } from "./live.js";

const DELIMITERS = "/:"; // the original grouped by the prefix before `/` or `:`
const PAGE = 200;
const AUTO_OPEN = 50; // a group this small opens by itself when its level is small too
const REFETCH_MS = 300; // a level changed by new or deleted entities is reloaded this often

// prefix -> {groups: Map(key -> count), entities: Map(id -> entity), next, total, list (the <ul>)}
let levels = new Map();
const opened = new Set(); // groups the user opened
const closed = new Set(); // groups the user closed
// prefix -> how many items the user asked a level to show ("more"): a level drawn again (its
// parent reloaded, the page back after a disconnect) keeps its pages, and a "more" still on its
// way when that happens is not lost.
const pages = new Map();
const rows = new Map(); // entity id -> {row, props (Map name -> cell), entity}
let filter = "";
let dirty = new Set();
let refetchTimer = 0;
let root = null;

function entityRow(entity) {
  const props = new Map();
  const cells = Object.entries(entity.properties).map(([name, value]) => {
    const cell = h("span", { class: "value" }, show(value));
    props.set(name, cell);
    return h("span", { class: "prop", dataset: { name } }, h("span", { class: "name" }, name), cell);
  });
  const version = h("span", { class: "version" }, `v${entity.version}`);
  const when = h("time", { datetime: entity.lastUpdated, title: entity.lastUpdated }, ago(entity.lastUpdated));
  const propsNode = h("span", { class: "props" }, cells);
  const row = h(
    "li",
    { class: "entity", dataset: { id: entity.id } },
    h("a", { href: "#/entity/" + encodeURIComponent(entity.id), class: "id" }, entity.id),
    version,
    when,
    propsNode,
  );
  rows.set(entity.id, { row, props, propsNode, version, when, entity });
  return row;
}

function groupNode(key, count) {
  const open = isOpen(key, count);
  const toggle = h(
    "button",
    { class: "toggle", "aria-expanded": String(open), onclick: () => toggleGroup(key) },
    open ? "▾" : "▸",
  );
  const label = h("span", { class: "group-name" }, key);
  const counter = h("span", { class: "count" }, String(count));
  const children = h("ul", { class: "level" });
  const node = h("li", { class: "group", dataset: { prefix: key } }, toggle, label, counter, children);
  return node;
}

function isOpen(key, count) {
  if (closed.has(key)) return false;
  if (opened.has(key)) return true;
  const parent = parentOf(key);
  const level = levels.get(parent);
  return count <= AUTO_OPEN && level !== undefined && level.total <= PAGE;
}

// The level a key belongs to: its prefix up to the delimiter before its last segment.
function parentOf(key) {
  const body = key.slice(0, -1);
  let cut = -1;
  for (const char of DELIMITERS) cut = Math.max(cut, body.lastIndexOf(char));
  return cut === -1 ? "" : body.slice(0, cut + 1);
}

async function loadLevel(prefix, list, keep = PAGE) {
  const level = { groups: new Map(), entities: new Map(), next: null, total: 0, list };
  let after = "";
  // Reload as many items as were shown (at least a page), a page at a time.
  do {
    const page = await api(
      "/api/state/groups" + query({ prefix, delimiter: DELIMITERS, q: filter, limit: PAGE, after }),
    );
    for (const group of page.groups) level.groups.set(group.prefix, group.count);
    for (const entity of page.entities) level.entities.set(entity.id, entity);
    level.total = page.total;
    level.next = page.next;
    after = page.next;
  } while (after && level.groups.size + level.entities.size < keep);
  return level;
}

function forget(prefix) {
  for (const key of [...levels.keys()]) {
    if (key.startsWith(prefix)) levels.delete(key);
  }
  for (const id of [...rows.keys()]) {
    if (id.startsWith(prefix)) rows.delete(id);
  }
}

// The newest render asked of each level's list, and how many items it keeps: a render whose
// answer arrives after a newer one was asked (a group closed, "more" clicked, a refetch) is
// dropped, so the last thing asked is what the list shows, not the last answer to arrive.
const renders = new WeakMap();

async function renderLevel(prefix, list, keep = PAGE) {
  const ticket = { keep };
  renders.set(list, ticket);
  let level;
  try {
    level = await loadLevel(prefix, list, keep);
  } catch (error) {
    if (renders.get(list) === ticket) notice(error.message);
    return;
  }
  if (renders.get(list) !== ticket || !list.isConnected) return;
  forget(prefix);
  levels.set(prefix, level);
  const items = [];
  const sorted = [
    ...[...level.groups].map(([key, count]) => ({ key, count })),
    ...[...level.entities.values()].map((entity) => ({ key: entity.id, entity })),
  ].sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  const toOpen = [];
  for (const item of sorted) {
    if (item.entity) items.push(entityRow(item.entity));
    else {
      const node = groupNode(item.key, item.count);
      items.push(node);
      if (isOpen(item.key, item.count)) toOpen.push([item.key, node.querySelector("ul"), pages.get(item.key) ?? PAGE]);
    }
  }
  if (level.next) {
    const next = () => {
      const keep = level.groups.size + level.entities.size + PAGE;
      pages.set(prefix, keep);
      renderLevel(prefix, list, keep);
    };
    const more = h("li", { class: "more" }, h("button", { onclick: next }, `more (${level.total} in all)`));
    items.push(more);
  }
  if (!sorted.length) items.push(h("li", { class: "empty" }, filter ? "nothing matches" : "no entities"));
  list.replaceChildren(...items);
  await Promise.all(toOpen.map(([key, child, keep]) => renderLevel(key, child, keep)));
}

function toggleGroup(key) {
  const node = root.querySelector(`li.group[data-prefix="${CSS.escape(key)}"]`);
  if (!node) return;
  const button = node.querySelector(":scope > .toggle");
  const child = node.querySelector(":scope > ul");
  if (button.getAttribute("aria-expanded") === "true") {
    closed.add(key);
    opened.delete(key);
    button.setAttribute("aria-expanded", "false");
    button.textContent = "▸";
    forget(key);
    for (const prefix of [...pages.keys()]) {
      if (prefix.startsWith(key)) pages.delete(prefix); // reopened, it shows its first page
    }
    renders.delete(child); // a render still on its way is not shown
    child.replaceChildren();
  } else {
    opened.add(key);
    closed.delete(key);
    button.setAttribute("aria-expanded", "true");
    button.textContent = "▾";
    renderLevel(key, child);
  }
}

// The loaded level an id falls in directly, or (for an id inside a group) null when that
// group is known: its count is all the page shows of it.
function levelFor(id) {
  let prefix = "";
  for (;;) {
    const level = levels.get(prefix);
    if (!level) return null;
    let cut = -1;
    for (const char of DELIMITERS) {
      const at = id.indexOf(char, prefix.length);
      if (at !== -1 && (cut === -1 || at < cut)) cut = at;
    }
    if (cut === -1) return prefix; // the id ends at this level
    const key = id.slice(0, cut + 1);
    if (!level.groups.has(key)) return prefix; // a group this level does not show yet
    if (!levels.has(key)) return null; // inside a closed group: nothing to show
    prefix = key;
  }
}

function markDirty(id) {
  if (filter && !id.toLowerCase().includes(filter.toLowerCase())) return;
  const prefix = levelFor(id);
  if (prefix === null) return;
  const level = levels.get(prefix);
  if (level.next && id > level.next) return; // beyond the pages shown
  dirty.add(prefix);
  if (!refetchTimer) refetchTimer = setTimeout(refetch, REFETCH_MS);
}

function refetch() {
  refetchTimer = 0;
  const prefixes = [...dirty];
  dirty = new Set();
  for (const prefix of prefixes) {
    const level = levels.get(prefix);
    if (!level) continue;
    const asked = renders.get(level.list)?.keep ?? 0; // "more" may be on its way
    renderLevel(prefix, level.list, Math.max(asked, level.groups.size + level.entities.size));
  }
}

function applyUpdate(message) {
  const known = rows.get(message.entity_id);
  if (!known) {
    markDirty(message.entity_id);
    return;
  }
  if (message.version < known.entity.version) return;
  known.entity.version = message.version;
  known.entity.lastUpdated = message.timestamp;
  known.version.textContent = `v${message.version}`;
  known.when.textContent = ago(message.timestamp);
  known.when.setAttribute("datetime", message.timestamp);
  let cell = known.props.get(message.property);
  if (!cell) {
    cell = h("span", { class: "value" });
    known.props.set(message.property, cell);
    known.propsNode.append(
      h("span", { class: "prop", dataset: { name: message.property } }, h("span", { class: "name" }, message.property), cell),
    );
  }
  cell.textContent = show(message.value);
  flash(cell);
}

// A deleted entity: its row goes, and every shown group that held it counts one fewer (a
// group emptied goes too). Live, Flux sends a deletion only for an entity that existed, so
// this holds for entities inside closed groups as well.
function applyDelete(message) {
  const id = message.entity_id;
  if (filter && !id.toLowerCase().includes(filter.toLowerCase())) return;
  const known = rows.get(id);
  if (known) {
    known.row.remove();
    rows.delete(id);
  }
  for (const level of levels.values()) {
    level.entities.delete(id);
    for (const [group, count] of level.groups) {
      if (!id.startsWith(group)) continue;
      const node = root.querySelector(`li.group[data-prefix="${CSS.escape(group)}"]`);
      if (count <= 1) {
        level.groups.delete(group);
        node?.remove();
      } else {
        level.groups.set(group, count - 1);
        const counter = node?.querySelector(":scope > .count");
        if (counter) counter.textContent = String(count - 1);
      }
    }
  }
}

function applySnapshot(message) {
  const known = rows.get(message.entity_id);
  if (!known) {
    markDirty(message.entity_id);
    return;
  }
  for (const [property, value] of Object.entries(message.properties)) {
    applyUpdate({ entity_id: message.entity_id, property, value, version: message.version, timestamp: message.timestamp });
  }
}

function apply(batch) {
  if (!root || !root.isConnected) return;
  for (const message of batch) {
    if (message.type === "state_update") applyUpdate(message);
    else if (message.type === "entity_deleted") applyDelete(message);
    else if (message.type === "snapshot") applySnapshot(message);
    else if (message.type === "resync") reload();
  }
}

onBatch(apply);

// "5s ago" goes stale: refresh the shown times now and then.
setInterval(() => {
  for (const known of rows.values()) known.when.textContent = ago(known.entity.lastUpdated);
}, 15000);

export function reload() {
  if (!root || !root.isConnected) return;
  const list = root.querySelector("ul.level");
  levels = new Map();
  rows.clear();
  renderLevel("", list, pages.get("") ?? PAGE);
}

let filterTimer = 0;
export function render(view) {
  const box = h("input", {
    type: "search",
    id: "filter",
    placeholder: "filter by id",
    value: filter,
    "aria-label": "filter entities by id",
    oninput: () => {
      clearTimeout(filterTimer);
      filterTimer = setTimeout(() => {
        filter = box.value.trim();
        pages.clear(); // another listing: each level starts at its first page
        reload();
      }, 150);
    },
  });
  root = h("section", { id: "browser" }, h("div", { class: "toolbar" }, h("h2", {}, "Entities"), box), h("ul", { class: "level root" }));
  view.replaceChildren(root);
  reload();
}
