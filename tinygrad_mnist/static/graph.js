// The graph explorer: step through the engine's forward order and backward walk of one graph.
// Served at /graph (its data from POST /api/graph) and inlined into report.html (its data in
// #explorer-data: no server, works from file://). Plain JavaScript, no build step; it computes
// nothing itself: every value, gradient and step shown comes from the engine, in the data.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const root = $("explorer");
  if (!root) return;
  const SVG_NS = "http://www.w3.org/2000/svg";
  const embedded = $("explorer-data");  // the report's data: present only there
  let data = null;  // the graph as the server (or the report) sent it
  let index = null;  // what is looked up often, derived from `data` once
  let view = null;  // where the walk-through is: {fwd, bwd, selected, folded}
  let request = null;  // the body that produced `data` (served page): Update sends it again
  let asked = 0;  // a newer request's answer wins; older ones are dropped

  // ------------------------------------------------------------------ small helpers

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") e.className = v; else if (k === "text") e.textContent = v;
      else if (k.startsWith("data-")) e.dataset[k.slice(5).replace(/-(.)/g, (_, c) => c.toUpperCase())] = v;
      else e.setAttribute(k, v);
    }
    for (const c of children) if (c !== null && c !== undefined) e.append(c);
    return e;
  }

  // a number as people read it: six significant digits, exponent when tiny or huge
  function fmt(x) {
    if (x === null || x === undefined) return "—";
    if (x === 0) return "0";
    const a = Math.abs(x);
    const s = a >= 1e-3 && a < 1e6 ? x.toPrecision(6) : x.toExponential(3);
    return s.replace(/(\.\d*?)0+(e|$)/, "$1$2").replace(/\.(e|$)/, "$1");
  }

  function shapeText(shape) {
    return shape.length ? `(${shape.join(", ")}${shape.length === 1 ? "," : ""})` : "scalar";
  }

  const node = (id) => data.nodes[id];
  const isNumber = (n) => n.value !== null;
  const title = (n) => n.title;

  function status(text) {
    const s = $("status");
    if (s) s.textContent = text;
  }

  // ------------------------------------------------------------------ the walk's state

  function computed(id) {
    const k = index.forwardAt[id];
    return k === undefined || k < view.fwd;  // leaves are known from the start
  }

  function gradKnown(id) {
    if (view.bwd === 0) return false;
    if (id === data.output) return true;
    const last = index.lastSent[id];
    return last !== undefined && last < view.bwd;  // every contribution has arrived
  }

  function current() {
    if (view.bwd > 0) return data.backward_steps[view.bwd - 1].node;
    if (view.fwd > 0) return data.forward_order[view.fwd - 1];
    return null;
  }

  function buildIndex() {
    const forwardAt = {}, lastSent = {}, senders = {};
    data.forward_order.forEach((id, k) => { forwardAt[id] = k; });
    data.backward_steps.forEach((step, k) => step.to_inputs.forEach((t) => {
      lastSent[t.node] = k;
      senders[t.node] = (senders[t.node] || 0) + 1;
    }));
    const nodeEls = {}, edges = [];
    for (const g of $("graph").querySelectorAll("g.node[data-node]")) nodeEls[g.dataset.node] = g;
    for (const g of $("graph").querySelectorAll("g.edge[data-from]")) edges.push(g);
    const clusterEls = {};
    for (const g of $("graph").querySelectorAll("g.cluster[data-cluster]")) clusterEls[g.dataset.cluster] = g;
    return {forwardAt, lastSent, senders, nodeEls, edges, clusterEls};
  }

  // ------------------------------------------------------------------ showing a graph

  function show(newData, body) {
    data = newData;
    request = body || null;
    const box = $("graph");
    box.replaceChildren();
    if (data.svg) {
      box.innerHTML = data.svg;  // Graphviz's SVG: shapes and text, no scripts or styles
    } else {
      box.append(el("p", {class: "x-error", text: data.svg_error || "no picture of the graph"}));
    }
    index = buildIndex();
    view = {fwd: 0, bwd: 0, selected: null, folded: new Set()};
    decorate();
    showBadges();
    showOutcome();
    $("update-result").hidden = true;
    $("update").disabled = embedded ? !data.update : false;
    $("fold-modules").hidden = !data.clusters.some((c) => c.parent !== null);
    $("fold-hint").hidden = !data.clusters.length;
    $("norm-hint").hidden = data.source === "expression";
    render();
    root.dataset.source = data.source;
    root.dataset.shown = String(Number(root.dataset.shown || 0) + 1);  // for tests and scripts
    if (!root.dataset.readyMs) root.dataset.readyMs = String(Math.round(performance.now()));
    root.dataset.ready = "1";
  }

  function decorate() {
    for (const [id, g] of Object.entries(index.nodeEls)) {
      g.classList.add(`k-${node(id).kind}`);
      for (const t of g.querySelectorAll("text")) {
        for (const which of ["data", "grad"]) {
          if (!t.textContent.startsWith(`${which} `)) continue;
          t.classList.add(`t-${which}`);
          if (data.source !== "expression") fillLine(g, t, node(id), which);
        }
      }
      g.addEventListener("click", (event) => {
        event.stopPropagation();
        view.selected = Number(id);
        render();
      });
    }
    for (const badge of data.gradcheck) {  // a mark in the corner of each checked parameter's box
      const g = index.nodeEls[badge.node];
      if (!g) continue;
      const box = g.querySelector("path, polygon").getBBox();
      const mark = document.createElementNS(SVG_NS, "text");
      mark.setAttribute("x", String(box.x + box.width - 4));
      mark.setAttribute("y", String(box.y + 12));
      mark.setAttribute("text-anchor", "end");
      mark.setAttribute("class", `gradcheck-mark ${badge.ok ? "ok" : "bad"}`);
      mark.textContent = badge.ok ? "✓" : "✗";
      g.append(mark);
    }
    for (const c of data.clusters) {
      const g = index.clusterEls[c.id];
      if (!g) continue;
      g.addEventListener("click", (event) => {
        event.stopPropagation();
        if (view.folded.has(c.id)) view.folded.delete(c.id); else view.folded.add(c.id);
        render();
      });
    }
  }

  // a tensor's box has a line for its data and one for its gradient: the norm of each (the
  // layout is the same for every digit, so the server leaves them for the page to fill)
  function fillLine(g, t, n, which) {
    const scalar = which === "data" ? n.value : n.grad;
    const norm = which === "data" ? n.value_norm : n.grad_norm;
    t.textContent = scalar !== null ? `${which} ${fmt(scalar)}`
      : norm !== null ? `${which} ‖·‖ ${fmt(norm)}` : `${which}: none`;
    const shape = g.querySelector("path, polygon").getBBox();
    t.setAttribute("x", String(shape.x + shape.width / 2));
    t.setAttribute("text-anchor", "middle");
  }

  // ------------------------------------------------------------------ drawing the state

  function render() {
    const now = current();
    const step = view.bwd > 0 ? data.backward_steps[view.bwd - 1] : null;
    const feeding = new Set(step ? step.to_inputs.map((t) => t.node) : []);
    const folds = foldOwners();
    for (const [key, g] of Object.entries(index.nodeEls)) {
      const id = Number(key);
      g.classList.toggle("pending", !computed(id));
      g.classList.toggle("has-grad", gradKnown(id));
      g.classList.toggle("current", id === now);
      g.classList.toggle("receiving", feeding.has(id));
      g.classList.toggle("selected", id === view.selected);
      g.classList.toggle("folded", folds[id] !== undefined);
    }
    for (const g of index.edges) {
      const from = Number(g.dataset.from), to = Number(g.dataset.to);
      g.classList.toggle("flow-forward", view.bwd === 0 && to === now);
      g.classList.toggle("flow-backward", step !== null && to === now);
      g.classList.toggle("folded", folds[from] !== undefined && folds[from] === folds[to]);
    }
    for (const c of data.clusters) {
      const g = index.clusterEls[c.id];
      if (!g) continue;
      const hidden = ancestors(c).some((a) => view.folded.has(a));
      g.classList.toggle("folded", hidden);
      g.classList.toggle("collapsed", view.folded.has(c.id) && !hidden);
      g.classList.toggle("has-current", view.folded.has(c.id) && c.nodes.includes(now));
      foldNote(c, g, view.folded.has(c.id) && !hidden);
    }
    const F = data.forward_order.length, B = data.backward_steps.length;
    $("step-forward").disabled = view.fwd >= F || view.bwd > 0;
    $("step-backward").disabled = view.bwd >= B;
    $("run-all").disabled = view.fwd >= F && view.bwd >= B;
    $("reset-steps").disabled = view.fwd === 0 && view.bwd === 0;
    const foldable = data.clusters.filter((c) => c.parent !== null);
    $("fold-modules").textContent = foldable.length && foldable.every((c) => view.folded.has(c.id))
      ? "Unfold layers" : "Fold layers";
    stepInfo(now);
    stepDetail(now, step);
    nodeDetail(view.selected !== null ? view.selected : now);
  }

  function ancestors(c) {
    const out = [];
    for (let p = c.parent; p !== null; p = data.clusters[p].parent) out.push(p);
    return out;
  }

  // node id -> the outermost folded cluster it is hidden in
  function foldOwners() {
    const owner = {};
    const outermost = data.clusters.filter((c) => view.folded.has(c.id) &&
                                              !ancestors(c).some((a) => view.folded.has(a)));
    for (const c of outermost) for (const id of c.nodes) owner[id] = c.id;
    return owner;
  }

  function foldNote(c, g, show) {
    let note = g.querySelector("text.fold-note");
    if (show && !note) {
      const box = g.getBBox();
      note = document.createElementNS(SVG_NS, "text");
      note.setAttribute("class", "fold-note");
      note.setAttribute("x", String(box.x + box.width / 2));
      note.setAttribute("y", String(box.y + box.height / 2 + 8));
      note.setAttribute("text-anchor", "middle");
      note.textContent = `${c.nodes.map((id) => node(id).label).join(", ")} folded: click to unfold`;
      g.append(note);
    }
    if (note) note.classList.toggle("shown", show);
  }

  function stepInfo(now) {
    const F = data.forward_order.length, B = data.backward_steps.length;
    let text;
    if (view.fwd === 0 && view.bwd === 0) {
      text = "Nothing computed yet: only the inputs and parameters are known. Step forward " +
        "computes the ops one at a time, in the order the engine computed them.";
    } else if (view.bwd === 0) {
      const n = node(now);
      text = `Forward step ${view.fwd} of ${F}: ${n.op} computed ${title(n)}` +
        (isNumber(n) ? ` = ${fmt(n.value)}.` : `, ${shapeText(n.shape)}.`) +
        (view.fwd === F ? " The forward pass is done: Step backward starts the backward walk." : "");
    } else {
      const n = node(now);
      text = `Backward step ${view.bwd} of ${B}: at ${title(n)} (${n.op}), the gradient that ` +
        "reached it goes on to its inputs, times the op's local derivative." +
        (view.bwd === B ? ` The backward walk is done: every ${data.source === "expression" ? "name" :
          "parameter"} has its gradient; Update takes one step with them.` : "");
    }
    $("step-info").textContent = text;
  }

  // ------------------------------------------------------------------ the step panel

  function stepDetail(now, step) {
    const body = $("step-body");
    body.replaceChildren();
    if (now === null) {
      body.append(el("p", {class: "x-hint", text: "Step forward or backward to see what the " +
        "engine does at each op."}));
      return;
    }
    const n = node(now);
    if (!step) {
      body.append(el("p", {}, el("b", {text: `Forward: ${n.op}`}), ` computes ${title(n)} from ` +
        n.inputs.map((i) => title(node(i))).join(", ") + "."));
      if (isNumber(n) && n.inputs.every((i) => isNumber(node(i)))) {
        body.append(el("p", {class: "x-formula", text: formula(n)}));
      } else {
        body.append(el("p", {text: `Its result has shape ${shapeText(n.shape)}: ${statsText(n.stats.value)}.`}));
      }
      return;
    }
    body.append(el("p", {}, el("b", {text: `Backward: ${n.op}`}), ` at ${title(n)}.`));
    const up = step.upstream !== null ? fmt(step.upstream) : `‖·‖ = ${fmt(step.upstream_norm)}, shape ${shapeText(n.shape)}`;
    const out = node(data.output).symbol, wrap = (s) => (s.includes(" ") ? `(${s})` : ` ${s}`);
    body.append(el("p", {}, `Upstream gradient: d${wrap(out)} / d${wrap(n.symbol)}, how much ${out} changes ` +
      "per unit change of this result: ", el("b", {class: "x-num", text: up}), thumb(n)));
    const table = el("table", {class: "x-steps"});
    table.append(el("tr", {}, el("th", {text: "to input"}), el("th", {text: "local rule"}),
      el("th", {text: "sent: upstream × local"})));
    for (const t of step.to_inputs) {
      const sent = t.grad !== null && step.upstream !== null && t.local !== undefined
        ? `${fmt(step.upstream)} × ${fmt(t.local)} = ${fmt(t.grad)}`
        : t.grad !== null ? fmt(t.grad) : `‖·‖ = ${fmt(t.grad_norm)}, shape ${shapeText(node(t.node).shape)}`;
      // a gradient that is the input's whole gradient (its only use) can be shown as its picture
      const whole = index.senders[t.node] === 1 ? thumb(node(t.node)) : null;
      table.append(el("tr", {}, el("td", {text: title(node(t.node))}),
        el("td", {class: "x-rule", text: t.rule || "—"}), el("td", {class: "x-num", text: sent}, whole)));
    }
    body.append(table);
    if (step.to_inputs.length < n.inputs.length) {
      body.append(el("p", {class: "x-hint", text: "Inputs that need no gradient (the data, " +
        "constants) get none: the engine skips them."}));
    }
  }

  // a tensor's gradient as a small picture (red > 0, blue < 0), beside the numbers of a step
  function thumb(n) {
    if (!n.picture || !n.picture.grad) return null;
    return el("img", {src: n.picture.grad, class: `x-thumb x-${n.picture.kind}`,
                      alt: `the gradient of ${title(n)}`});
  }

  const SYMBOL = {Add: "+", Sub: "−", Mul: "×", Div: "÷", Pow: "^"};

  function formula(n) {
    const args = n.inputs.map((i) => fmt(node(i).value));
    const names = n.inputs.map((i) => node(i).title);
    const sym = SYMBOL[n.op];
    const expr = sym ? (xs) => xs.join(` ${sym} `) : n.op === "Neg" ? (xs) => `−${xs[0]}`
      : (xs) => `${n.label}(${xs.join(", ")})`;
    return `${expr(names)} = ${expr(args)} = ${fmt(n.value)}`;
  }

  function statsText(s) {
    return s ? `min ${fmt(s.min)}, max ${fmt(s.max)}, norm ${fmt(s.norm)}` : "—";
  }

  // ------------------------------------------------------------------ the node panel

  function field(name, n, which) {
    const known = which === "value" ? computed(n.id) : gradKnown(n.id);
    const scalar = n[which], norm = n[`${which}_norm`];
    const dd = el("dd", {"data-field": which});
    if (!known) {
      dd.textContent = which === "value" ? "not computed yet" : "not reached yet by the backward walk";
      dd.classList.add("x-hint");
    } else if (scalar !== null) {
      dd.textContent = fmt(scalar);
      dd.dataset.exact = String(scalar);
      dd.dataset.kind = "number";
    } else if (norm !== null) {
      dd.textContent = `‖${which}‖ = ${fmt(norm)}`;
      dd.dataset.exact = String(norm);
      dd.dataset.kind = "norm";
    } else {
      dd.textContent = "none: no gradient flows here";
    }
    return [el("dt", {text: name}), dd];
  }

  function nodeDetail(id) {
    const body = $("node-body");
    body.replaceChildren();
    if (id === null) {
      $("node-title").textContent = "A node";
      body.append(el("p", {class: "x-hint", text: "Click a node of the graph to see its value and gradient."}));
      return;
    }
    const n = node(id);
    $("node-title").textContent = title(n);
    body.dataset.node = String(id);
    const kind = {op: `the result of ${n.op}`, parameter: `parameter ${n.param}`,
                  input: "an input", constant: "a constant"}[n.kind];
    body.append(el("p", {class: "x-facts", text: `${kind} · ${shapeText(n.shape)} · ${n.dtype}`}));
    body.append(el("dl", {class: "x-fields"}, ...field("value", n, "value"),
      ...field("gradient", n, "grad")));
    if (n.picture && computed(id)) body.append(pictures(n));
    if (n.values && !n.picture) body.append(numbers(n));
    body.append(el("div", {id: "neuron", class: "x-neuron"}));
    const badge = n.gradcheck;
    if (badge) body.append(badgeRows(badge));
  }

  function pictures(n) {
    const p = n.picture, box = el("div", {class: "x-pictures"});
    for (const which of ["value", "grad"]) {
      if (!p[which] || (which === "grad" && !gradKnown(n.id))) continue;
      const img = el("img", {src: p[which], class: `x-pic x-${p.kind}`,
                             alt: `${which} of ${title(n)} as a picture`});
      img.addEventListener("click", (event) => pictureClick(n, event, img));
      const caption = el("figcaption", {}, el("b", {text: which === "value" ? "value" : "gradient"}),
        el("br"), statsText(n.stats[which]));
      box.append(el("figure", {}, img, caption));
    }
    const how = {digit: "28×28 pixels; click one for its numbers.",
      grid: "One square per neuron, row by row; click one to see its numbers" +
        (termsOf(n) ? " and its sum z = Σ wᵢxᵢ + b." : "."),
      tiles: `The ${p.units ? p.units.length : 0} units with the largest gradient, each unit's 784 ` +
        `weights as a 28×28 picture (units ${p.units ? p.units.join(", ") : ""}).`,
      heatmap: p.block > 1 ? `Rows × columns, averaged over ${p.block}×${p.block} blocks.` : "Rows × columns."}[p.kind];
    box.append(el("p", {class: "x-hint", text: how + " Red > 0, blue < 0, white 0; pictures " +
      "of values ≥ 0 run from black to white. Each picture is scaled to its own largest |number|."}));
    return box;
  }

  function termsOf(n) {
    if (n.terms) return n;
    if (n.op === "ReLU" && node(n.inputs[0]).terms) return node(n.inputs[0]);
    return null;
  }

  function pictureClick(n, event, img) {
    const p = n.picture;
    const x = event.offsetX / img.clientWidth, y = event.offsetY / img.clientHeight;
    let unit;
    if (p.kind === "grid") unit = Math.floor(y * p.rows) * p.cols + Math.floor(x * p.cols);
    else if (p.kind === "digit") unit = Math.floor(y * 28) * 28 + Math.floor(x * 28);
    else return;
    if (unit < (n.values ? n.values.length : 0)) showUnit(n, unit);
  }

  function numbers(n) {
    const table = el("table", {class: "x-numbers"});
    table.append(el("tr", {}, el("th", {text: "#"}), el("th", {text: "value"}), el("th", {text: "gradient"})));
    n.values.forEach((v, i) => {
      const row = el("tr", {"data-unit": String(i)}, el("td", {text: String(i)}),
        el("td", {class: "x-num", text: fmt(v)}),
        el("td", {class: "x-num", text: n.grads && gradKnown(n.id) ? fmt(n.grads[i]) : "—"}));
      if (termsOf(n)) {
        row.classList.add("x-clickable");
        row.addEventListener("click", () => showUnit(n, i));
      }
      table.append(row);
    });
    const wrap = el("div", {}, table);
    if (termsOf(n)) wrap.append(el("p", {class: "x-hint", text: "Click a row to see that neuron's sum."}));
    return wrap;
  }

  // one number of a tensor: and for a neuron, its sum z = Σ wᵢxᵢ + b, by its largest terms
  function showUnit(n, j) {
    const box = $("neuron");
    box.replaceChildren();
    const grad = n.grads && gradKnown(n.id) ? n.grads[j] : null;
    const where = n.picture && n.picture.kind === "digit" ? `pixel (row ${Math.floor(j / 28)}, column ${j % 28})` : `entry ${j}`;
    box.append(el("p", {}, el("b", {text: `${title(n)}, ${where}: `}), `value ${fmt(n.values[j])}` +
      (grad !== null ? `, gradient ${fmt(grad)}` : "")));
    const a = termsOf(n);
    if (!a) return;
    const T = a.terms, b = node(T.b_node).values[j], z = a.values[j];
    const rows = T.index[j].map((i, k) => el("tr", {},
      el("td", {text: `x${i} · w${i},${j}`}), el("td", {class: "x-num", text: `${fmt(T.x[j][k])} × ${fmt(T.w[j][k])}`}),
      el("td", {class: "x-num", text: `= ${fmt(T.product[j][k])}`}),
      el("td", {class: "x-num", text: T.wgrad && gradKnown(T.w_node) ? fmt(T.wgrad[j][k]) : "not yet"})));
    const shown = T.product[j].reduce((s, v) => s + v, 0);
    const rest = T.nonzero - T.index[j].length;
    const table = el("table", {class: "x-terms"},
      el("tr", {}, el("th", {text: "term"}), el("th", {text: "xᵢ × wᵢⱼ"}), el("th", {text: ""}),
        el("th", {text: "gradient of wᵢⱼ"})), ...rows,
      el("tr", {}, el("td", {text: `the other ${rest} terms`}), el("td", {}),
        el("td", {class: "x-num", text: `= ${fmt(z - b - shown)}`}), el("td", {text: "(by subtraction)"})),
      el("tr", {}, el("td", {text: `bias b${j}`}), el("td", {}), el("td", {class: "x-num", text: `+ ${fmt(b)}`}), el("td", {})),
      el("tr", {class: "x-total"}, el("td", {text: `z${j}`}), el("td", {}),
        el("td", {class: "x-num", text: `= ${fmt(z)}`}), el("td", {})));
    box.append(el("p", {}, el("b", {text: `Neuron ${j}: z${j} = Σᵢ xᵢ·wᵢ,${j} + b${j}`}),
      ` over ${T.inputs} inputs, ${T.nonzero} of them not 0. The largest terms:`), table);
    if (n !== a) box.append(el("p", {text: `Then ReLU: a${j} = max(0, z${j}) = ${fmt(n.values[j])}.`}));
    const g = a.grads && gradKnown(a.id) ? a.grads[j] : null;
    if (g !== null) {
      box.append(el("p", {class: "x-hint", text: `The gradient reaching z${j} is ${fmt(g)}; each ` +
        `weight wᵢ,${j} gets xᵢ × ${fmt(g)} (the chain rule), so weights of inputs that are 0 ` +
        "get none. The same sums micrograd computes one scalar at a time, done for every neuron at once."}));
    }
  }

  function badgeRows(badge) {
    const table = el("table", {class: "x-check"});
    table.append(el("tr", {}, el("th", {text: "entry"}), el("th", {text: "backprop"}),
      el("th", {text: "finite difference"}), el("th", {text: "relative error"})));
    for (const r of badge.rows) {
      table.append(el("tr", {}, el("td", {text: r.index.length ? `[${r.index.join(", ")}]` : "—"}),
        el("td", {class: "x-num", text: fmt(r.analytic)}), el("td", {class: "x-num", text: fmt(r.numerical)}),
        el("td", {class: `x-num ${r.agree ? "ok" : "bad"}`, text: r.relative_error.toExponential(1)})));
    }
    return el("div", {class: "x-badge-detail"}, el("p", {}, el("b", {text: "Gradient check: "}),
      badge.ok ? "backprop agrees with finite differences." : "backprop and finite differences disagree!",
      badge.tiny ? " (These gradients are too small for finite differences to measure to a " +
        "relative error: they agree within 10⁻⁷.)" : ""), table);
  }

  // ------------------------------------------------------------------ badges and the outcome

  function showBadges() {
    const box = $("gradchecks");
    box.replaceChildren();
    for (const b of data.gradcheck) {
      const badge = el("button", {type: "button", class: `gradcheck ${b.ok ? "ok" : "bad"}`,
        "data-node": String(b.node), text: `${b.ok ? "✓" : "✗"} ${b.param}: ${!b.rows.length ?
          "not checkable here" : b.tiny ? "agrees within 1e-7 (gradients near 0)" :
          `relative error ${b.worst.toExponential(1)}`}`});
      badge.addEventListener("click", () => { view.selected = b.node; render(); });
      box.append(badge);
    }
  }

  function showOutcome() {
    const box = $("outcome-body");
    box.replaceChildren();
    if (data.source === "expression") {
      box.append(el("p", {}, `${title(node(data.output))} = `, el("b", {text: fmt(node(data.output).value)})),
        el("p", {class: "x-hint", text: "Update moves every name one step against its gradient " +
          "(value − learning rate × gradient): the output goes down."}));
      return;
    }
    const how = {true: "its true label", given: "the label you chose", predicted: "the network's own answer"};
    box.append(el("p", {}, `The network says `, el("b", {text: String(data.prediction)}),
      ` (${(100 * data.probs[data.prediction]).toFixed(1)}% sure). The loss is measured against ` +
      `label ${data.label} (${how[data.label_source] || "the label"}): cross-entropy = ` +
      `−log p(${data.label}) = `, el("b", {text: fmt(data.loss)}), "."));
    box.append(bars(data.probs, null, data.label, "probs", data.prediction));
  }

  function bars(before, after, label, id, answer) {
    const box = el("div", {id, class: "x-bars"});
    before.forEach((p, d) => {
      const tags = [d === label ? "label" : "", d === answer ? "answer" : ""].filter(Boolean);
      const row = el("div", {class: `x-bar-row${d === label ? " label" : ""}`}, el("span", {text: String(d)}));
      const track = el("div", {class: "x-track"});
      for (const [value, cls] of [[p, after ? "before" : "now"], [after ? after[d] : null, "after"]]) {
        if (value === null) continue;
        const bar = el("div", {class: `x-bar ${cls}`, "data-prob": String(value)});
        bar.style.width = `${(100 * value).toFixed(2)}%`;
        track.append(bar);
      }
      row.append(track, el("span", {class: "x-num", text: `${(100 * p).toFixed(1)}%` +
        (after ? ` → ${(100 * after[d]).toFixed(1)}%` : "") + (tags.length ? ` (${tags.join(", ")})` : "")}));
      box.append(row);
    });
    return box;
  }

  function showUpdate(u) {
    const box = $("update-result");
    box.replaceChildren();
    if (u.values_before) {
      const moved = Object.keys(u.values_before).map((k) => `${k}: ${fmt(u.values_before[k])} → ${fmt(u.values_after[k])}`);
      box.append(el("p", {}, el("b", {text: `One step at learning rate ${u.lr}: `}), moved.join(", ") + "."),
        el("p", {}, `The output went from ${fmt(u.before)} to `, el("b", {text: fmt(u.after)}), "."));
    } else {
      box.append(el("p", {}, el("b", {text: `One SGD step at learning rate ${u.lr} on this digit, label ${u.label}: `}),
        `the loss went from ${fmt(u.loss_before)} to `, el("b", {text: fmt(u.loss_after)}),
        `, and p(${u.label}) from ${(100 * u.probs_before[u.label]).toFixed(1)}% to ` +
        `${(100 * u.probs_after[u.label]).toFixed(1)}%.`),
        bars(u.probs_before, u.probs_after, u.label, "update-bars"),
        el("p", {class: "x-hint", text: embedded ? "(Computed when the report was made, on a copy of the model.)"
          : "This changed your own copy of the network (the draw page uses it too); the graph above " +
            "is now the updated network's. Back to the trained network: Reset on the draw page."}));
    }
    box.hidden = false;
  }

  // ------------------------------------------------------------------ controls

  $("step-forward").addEventListener("click", () => {
    if (view.fwd < data.forward_order.length) view.fwd += 1;
    view.selected = null;
    render();
  });
  $("step-backward").addEventListener("click", () => {
    view.fwd = data.forward_order.length;  // backward needs the forward pass: done at once
    if (view.bwd < data.backward_steps.length) view.bwd += 1;
    view.selected = null;
    render();
  });
  $("run-all").addEventListener("click", () => {
    view.fwd = data.forward_order.length;
    view.bwd = data.backward_steps.length;
    render();
  });
  $("reset-steps").addEventListener("click", () => {
    view.fwd = view.bwd = 0;
    view.selected = null;
    render();
  });
  $("fold-modules").addEventListener("click", () => {
    const foldable = data.clusters.filter((c) => c.parent !== null).map((c) => c.id);
    const all = foldable.every((id) => view.folded.has(id));
    view.folded = new Set(all ? [] : foldable);
    render();
  });
  $("update").addEventListener("click", async () => {
    if (embedded) {
      showUpdate(data.update);
      $("update").disabled = true;
      return;
    }
    if (!request) return;
    const lr = Number($("lr").value), mine = ++asked;  // a later load or update wins
    $("update").disabled = true;
    try {
      const reply = await post("/api/graph/update", {...request, lr});
      if (mine === asked) {
        const next = reply.values_after ? {...request, values: reply.values_after} : request;
        show(reply.graph, next);
        showUpdate(reply);
        status("");
      }
    } catch (error) {
      if (mine === asked) status("Could not update: " + error.message);
    }
    $("update").disabled = false;
  });

  // ------------------------------------------------------------------ the served page's sources

  async function post(path, body) {
    const reply = await fetch(path, {method: "POST", headers: {"Content-Type": "application/json"},
                                     body: JSON.stringify(body)});
    const answer = await reply.json();
    if (!reply.ok) throw new Error(answer.error || reply.statusText);
    return answer;
  }

  async function load(body, what) {
    const mine = ++asked;
    root.dataset.ready = "0";
    status(`Computing the graph of ${what}…`);
    try {
      const answer = await post("/api/graph", body);
      if (mine !== asked) return;
      show(answer, body);
      status("");
    } catch (error) {
      if (mine !== asked) return;
      root.dataset.ready = data ? "1" : "0";
      status(`Could not show ${what}: ${error.message}`);
    }
  }

  // "a=2, b=-3, c=10" -> {a: 2, b: -3, c: 10}; a value that is not a number is sent as typed,
  // so the server's answer names it
  function parseValues(text) {
    const values = {};
    for (const part of text.split(/[,;]/).map((s) => s.trim()).filter(Boolean)) {
      const [name, value] = part.split("=").map((s) => (s || "").trim());
      values[name] = value !== "" && Number.isFinite(Number(value)) ? Number(value) : value;
    }
    return values;
  }

  function loadExpression() {
    load({expression: $("expression").value, values: parseValues($("values").value)}, "the expression");
  }

  function loadTestDigit() {
    const body = {test_index: Number($("test-index").value)};
    if ($("label").value !== "") body.label = Number($("label").value);
    load(body, `test digit ${body.test_index}`);
  }

  const DRAWING = "tinygrad_mnist.drawing";  // the draw page leaves its drawing here (a PNG data URL)

  function drawing() {
    try { return sessionStorage.getItem(DRAWING); } catch (error) { return null; }
  }

  if (embedded) {
    show(JSON.parse(embedded.textContent), null);
    return;
  }
  $("expression-go").addEventListener("click", loadExpression);
  for (const id of ["expression", "values"]) {
    $(id).addEventListener("keydown", (event) => { if (event.key === "Enter") loadExpression(); });
  }
  if ($("digit-go")) {
    $("digit-go").addEventListener("click", loadTestDigit);
    $("test-index").addEventListener("keydown", (event) => { if (event.key === "Enter") loadTestDigit(); });
  }
  $("drawing-go").addEventListener("click", () => load({image: drawing()}, "your drawing"));
  $("drawing-go").hidden = !drawing();
  if (drawing()) load({image: drawing()}, "your drawing");
  else if ($("digit-go")) loadTestDigit();
  else loadExpression();
})();
