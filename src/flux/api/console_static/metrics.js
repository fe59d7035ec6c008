// Live metrics from the server's `metrics_update` messages: the cards at the top of every view
// and, on the metrics view, events per second over the last minutes.
import { api } from "./api.js";
import { h } from "./dom.js";
import { onBatch } from "./live.js";

const HISTORY = 150; // samples kept (5 minutes at the default 2 s interval)
const samples = [];
let chart = null;

function set(id, value) {
  const node = document.getElementById(id);
  if (node && node.textContent !== value) node.textContent = value;
}

function draw() {
  if (!chart || !chart.isConnected) return;
  const width = 600;
  const height = 160;
  const top = Math.max(1, ...samples.map((s) => s.rate));
  const step = width / (HISTORY - 1);
  const offset = HISTORY - samples.length;
  const points = samples
    .map((s, i) => `${((offset + i) * step).toFixed(1)},${(height - (s.rate / top) * (height - 10)).toFixed(1)}`)
    .join(" ");
  const svgNs = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(svgNs, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("class", "chart");
  const line = document.createElementNS(svgNs, "polyline");
  line.setAttribute("points", points);
  svg.append(line);
  const label = document.createElementNS(svgNs, "text");
  label.setAttribute("x", "4");
  label.setAttribute("y", "14");
  label.textContent = `max ${top.toFixed(1)}/s`;
  svg.append(label);
  chart.replaceChildren(svg);
}

onBatch((batch) => {
  let last = null;
  for (const message of batch) {
    if (message.type !== "metrics_update") continue;
    last = message;
    samples.push({ at: message.timestamp, rate: message.events?.rate_per_second ?? 0 });
    if (samples.length > HISTORY) samples.shift();
  }
  if (!last) return;
  set("m-rate", (last.events?.rate_per_second ?? 0).toFixed(1));
  set("m-events", String(last.events?.total ?? "–"));
  set("m-entities", String(last.entities?.total ?? "–"));
  set("m-publishers", String(last.publishers?.active ?? "–"));
  set("m-connections", String(last.websocket?.connections ?? "–"));
  draw();
});

// Until the first `metrics_update` arrives: the entity count and the log's sequence from health.
export function prime() {
  api("/api/health")
    .then((health) => {
      if (document.getElementById("m-events").textContent !== "–") return;
      set("m-events", String(health.lastSequence));
      set("m-entities", String(health.entities));
    })
    .catch(() => {});
}

export function render(view) {
  chart = h("div", { id: "rate-chart" });
  view.replaceChildren(
    h("section", { id: "metrics" }, h("h2", {}, "Events per second"), chart, h("p", { class: "hint" }, "Sampled from the server's metrics every few seconds.")),
  );
  draw();
}
