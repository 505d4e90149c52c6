// The raysegment console: reads the API with the token typed into the page (sessionStorage only)
// and builds every element with textContent, so a registry string is never parsed as HTML.
const BASE = location.pathname.replace(/\/ui\/?$/, "");
const TOKEN_KEY = "raysegment.token";
const view = document.getElementById("view");
const statusLine = document.getElementById("status");
let me = null; // {name, role} of the current token

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function say(text, isError = false) {
  statusLine.textContent = text;
  statusLine.className = isError ? "error" : "";
}

function headers() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { authorization: `Bearer ${token}` } : {};
}

async function api(path, options = {}) {
  const response = await fetch(BASE + path, { ...options, headers: { ...headers(), ...(options.headers || {}) } });
  const type = response.headers.get("content-type") || "";
  const body = type.includes("json") ? await response.json() : await response.blob();
  if (!response.ok) {
    const message = body && body.error ? `${response.status} ${body.error}: ${body.detail || ""}` : `${response.status}`;
    throw Object.assign(new Error(message), { status: response.status, body });
  }
  return body;
}

function when(seconds) {
  return seconds ? new Date(seconds * 1000).toLocaleString() : "";
}

function percent(value) {
  return typeof value === "number" ? `${(100 * value).toFixed(2)}` : "";
}

const ESTIMATE = "estimated_";  // metrics the label-free estimator wrote (engine/estimate.py)

function metricText(metrics) {
  return Object.entries(metrics || {})
    .filter(([k, v]) => typeof v === "number" && !k.startsWith(ESTIMATE))
    .map(([k, v]) => `${k} ${percent(v)}`)
    .join(", ");
}

// The estimated target mIoU with its interval, and a bar per class (a rare class's collapse shows).
function estimateCell(metrics) {
  const m = metrics || {};
  if (typeof m.estimated_miou !== "number") return el("span", { class: "muted" }, "not estimated");
  const classes = Object.entries(m).filter(([k, v]) => k.startsWith(`${ESTIMATE}iou.`) && typeof v === "number");
  return el("span", { class: "estimate" },
    el("b", {}, percent(m.estimated_miou)), ` [${percent(m.estimated_miou_low)}–${percent(m.estimated_miou_high)}]`,
    el("span", { class: "classbars" }, classes.map(([k, v]) =>
      el("span", { class: "classbar", title: `${k.slice(ESTIMATE.length + 4)}: ${percent(v)}` },
        el("span", { style: `height:${Math.max(1, Math.round(100 * v))}%` })))));
}

function driftBar(drift) {
  if (!drift || drift.drifted === null || drift.drifted === undefined || drift.distance === undefined) {
    return el("span", { class: "muted" }, drift && drift.detail ? drift.detail : "no traffic yet");
  }
  const scale = Math.max(drift.threshold * 2, drift.distance, 1e-9);
  const bar = el("span", { class: drift.drifted ? "bar drifted" : "bar", title: `distance ${drift.distance} / threshold ${drift.threshold}` },
    el("span", { style: `width:${Math.min(100, (100 * drift.distance) / scale)}%` }),
    el("i", { style: `left:${(100 * drift.threshold) / scale}%` }));
  return el("span", {}, bar, " ", `${drift.distance.toFixed(3)} / ${drift.threshold.toFixed(3)}`, drift.drifted ? el("span", { class: "tag bad" }, "drifted") : null);
}

function decisionText(record) {
  if (!record) return "";
  if (record.decision) {
    const d = record.decision;
    return `${d.promoted ? "promoted" : "kept as candidate"} v${d.version}: ${d.reason}`;
  }
  if (record.rollback) return `rolled back from v${record.rollback.from}${record.rollback.by ? ` by ${record.rollback.by}` : ""}`;
  if (record.retired) return `retired v${record.retired.version}: ${record.retired.reason}`;
  if (record.loop) return `loop: ${record.loop.step}${record.loop.reason ? ` (${record.loop.reason})` : ""}`;
  if (record.alias) return `v${record.version} became ${record.alias}${record.previous ? ` (was v${record.previous})` : ""}`;
  return JSON.stringify(record);
}

// ------------------------------------------------------------------ overview
async function overview() {
  say("loading domains…");
  const { domains } = await api("/v1/domains");
  const rows = Object.entries(domains).map(([name, d]) =>
    el("tr", { "data-domain": name, class: d.error ? "degraded" : "" },
      el("td", {}, el("a", { href: `#/domain/${encodeURIComponent(name)}` }, name)),
      d.error
        ? el("td", { colspan: 5 }, el("span", { class: "tag bad" }, "degraded"), " ", d.error, ": ", d.detail || "")
        : [
            el("td", { class: "production" }, d.production ? `v${d.production}` : el("span", { class: "muted" }, "none (newest answers)")),
            el("td", { class: "candidate" }, d.candidate ? `v${d.candidate}` : ""),
            el("td", {}, driftBar(d.drift)),
            el("td", {}, d.captured === undefined ? el("span", { class: "muted" }, "off") : String(d.captured)),
            el("td", { class: "decision" }, d.last_decision ? [decisionText(d.last_decision), " ", el("span", { class: "muted" }, when(d.last_decision.time))] : ""),
          ]));
  view.replaceChildren(
    el("section", { id: "overview" },
      el("h2", {}, `${rows.length} domains`),
      el("table", {},
        el("thead", {}, el("tr", {}, ["Domain", "Production", "Candidate", "Drift (distance / threshold)", "Captured", "Last decision"].map((h) => el("th", {}, h)))),
        el("tbody", {}, rows))));
  say(`${rows.length} domains`);
}

// ------------------------------------------------------------------ one domain
async function domainPage(name) {
  say(`loading ${name}…`);
  const d = await api(`/v1/domains/${encodeURIComponent(name)}`);
  const aliasesOf = (v) => Object.entries(d.aliases || {}).filter(([, n]) => n === v).map(([a]) => el("span", { class: `tag ${a}` }, a));
  const versions = el("table", { id: "versions" },
    el("thead", {}, el("tr", {}, ["Version", "Aliases", "Method", "Target labels", "Judge", "Parent", "Estimated target mIoU (no labels)", "Metrics", "Size"].map((h) => el("th", {}, h)))),
    el("tbody", {}, (d.versions || []).slice().reverse().map((v) =>
      el("tr", { "data-version": v.version },
        el("td", {}, `v${v.version}`), el("td", {}, aliasesOf(v.version)), el("td", {}, v.method || "source"),
        el("td", {}, v.target_labels ?? ""), el("td", {}, v.judge || ""), el("td", {}, v.parent || ""),
        el("td", { class: "estimate-cell" }, estimateCell(v.metrics)),
        el("td", {}, metricText(v.metrics)), el("td", {}, v.bytes ? `${(v.bytes / 1024).toFixed(0)} KiB` : "")))));
  const shadow = d.shadow
    ? el("p", { id: "shadow" }, `shadow: candidate v${d.shadow.candidate} vs production v${d.shadow.production} on ${d.shadow.pairs} mirrored requests`,
        d.shadow.pairs ? ` (proxy ${percent(d.shadow.candidate_mean)} vs ${percent(d.shadow.production_mean)})` : "")
    : el("p", { id: "shadow", class: "muted" }, "no candidate in shadow evaluation");
  const timeline = el("ol", { class: "timeline", id: "timeline" });
  const more = el("button", { type: "button", id: "history-more" }, "older");
  let offset = 0;
  async function page() {
    const h = await api(`/v1/domains/${encodeURIComponent(name)}/history?offset=${offset}&limit=20`);
    for (const record of h.records) {
      const scores = record.decision && record.decision.candidate_score !== null && record.decision.candidate_score !== undefined
        ? ` [${record.decision.judge} on ${record.decision.evidence || "held-back images"}: ${percent(record.decision.candidate_score)} vs ${percent(record.decision.incumbent_score)}]` : "";
      timeline.append(el("li", {}, el("span", { class: "when" }, when(record.time)), decisionText(record) + scores));
    }
    offset += h.records.length;
    more.hidden = offset >= h.total;
  }
  more.addEventListener("click", () => page().catch((e) => say(e.message, true)));
  view.replaceChildren(
    el("section", {}, el("h2", { id: "domain-name" }, name), driftBar(d.drift),
      d.captured !== undefined ? el("p", {}, `${d.captured} captured images`) : null, shadow),
    me && me.role === "admin" ? actPanel(name, d) : null,
    el("section", {}, el("h2", {}, "Versions and lineage"), versions),
    el("section", {}, el("h2", {}, "Audit trail"), timeline, more));
  await page();
  say(name);
}

function actPanel(name, d) {
  const verdict = el("div", { class: "verdict", id: "verdict", hidden: true });
  const show = (text) => { verdict.hidden = false; verdict.textContent = text; };
  const choice = el("select", { id: "promote-version" },
    (d.versions || []).slice().reverse().map((v) => el("option", { value: v.version, selected: v.version === d.candidate }, `v${v.version}`)));
  const reason = el("input", { id: "force-reason", placeholder: "reason (needed to force)" });
  async function act(path, label) {
    try {
      say(`${label}…`);
      const result = await api(path, { method: "POST" });
      return result;
    } catch (e) { show(e.message); say(e.message, true); return null; }
  }
  const promote = async (force) => {
    const q = new URLSearchParams({ version: choice.value });
    if (force) { q.set("force", "true"); q.set("reason", reason.value); }
    const r = await act(`/v1/domains/${encodeURIComponent(name)}/promote?${q}`, "judging");
    if (r) { show(`${r.promoted ? "PROMOTED" : "NOT PROMOTED"} v${r.version} (${r.forced_by ? "forced" : r.judge || "not judged"}): ${r.reason}`); say("decided"); }
  };
  const rollback = async () => {
    const r = await act(`/v1/domains/${encodeURIComponent(name)}/rollback`, "rolling back");
    if (r) { show(`production is v${r.production} again (was v${r.previous}), by ${r.by}`); say("rolled back"); }
  };
  const loop = async () => {
    const r = await act(`/v1/domains/${encodeURIComponent(name)}/loop`, "starting a loop turn");
    if (!r) return;
    show(`loop turn ${r.id}: ${r.state}`);
    const poll = async () => {
      try {
        const s = await api(`/v1/domains/${encodeURIComponent(name)}/loop/${r.id}`);
        show(`loop turn ${s.id}: ${s.state}\n${s.log_tail.slice(-6).join("\n")}`);
        if (s.state === "running") setTimeout(poll, 2000);
      } catch (e) { show(e.message); }
    };
    setTimeout(poll, 1000);
  };
  return el("section", { id: "act" }, el("h2", {}, "Act"),
    el("div", { class: "act" },
      el("label", { for: "promote-version" }, "version"), choice,
      el("button", { type: "button", id: "promote", onclick: () => promote(false) }, "Promote (judged)"),
      reason, el("button", { type: "button", id: "force", onclick: () => promote(true) }, "Force"),
      el("button", { type: "button", id: "rollback", onclick: rollback }, "Roll back"),
      el("button", { type: "button", id: "loop", onclick: loop }, "Start a loop turn")),
    verdict);
}

// ------------------------------------------------------------------ try an image
async function tryPage() {
  let names = [];
  try { names = Object.keys((await api("/v1/domains")).domains); } catch (e) { say(e.message, true); }
  const domain = el("select", { id: "try-domain" }, el("option", { value: "" }, "(route by the image)"), names.map((n) => el("option", { value: n }, n)));
  const file = el("input", { type: "file", id: "try-file", accept: "image/png,image/jpeg" });
  const drop = el("div", { class: "drop", id: "try-drop" }, "drop a PNG or JPEG here, or ", file);
  const out = el("div", { id: "try-result" });
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); if (e.dataTransfer.files[0]) run(e.dataTransfer.files[0]); });
  file.addEventListener("change", () => { if (file.files[0]) run(file.files[0]); });
  async function segmentAs(path, blob) {
    const send = (format) => api(`${path}${path.includes("?") ? "&" : "?"}format=${format}`, { method: "POST", body: blob, headers: { "content-type": blob.type || "application/octet-stream" } });
    const [shares, overlay] = [await send("json"), await send("overlay")];
    return { shares, overlay };
  }
  function figure(id, title, result) {
    const img = el("img", { id, alt: title, src: URL.createObjectURL(result.overlay) });
    const table = el("table", { class: "shares" }, Object.entries(result.shares.shares).map(([c, s]) => el("tr", {}, el("td", {}, c), el("td", {}, `${(100 * s).toFixed(1)}%`))));
    return el("figure", {}, el("figcaption", {}, `${title}: ${result.shares.domain} v${result.shares.version}`), img, table);
  }
  async function run(blob) {
    out.replaceChildren();
    say("segmenting…");
    try {
      const chosen = domain.value;
      if (!chosen) {
        const routed = await segmentAs("/v1/segment", blob);
        const r = routed.shares.route;
        out.append(el("p", { id: "route" }, `routed to ${r.domain} (distance ${r.distance.toFixed(3)})${r.unknown ? ": unknown, served by the default" : ""}`),
          el("div", { class: "pair" }, figure("overlay-production", "production", routed)));
      } else {
        const base = `/v1/domains/${encodeURIComponent(chosen)}/segment`;
        const production = await segmentAs(base, blob);
        const figures = [figure("overlay-production", "production", production)];
        const detail = await api(`/v1/domains/${encodeURIComponent(chosen)}`);
        if (detail.candidate && detail.candidate !== detail.production) {
          figures.push(figure("overlay-candidate", "candidate", await segmentAs(`${base}?version=candidate`, blob)));
        }
        out.append(el("div", { class: "pair" }, figures));
      }
      say("done");
    } catch (e) { say(e.message, true); out.append(el("p", { class: "error" }, e.message)); }
  }
  view.replaceChildren(el("section", { id: "try" }, el("h2", {}, "Try an image"), el("label", { for: "try-domain" }, "domain "), domain, drop, out));
  say("choose a domain or let routing pick one");
}

// ------------------------------------------------------------------ token and routing
async function identify() {
  const who = document.getElementById("whoami");
  try { me = await api("/v1/whoami"); who.textContent = `${me.name} (${me.role})`; }
  catch (e) { me = null; who.textContent = e.status === 401 ? "no valid token" : e.message; }
}

async function render() {
  const hash = location.hash || "#/";
  try {
    if (hash.startsWith("#/domain/")) await domainPage(decodeURIComponent(hash.slice("#/domain/".length)));
    else if (hash === "#/try") await tryPage();
    else await overview();
  } catch (e) {
    say(e.message, true);
    view.replaceChildren(el("p", { class: "error" }, e.status === 401 ? "Type a token above to see the domains." : e.message));
  }
}

document.getElementById("token-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const input = document.getElementById("token");
  sessionStorage.setItem(TOKEN_KEY, input.value.trim());
  input.value = "";
  await identify();
  await render();
});
document.getElementById("token-clear").addEventListener("click", async () => {
  sessionStorage.removeItem(TOKEN_KEY);
  await identify();
  await render();
});
window.addEventListener("hashchange", render);
identify().then(render);
