// The review queue: page through the decisions a match output needs, judge query and candidate
// side by side (zoomable), answer with the keyboard (s same, d different, n new, k skip, u undo,
// m merge, x split; 1-5 compare another of the query's nearest known individuals; f: name any
// individual, Enter: "same" as it). Plain DOM, no framework, no network beyond this server; text via textContent.
"use strict";

const $ = (sel) => document.querySelector(sel);
const PAGE = 20;
const state = { offset: 0, page: null, pos: 0, skipped: new Set(), done: [], busy: false, alt: null, kp: null };

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

async function api(path, options = {}) {
  const r = await fetch(path, options);
  let body = null;
  try { body = await r.json(); } catch (e) { body = null; }
  if (!r.ok) throw new Error((body && (body.error || body.detail)) || `${r.status} ${r.statusText}`);
  return body;
}

const post = (path, body) => api(path, {
  method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
});

function showError(message) {
  const e = $("#error");
  e.textContent = message || "";
  e.hidden = !message;
}

function filters() {
  const p = new URLSearchParams();
  const add = (k, v) => v && p.set(k, v);
  add("survey", $("#f-survey").value);
  add("camera", $("#f-camera").value);
  add("date_from", $("#f-from").value);
  add("date_to", $("#f-to").value);
  add("kind", $("#f-kind").value);
  if ($("#f-decided").checked) p.set("include_decided", "true");
  return p;
}

function fillSelect(sel, values) {
  const keep = sel.value;
  sel.replaceChildren(el("option", { value: "", text: "all" }), ...values.map((v) => el("option", { value: v, text: v })));
  sel.value = values.includes(keep) ? keep : "";
}

async function loadQueue(keepPos = true) {
  const p = filters();
  p.set("offset", state.offset);
  p.set("limit", PAGE);
  const page = await api(`/api/queue?${p}`);
  state.page = page;
  fillSelect($("#f-survey"), page.filters.surveys);
  fillSelect($("#f-camera"), page.filters.cameras);
  if (page.filters.dates.length) {
    for (const id of ["#f-from", "#f-to"]) { $(id).min = page.filters.dates[0]; $(id).max = page.filters.dates[1]; }
  }
  const b = page.bounds;
  const kinds = Object.entries(page.by_kind).map(([k, n]) => `${n} ${k}`).join(", ") || "none";
  $("#queue-info").textContent = `${page.open} to decide (${kinds}) · asked about: scores between ` +
    `${fmt(b.low)} and ${fmt(b.high)} · reviews so far: ${page.reviews.decisions || 0} decisions, ` +
    `${page.reviews.conflicts || 0} conflicts`;
  const total = page.total || 0;
  $("#progress-text").textContent = `${page.decided} of ${total} decided`;
  $("#progress-text").dataset.decided = page.decided;
  $("#progress-bar").style.width = total ? `${(100 * page.decided) / total}%` : "0";
  const shown = $("#f-decided").checked ? page.total : page.open;
  $("#page-info").textContent = shown ? `${state.offset + 1}-${state.offset + page.items.length} of ${shown}` : "";
  $("#prev").disabled = state.offset === 0;
  $("#next").disabled = state.offset + page.items.length >= shown;
  renderList();
  if (!keepPos) state.pos = 0;
  let pos = Math.min(state.pos, page.items.length - 1);
  while (pos >= 0 && pos < page.items.length - 1 && state.skipped.has(page.items[pos].item_id)) pos += 1;
  select(pos);
}

function renderList() {
  const ol = $("#queue");
  ol.replaceChildren();
  state.page.items.forEach((it, i) => {
    const li = el("li", { class: `qitem ${it.kind}`, "data-item-id": it.item_id, "data-kind": it.kind, tabIndex: -1 },
      el("img", { src: `/thumb/${encodeURIComponent(it.query.image_id)}`, alt: "", loading: "lazy" }),
      el("div", {},
        el("span", { class: `badge ${it.kind}`, text: it.kind }),
        el("span", { class: "muted", text: ` ${it.query.survey || ""} · ${it.query.camera_id || "no camera"} · score ${fmt(it.score)}` }),
        el("div", { class: "why", text: it.why })));
    if (it.decided) li.classList.add("decided");
    if (state.skipped.has(it.item_id)) li.classList.add("skipped");
    li.addEventListener("click", () => select(i));
    ol.append(li);
  });
}

function metaList(dl, photo, extra = []) {
  dl.replaceChildren();
  if (!photo) { dl.append(el("dt", { text: "no photo" })); return; }
  const rows = [
    ["date", photo.captured_at ? photo.captured_at.replace("T", " ").slice(0, 19) : "unknown"],
    ["camera", photo.camera_id || "unknown"], ["survey", photo.survey || "unknown"],
    ["viewpoint", photo.viewpoint || "unknown"], ["file", photo.file || photo.image_id],
    ["label", photo.individual_id || "none"], ["identity now", photo.identity || "none"], ...extra,
  ];
  for (const [k, v] of rows) dl.append(el("dt", { text: k }), el("dd", { text: v, "data-field": k }));
}

function setPhoto(img, photo) {
  if (photo) { img.src = `/photo/${encodeURIComponent(photo.image_id)}`; img.hidden = false; }
  else { img.removeAttribute("src"); img.hidden = true; }
  resetZoom();
}

function select(i) {
  const items = state.page ? state.page.items : [];
  $("#view").hidden = !items.length;
  $("#empty").hidden = !!items.length;
  if (!items.length) { $("#view").removeAttribute("data-item-id"); return; }
  state.pos = Math.max(0, Math.min(i, items.length - 1));
  const it = items[state.pos];
  document.querySelectorAll("#queue li").forEach((li, j) => li.classList.toggle("current", j === state.pos));
  const view = $("#view");
  view.dataset.itemId = it.item_id;
  view.dataset.kind = it.kind;
  $("#why").textContent = `${it.kind}: ${it.why}` + (it.reviewed_as ? ` · reviewed as ${it.reviewed_as}` : "");
  setPhoto($("#img-query"), it.query);
  metaList($("#meta-query"), it.query);
  const alts = $("#alts");
  alts.replaceChildren();
  if (it.alternatives.length) alts.append(el("span", { class: "muted", text: "Nearest known individuals: " }));
  it.alternatives.forEach((a, j) => {
    const b = el("button", { type: "button", "data-alt": a.individual_id },
      el("kbd", { text: String(j + 1) }), ` ${a.individual_id} · ${fmt(a.score)}`);
    b.addEventListener("click", () => showCandidate(it, j));
    alts.append(b);
  });
  const main = it.alternatives.findIndex((a) => a.individual_id === it.candidate_individual);
  showCandidate(it, it.kind === "new" || main < 0 ? null : main);
  const conflict = $("#conflict");
  conflict.hidden = !it.decisions;
  conflict.replaceChildren();
  if (it.decisions) {
    conflict.append(el("strong", { text: "Reviewers disagree: " }));
    for (const d of it.decisions) {
      const b = el("button", { type: "button", text: "undo this one" });
      b.addEventListener("click", () => undo(d.review_id));
      conflict.append(el("div", { text: `${d.reviewer || "anonymous"}: ${d.decision} ${d.individual_id || ""} (${d.decided_at.slice(0, 19)}) ` }, b));
    }
  }
  const labelled = !!(it.query && it.query.individual_id);
  document.querySelector("[data-answer=merge]").disabled = !labelled || !it.candidate_individual;
  document.querySelector("[data-answer=split]").disabled = !labelled;
  showError("");
}

function setDrawing(img, blob) {
  // show a drawing (or none), releasing the previous one's object URL: a long session views many pairs
  const old = img.src;
  if (blob) img.src = URL.createObjectURL(blob); else img.removeAttribute("src");
  if (old.startsWith("blob:")) URL.revokeObjectURL(old);
}

async function showMatches(q, c) {
  // the pair's verified SIFT matches, drawn by the server: why two photos are called the same animal
  const box = $("#kp"), img = $("#img-kp"), info = $("#kp-info");
  if (!q || !c) { box.hidden = true; setDrawing(img, null); state.kp = null; return; }
  const key = `${encodeURIComponent(q.image_id)}/${encodeURIComponent(c.image_id)}`;
  state.kp = key;
  box.hidden = false;
  info.textContent = "verifying keypoints…";
  try {
    const r = await fetch(`/matches/${key}.png`);
    if (state.kp !== key) return;  // another pair is shown by now
    if (!r.ok) { setDrawing(img, null); info.textContent = `keypoints: ${(await r.text()).slice(0, 200)}`; return; }
    const blob = await r.blob();
    if (state.kp !== key) return;
    setDrawing(img, blob);
    info.textContent = `${r.headers.get("X-Inliers")} verified keypoint matches (SIFT, geometric check)`;
    box.dataset.inliers = r.headers.get("X-Inliers");
  } catch (e) { if (state.kp === key) info.textContent = `keypoints: ${e.message}`; }
}

function showCandidate(it, j) {
  // j: which of the item's nearest individuals is compared (null: the item's own candidate)
  const a = j === null || j === undefined ? null : it.alternatives[j];
  state.alt = a ? a.individual_id : null;
  const photo = a ? a.photo : it.candidate;
  const ind = a ? a.individual_id : it.candidate_individual || "no known individual";
  const score = a ? a.score : it.score;
  setPhoto($("#img-cand"), photo);
  metaList($("#meta-cand"), photo);
  showMatches(it.query, photo);
  $("#view").dataset.candidate = a ? a.individual_id : it.candidate_individual || "";
  document.querySelectorAll("#alts button").forEach((b) => b.classList.toggle("chosen", b.dataset.alt === state.alt));
  $("#cand-title").textContent = it.kind === "new" && !a ? `Nearest known individual: ${ind}` : `Candidate: ${ind}`;
  $("#score-line").textContent = `score ${fmt(score)} · new below ${fmt(state.page.bounds.low)}` +
    (it.impact > 1 ? ` · this decision moves ${it.impact} photos` : "");
  const list = a ? a.others : it.others;
  const count = a ? a.n_others : it.n_others;
  $("#others-title").textContent = it.kind === "new" && !a
    ? `The other photos of the proposed individual (${count})`
    : `Other photos of ${ind} (${count})`;
  const others = $("#others");
  others.replaceChildren();
  for (const p of list) {
    const b = el("button", { type: "button", title: `${p.file || p.image_id} · ${p.captured_at || ""} · ${p.camera_id || ""}` },
      el("img", { src: `/thumb/${encodeURIComponent(p.image_id)}`, alt: "another photo" }));
    b.addEventListener("click", () => { setPhoto($("#img-cand"), p); metaList($("#meta-cand"), p); });
    others.append(b);
  }
  if (!list.length) others.append(el("span", { class: "muted", text: "none" }));
}

function current() {
  return state.page && state.page.items.length ? state.page.items[state.pos] : null;
}

async function loadIndividuals() {
  const r = await api("/api/individuals");
  $("#individuals").replaceChildren(...r.individuals.map((name) => el("option", { value: name })));
}

async function decide(answer, named = null) {
  const it = current();
  if (!it || state.busy) return;
  state.busy = true;
  try {
    const body = { item_id: it.item_id, answer, reviewer: $("#reviewer").value.trim() || null,
                   candidate: named || (["same", "different", "merge"].includes(answer) ? state.alt : null),
                   name: answer === "new" || answer === "split" ? ($("#new-name").value.trim() || null) : null };
    const r = await post("/api/review", body);
    state.done.push({ review_id: r.stored.review_id, item_id: it.item_id });
    $("#new-name").value = "";
    $("#same-as").value = "";
    if (r.stored.minted) loadIndividuals().catch(() => {});
    const minted = r.stored.minted ? ` → ${r.stored.minted}` : "";
    $("#status").textContent = `Saved: ${answer}${minted} (${it.item_id}, by ${r.stored.reviewer || "anonymous"})`;
    $("#status").dataset.reviewId = r.stored.review_id;
    $("#status").dataset.count = state.done.length;
    await loadQueue();
  } catch (e) {
    showError(e.message);
  } finally {
    state.busy = false;
  }
}

async function undo(reviewId = null) {
  const last = reviewId ? { review_id: reviewId } : state.done.pop();
  if (!last || state.busy) { if (!last) showError("nothing to undo in this session"); return; }
  state.busy = true;
  try {
    const r = await post("/api/review/undo", { review_id: last.review_id, reviewer: $("#reviewer").value.trim() || null });
    $("#status").textContent = `Undone: ${last.review_id}`;
    $("#status").dataset.reviewId = r.stored.review_id;
    await loadQueue();
    if (last.item_id) {
      const i = state.page.items.findIndex((x) => x.item_id === last.item_id);
      if (i >= 0) select(i);
    }
  } catch (e) {
    showError(e.message);
  } finally {
    state.busy = false;
  }
}

function skip() {
  const it = current();
  if (!it) return;
  state.skipped.add(it.item_id);
  renderList();
  if (state.pos < state.page.items.length - 1) select(state.pos + 1);
  else if (!$("#next").disabled) { state.offset += PAGE; loadQueue(false); }
}

// -- zoom: wheel zooms at the pointer, drag pans, double-click resets; both photos move together
const zoom = { scale: 1, x: 0, y: 0, drag: null };

function applyZoom() {
  for (const img of [$("#img-query"), $("#img-cand")]) {
    img.style.transform = `translate(${zoom.x}px, ${zoom.y}px) scale(${zoom.scale})`;
  }
  document.querySelectorAll(".zoom").forEach((z) => { z.dataset.scale = zoom.scale.toFixed(2); });
}

function resetZoom() { zoom.scale = 1; zoom.x = 0; zoom.y = 0; applyZoom(); }

function setupZoom(box) {
  box.addEventListener("wheel", (ev) => {
    ev.preventDefault();
    const r = box.getBoundingClientRect();
    const px = ev.clientX - r.left, py = ev.clientY - r.top;
    const next = Math.min(12, Math.max(1, zoom.scale * (ev.deltaY < 0 ? 1.25 : 0.8)));
    zoom.x = px - ((px - zoom.x) * next) / zoom.scale;
    zoom.y = py - ((py - zoom.y) * next) / zoom.scale;
    zoom.scale = next;
    if (next === 1) { zoom.x = 0; zoom.y = 0; }
    applyZoom();
  }, { passive: false });
  box.addEventListener("pointerdown", (ev) => { zoom.drag = { x: ev.clientX - zoom.x, y: ev.clientY - zoom.y }; box.setPointerCapture(ev.pointerId); });
  box.addEventListener("pointermove", (ev) => { if (zoom.drag) { zoom.x = ev.clientX - zoom.drag.x; zoom.y = ev.clientY - zoom.drag.y; applyZoom(); } });
  box.addEventListener("pointerup", () => { zoom.drag = null; });
  box.addEventListener("dblclick", resetZoom);
}

const KEYS = { s: "same", d: "different", n: "new", m: "merge", x: "split" };

document.addEventListener("keydown", (ev) => {
  if (ev.ctrlKey || ev.metaKey || ev.altKey || ["INPUT", "SELECT", "TEXTAREA"].includes(ev.target.tagName)) return;
  const key = ev.key.toLowerCase();
  if (KEYS[key]) { ev.preventDefault(); const b = document.querySelector(`[data-answer=${KEYS[key]}]`); if (!b.disabled) decide(KEYS[key]); }
  else if (key === "k") { ev.preventDefault(); skip(); }
  else if (key === "f") { ev.preventDefault(); $("#same-as").focus(); }
  else if (/^[1-9]$/.test(key)) {
    const it = current();
    if (it && Number(key) <= it.alternatives.length) { ev.preventDefault(); showCandidate(it, Number(key) - 1); }
  }
  else if (key === "u") { ev.preventDefault(); undo(); }
  else if (key === "arrowdown" || key === "j") { ev.preventDefault(); select(state.pos + 1); }
  else if (key === "arrowup") { ev.preventDefault(); select(state.pos - 1); }
});

window.addEventListener("DOMContentLoaded", () => {
  $("#reviewer").value = localStorage.getItem("reid-reviewer") || "";
  $("#reviewer").addEventListener("change", () => localStorage.setItem("reid-reviewer", $("#reviewer").value.trim()));
  document.querySelectorAll("[data-answer]").forEach((b) => b.addEventListener("click", () => decide(b.dataset.answer)));
  document.querySelector("[data-key=k]").addEventListener("click", skip);
  document.querySelector("[data-key=u]").addEventListener("click", () => undo());
  $("#filters").addEventListener("change", () => { state.offset = 0; loadQueue(false).catch((e) => showError(e.message)); });
  $("#filters").addEventListener("submit", (ev) => ev.preventDefault());
  $("#prev").addEventListener("click", () => { state.offset = Math.max(0, state.offset - PAGE); loadQueue(false); });
  $("#next").addEventListener("click", () => { state.offset += PAGE; loadQueue(false); });
  $("#same-as").addEventListener("keydown", (ev) => {
    const name = $("#same-as").value.trim();
    if (ev.key === "Enter" && name) { ev.preventDefault(); $("#same-as").blur(); decide("same", name); }
  });
  loadIndividuals().catch(() => {});
  setupZoom($("#zoom-query"));
  setupZoom($("#zoom-cand"));
  loadQueue(false).catch((e) => { $("#queue-info").textContent = e.message; });
});
