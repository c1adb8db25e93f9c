// The review page: query by upload or archive example, show candidates, record decisions.
// Plain DOM, no framework, no network beyond this server; text goes in via textContent only.
"use strict";

const $ = (sel) => document.querySelector(sel);
let info = null;
let current = null; // the last query answer
let queryUrl = null; // object URL of an uploaded photo (shown locally, never sent back)

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) if (c) e.append(c);
  return e;
}

const fmt = (x) => (x === null || x === undefined ? "n/a" : Number(x).toFixed(3));
const ms = (x) => (x === null || x === undefined ? "n/a" : Number(x).toFixed(1));
const mb = (n) => (n / (1024 * 1024)).toFixed(n >= 1024 * 1024 ? 0 : 2) + " MB";

async function api(path, options = {}) {
  const r = await fetch(path, options);
  let body = null;
  try { body = await r.json(); } catch (e) { body = null; }
  if (!r.ok) throw new Error((body && (body.error || body.detail)) || `${r.status} ${r.statusText}`);
  return body;
}

function showError(message) {
  const e = $("#error");
  e.textContent = message;
  e.hidden = !message;
}

async function loadInfo() {
  info = await api("/api/info");
  const thr = info.threshold === null ? "none (no calibration)" : fmt(info.threshold);
  $("#queue-link").hidden = !info.matches;
  $("#index-info").textContent =
    `${info.images} photos of ${info.individuals} known individuals · index ${info.version} · ` +
    `model ${info.backbone} (${info.model_id}) · new-individual threshold ${thr} (${info.threshold_source})`;
  $("#limits").textContent =
    `up to ${mb(info.max_upload_bytes)} and ${(info.max_pixels / 1e6).toFixed(0)} megapixels; JPEG, PNG, WebP, TIFF, BMP, GIF`;
  const box = $("#examples");
  box.replaceChildren();
  for (const ex of info.examples) {
    const b = el("button", { type: "button", class: "example", "data-image-id": ex.image_id,
                             title: `archive photo ${ex.image_id} (${ex.individual_id})` },
      el("img", { src: ex.thumb, alt: `archive photo of ${ex.individual_id}` }),
      el("small", { text: ex.individual_id }));
    b.addEventListener("click", () => queryExample(ex));
    box.append(b);
  }
  if (!info.examples.length) box.append(el("p", { class: "muted", text: "no examples" }));
}

function setQueryImage(src, meta) {
  $("#query").hidden = false;
  $("#query-img").src = src;
  $("#query-meta").textContent = meta;
}

async function queryUpload(file) {
  showError("");
  if (queryUrl) URL.revokeObjectURL(queryUrl);
  queryUrl = URL.createObjectURL(file);
  setQueryImage(queryUrl, `${file.name} · ${(file.size / 1024).toFixed(0)} kB`);
  if (info && file.size > info.max_upload_bytes) {
    render(null);
    showError(`upload too large: ${file.size.toLocaleString()} bytes, the limit is ${info.max_upload_bytes.toLocaleString()}`);
    return;
  }
  await runQuery("/api/query", { method: "POST", body: file,
                                 headers: { "Content-Type": file.type || "application/octet-stream" } });
}

async function queryExample(ex) {
  showError("");
  setQueryImage(ex.thumb, `archive photo ${ex.image_id} · labelled ${ex.individual_id} ` +
                          "(the photo itself and its burst are left out of the search)");
  await runQuery(`/api/example/${encodeURIComponent(ex.image_id)}`, { method: "POST" });
}

async function runQuery(path, options) {
  document.body.classList.add("busy");
  $("#verdict").hidden = true;
  $("#candidates").replaceChildren();
  try {
    render(await api(path, options));
  } catch (e) {
    render(null);
    showError(e.message);
  } finally {
    document.body.classList.remove("busy");
  }
}

function render(answer) {
  current = answer;
  const v = $("#verdict");
  const list = $("#candidates");
  list.replaceChildren();
  $("#review").hidden = !answer;
  $("#status").textContent = "";
  if (!answer) { v.hidden = true; return; }
  const thr = answer.threshold;
  const best = answer.candidates[0];
  v.hidden = false;
  v.className = answer.is_new ? "new" : "known";
  v.dataset.verdict = answer.is_new ? "new" : "known";
  if (answer.is_new) {
    v.replaceChildren(el("strong", { text: "Likely a new individual" }),
      el("small", { text: best ? `best candidate ${best.individual_id} scores ${fmt(best.score)}, under the threshold ${fmt(thr)}`
                               : "no labelled individual in the index" }));
  } else {
    v.replaceChildren(el("strong", { text: `Best match: ${best.individual_id}` }),
      el("small", { text: `score ${fmt(best.score)} ≥ threshold ${thr === null ? "n/a" : fmt(thr)}` }));
  }
  const t = answer.timing_ms || {};
  v.append(el("small", { text: `answered in ${ms(t.total)} ms (embed ${ms(t.embed)}, search ${ms(t.search)})` +
                                (answer.archive_label ? ` · archive label of the query: ${answer.archive_label}` : "") }));
  // Score bars span [lo, 1], lo a round value under the threshold and every score shown: cosine
  // scores of one species crowd near 1, and a 0..1 bar would hide the differences.
  const lowest = Math.min(...answer.candidates.map((c) => c.score), thr === null ? 1 : thr);
  const lo = Math.max(-1, Math.floor((lowest - 0.02) * 20) / 20);
  const pos = (x) => `${Math.max(0, Math.min(1, (x - lo) / (1 - lo))) * 100}%`;
  if (answer.candidates.length) list.append(el("li", { class: "muted scale", text: `score bars span ${lo.toFixed(2)} to 1; the black mark is the threshold` }));
  for (const c of answer.candidates) {
    const under = thr !== null && c.score < thr;
    const bar = el("div", { class: "bar" }, el("i"));
    bar.firstChild.style.width = pos(c.score);
    if (thr !== null) { const m = el("b", { title: `threshold ${fmt(thr)}` }); m.style.left = pos(thr); bar.append(m); }
    const thumbs = el("div", { class: "thumbs" });
    for (const im of c.images) thumbs.append(el("img", { src: im.thumb, alt: `${c.individual_id}: ${im.image_id}`,
                                                         title: `${im.image_id} · score ${fmt(im.score)}` }));
    const same = el("button", { type: "button", class: "same", text: "Same", "data-decision": "same" });
    const diff = el("button", { type: "button", class: "different", text: "Different", "data-decision": "different" });
    same.addEventListener("click", () => decide("same", c.individual_id, same));
    diff.addEventListener("click", () => decide("different", c.individual_id, diff));
    list.append(el("li", { class: "candidate" + (under ? " under" : ""), "data-individual": c.individual_id,
                           "data-score": String(c.score) },
      el("div", { class: "rank", text: String(c.rank) }),
      el("div", {},
        el("div", { class: "name", text: c.individual_id }),
        el("div", { class: "muted score", text: `score ${fmt(c.score)} · ${c.n_images} photo(s) in the archive` }),
        bar, thumbs),
      el("div", { class: "actions" }, same, diff)));
  }
}

async function decide(decision, individual, button) {
  if (!current) return;
  showError("");
  const body = { query_id: current.query_id, decision };
  if (individual) body.individual_id = individual;
  const name = $("#new-name").value.trim();
  if (decision === "new" && name) body.individual_id = name;
  const reviewer = $("#reviewer").value.trim();
  if (reviewer) body.reviewer = reviewer;
  try {
    const r = await api("/api/decision", { method: "POST", headers: { "Content-Type": "application/json" },
                                           body: JSON.stringify(body) });
    if (button) button.classList.add("chosen");
    const s = r.stored;
    $("#status").textContent = `Saved: ${s.decision}` + (s.individual_id ? ` (${s.individual_id})` : "") +
                               ` · review ${s.review_id}`;
    $("#status").dataset.reviewId = s.review_id;
    await loadRecent();
  } catch (e) {
    showError(`decision not saved: ${e.message}`);
  }
}

async function loadRecent() {
  const r = await api("/api/reviews?limit=5");
  $("#recent").replaceChildren(...r.reviews.map((x) =>
    el("li", { text: `${x.decided_at.slice(0, 19)} · ${x.decision} · ${x.individual_id || ""} · ` +
                     `${x.query_image_id || x.query_sha256.slice(0, 12)}` })));
}

function setupDrop() {
  const drop = $("#drop");
  const file = $("#file");
  file.addEventListener("change", () => { if (file.files[0]) queryUpload(file.files[0]); file.value = ""; });
  drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); file.click(); } });
  for (const ev of ["dragenter", "dragover"]) drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.add("over"); });
  for (const ev of ["dragleave", "drop"]) drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.remove("over"); });
  drop.addEventListener("drop", (e) => { const f = e.dataTransfer.files[0]; if (f) queryUpload(f); });
  $("#mark-new").addEventListener("click", (e) => decide("new", null, e.currentTarget));
}

window.addEventListener("DOMContentLoaded", () => {
  setupDrop();
  loadInfo().catch((e) => showError(`could not load the index: ${e.message}`));
  loadRecent().catch(() => {});
});
