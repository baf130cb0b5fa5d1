// The search page of `scan serve`: search by sentence, see why a photo matched, describe a photo.
// Plain JavaScript with no dependencies, served by the same process (no CDN, no network).
"use strict";

const $ = (id) => document.getElementById(id);
const state = { query: "", hits: [], explained: null, word: -1 };

// A token given in the address (#token=...) becomes a cookie, so that <img> requests carry it too.
(function takeToken() {
  const match = location.hash.match(/token=([^&]+)/);
  if (match) {
    document.cookie = `scan_token=${encodeURIComponent(decodeURIComponent(match[1]))}; path=/; SameSite=Strict`;
    history.replaceState(null, "", location.pathname + location.search);
  }
})();

function say(message, isError = false) {
  $("status").textContent = message;
  $("status").classList.toggle("error", isError);
}

async function api(path, options = {}) {
  const response = await fetch(path, { credentials: "same-origin", ...options });
  let body = null;
  try { body = await response.json(); } catch (_) { /* not JSON: reported below */ }
  if (!response.ok) {
    const message = body && body.error ? body.error.message : `${response.status} ${response.statusText}`;
    throw new Error(message);
  }
  return body;
}

function show(section) {
  for (const id of ["results", "detail", "captions"]) $(id).hidden = id !== section;
  window.scrollTo(0, 0);
}

// ------------------------------------------------------------------ text -> photos

async function search(event) {
  event.preventDefault();
  const q = $("query").value.trim();
  if (!q) return;
  say("Searching...");
  try {
    const k = $("k").value;
    const result = await api(`/api/search?q=${encodeURIComponent(q)}&k=${encodeURIComponent(k)}`);
    state.query = q;
    state.hits = result.hits;
    renderResults();
    say(`${result.hits.length} photos for "${q}" in ${Math.round(result.ms)} ms. Select one to see why it matched.`);
  } catch (error) {
    say(error.message, true);
  }
}

function renderResults() {
  const grid = $("results");
  grid.replaceChildren();
  for (const hit of state.hits) {
    const card = document.createElement("button");
    card.type = "button";
    card.className = "card";
    card.dataset.id = hit.id;
    const img = document.createElement("img");
    img.src = hit.thumbnail;
    img.alt = hit.path;
    img.loading = "lazy";
    const rank = document.createElement("span");
    rank.textContent = `#${hit.rank} ${hit.path.split("/").pop()}`;
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = `SCAN ${hit.score.toFixed(4)}`;
    card.append(img, rank, score);
    card.addEventListener("click", () => openDetail(hit));
    grid.append(card);
  }
  show("results");
}

// ------------------------------------------------------------------ why a photo matched

async function openDetail(hit) {
  say(`Explaining #${hit.rank}...`);
  try {
    const explained = await api(`/api/explain?q=${encodeURIComponent(state.query)}&id=${hit.id}`);
    state.explained = explained;
    state.word = -1;
    const img = $("detail-img");
    img.alt = hit.path;
    await new Promise((resolve) => {
      img.onload = resolve;
      img.onerror = resolve;
      img.src = hit.photo;
    });
    $("detail-meta").textContent = `#${hit.rank} ${hit.path}, SCAN score ${explained.score.toFixed(4)}`;
    renderWords();
    show("detail");
    const first = explained.words.findIndex((w) => !w.special);
    selectWord(first);
    say(`"${state.query}": select a word to see where it looked.`);
  } catch (error) {
    say(error.message, true);
  }
}

function renderWords() {
  const words = $("words");
  words.replaceChildren();
  state.explained.words.forEach((word, index) => {
    if (word.special) return;
    const button = document.createElement("button");
    button.type = "button";
    button.className = "word";
    button.textContent = word.text;
    if (word.text === "<unk>") button.title = "a word the model's vocabulary does not know";
    button.dataset.index = index;
    button.setAttribute("aria-pressed", "false");
    button.addEventListener("mouseenter", () => draw(index));
    button.addEventListener("mouseleave", () => draw(state.word));
    button.addEventListener("focus", () => draw(index));
    button.addEventListener("click", () => selectWord(index));
    words.append(button);
  });
}

function selectWord(index) {
  state.word = index;
  for (const button of document.querySelectorAll("#words .word")) {
    button.setAttribute("aria-pressed", String(Number(button.dataset.index) === index));
  }
  draw(index);
}

// Darken the photo, then light it up in proportion to the word's attention on each region (the
// heat, scaled to this word's strongest region), and outline its three strongest boxes.
function draw(index) {
  const img = $("detail-img");
  const canvas = $("overlay");
  const explained = state.explained;
  const ratio = window.devicePixelRatio || 1;
  const width = img.clientWidth;
  const height = img.clientHeight;
  canvas.width = Math.round(width * ratio);
  canvas.height = Math.round(height * ratio);
  canvas.style.width = `${width}px`;
  canvas.style.height = `${height}px`;
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  canvas.dataset.word = index >= 0 && explained ? explained.words[index].text : "";
  if (!explained || index < 0 || !width) return;
  const sx = width / (explained.width || img.naturalWidth || width);
  const sy = height / (explained.height || img.naturalHeight || height);
  const word = explained.words[index];
  const peak = Math.max(...word.weights) || 1;

  ctx.fillStyle = "rgba(0, 0, 0, 0.6)";
  ctx.fillRect(0, 0, width, height);
  ctx.globalCompositeOperation = "destination-out";
  explained.boxes.forEach(([x1, y1, x2, y2], r) => {
    const heat = word.weights[r] / peak;
    if (heat < 0.05) return;
    ctx.fillStyle = `rgba(0, 0, 0, ${0.55 * heat})`;
    ctx.fillRect(x1 * sx, y1 * sy, (x2 - x1) * sx, (y2 - y1) * sy);
  });
  ctx.globalCompositeOperation = "source-over";
  ctx.font = "600 13px system-ui, sans-serif";
  ctx.textBaseline = "top";
  word.top.forEach((r, place) => {
    const [x1, y1, x2, y2] = explained.boxes[r];
    ctx.lineWidth = place === 0 ? 3 : 2;
    ctx.strokeStyle = place === 0 ? "#ffb300" : "rgba(255, 179, 0, 0.75)";
    ctx.strokeRect(x1 * sx, y1 * sy, (x2 - x1) * sx, (y2 - y1) * sy);
    const label = `${word.text} ${word.weights[r].toFixed(2)}`;
    const labelWidth = ctx.measureText(label).width + 8;
    ctx.fillStyle = "rgba(0, 0, 0, 0.75)";
    ctx.fillRect(x1 * sx, y1 * sy, labelWidth, 18);
    ctx.fillStyle = "#fff";
    ctx.fillText(label, x1 * sx + 4, y1 * sy + 2);
  });
}

// ------------------------------------------------------------------ photo -> captions

async function describe() {
  const file = $("photo").files[0];
  if (!file) return;
  say(`Finding captions for ${file.name}...`);
  const form = new FormData();
  form.append("photo", file);
  try {
    const result = await api(`/api/search/image?k=${encodeURIComponent($("k").value)}`, { method: "POST", body: form });
    $("upload-preview").src = URL.createObjectURL(file);
    const list = $("caption-list");
    list.replaceChildren();
    for (const hit of result.hits) {
      const item = document.createElement("li");
      item.textContent = hit.caption;
      const score = document.createElement("span");
      score.className = "score";
      score.textContent = `SCAN ${hit.score.toFixed(4)}`;
      item.append(score);
      list.append(item);
    }
    show("captions");
    say(`${result.hits.length} captions for ${file.name} in ${Math.round(result.ms)} ms.`);
  } catch (error) {
    say(error.message, true);
  }
}

$("search-form").addEventListener("submit", search);
$("photo").addEventListener("change", describe);
$("back").addEventListener("click", () => show("results"));
window.addEventListener("resize", () => { if (!$("detail").hidden) draw(state.word); });
