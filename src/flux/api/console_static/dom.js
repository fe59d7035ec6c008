// A few DOM helpers: every text goes in as text (never as HTML), so entity data cannot become
// markup or script in the page.
export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

export function show(value) {
  return typeof value === "string" ? value : JSON.stringify(value);
}

export function ago(iso) {
  if (!iso) return "";
  const seconds = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (seconds < 60) return `${Math.floor(seconds)}s ago`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m ago`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)}h ago`;
  return `${Math.floor(seconds / 86400)}d ago`;
}

// Highlight a changed value: (re)start its CSS animation. Switching between two identical
// animations restarts it without forcing a layout (removing and re-adding one class would need
// a reflow in between, once per changed value).
export function flash(node) {
  if (node.classList.contains("flash")) node.classList.toggle("again");
  else node.classList.add("flash");
}

let noticeTimer = 0;
export function notice(text, kind = "error") {
  const node = document.getElementById("notice");
  node.textContent = text;
  node.className = kind;
  node.hidden = false;
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(() => (node.hidden = true), 6000);
}
