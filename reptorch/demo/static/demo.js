// reptorch demo page: drawing boxes (pointer events), bars and loss curve. The same page serves
// `reptorch demo` (answers from its JSON API) and the static export (answers computed in the
// page): static/browser.js holds both backends, chosen by the page's reptorch-engine meta tag.
"use strict";

const SIZE = 120; // drawing box side in CSS pixels; strokes are sent in these coordinates
const state = { backend: null, ways: 3, shots: 1, maxWays: 5, maxShots: 5, drawings: new Map(), seq: 0, examples: null };
const $ = (id) => document.getElementById(id);

function key(c, k) { return c === "q" ? "q" : `${c}/${k}`; }
function keys() {
  const all = [];
  for (let c = 0; c < state.ways; c++) for (let k = 0; k < state.shots; k++) all.push(key(c, k));
  all.push("q");
  return all;
}

function makeBox(boxKey) {
  const box = document.createElement("div");
  box.className = "box";
  const pad = document.createElement("div");
  pad.className = "pad";
  const canvas = document.createElement("canvas");
  canvas.className = "draw";
  canvas.dataset.key = boxKey;
  const ratio = window.devicePixelRatio || 1;
  canvas.width = SIZE * ratio;
  canvas.height = SIZE * ratio;
  const clear = document.createElement("button");
  clear.className = "clear";
  clear.type = "button";
  clear.title = "clear this box";
  clear.textContent = "\u00d7";
  clear.addEventListener("click", () => { state.drawings.delete(boxKey); paint(boxKey); update(); });
  const seen = document.createElement("canvas");
  seen.className = "seen";
  seen.width = 28;
  seen.height = 28;
  seen.dataset.seen = boxKey;
  seen.title = "what the network sees (28x28)";
  pad.append(canvas, clear);
  box.append(pad, seen);
  attachPointer(canvas, boxKey);
  return box;
}

function attachPointer(canvas, boxKey) {
  let stroke = null;
  const point = (e) => {
    const r = canvas.getBoundingClientRect();
    return [Math.round((e.clientX - r.left) * 10) / 10, Math.round((e.clientY - r.top) * 10) / 10];
  };
  canvas.addEventListener("pointerdown", (e) => {
    if (e.pointerType === "mouse" && e.button !== 0) return;
    e.preventDefault();
    canvas.setPointerCapture(e.pointerId);
    stroke = [point(e)];
    if (!state.drawings.has(boxKey)) state.drawings.set(boxKey, []);
    state.drawings.get(boxKey).push(stroke);
    paint(boxKey);
  });
  canvas.addEventListener("pointermove", (e) => {
    if (!stroke) return;
    const events = e.getCoalescedEvents ? e.getCoalescedEvents() : [e];
    for (const ev of events.length ? events : [e]) stroke.push(point(ev));
    paint(boxKey);
  });
  const end = () => { if (stroke) { stroke = null; update(); } };
  canvas.addEventListener("pointerup", end);
  canvas.addEventListener("pointercancel", end);
}

function paint(boxKey) {
  const canvas = document.querySelector(`canvas.draw[data-key="${boxKey}"]`);
  if (!canvas) return;
  const ctx = canvas.getContext("2d");
  const ratio = canvas.width / SIZE;
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, SIZE, SIZE);
  ctx.lineWidth = 4;
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  ctx.strokeStyle = ctx.fillStyle = "#1d2330";
  for (const stroke of state.drawings.get(boxKey) || []) {
    ctx.beginPath();
    ctx.moveTo(stroke[0][0], stroke[0][1]);
    if (stroke.length === 1) { ctx.arc(stroke[0][0], stroke[0][1], 2, 0, 2 * Math.PI); ctx.fill(); continue; }
    for (const [x, y] of stroke.slice(1)) ctx.lineTo(x, y);
    ctx.stroke();
  }
  if (!state.drawings.has(boxKey)) showSeen(boxKey, null);
}

function showSeen(boxKey, bits) {
  const canvas = document.querySelector(`canvas[data-seen="${boxKey}"]`);
  if (!canvas) return;
  const ctx = canvas.getContext("2d");
  const image = ctx.createImageData(28, 28);
  for (let i = 0; i < 784; i++) {
    const v = bits && bits[i] === "1" ? 0 : 255;
    image.data.set([v, v, v, 255], 4 * i);
  }
  ctx.putImageData(image, 0, 0);
}

function build() {
  const classes = $("classes");
  classes.replaceChildren();
  for (let c = 0; c < state.ways; c++) {
    const cell = document.createElement("div");
    cell.className = "cell class";
    cell.dataset.class = c;
    const title = document.createElement("h2");
    title.textContent = `Class ${c + 1}`;
    const shots = document.createElement("div");
    shots.className = "shots";
    for (let k = 0; k < state.shots; k++) shots.append(makeBox(key(c, k)));
    cell.append(title, shots);
    classes.append(cell);
  }
  $("query-box").replaceChildren(makeBox("q"));
  for (const k of [...state.drawings.keys()]) if (!keys().includes(k)) state.drawings.delete(k);
  keys().forEach(paint);
  update();
}

function clearResults(message) {
  $("bars").replaceChildren();
  $("loss-curve").replaceChildren();
  document.querySelectorAll(".cell.class").forEach((cell) => cell.classList.remove("best"));
  $("status").textContent = message;
}

async function update() {
  const seq = ++state.seq;
  const all = keys();
  const filled = all.filter((k) => state.drawings.has(k));
  try {
    const support = [];
    for (let c = 0; c < state.ways; c++) {
      support.push([...Array(state.shots).keys()].map((k) => state.drawings.get(key(c, k))));
    }
    if (filled.length === all.length - 1 && !state.drawings.has("q")) {
      // Every class drawn, no query yet: fine-tune now, so the query's strokes only classify.
      clearResults("Fine-tuning on your classes...");
      const data = await state.backend.fineTune(support);
      if (seq !== state.seq) return;
      data.support.forEach((shots, c) => shots.forEach((bits, k) => showSeen(key(c, k), bits)));
      showLoss(data.losses);
      $("status").textContent =
        `Fine-tuned on ${state.ways} classes in ${Math.round(data.milliseconds)} ms: draw the query.`;
      return;
    }
    if (filled.length < all.length) {
      clearResults(filled.length ? "Draw in every box to see the prediction." : "Draw in every box.");
      if (!filled.length) return;
      const data = await state.backend.render(filled.map((k) => state.drawings.get(k)));
      if (seq !== state.seq) return;
      filled.forEach((k, i) => showSeen(k, data.images[i]));
      return;
    }
    const data = await state.backend.predict(support, state.drawings.get("q"));
    if (seq !== state.seq) return;
    data.images.support.forEach((shots, c) => shots.forEach((bits, k) => showSeen(key(c, k), bits)));
    showSeen("q", data.images.query);
    showBars(data.probabilities, data.predicted);
    showLoss(data.losses);
    const work = data.fine_tuned ? "fine-tuned and predicted" : "predicted (same classes: fine-tuning reused)";
    $("status").textContent = `Class ${data.predicted + 1}: ${work} in ${Math.round(data.milliseconds)} ms`;
  } catch (error) {
    if (seq === state.seq) clearResults(`Error: ${error.message}`);
  }
}

function showBars(probabilities, predicted) {
  const bars = $("bars");
  bars.replaceChildren();
  probabilities.forEach((p, c) => {
    const row = document.createElement("div");
    row.className = "bar" + (c === predicted ? " best" : "");
    row.dataset.class = c;
    row.innerHTML = `<span>Class ${c + 1}</span><span class="track"><span class="fill"></span></span>` +
      `<span class="value">${(100 * p).toFixed(1)}%</span>`;
    row.querySelector(".fill").style.width = `${(100 * p).toFixed(1)}%`;
    bars.append(row);
  });
  document.querySelectorAll(".cell.class").forEach((cell) =>
    cell.classList.toggle("best", Number(cell.dataset.class) === predicted));
}

function showLoss(losses) {
  const svg = $("loss-curve");
  const w = 240, h = 90, pad = 6;
  const top = Math.max(...losses, 1e-6);
  const points = losses.map((v, i) => {
    const x = pad + (i / Math.max(1, losses.length - 1)) * (w - 2 * pad);
    const y = h - pad - (v / top) * (h - 2 * pad);
    return `${x.toFixed(1)},${y.toFixed(1)}`;
  });
  svg.innerHTML = `<line x1="${pad}" y1="${h - pad}" x2="${w - pad}" y2="${h - pad}" stroke="#d1d5db"/>` +
    `<polyline fill="none" stroke="#2563eb" stroke-width="1.5" points="${points.join(" ")}"/>`;
  $("loss-caption").textContent =
    `fine-tuning loss, ${losses.length} steps: ${losses[0].toFixed(3)} \u2192 ${losses[losses.length - 1].toFixed(3)}`;
}

async function fillExamples() {
  if (!state.examples) state.examples = await state.backend.examples();
  const classes = state.examples.classes.slice().sort(() => Math.random() - 0.5).slice(0, state.ways);
  const scale = (drawing) => drawing.map((s) => s.map(([x, y]) => [x * SIZE / 105, y * SIZE / 105]));
  classes.forEach((cls, c) => {
    for (let k = 0; k < state.shots; k++) state.drawings.set(key(c, k), scale(cls.drawings[k]));
  });
  const target = classes[Math.floor(Math.random() * classes.length)];
  state.drawings.set("q", scale(target.drawings[target.drawings.length - 1]));
  keys().forEach(paint);
  update();
}

function fillSelect(select, from, to, value) {
  select.replaceChildren();
  for (let v = from; v <= to; v++) select.append(new Option(String(v), String(v), v === value, v === value));
}

async function main() {
  try {
    state.backend = await ReptorchBackends.choose();
  } catch (error) {
    $("status").textContent = `Error: ${error.message}`;
    document.body.dataset.ready = "error";
    return;
  }
  window.reptorchDemo = state; // for tests and benchmarks: state.backend answers as the page does
  const info = await state.backend.info();
  if (!state.backend.apiDocs) $("api-link").remove();
  state.maxWays = info.ways;
  state.maxShots = info.max_shots;
  state.ways = Math.min(3, info.ways);
  const where = info.engine === "browser" ? "in your browser" : "on the server";
  $("model").textContent = `model: ${info.model}; ${info.inner_steps} fine-tuning steps, ${where}`;
  fillSelect($("ways"), 2, state.maxWays, state.ways);
  fillSelect($("shots"), 1, state.maxShots, state.shots);
  $("ways").addEventListener("change", (e) => { state.ways = Number(e.target.value); build(); });
  $("shots").addEventListener("change", (e) => { state.shots = Number(e.target.value); build(); });
  $("clear-all").addEventListener("click", () => { state.drawings.clear(); keys().forEach(paint); update(); });
  $("examples").addEventListener("click", fillExamples);
  build();
  document.body.dataset.ready = "1";
}

main();
