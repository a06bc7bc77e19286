// The lnmt-serve page: translate the textarea's lines (POST translate) and draw each sentence's attention as a
// heatmap like lightning_nmt/plotting.py's PNGs: rows = output pieces, columns = source pieces (labels rotated),
// viridis colours from 0 to 1. Plain JS, nothing loaded from elsewhere.
"use strict";

const $ = (id) => document.getElementById(id);
const VIRIDIS = ["#440154", "#482475", "#414487", "#355f8d", "#2a788e", "#21918c", "#22a884", "#44bf70",
                 "#7ad151", "#bddf26", "#fde725"].map((hex) => [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16)));

function viridis(value) {
  const t = Math.min(1, Math.max(0, Number(value) || 0)) * (VIRIDIS.length - 1);
  const i = Math.min(VIRIDIS.length - 2, Math.floor(t));
  const f = t - i;
  const [a, b] = [VIRIDIS[i], VIRIDIS[i + 1]];
  return `rgb(${a.map((c, k) => Math.round(c + (b[k] - c) * f)).join(",")})`;
}

function setState(state, text) {
  document.body.dataset.state = state;
  $("status").textContent = text || "";
  $("translate").disabled = state === "busy";
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
  setState("error");
}

async function describeModel() {
  try {
    const response = await fetch("models");
    const model = (await response.json()).models[0];
    $("model").textContent = `${model.name}: ${model.type} model, ${model.backend} backend` +
      (model.device ? ` on ${model.device}` : "") + `, beam size ${model.decoding.beam_size}` +
      (model.limits.max_input_len ? `, inputs over ${model.limits.max_input_len} pieces translated in segments` : "");
    $("beam").value = model.decoding.beam_size;
    $("beam").max = model.limits.max_beam_size;
  } catch (err) {
    $("model").textContent = "could not read /models: " + err;
  }
}

function post(body) {
  const headers = {"Content-Type": "application/json"};
  const key = sessionStorage.getItem("lnmt-api-key");
  if (key) headers["Authorization"] = "Bearer " + key;
  return fetch("translate", {method: "POST", headers, body: JSON.stringify(body)});
}

async function translate() {
  const lines = $("src").value.split("\n").map((line) => line.trim()).filter((line) => line.length > 0);
  $("error").hidden = true;
  if (lines.length === 0) {
    showError("type a sentence first");
    return;
  }
  const body = {src: lines, beam_size: Number($("beam").value), nbest: 1, attention: $("attention").checked};
  setState("busy", "translating…");
  const started = performance.now();
  let response, data;
  try {
    response = await post(body);
    if (response.status === 401) {  // a server started with --api-key-file: ask once, keep it for this tab
      const key = window.prompt("This server needs an API key:");
      if (key) {
        sessionStorage.setItem("lnmt-api-key", key.trim());
        response = await post(body);
      }
    }
    data = await response.json();
  } catch (err) {
    showError("the server did not answer: " + err);
    return;
  }
  if (!response.ok) {
    showError(`${response.status}: ${data.error || JSON.stringify(data)}`);
    return;
  }
  render(lines, data.translations, body.attention);
  setState("done", `${lines.length} sentence${lines.length > 1 ? "s" : ""} in ` +
                   `${Math.round(performance.now() - started)} ms`);
}

function render(lines, translations, attention) {
  const results = $("results");
  results.replaceChildren();
  translations.forEach((hyps, i) => {
    const best = hyps[0];
    const item = document.createElement("article");
    item.className = "sentence";
    const add = (tag, cls, text) => {
      const el = document.createElement(tag);
      el.className = cls;
      el.textContent = text;
      item.appendChild(el);
      return el;
    };
    add("div", "src", lines[i]);
    add("div", "tgt", best.tgt);
    add("div", "meta", `score ${best.score.toFixed(3)}`);
    if (best.note) add("div", "note", best.note);
    if (attention && best.attention && best.attention.length) {
      const canvas = document.createElement("canvas");
      canvas.className = "heatmap";
      canvas.setAttribute("role", "img");
      canvas.setAttribute("aria-label", `attention of "${best.tgt}"`);
      item.appendChild(canvas);
      drawHeatmap(canvas, best.attention, best.src_pieces, best.tgt_pieces);
    } else if (attention && best.tgt) {
      add("div", "meta", "this model has no attention weights to show");
    }
    results.appendChild(item);
  });
  results.dataset.count = String(translations.length);
}

function drawHeatmap(canvas, weights, srcPieces, outPieces) {
  const rows = Math.min(weights.length, outPieces.length);
  const cols = Math.min(weights[0].length, srcPieces.length);
  const cell = Math.max(12, Math.min(28, Math.floor(640 / Math.max(cols, 1))));
  const font = `${Math.min(12, cell - 2)}px system-ui, "DejaVu Sans", sans-serif`;
  const ctx = canvas.getContext("2d");
  ctx.font = font;
  const width = (labels) => Math.max(0, ...labels.map((label) => ctx.measureText(label).width));
  const left = Math.ceil(width(outPieces.slice(0, rows))) + 34;
  const top = 8;
  const bottom = Math.ceil(width(srcPieces.slice(0, cols))) + 34;
  const bar = 56;
  const w = left + cols * cell + bar, h = top + rows * cell + bottom;
  const scale = window.devicePixelRatio || 1;
  canvas.width = Math.ceil(w * scale);
  canvas.height = Math.ceil(h * scale);
  canvas.style.width = `${w}px`;
  canvas.style.height = `${h}px`;
  ctx.setTransform(scale, 0, 0, scale, 0, 0);
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, w, h);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      ctx.fillStyle = viridis(weights[r][c]);
      ctx.fillRect(left + c * cell, top + r * cell, cell, cell);
    }
  }
  ctx.font = font;
  ctx.fillStyle = "#222";
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  for (let r = 0; r < rows; r++) ctx.fillText(outPieces[r], left - 5, top + r * cell + cell / 2);
  for (let c = 0; c < cols; c++) {  // source labels rotated by 90 degrees, hanging below the map
    ctx.save();
    ctx.translate(left + c * cell + cell / 2, top + rows * cell + 5);
    ctx.rotate(-Math.PI / 2);
    ctx.fillText(srcPieces[c], 0, 0);
    ctx.restore();
  }
  ctx.font = `12px system-ui, "DejaVu Sans", sans-serif`;
  ctx.textAlign = "center";
  ctx.fillText("source", left + (cols * cell) / 2, h - 10);
  ctx.save();
  ctx.translate(10, top + (rows * cell) / 2);
  ctx.rotate(-Math.PI / 2);
  ctx.fillText("output", 0, 0);
  ctx.restore();
  const x0 = left + cols * cell + 12, barHeight = Math.max(rows * cell, 40);  // the colour bar, 0 to 1
  for (let y = 0; y < barHeight; y++) {
    ctx.fillStyle = viridis(1 - y / (barHeight - 1));
    ctx.fillRect(x0, top + y, 10, 1);
  }
  ctx.fillStyle = "#222";
  ctx.textAlign = "left";
  [[1, "1"], [0.5, "0.5"], [0, "0"]].forEach(([v, label]) => ctx.fillText(label, x0 + 14, top + (1 - v) * barHeight));
  canvas.onmousemove = (event) => {
    const box = canvas.getBoundingClientRect();
    const c = Math.floor((event.clientX - box.left - left) / cell), r = Math.floor((event.clientY - box.top - top) / cell);
    canvas.title = r >= 0 && r < rows && c >= 0 && c < cols
      ? `${outPieces[r]} → ${srcPieces[c]}: ${Number(weights[r][c]).toFixed(3)}` : "";
  };
  canvas.dataset.drawn = `${rows}x${cols}`;
}

$("form").addEventListener("submit", (event) => {
  event.preventDefault();
  translate();
});
$("src").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
    event.preventDefault();
    translate();
  }
});
describeModel();
const query = new URLSearchParams(window.location.search).get("q");
if (query) {
  $("src").value = query;
  translate();
}
