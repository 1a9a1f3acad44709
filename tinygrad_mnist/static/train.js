// The training page: start a run on the server, read its Server-Sent Events, draw them.
// Plain JavaScript, no build step, no network beyond this server; the charts are uPlot's
// (vendored in static/vendor/uplot).
"use strict";

const $ = (id) => document.getElementById(id);
const LN10 = Math.log(10);
const SIDE = 28;
const LAYER_COLOURS = ["#7048e8", "#f08c00", "#0c8599", "#c2255c", "#5c940d"];
const noData = $("no-data") !== null;
let presets = {};
let source = null;           // the EventSource of the run shown
let runId = null, yours = false, state = null;
let cur = emptyRun(), prev = null;  // this run's curves; the previous run's loss
let layers = [], tileUnits = 0, lossPlot = null, gradPlot = null, drawPending = false;

function emptyRun() {
  return {x: [], loss: [], acc: [], grads: [], vx: [], val: [], label: ""};
}

// ------------------------------------------------------------------ talking to the server

function message(text, isError) {
  const m = $("message");
  m.textContent = text;
  m.classList.toggle("red", !!isError);
  return m;
}

function connect() {
  if (source) source.close();
  source = new EventSource("/api/train/events");
  source.onmessage = (m) => onEvent(JSON.parse(m.data));
  source.onerror = () => {
    if (source && source.readyState === EventSource.CLOSED) {
      source = null;
      message("Lost the connection to the server's training run; reload the page to see it again.", true);
    }
  };
}

// ------------------------------------------------------------------ presets and settings

function fillSettings(s) {
  $("hidden").value = s.hidden.join(", ");
  $("lr").value = s.lr;
  $("optimizer").value = s.optimizer;
  $("batch-size").value = s.batch_size;
  $("epochs").value = s.epochs;
}

function showPreset(name) {
  $("preset").value = name;
  if (name === "custom") {
    $("preset-about").textContent = "Your own settings: the network, learning rate, optimizer, " +
      "batch size and epochs in the boxes below.";
    return;
  }
  $("preset-about").textContent = presets[name].about;
  fillSettings(presets[name].settings);
}

function number(text) {
  const n = Number(text);
  return text.trim() === "" || !Number.isFinite(n) ? text : n;
}

function customSettings() {
  const hidden = $("hidden").value.trim();
  const sizes = hidden === "" ? [] : hidden.split(/[\s,]+/).filter((s) => s).map(number);
  return {hidden: sizes, lr: number($("lr").value), optimizer: $("optimizer").value,
          batch_size: number($("batch-size").value), epochs: number($("epochs").value)};
}

$("preset").addEventListener("change", () => showPreset($("preset").value));
for (const id of ["hidden", "lr", "optimizer", "batch-size", "epochs"]) {
  $(id).addEventListener("input", () => showPreset("custom"));
}

// ------------------------------------------------------------------ the controls

function alive() {
  return state === "starting" || state === "running" || state === "paused";
}

function updateButtons() {
  const mine = alive() && yours;
  $("train-start").disabled = noData || alive();
  $("train-pause").disabled = !mine;
  $("train-pause").textContent = state === "paused" ? "Resume" : "Pause";
  $("train-step").disabled = !mine;
  $("train-stop").disabled = !mine;
  $("use-model").disabled = runId === null || state === "diverged";
  $("train-save").disabled = runId === null || !yours || state === "diverged";
}

async function control(action) {
  try {
    const reply = await post(`/api/train/${action}`);
    if (reply.state) state = reply.state;
    updateButtons();
    return reply;
  } catch (err) {
    message(err.message, true);
    return null;
  }
}

$("train-start").addEventListener("click", async () => {
  const name = $("preset").value;
  const body = name === "custom" ? customSettings() : {preset: name};
  try {
    const reply = await post("/api/train/start", body);
    yours = true;
    state = "starting";
    message(`Started run ${reply.run} (${name === "custom" ? "your settings" : presets[name].title}).`);
    updateButtons();
    connect();
  } catch (err) {
    message(err.message, true);
  }
});
$("train-pause").addEventListener("click", () => control(state === "paused" ? "resume" : "pause"));
$("train-stop").addEventListener("click", () => control("stop"));
$("train-step").addEventListener("click", async () => {
  const result = await control("step");
  if (!result) return;
  showStep(result);
  message(`Took step ${result.step}: see "One step, up close" below the digits.`);
});
$("use-model").addEventListener("click", async () => {
  const reply = await control("use");
  if (!reply) return;
  const acc = reply.val_accuracy === null ? "" :
    `, validation accuracy ${(100 * reply.val_accuracy).toFixed(1)} %`;
  const m = message(`This browser's pages now use this network as it was at step ${reply.step}` +
                    `${acc} (layers ${reply.sizes.join("-")}). `);
  const link = document.createElement("a");
  link.href = "/";
  link.id = "to-draw-used";
  link.textContent = "Draw a digit for it →";
  m.append(link);
});
$("train-save").addEventListener("click", async () => {
  const reply = await control("save");
  if (reply) message(`Saved ${reply.saved} on the server (step ${reply.step}); serve it with ` +
                     `\`tinygrad-mnist serve ${reply.saved}\`.`);
});

// ------------------------------------------------------------------ events

// whether the run `run` is this browser's: asked again when a reconnected stream brings
// another run than before (one started elsewhere in the meantime)
async function refreshOwner(run) {
  try {
    const now = await (await fetch("/api/train/state")).json();
    if (now.run === run && runId === run) {
      yours = now.yours;
      updateButtons();
    }
  } catch (err) { /* the next connection asks again */ }
}

function onEvent(e) {
  if (e.settings) {  // the first event of a connection: the whole run so far
    if (e.run !== runId) {
      if (cur.x.length) prev = {x: cur.x, loss: cur.loss, label: cur.label};
      refreshOwner(e.run);
    }
    runId = e.run;
    cur = emptyRun();
    cur.label = e.preset;
    layers = e.layers;
    tileUnits = e.tile_units;
    $("weights").replaceChildren();
    $("weights-note").hidden = layers.length !== 1;
    makeCharts();
    drawDigitCards($("digits"), e.digit_images, e.digit_labels, null, null);
    if (e.preset !== "custom" && presets[e.preset]) showPreset(e.preset);
    else { fillSettings(e.settings); showPreset("custom"); }
  }
  for (const p of e.points) {
    cur.x.push(p[0]);
    cur.loss.push(p[1]);
    cur.acc.push(100 * p[2]);
    cur.grads.push(p.slice(4));
  }
  for (const [step, acc] of e.val) {
    cur.vx.push(step);
    cur.val.push(100 * acc);
  }
  if (e.tiles) drawTiles($("weights"), e.tiles, tileUnits);
  if (e.predictions) {
    drawDigitCards($("digits"), null, null, e.predictions, e.confidence);
  }
  state = e.state;
  showStatus(e);
  updateButtons();
  scheduleDraw();
  if (e.done && source) {
    source.close();
    source = null;
  }
}

function showStatus(e) {
  const epoch = `epoch ${Math.max(e.epoch, 1)} of ${e.epochs}`;
  const how = {starting: "starting", running: `running, ${Math.round(e.steps_per_second)} steps/s`,
               paused: "paused"}[e.state] || e.reason;
  $("status").textContent = `step ${e.step} · ${epoch} · ${how}`;
  const parts = [];
  if (e.loss !== null) parts.push(`loss ${e.loss.toFixed(3)}`,
                                  `batch accuracy ${(100 * e.accuracy).toFixed(1)} %`);
  if (e.val_accuracy !== undefined) {
    parts.push(`validation accuracy ${(100 * e.val_accuracy).toFixed(1)} % (step ${e.val_step})`);
  }
  parts.push(`learning rate ${e.lr.toPrecision(3)}`);
  $("numbers").textContent = parts.join(" · ");
  $("warning").hidden = !e.warning;
  $("warning").textContent = e.warning || "";
}

// ------------------------------------------------------------------ charts

// Tables of [x, ...columns] joined on x: one x array, null where a table has no value.
function align(tables) {
  const xs = [...new Set(tables.flatMap((t) => t[0]))].sort((a, b) => a - b);
  const at = new Map(xs.map((x, i) => [x, i]));
  const out = [xs];
  for (const t of tables) {
    for (const col of t.slice(1)) {
      const filled = new Array(xs.length).fill(null);
      t[0].forEach((x, i) => { filled[at.get(x)] = col[i]; });
      out.push(filled);
    }
  }
  return out;
}

function chanceLine(u) {
  const y = u.valToPos(LN10, "loss", true);
  const {left, top, width, height} = u.bbox;
  if (!Number.isFinite(y) || y < top || y > top + height) return;
  const ctx = u.ctx;
  ctx.save();
  ctx.strokeStyle = ctx.fillStyle = "#d9480f";
  ctx.globalAlpha = 0.7;
  ctx.setLineDash([6, 4]);
  ctx.beginPath();
  ctx.moveTo(left, y);
  ctx.lineTo(left + width, y);
  ctx.stroke();
  ctx.font = `${12 * devicePixelRatio}px system-ui, sans-serif`;
  ctx.fillText("2.30 = ln 10: guessing", left + 8 * devicePixelRatio, y - 5 * devicePixelRatio);
  ctx.restore();
}

const short = (v) => v === null ? "" : Math.abs(v) >= 1000 || (v !== 0 && Math.abs(v) < 0.01) ?
  v.toExponential(0) : String(+v.toPrecision(2));

function makeCharts() {
  for (const plot of [lossPlot, gradPlot]) if (plot) plot.destroy();
  $("loss-chart").replaceChildren();
  $("grad-chart").replaceChildren();
  const width = (id) => Math.max(280, $(id).clientWidth);
  lossPlot = new uPlot({
    width: width("loss-chart"), height: 260,
    scales: {x: {time: false}, loss: {distr: 3}, acc: {range: [0, 100]}},
    axes: [{label: "training step"},
           {scale: "loss", label: "loss (log scale)", values: (u, vs) => vs.map(short), size: 56},
           {scale: "acc", side: 1, label: "accuracy (%)", grid: {show: false}}],
    series: [{label: "step"},
             {label: "loss", scale: "loss", stroke: "#d9480f", width: 2, spanGaps: true},
             {label: "batch accuracy %", scale: "acc", stroke: "#1c7ed6", width: 1.5, spanGaps: true},
             {label: "validation accuracy %", scale: "acc", stroke: "#2b8a3e", paths: () => null,
              points: {show: true, size: 7, fill: "#2b8a3e"}},
             ...(prev ? [{label: `previous run's loss (${prev.label})`, scale: "loss",
                          stroke: "#adb5bd", width: 1.5, dash: [5, 4], spanGaps: true}] : [])],
    hooks: {draw: [chanceLine]},
    legend: {live: false},
  }, lossData(), $("loss-chart"));
  gradPlot = new uPlot({
    width: width("grad-chart"), height: 220,
    scales: {x: {time: false}, y: {distr: 3}},
    axes: [{label: "training step"},
           {label: "gradient norm (log)", values: (u, vs) => vs.map(short), size: 56}],
    series: [{label: "step"}, ...layers.map((name, i) => ({
      label: `layer ${i + 1} (${name})`, stroke: LAYER_COLOURS[i % LAYER_COLOURS.length],
      width: 1.5, spanGaps: true}))],
    legend: {live: false},
  }, gradData(), $("grad-chart"));
}

function lossData() {
  return align([[cur.x, cur.loss, cur.acc], [cur.vx, cur.val], ...(prev ? [[prev.x, prev.loss]] : [])]);
}

const GRAD_FLOOR = 1e-6;  // a gradient of 0 (dead ReLUs) is drawn here, at the bottom

function gradData() {
  return [cur.x, ...layers.map((_, l) => cur.grads.map((g) => Math.max(g[l], GRAD_FLOOR)))];
}

function scheduleDraw() {
  if (drawPending) return;
  drawPending = true;
  requestAnimationFrame(() => {
    drawPending = false;
    if (!lossPlot) return;
    lossPlot.setData(lossData());
    gradPlot.setData(gradData());
    $("loss-chart").dataset.points = cur.x.length;
  });
}

window.addEventListener("resize", () => {
  for (const [plot, id] of [[lossPlot, "loss-chart"], [gradPlot, "grad-chart"]]) {
    if (plot) plot.setSize({width: Math.max(280, $(id).clientWidth), height: plot.height});
  }
});

// ------------------------------------------------------------------ tiles and digits

function decode(b64) {
  return Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
}

function canvases(container, n) {
  while (container.children.length > n) container.lastChild.remove();
  while (container.children.length < n) {
    const c = document.createElement("canvas");
    c.width = c.height = SIDE;
    container.append(c);
  }
  return [...container.children];
}

// bytes 0..255 with 128 = 0 -> blue (negative), white, red (positive), as matplotlib's RdBu_r
function drawTiles(container, b64, n) {
  const bytes = decode(b64);
  canvases(container, n).forEach((canvas, k) => {
    const pen = canvas.getContext("2d");
    const img = pen.createImageData(SIDE, SIDE);
    for (let i = 0; i < SIDE * SIDE; i++) {
      const t = (bytes[k * SIDE * SIDE + i] - 128) / 127;
      const end = t >= 0 ? [178, 24, 43] : [33, 102, 172];
      const a = Math.min(1, Math.abs(t));
      for (let ch = 0; ch < 3; ch++) img.data[4 * i + ch] = 255 + (end[ch] - 255) * a;
      img.data[4 * i + 3] = 255;
    }
    pen.putImageData(img, 0, 0);
  });
}

function drawGrey(canvas, bytes, k) {
  const pen = canvas.getContext("2d");
  const img = pen.createImageData(SIDE, SIDE);
  for (let i = 0; i < SIDE * SIDE; i++) {
    const v = bytes[k * SIDE * SIDE + i];
    img.data[4 * i] = img.data[4 * i + 1] = img.data[4 * i + 2] = v;
    img.data[4 * i + 3] = 255;
  }
  pen.putImageData(img, 0, 0);
}

// Cards of digits: the picture (when `images` is given), the answer and the confidence or label.
function drawDigitCards(container, images, labels, answers, confidence) {
  if (images) {
    const bytes = decode(images);
    container.replaceChildren(...labels.map((label, k) => {
      const card = document.createElement("div");
      card.className = "digit-card";
      card.dataset.label = label;
      const canvas = document.createElement("canvas");
      canvas.width = canvas.height = SIDE;
      drawGrey(canvas, bytes, k);
      const answer = document.createElement("div");
      answer.className = "answer";
      answer.textContent = "?";
      const note = document.createElement("div");
      note.className = "note";
      card.append(canvas, answer, note);
      return card;
    }));
  }
  if (answers) {
    [...container.children].forEach((card, k) => {
      const right = answers[k] === Number(card.dataset.label);
      card.className = `digit-card ${right ? "right" : "wrong"}`;
      card.querySelector(".answer").textContent = answers[k];
      card.querySelector(".note").textContent = confidence ?
        `${Math.round(100 * confidence[k])} %${right ? "" : `, is ${card.dataset.label}`}` :
        (right ? "right" : `is ${card.dataset.label}`);
    });
  }
}

function showStep(r) {
  $("step-result").hidden = false;
  const downhill = r.loss_after < r.loss ? "lower: the step went downhill for this batch" :
    "not lower: with momentum a step also follows the direction of the steps before it";
  $("step-text").textContent = `Step ${r.step} trained on a batch of ${r.batch_size} digits at ` +
    `learning rate ${r.lr.toPrecision(3)}. Its loss on that batch was ${r.loss.toFixed(4)} before ` +
    `the update and ${r.loss_after.toFixed(4)} after it, ${downhill}.`;
  const labels = r.labels;
  drawDigitCards($("step-batch"), r.images, labels, null, null);
  [...$("step-batch").children].forEach((card, k) => {
    const right = r.after[k] === labels[k];
    card.className = `digit-card ${right ? "right" : "wrong"}`;
    card.querySelector(".answer").textContent = `${r.before[k]} → ${r.after[k]}`;
    card.querySelector(".note").textContent = `label ${labels[k]}`;
  });
  const n = layers.length ? tileUnits : 16;
  drawTiles($("step-before"), r.tiles_before, n);
  drawTiles($("step-after"), r.tiles_after, n);
  drawTiles($("step-change"), r.tiles_change, n);
  $("step-scale").textContent = `Before and after look alike: this step changed no weight by more ` +
    `than ${r.change_scale.toPrecision(2)}, while the largest weight is ` +
    `${r.weight_scale.toPrecision(2)}. The change row is magnified to show it, all tiles on one ` +
    `scale: red where the step raised a weight, blue where it lowered one. Learning is thousands ` +
    `of such small steps.`;
}

// ------------------------------------------------------------------ start

async function init() {
  try {
    const reply = await (await fetch("/api/train/presets")).json();
    presets = Object.fromEntries(reply.presets.map((p) => [p.name, p]));
    showPreset("default");
    const now = await (await fetch("/api/train/state")).json();
    if (now.run) {
      yours = now.yours;
      state = now.state;
      if (!yours) message("This run was started in another browser: you can watch it and use its model.");
      connect();
    }
  } catch (err) {
    message(`Could not reach the server: ${err.message}`, true);
  }
  updateButtons();
}

init();
