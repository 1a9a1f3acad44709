// The draw-a-digit page: draw on #canvas, send it to /api/predict, show what comes back.
// Plain JavaScript, no build step, no network beyond this server.
"use strict";

const canvas = document.getElementById("canvas");
const pen = canvas.getContext("2d");
const $ = (id) => document.getElementById(id);
const INK_WIDTH = 22;  // thick like MNIST strokes once the digit is shrunk to 20 pixels
let drawing = false, inked = false, last = null, timer = null, asked = 0;
const EMPTY = Object.fromEntries(["layers", "bars"].map((id) => [id, $(id).innerHTML]));

function clearCanvas() {
  pen.fillStyle = "white";  // white paper, black ink: the server decides from the border
  pen.fillRect(0, 0, canvas.width, canvas.height);
  inked = false;
}

function point(event) {
  const box = canvas.getBoundingClientRect();
  return [(event.clientX - box.left) * canvas.width / box.width,
          (event.clientY - box.top) * canvas.height / box.height];
}

function stroke(to) {
  pen.strokeStyle = "black";
  pen.fillStyle = "black";
  pen.lineWidth = INK_WIDTH;
  pen.lineCap = pen.lineJoin = "round";
  pen.beginPath();
  if (last) {
    pen.moveTo(last[0], last[1]);
    pen.lineTo(to[0], to[1]);
    pen.stroke();
  } else {
    pen.arc(to[0], to[1], INK_WIDTH / 2, 0, 2 * Math.PI);
    pen.fill();
  }
  last = to;
  inked = true;
}

canvas.addEventListener("pointerdown", (event) => {
  drawing = true;
  last = null;
  canvas.setPointerCapture(event.pointerId);
  stroke(point(event));
});
canvas.addEventListener("pointermove", (event) => {
  if (!drawing) return;
  stroke(point(event));
  clearTimeout(timer);
  timer = setTimeout(predict, 150);  // debounced while the pen moves
});
function endStroke() {
  if (!drawing) return;
  drawing = false;
  last = null;
  clearTimeout(timer);
  predict();
}
canvas.addEventListener("pointerup", endStroke);
canvas.addEventListener("pointercancel", endStroke);

function status(text) { $("status").textContent = text; }

// data-busy on #prediction: "1" while the answer to the latest drawing is still on its way
function busy(flag) { $("prediction").dataset.busy = flag ? "1" : "0"; }

async function predict() {
  if (!inked) return;
  const mine = ++asked;  // a newer request's answer wins; older ones are dropped
  busy(true);
  try {
    const data = await post("/api/predict", {image: canvas.toDataURL("image/png")});
    if (mine === asked) show(data);
  } catch (error) {
    if (mine === asked) status("Could not read the drawing: " + error.message);
  }
  if (mine === asked) busy(false);
}

async function teach(label) {
  if (!inked) { status("Draw a digit first, then teach."); return; }
  const mine = ++asked;
  busy(true);
  try {
    const data = await post("/api/teach", {image: canvas.toDataURL("image/png"), label: label});
    if (mine === asked) show(data.explanation);
    showStep(data);
  } catch (error) {
    status("Could not teach: " + error.message);
  }
  if (mine === asked) busy(false);
}

function show(data) {
  const p = data.probs;
  $("prediction").textContent = String(data.prediction);
  $("confidence").textContent = `(${(100 * p[data.prediction]).toFixed(1)}% sure)`;
  status("");
  drawPixels($("input"), data.input, (v) => [255 * v, 255 * v, 255 * v]);
  const s = data.saliency.flat(), top = Math.max(1e-12, ...s.map(Math.abs));
  $("saliency-scale").textContent = `±${top.toPrecision(2)}`;
  const ink = data.input.flat();
  drawPixels($("saliency"), data.saliency, (v, i) => {
    const paper = 255 - 90 * ink[i];  // the digit in light grey underneath
    const a = Math.min(1, Math.abs(v) / top);  // no colour = no effect
    return v > 0 ? [paper + (230 - paper) * a, paper * (1 - a), paper * (1 - a)]
                 : [paper * (1 - a), paper * (1 - 0.55 * a), paper + (230 - paper) * a];
  });
  drawLayers(data.activations);
  drawBars($("bars"), p, data.prediction);
}

function drawPixels(target, rows, color) {
  const h = rows.length, w = rows[0].length, ctx = target.getContext("2d");
  const image = ctx.createImageData(w, h);
  rows.flat().forEach((v, i) => {
    const [r, g, b] = color(v, i);
    image.data.set([r, g, b, 255], 4 * i);
  });
  const small = document.createElement("canvas");
  small.width = w;
  small.height = h;
  small.getContext("2d").putImageData(image, 0, 0);
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(small, 0, 0, target.width, target.height);
}

function drawLayers(layers) {
  const box = $("layers");
  box.replaceChildren();
  if (!layers.length) {
    box.textContent = "(this network has no hidden layer: the pixels go straight to the outputs)";
  }
  layers.forEach((values, i) => {
    const cols = Math.ceil(Math.sqrt(values.length * 2)), rows = Math.ceil(values.length / cols);
    const top = Math.max(1e-12, ...values);
    const grid = [];
    for (let r = 0; r < rows; r++) grid.push(values.slice(r * cols, (r + 1) * cols).concat(
      Array(Math.max(0, (r + 1) * cols - values.length)).fill(-1)));
    const div = document.createElement("div");
    div.className = "layer";
    const label = document.createElement("div");
    label.className = "hint";
    label.textContent = `hidden layer ${i + 1}: ${values.length} neurons, ` +
      `${values.filter((v) => v > 0).length} active`;
    const c = document.createElement("canvas");
    const cell = Math.max(3, Math.min(10, Math.floor(240 / cols)));
    c.width = cols * cell;
    c.height = rows * cell;
    div.append(label, c);
    box.append(div);
    drawPixels(c, grid, (v) => v < 0 ? [250, 250, 250] : [255 * v / top, 255 * v / top, 80 * v / top]);
  });
}

function drawBars(box, probs, prediction) {
  box.replaceChildren();
  probs.forEach((p, d) => {
    const bar = document.createElement("div");
    bar.className = "bar" + (d === prediction ? " top" : "");
    bar.style.width = `${100 * p}%`;
    box.append(text(String(d)), wrap(bar), text(`${(100 * p).toFixed(1)}%`));
  });
}

function showStep(data) {
  const box = $("step-bars"), L = data.label;
  box.replaceChildren();
  data.before.forEach((p, d) => {
    const pair = document.createElement("div");
    pair.className = "pair";
    for (const [when, value] of [["before", p], ["after", data.after[d]]]) {
      const bar = document.createElement("div");
      bar.className = `vbar ${when}`;
      bar.id = `${when}-${d}`;  // the tests read data-prob
      bar.dataset.prob = String(value);
      bar.style.height = `${100 * value}%`;
      bar.title = `${when} the step: ${(100 * value).toFixed(1)}%`;
      pair.append(bar);
    }
    const column = document.createElement("div");
    column.className = "column" + (d === L ? " taught" : "");
    column.append(pair, text(String(d)));
    box.append(column);
  });
  $("taught-text").textContent = `You taught "${L}": the network's belief that this drawing is a ` +
    `${L} went from ${(100 * data.before[L]).toFixed(1)}% to ${(100 * data.after[L]).toFixed(1)}%.`;
  const held = data.held_out;  // absent when the server has no MNIST to check it on
  $("held-out").hidden = !held;
  if (held) {
    const change = held.after - held.before, pct = (v) => `${(100 * v).toFixed(1)}%`;
    $("held-out").textContent = `And on ${held.digits.toLocaleString("en")} test digits it never ` +
      `saw, accuracy went from ${pct(held.before)} to ${pct(held.after)}` +
      (change < 0 ? ": this lesson made it worse on other digits (interference)." :
       change > 0 ? ": this lesson helped on other digits too." : ": no change elsewhere.");
  }
  $("taught").hidden = false;
  $("untaught").hidden = true;
}

function text(s) {
  const span = document.createElement("span");
  span.textContent = s;
  return span;
}

function wrap(child) {
  const div = document.createElement("div");
  div.append(child);
  return div;
}

$("clear").addEventListener("click", () => {
  clearCanvas();
  ++asked;
  busy(false);
  $("prediction").textContent = "?";
  $("confidence").textContent = "";
  for (const [id, html] of Object.entries(EMPTY)) $(id).innerHTML = html;  // the page's own markup
  for (const id of ["input", "saliency"]) {
    const c = $(id);
    c.getContext("2d").clearRect(0, 0, c.width, c.height);
  }
  $("taught").hidden = true;
  $("untaught").hidden = false;
  status("Draw with the mouse, a pen or a finger.");
});
for (let d = 0; d < 10; d++) $(`teach-${d}`).addEventListener("click", () => teach(d));
$("reset").addEventListener("click", async () => {
  const mine = ++asked;
  busy(true);
  try {
    await post("/api/reset");
  } catch (error) {
    status("Could not reset: " + error.message);
    busy(false);
    return;
  }
  $("taught").hidden = true;
  $("untaught").hidden = false;
  if (mine === asked) {
    if (inked) await predict(); else busy(false);
  }
  status("Back to the trained network: what you taught here is forgotten.");
});
// the graph explorer (/graph) shows this drawing when it is opened from here, in this tab
$("to-graph").addEventListener("click", () => {
  try {
    if (inked) sessionStorage.setItem("tinygrad_mnist.drawing", canvas.toDataURL("image/png"));
    else sessionStorage.removeItem("tinygrad_mnist.drawing");
  } catch (error) { /* storage turned off: the explorer opens on a test digit */ }
});
clearCanvas();
