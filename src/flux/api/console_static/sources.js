// Connectors and generic sources with their status; a token allowed to can add or remove a
// generic source and set a connector's token.
import { api } from "./api.js";
import { h, notice } from "./dom.js";

function field(name, label, attrs = {}) {
  return h("label", {}, label, h("input", { name, ...attrs }));
}

function status(item) {
  const parts = [];
  if (item.status) parts.push(typeof item.status === "string" ? item.status : JSON.stringify(item.status));
  if (item.last_poll) parts.push(`last poll ${item.last_poll}`);
  if (item.last_error) parts.push(`last error: ${item.last_error}`);
  return parts.join(" · ");
}

async function load(root) {
  let connectors = [];
  let sources = [];
  try {
    [connectors, sources] = await Promise.all([
      // The listing names each connector; its own page has the last poll and error.
      api("/api/connectors").then((d) =>
        Promise.all(d.connectors.map((c) => api(`/api/connectors/${encodeURIComponent(c.name)}`).catch(() => c))),
      ),
      api("/api/connectors/generic").then((d) => d.sources),
    ]);
  } catch (error) {
    notice(error.message);
  }
  const connectorRows = connectors.map((c) => {
    const input = h("input", { type: "password", autocomplete: "new-password", placeholder: "connector token", "aria-label": `${c.name} token` });
    const save = h("button", {
      type: "button",
      onclick: async () => {
        try {
          await api(`/api/connectors/${encodeURIComponent(c.name)}/token`, { method: "POST", body: { token: input.value } });
          notice(`token stored for ${c.name}`, "ok");
          load(root);
        } catch (error) {
          notice(error.message);
        }
      },
    }, "set token");
    const forget = h("button", {
      type: "button",
      class: "danger",
      onclick: async () => {
        try {
          await api(`/api/connectors/${encodeURIComponent(c.name)}/token`, { method: "DELETE" });
          load(root);
        } catch (error) {
          notice(error.message);
        }
      },
    }, "delete token");
    return h("tr", { dataset: { name: c.name } }, h("td", {}, c.name), h("td", { class: "status" }, status(c)), h("td", {}, input, save, forget));
  });
  const sourceRows = sources.map((s) =>
    h(
      "tr",
      { dataset: { id: s.source_id } },
      h("td", {}, s.name),
      h("td", {}, s.url),
      h("td", {}, s.namespace),
      h("td", { class: "status" }, status(s)),
      h("td", {}, h("button", {
        type: "button",
        class: "danger",
        onclick: async () => {
          try {
            await api(`/api/connectors/generic/${encodeURIComponent(s.source_id)}`, { method: "DELETE" });
            load(root);
          } catch (error) {
            notice(error.message);
          }
        },
      }, "remove")),
    ),
  );
  const form = h(
    "form",
    {
      id: "add-source",
      onsubmit: async (event) => {
        event.preventDefault();
        const data = Object.fromEntries(new FormData(form));
        const body = {
          name: data.name,
          url: data.url,
          namespace: data.namespace,
          entity_key: data.entity_key,
          poll_interval_secs: Number(data.poll_interval_secs),
        };
        if (data.items) body.items = data.items;
        if (data.token) body.token = data.token;
        try {
          await api("/api/connectors/generic", { method: "POST", body });
          notice(`source ${data.name} added`, "ok");
          load(root);
        } catch (error) {
          notice(error.message);
        }
      },
    },
    h("h3", {}, "Add a generic source"),
    field("name", "name", { required: true }),
    field("url", "URL", { required: true, type: "url" }),
    field("namespace", "namespace", { required: true }),
    field("entity_key", "entity key", { required: true, placeholder: "an id, or $.path" }),
    field("items", "items", { placeholder: "$.path to a list (optional)" }),
    field("poll_interval_secs", "poll every (s)", { required: true, type: "number", min: "1", value: "60" }),
    field("token", "upstream token", { type: "password", autocomplete: "new-password" }),
    h("button", { type: "submit" }, "add source"),
  );
  root.replaceChildren(
    h("h2", {}, "Connectors"),
    h("table", { class: "list", id: "connectors" }, h("tbody", {}, connectorRows)),
    h("h2", {}, "Generic sources"),
    sourceRows.length
      ? h("table", { class: "list", id: "sources" }, h("thead", {}, h("tr", {}, ["name", "URL", "namespace", "status", ""].map((t) => h("th", {}, t)))), h("tbody", {}, sourceRows))
      : h("p", { id: "sources", class: "empty" }, "no generic sources"),
    form,
  );
}

export function render(view) {
  const root = h("section", { id: "sources-view" }, h("p", {}, "loading…"));
  view.replaceChildren(root);
  load(root);
}
