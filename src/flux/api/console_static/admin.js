// Namespaces and the runtime config, for the admin token: create a namespace, look one up,
// make it private or public, rotate its token, delete it; read and change the config.
import { api } from "./api.js";
import { h, notice } from "./dom.js";

function namespaceForms(root) {
  const out = h("pre", { id: "namespace-out" });
  const say = (data) => (out.textContent = JSON.stringify(data, null, 2));
  const name = h("input", { name: "ns", placeholder: "namespace", "aria-label": "namespace", required: true });
  const isPrivate = h("input", { type: "checkbox", name: "private" });
  const run = (method, suffix = "", body) => async () => {
    try {
      const answer = await api(`/api/namespaces${suffix(name.value)}`, { method, body: body?.() });
      // A deletion answers 204, with no body.
      say(answer ?? { namespace: name.value, deleted: true });
    } catch (error) {
      notice(error.message);
    }
  };
  const path = (value) => "/" + encodeURIComponent(value);
  return h(
    "section",
    { id: "namespaces" },
    h("h2", {}, "Namespaces"),
    h(
      "div",
      { class: "row" },
      name,
      h("label", {}, isPrivate, " private"),
      h("button", { type: "button", id: "ns-create", onclick: run("POST", () => "", () => ({ name: name.value, private: isPrivate.checked })) }, "create"),
      h("button", { type: "button", id: "ns-show", onclick: run("GET", path) }, "show"),
      h("button", { type: "button", id: "ns-private", onclick: run("PUT", path, () => ({ private: isPrivate.checked })) }, "set private"),
      h("button", { type: "button", id: "ns-rotate", onclick: run("POST", (v) => path(v) + "/token") }, "rotate token"),
      h("button", { type: "button", id: "ns-delete", class: "danger", onclick: run("DELETE", path) }, "delete"),
    ),
    out,
  );
}

async function configForm(root) {
  const text = h("textarea", { id: "config", rows: "10", "aria-label": "runtime config", spellcheck: "false" });
  try {
    text.value = JSON.stringify(await api("/api/admin/config"), null, 2);
  } catch (error) {
    notice(error.message);
  }
  const save = h("button", {
    type: "button",
    id: "config-save",
    onclick: async () => {
      try {
        text.value = JSON.stringify(await api("/api/admin/config", { method: "PUT", body: JSON.parse(text.value) }), null, 2);
        notice("config saved", "ok");
      } catch (error) {
        notice(error.message);
      }
    },
  }, "save config");
  return h("section", { id: "admin-config" }, h("h2", {}, "Runtime config"), text, save);
}

export async function render(view) {
  const root = h("section", { id: "admin" });
  view.replaceChildren(root);
  root.replaceChildren(namespaceForms(root), await configForm(root));
}
