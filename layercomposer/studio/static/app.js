// lc studio: the page. State is the canvas file's plain data; the server computes everything
// else (layers, boxes, tokens, renders) with the code the CLI uses.

import { ApiError, getJson, postJson, renderStream, upload } from "./api.js";
import { Stage } from "./stage.js";

const $ = (selector) => document.querySelector(selector);
const NAME_PATTERN = /[^A-Za-z0-9_-]+/g;

const ICONS = {
  visible: '<svg viewBox="0 0 16 16"><path d="M1 8s2.5-5 7-5 7 5 7 5-2.5 5-7 5-7-5-7-5z" fill="none" stroke="currentColor" stroke-width="1.5"/><circle cx="8" cy="8" r="2.2" fill="currentColor"/></svg>',
  lock: '<svg viewBox="0 0 16 16"><rect x="3" y="7" width="10" height="7" rx="1.5" fill="currentColor"/><path d="M5 7V5a3 3 0 0 1 6 0v2" fill="none" stroke="currentColor" stroke-width="1.6"/></svg>',
  unlock: '<svg viewBox="0 0 16 16"><rect x="3" y="7" width="10" height="7" rx="1.5" fill="currentColor"/><path d="M5 7V5a3 3 0 0 1 5.8-1" fill="none" stroke="currentColor" stroke-width="1.6"/></svg>',
  tokens: '<svg viewBox="0 0 16 16"><path d="M1 1h14v14H1zM1 5.7h14M1 10.3h14M5.7 1v14M10.3 1v14" fill="none" stroke="currentColor" stroke-width="1.2"/></svg>',
};

const state = {
  config: null,
  path: null,
  data: null, // the canvas file as plain data (what yaml.safe_load gives)
  sha256: null, // of the file as loaded or last saved: Save refuses if it changed meanwhile
  dirty: false,
  report: null, // `lc inspect --json` of the current data
  views: [], // per layer, bottom to top: {name, kind, box, cutout}
  masks: null, // layer name -> rows of "0"/"1" (only while tokens are shown)
  hidden: new Set(), // hidden in the editor only: still part of the canvas and its renders
  selected: null,
  showTokens: "off",
  problems: [],
  job: null,
  colour(name) {
    const palette = state.config.palette;
    const index = state.views.findIndex((view) => view.name === name);
    return palette[(index < 0 ? 0 : index) % palette.length];
  },
  layer(name) {
    return (state.data.layers || []).find((layer) => layer.name === name);
  },
};

let stage;

// --- talking to the server ----------------------------------------------------------------------

let inspecting = false;
let inspectAgain = false;

// Ask the server for the current canvas's layers and tokens. One request at a time; changes
// made meanwhile ask again when it returns, and its boxes are not applied (they are stale).
async function refresh() {
  if (inspecting) {
    inspectAgain = true;
    return;
  }
  inspecting = true;
  document.body.dataset.inspecting = "1";
  try {
    const result = await postJson("/api/inspect", {
      path: state.path,
      data: state.data,
      masks: state.showTokens !== "off",
    });
    state.report = result.report;
    if (!inspectAgain) state.views = result.layers;
    state.masks = state.showTokens === "off" ? null : Object.fromEntries(
      result.layers.map((view) => [view.name, view.token_mask]),
    );
    state.problems = [];
  } catch (error) {
    if (error instanceof ApiError && error.status === 422) state.problems = error.body.problems;
    else showError(error);
  } finally {
    inspecting = false;
  }
  drawAll();
  if (inspectAgain) {
    inspectAgain = false;
    refresh();
    return;
  }
  delete document.body.dataset.inspecting;
}

async function loadCanvas(path) {
  const canvas = await getJson(`/api/canvas?path=${encodeURIComponent(path)}`);
  Object.assign(state, {
    path: canvas.path, data: canvas.data, sha256: canvas.sha256, dirty: false,
    report: null, views: [], masks: null, hidden: new Set(), selected: null, problems: [],
  });
  history.replaceState(null, "", `?token=${new URLSearchParams(location.search).get("token") || ""}#${encodeURIComponent(path)}`);
  $("#canvas-select").value = path;
  setDirty(false);
  fillSettings();
  await refresh();
  await loadHistory();
}

async function save(force = false) {
  try {
    const saved = await postJson("/api/save", {
      path: state.path, data: state.data, base_sha256: state.sha256, force,
    });
    state.sha256 = saved.sha256;
    setDirty(false);
    say(`saved ${saved.path}`);
  } catch (error) {
    if (error instanceof ApiError && error.status === 409) {
      if (confirm(`${error.message}. Overwrite it with the page's canvas?`)) return save(true);
    } else if (error instanceof ApiError && error.status === 422) {
      state.problems = error.body.problems;
      drawProblems();
      say("not saved: the canvas has problems (listed under the canvas)");
    } else {
      showError(error);
    }
  }
}

// --- editing ----------------------------------------------------------------------------------

function changed({ inspect = true } = {}) {
  setDirty(true);
  if (inspect) refresh();
  drawLayers();
}

function setDirty(dirty) {
  state.dirty = dirty;
  document.body.dataset.dirty = dirty ? "1" : "";
  $("#file-state").textContent = dirty ? "● unsaved" : "";
  $("#save").disabled = !dirty;
}

function select(name) {
  state.selected = name;
  drawAll();
}

function uniqueName(base) {
  let name = base.replace(NAME_PATTERN, "_").replace(/^[-]+/, "").slice(0, 56) || "layer";
  const taken = new Set((state.data.layers || []).map((layer) => layer.name));
  taken.add("background");
  if (!taken.has(name)) return name;
  for (let n = 2; ; n++) if (!taken.has(`${name}-${n}`)) return `${name}-${n}`;
}

async function addLayer(file) {
  const stored = await upload(file);
  const [width, height] = state.data.size || [1024, 1024];
  const [w, h] = stored.size;
  // Start at most half the canvas in either direction, in the middle.
  const scale = Math.round(Math.min(1, 0.5 * Math.min(width / w, height / h)) * 1000) / 1000;
  const name = uniqueName(file.name.replace(/\.[^.]*$/, ""));
  const layer = { name, image: stored.path, position: [Math.round(width / 2), Math.round(height / 2)], anchor: "center" };
  if (scale !== 1) layer.scale = scale;
  layer.lock = false;
  state.data.layers = [...(state.data.layers || []), layer];
  state.selected = name;
  if (!stored.has_alpha) {
    say(`${stored.path} has no alpha channel: a layer needs a cut-out (RGBA) or a mask; it may suit the background instead`);
  }
  changed();
}

async function setBackground(file) {
  const stored = await upload(file);
  state.data.background = { ...(state.data.background || { fit: "cover", lock: true }), image: stored.path };
  changed();
}

function layerAction(name, action) {
  const layers = state.data.layers || [];
  const index = layers.findIndex((layer) => layer.name === name);
  const isBackground = name === "background" && index < 0;
  switch (action) {
    case "visible":
      if (state.hidden.has(name)) state.hidden.delete(name);
      else state.hidden.add(name);
      drawAll();
      return;
    case "tokens":
      state.selected = name;
      state.showTokens = state.showTokens === "off" ? "selected" : state.showTokens;
      $("#show-tokens").value = state.showTokens;
      refresh();
      return;
    case "lock":
      if (isBackground) state.data.background.lock = !(state.data.background.lock ?? true);
      else layers[index].lock = !layers[index].lock;
      break;
    case "up": // towards the top of the stack: later in the list
    case "down": {
      const to = action === "up" ? index + 1 : index - 1;
      if (isBackground || to < 0 || to >= layers.length) return;
      [layers[index], layers[to]] = [layers[to], layers[index]];
      // The page shows the same order at once; the server's answer follows.
      const a = state.views.findIndex((v) => v.name === layers[index].name);
      const b = state.views.findIndex((v) => v.name === layers[to].name);
      if (a >= 0 && b >= 0) [state.views[a], state.views[b]] = [state.views[b], state.views[a]];
      break;
    }
    case "remove":
      if (isBackground) delete state.data.background;
      else layers.splice(index, 1);
      state.views = state.views.filter((view) => view.name !== name);
      if (state.selected === name) state.selected = null;
      break;
    default:
      return;
  }
  changed();
  stage.draw();
}

function nudge(dx, dy) {
  const layer = state.selected && state.layer(state.selected);
  const view = state.views.find((v) => v.name === state.selected);
  if (!layer || !view) return;
  layer.position = [layer.position[0] + dx, layer.position[1] + dy];
  const [x0, y0, x1, y1] = view.box;
  view.box = [x0 + dx, y0 + dy, x1 + dx, y1 + dy];
  stage.draw();
  changed();
}

// --- rendering --------------------------------------------------------------------------------

async function startRender() {
  const controller = new AbortController();
  state.job = { id: null, controller };
  setRendering(true);
  renderStatus("waiting for the renderer…");
  $("#progress").value = 0;
  try {
    await renderStream(
      { path: state.path, data: state.data, encode: $("#encode").value, mode: $("#mode").value },
      onRenderEvent,
      controller.signal,
    );
  } catch (error) {
    if (error.name === "AbortError") renderStatus("cancelled");
    else if (error instanceof ApiError && error.status === 422) {
      state.problems = error.body.problems;
      drawProblems();
      renderStatus("the canvas has problems: see under the canvas");
    } else renderStatus(`failed: ${error.message}`);
  } finally {
    state.job = null;
    setRendering(false);
  }
}

function onRenderEvent(event) {
  if (state.job) state.job.id = event.job;
  switch (event.event) {
    case "queued":
      renderStatus(event.position ? `queued: ${event.position} render(s) ahead` : "starting…");
      break;
    case "started":
      renderStatus(state.config.model_status === "ready" ? "encoding…" : "loading the model, then encoding…");
      break;
    case "step":
      $("#progress").value = event.step / event.total;
      renderStatus(`denoising ${event.step}/${event.total}`);
      break;
    case "done":
      state.config.model_status = "ready";
      $("#progress").value = 1;
      renderStatus("done");
      showResult(event);
      loadHistory();
      break;
    case "failed":
      renderStatus(`failed: ${event.error}`);
      break;
    case "cancelled":
      renderStatus("cancelled");
      break;
    default:
  }
}

async function cancelRender() {
  const job = state.job;
  if (!job) return;
  if (job.id) await postJson(`/api/jobs/${job.id}/cancel`, {}).catch(() => job.controller.abort());
  else job.controller.abort();
}

function setRendering(busy) {
  $("#render").disabled = busy;
  $("#cancel").disabled = !busy;
  document.body.dataset.rendering = busy ? "1" : "";
}

function renderStatus(text) {
  $("#render-status").textContent = text;
}

function showResult(entry) {
  const manifest = entry.manifest;
  $("#result-figure").hidden = false;
  $("#result").src = entry.image;
  const cache = manifest.latent_cache || {};
  const seconds = (manifest.timings || {}).total;
  const warning = manifest.warning ? " · random weights: noise" : "";
  $("#result-caption").textContent =
    `seed ${entry.seed} · ${manifest.mode_used} · ${seconds != null ? seconds.toFixed(1) + " s" : ""}` +
    ` · latent cache ${cache.hits ?? 0} hit / ${cache.misses ?? 0} miss${warning}`;
  $("#command").textContent = entry.command;
  $("#manifest").textContent = JSON.stringify(manifest, null, 2);
  for (const item of document.querySelectorAll("#history button")) {
    item.classList.toggle("current", item.dataset.image === entry.image);
  }
}

async function loadHistory() {
  const { renders } = await getJson(`/api/history?path=${encodeURIComponent(state.path)}`);
  const strip = $("#history");
  strip.replaceChildren(
    ...renders.map((entry) => {
      const item = document.createElement("button");
      item.dataset.image = entry.image;
      const img = document.createElement("img");
      img.src = entry.image;
      img.alt = `seed ${entry.seed}`;
      img.loading = "lazy";
      const label = document.createElement("span");
      label.textContent = `seed ${entry.seed} · ${entry.created.slice(11, 19)}`;
      item.append(img, label);
      item.title = entry.command;
      item.addEventListener("click", () => showResult(entry));
      return item;
    }),
  );
  if (!renders.length) strip.textContent = "No renders of this canvas yet.";
}

// --- drawing the panels -------------------------------------------------------------------------

function drawAll() {
  stage.draw();
  drawLayers();
  drawBudget();
  drawProblems();
  drawBackground();
  const [w, h] = state.data.size || [1024, 1024];
  $("#size-label").textContent = `${w}×${h} px`;
}

function drawLayers() {
  const tokens = Object.fromEntries(((state.report || {}).layers || []).map((l) => [l.name, l]));
  const rows = [...(state.data.layers || [])].reverse().map((layer, i, all) =>
    layerRow(layer.name, layer.lock, tokens[layer.name], { top: i === 0, bottom: i === all.length - 1 }),
  );
  if (state.data.background) {
    rows.push(layerRow("background", state.data.background.lock ?? true, tokens.background, { background: true }));
  }
  $("#layer-list").replaceChildren(...rows);
}

function layerRow(name, locked, facts, { top = false, bottom = false, background = false }) {
  const row = document.createElement("li");
  row.dataset.name = name;
  row.classList.toggle("selected", name === state.selected);
  row.classList.toggle("problem", state.problems.some((p) => problemLayer(p) === name));
  row.innerHTML = `
    <span class="swatch"></span>
    <span class="name"></span>
    <span class="count" title="kept tokens"></span>
    <button data-action="visible" title="Show or hide in the editor (still rendered)">${ICONS.visible}</button>
    <button data-action="lock" title="Locked layers are kept almost exactly">${locked ? ICONS.lock : ICONS.unlock}</button>
    <button data-action="tokens" title="Show this layer's valid tokens">${ICONS.tokens}</button>
    <button data-action="up" title="Up (in front)" ${top || background ? "disabled" : ""}>▲</button>
    <button data-action="down" title="Down (behind)" ${bottom || background ? "disabled" : ""}>▼</button>
    <button data-action="remove" title="Remove from the canvas">✕</button>`;
  row.querySelector(".swatch").style.background = state.colour(name);
  row.querySelector(".name").textContent = name;
  row.querySelector(".count").textContent = facts ? facts.tokens.toLocaleString("en") : "–";
  const visible = row.querySelector('[data-action="visible"]');
  visible.setAttribute("aria-pressed", String(!state.hidden.has(name)));
  const lock = row.querySelector('[data-action="lock"]');
  lock.setAttribute("aria-pressed", String(Boolean(locked)));
  row.addEventListener("click", (event) => {
    const button = event.target.closest("button");
    if (button) layerAction(name, button.dataset.action);
    else select(name);
  });
  return row;
}

function drawBudget() {
  const report = state.report;
  // While the canvas has problems the numbers are those of its last valid state: say so.
  $("#budget").classList.toggle("stale", state.problems.length > 0);
  if (!report) return;
  $("#budget-rows").replaceChildren(
    ...report.layers.map((layer) => {
      const row = document.createElement("tr");
      row.dataset.name = layer.name;
      row.innerHTML = `<td><span class="swatch"></span><span class="name"></span></td><td class="tokens"></td><td class="index"></td>`;
      row.querySelector(".swatch").style.background = state.colour(layer.name);
      row.querySelector(".name").textContent = layer.name + (layer.lock ? " (locked)" : "");
      row.querySelector(".tokens").textContent = layer.tokens.toLocaleString("en");
      row.querySelector(".tokens").dataset.tokens = layer.tokens;
      row.querySelector(".index").textContent = layer.index;
      return row;
    }),
  );
  const t = report.tokens;
  // Bars are built with the DOM: the page's CSP allows no inline style attributes.
  const bar = (label, value, id) => {
    const element = document.createElement("div");
    element.className = "bar";
    element.id = id;
    element.innerHTML = "<span></span><em></em><b></b>";
    element.querySelector("span").style.width = `${Math.min(100, (100 * value) / t.unpruned)}%`;
    element.querySelector("em").textContent = label;
    element.querySelector("b").textContent = value.toLocaleString("en");
    return element;
  };
  $("#budget-bars").replaceChildren(
    bar("conditioning, pruned", t.conditioning, "bar-pruned"),
    bar("one collage image", t.collage, "bar-collage"),
    bar("unpruned (layers × grid)", t.unpruned, "bar-unpruned"),
  );
  $("#budget-totals").innerHTML = `
    <dt>kept</dt><dd id="total-ratio">${(100 * t.pruned_ratio).toFixed(1)} % of unpruned</dd>
    <dt>sequence</dt><dd id="total-sequence">${t.text} text + ${t.noisy.toLocaleString("en")} image + ${t.conditioning.toLocaleString("en")} = <b>${t.sequence.toLocaleString("en")}</b></dd>`;
  document.body.dataset.conditioning = t.conditioning;
}

function problemLayer(problem) {
  const [first, index] = problem.loc || [];
  if (first === "background") return "background";
  if (first === "layers" && typeof index === "number") return ((state.data.layers || [])[index] || {}).name;
  return null;
}

function drawProblems() {
  $("#problems").replaceChildren(
    ...state.problems.map((problem) => {
      const item = document.createElement("li");
      const layer = problemLayer(problem);
      const where = layer ? `${layer}: ` : problem.loc && problem.loc.length ? `${problem.loc.join(" → ")}: ` : "";
      item.textContent = where + problem.message;
      return item;
    }),
  );
}

function drawBackground() {
  const background = state.data.background;
  $("#background-info").textContent = background ? background.image : "none";
  $("#background-options").hidden = !background;
  $("#clear-background").disabled = !background;
  if (background) {
    $("#background-fit").value = background.fit || "cover";
    $("#background-lock").checked = background.lock ?? true;
  }
}

function fillSettings() {
  const data = state.data;
  $("#prompt").value = data.prompt ?? "";
  $("#seed").value = data.seed ?? "";
  $("#steps").value = data.steps ?? 28;
  $("#guidance").value = data.guidance ?? 2.5;
  const [w, h] = data.size || [1024, 1024];
  $("#width").value = w;
  $("#height").value = h;
}

function say(text) {
  $("#status").textContent = text;
}

function showError(error) {
  say(error instanceof ApiError ? `${error.message}${error.body.hint ? ` (${error.body.hint})` : ""}` : String(error));
}

// --- wiring -------------------------------------------------------------------------------------

function number(input, parse) {
  const value = parse(input.value);
  return Number.isFinite(value) ? value : input.value; // the server names what is wrong
}

function bindSettings() {
  let timer;
  const later = () => {
    clearTimeout(timer);
    timer = setTimeout(() => changed(), 250);
  };
  $("#prompt").addEventListener("input", (e) => { state.data.prompt = e.target.value; later(); });
  $("#seed").addEventListener("input", (e) => {
    if (e.target.value === "") delete state.data.seed;
    else state.data.seed = number(e.target, (v) => parseInt(v, 10));
    later();
  });
  $("#dice").addEventListener("click", () => {
    state.data.seed = Math.floor(Math.random() * 2 ** 31);
    $("#seed").value = state.data.seed;
    changed();
  });
  $("#steps").addEventListener("input", (e) => { state.data.steps = number(e.target, (v) => parseInt(v, 10)); later(); });
  $("#guidance").addEventListener("input", (e) => { state.data.guidance = number(e.target, parseFloat); later(); });
  for (const [id, axis] of [["#width", 0], ["#height", 1]]) {
    $(id).addEventListener("change", (e) => {
      const size = [...(state.data.size || [1024, 1024])];
      size[axis] = number(e.target, (v) => parseInt(v, 10));
      state.data.size = size;
      changed();
    });
  }
  $("#background-fit").addEventListener("change", (e) => { state.data.background.fit = e.target.value; changed(); });
  $("#background-lock").addEventListener("change", (e) => { state.data.background.lock = e.target.checked; changed(); });
  $("#clear-background").addEventListener("click", () => layerAction("background", "remove"));
  $("#add-layer").addEventListener("change", (e) => uploading(e.target, addLayer));
  $("#set-background").addEventListener("change", (e) => uploading(e.target, setBackground));
  $("#show-tokens").addEventListener("change", (e) => { state.showTokens = e.target.value; refresh(); });
  $("#save").addEventListener("click", () => save());
  $("#render").addEventListener("click", startRender);
  $("#cancel").addEventListener("click", cancelRender);
  $("#canvas-select").addEventListener("change", async (e) => {
    if (state.dirty && !confirm("Discard the unsaved changes to this canvas?")) {
      e.target.value = state.path;
      return;
    }
    await loadCanvas(e.target.value);
  });
  document.addEventListener("keydown", onKey);
  window.addEventListener("beforeunload", (e) => {
    if (state.dirty) e.preventDefault();
  });
}

async function uploading(input, use) {
  const file = input.files[0];
  input.value = "";
  if (!file) return;
  try {
    say(`uploading ${file.name}…`);
    await use(file);
    say(`added ${file.name}`);
  } catch (error) {
    showError(error);
  }
}

function onKey(event) {
  if ((event.ctrlKey || event.metaKey) && event.key === "s") {
    event.preventDefault();
    save();
    return;
  }
  if (event.target.closest("input, textarea, select")) return;
  const step = event.shiftKey ? 16 : 1; // shift: one token
  const moves = { ArrowLeft: [-step, 0], ArrowRight: [step, 0], ArrowUp: [0, -step], ArrowDown: [0, step] };
  if (moves[event.key]) {
    event.preventDefault();
    nudge(...moves[event.key]);
  } else if (event.key === "Escape") {
    select(null);
  }
}

async function pollModel() {
  for (;;) {
    const { model_status: status } = await getJson("/api/jobs").catch(() => ({ model_status: "?" }));
    state.config.model_status = status;
    const label = status === "ready" ? "ready" : status === "idle" ? "loads on first render" : status;
    $("#model-status").textContent = `${state.config.model} · ${label}`;
    $("#model-status").classList.toggle("failed", status.startsWith("failed"));
    if (status === "ready" || status.startsWith("failed") || status === "idle") return;
    await new Promise((resolve) => setTimeout(resolve, 2000));
  }
}

async function main() {
  state.config = await getJson("/api/config");
  for (const [id, options, value] of [["#encode", state.config.encodes, state.config.encode], ["#mode", state.config.modes, state.config.mode]]) {
    $(id).replaceChildren(...options.map((option) => new Option(option, option, false, option === value)));
  }
  $("#canvas-select").replaceChildren(...state.config.canvases.map((name) => new Option(name, name)));
  $("#canvas-select").hidden = state.config.canvases.length < 2;
  stage = new Stage($("#stage-wrap"), state, {
    onSelect: (name) => select(name),
    onChange: () => { setDirty(true); refresh(); },
    onCommit: () => changed(),
  });
  bindSettings();
  setDirty(false);
  pollModel();
  const wanted = decodeURIComponent(location.hash.slice(1));
  const first = state.config.canvases.includes(wanted) ? wanted : state.config.canvases[0];
  if (!first) {
    say("no canvas files here");
    return;
  }
  $("#canvas-select").value = first;
  await loadCanvas(first);
  document.body.dataset.ready = "1";
}

main().catch(showError);
