// The console's entry point: the token form, the live connection's status, and the views
// (the entity browser, an entity's page, coordination, metrics, sources, admin) chosen by the URL's hash.
import { setToken, token } from "./api.js";
import * as admin from "./admin.js";
import * as browser from "./browser.js";
import * as coordination from "./coordination.js";
import * as entity from "./entity.js";
import { connect, onStatus } from "./live.js";
import * as metrics from "./metrics.js";
import * as sources from "./sources.js";
import { notice } from "./dom.js";

const view = document.getElementById("view");
const link = document.getElementById("link");

function route() {
  const hash = location.hash.slice(1) || "/";
  let name = "entities";
  if (hash.startsWith("/entity/")) {
    name = "entity";
    entity.render(view, decodeURIComponent(hash.slice("/entity/".length)));
  } else if (hash === "/metrics") {
    name = "metrics";
    metrics.render(view);
  } else if (hash === "/coordination") {
    name = "coordination";
    coordination.render(view);
  } else if (hash === "/sources") {
    name = "sources";
    sources.render(view);
  } else if (hash === "/admin") {
    name = "admin";
    admin.render(view);
  } else {
    browser.render(view);
  }
  document.body.dataset.view = name;
  for (const a of document.querySelectorAll("nav a")) {
    a.classList.toggle("current", a.dataset.view === name);
  }
}

let wasDown = false;
onStatus((state, detail) => {
  if (state === "error") {
    notice(detail);
    return;
  }
  // Back after a disconnect: the replay brought every change, but a replayed deletion may
  // name an entity that no longer existed then, so the shown levels are read again.
  if (state === "live" && wasDown) {
    browser.reload();
    coordination.reload();
  }
  wasDown = state === "down";
  link.className = "link " + state;
  link.textContent = state === "live" ? "live" : "offline";
});

const form = document.getElementById("token-form");
const input = document.getElementById("token");
input.value = token();
form.addEventListener("submit", (event) => {
  event.preventDefault();
  setToken(input.value.trim());
  connect(true);
  route();
});
document.getElementById("token-clear").addEventListener("click", () => {
  input.value = "";
  setToken("");
  connect(true);
  route();
});

window.addEventListener("hashchange", route);
connect(true);
metrics.prime();
route();
