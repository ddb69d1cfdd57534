// The canvas on screen: each layer's cut-out at its box, drag to move, corner handles to resize.
//
// Boxes come from the server (`build_layers`, the code `lc render` uses); during a gesture the
// stage moves them locally and the app asks the server again, so what is drawn after a
// gesture is always what the CLI would compute.

const ANCHORS = {
  "top-left": [0, 0], top: [0.5, 0], "top-right": [1, 0],
  left: [0, 0.5], center: [0.5, 0.5], right: [1, 0.5],
  "bottom-left": [0, 1], bottom: [0.5, 1], "bottom-right": [1, 1],
};
const CORNERS = { nw: [-1, -1], ne: [1, -1], sw: [-1, 1], se: [1, 1] };
const MIN_SCALE = 0.01;
const MAX_SCALE = 16;
const TOKEN_PX = 16;

export class Stage {
  constructor(wrap, state, { onSelect, onChange, onCommit }) {
    this.wrap = wrap;
    this.state = state;
    this.onSelect = onSelect;
    this.onChange = onChange;
    this.onCommit = onCommit;
    this.scale = 1;
    this.images = new Map(); // layer name -> <img>
    this.alpha = new Map(); // cut-out url -> {ctx, width, height} for hit tests

    this.stage = document.createElement("div");
    this.stage.id = "stage";
    this.tokens = document.createElement("canvas");
    this.tokens.id = "token-overlay";
    this.grid = document.createElement("div");
    this.grid.id = "token-grid";
    this.stage.append(this.tokens, this.grid);
    this.frame = document.createElement("div");
    this.frame.id = "selection";
    for (const corner of Object.keys(CORNERS)) {
      const handle = document.createElement("div");
      handle.className = `handle ${corner}`;
      handle.dataset.corner = corner;
      this.frame.append(handle);
    }
    this.wrap.append(this.stage, this.frame);

    this.stage.addEventListener("pointerdown", (event) => this.pressStage(event));
    this.frame.addEventListener("pointerdown", (event) => this.pressFrame(event));
    new ResizeObserver(() => this.draw()).observe(this.wrap);
  }

  // --- drawing ---------------------------------------------------------------------------------

  layout() {
    const [width, height] = this.state.data.size || [1024, 1024];
    const room = this.wrap.getBoundingClientRect();
    const margin = 24; // room for handles just outside the canvas edge
    this.scale = Math.max(0.05, Math.min((room.width - 2 * margin) / width, (room.height - 2 * margin) / height));
    this.left = Math.round((room.width - width * this.scale) / 2);
    this.top = Math.round((room.height - height * this.scale) / 2);
    Object.assign(this.stage.style, {
      left: `${this.left}px`, top: `${this.top}px`,
      width: `${width * this.scale}px`, height: `${height * this.scale}px`,
    });
    this.stage.dataset.scale = String(this.scale);
    this.grid.style.backgroundSize = `${TOKEN_PX * this.scale}px ${TOKEN_PX * this.scale}px`;
  }

  draw() {
    if (!this.state.data) return;
    this.layout();
    const seen = new Set();
    this.state.views.forEach((view, z) => {
      seen.add(view.name);
      let img = this.images.get(view.name);
      if (!img) {
        img = document.createElement("img");
        img.className = "layer";
        img.draggable = false;
        img.alt = view.name;
        img.dataset.name = view.name;
        this.images.set(view.name, img);
        this.stage.insertBefore(img, this.tokens);
      }
      if (img.getAttribute("src") !== view.cutout) img.src = view.cutout;
      img.dataset.kind = view.kind;
      img.style.zIndex = String(z + 1);
      img.hidden = this.state.hidden.has(view.name);
      img.classList.toggle("selected", view.name === this.state.selected);
      img.style.setProperty("--colour", this.state.colour(view.name));
      this.place(img, view.box);
      img.dataset.box = view.box.map((v) => Math.round(v)).join(",");
    });
    for (const [name, img] of this.images) {
      if (!seen.has(name)) {
        img.remove();
        this.images.delete(name);
      }
    }
    this.drawSelection();
    this.drawTokens();
  }

  place(element, [x0, y0, x1, y1], offset = [0, 0]) {
    const s = this.scale;
    Object.assign(element.style, {
      left: `${offset[0] + x0 * s}px`, top: `${offset[1] + y0 * s}px`,
      width: `${(x1 - x0) * s}px`, height: `${(y1 - y0) * s}px`,
    });
  }

  drawSelection() {
    const view = this.state.views.find((v) => v.name === this.state.selected);
    const movable = view && view.kind === "subject" && !this.state.hidden.has(view.name);
    this.frame.hidden = !movable;
    if (!movable) return;
    this.place(this.frame, view.box, [this.left, this.top]);
    this.frame.style.setProperty("--colour", this.state.colour(view.name));
  }

  drawTokens() {
    const mode = this.state.showTokens;
    const masks = this.state.masks;
    const [gw, gh] = (this.state.report && this.state.report.token_grid) || [0, 0];
    const on = mode !== "off" && masks && gw > 0;
    this.tokens.hidden = this.grid.hidden = !on;
    if (!on) return;
    this.tokens.width = gw;
    this.tokens.height = gh;
    const ctx = this.tokens.getContext("2d");
    const image = ctx.createImageData(gw, gh);
    for (const view of this.state.views) {
      if (this.state.hidden.has(view.name)) continue;
      if (mode === "selected" && view.name !== this.state.selected) continue;
      const rows = masks[view.name];
      if (!rows) continue;
      const [r, g, b] = hexRgb(this.state.colour(view.name));
      rows.forEach((row, y) => {
        for (let x = 0; x < row.length; x++) {
          if (row[x] !== "1") continue;
          const i = 4 * (y * gw + x);
          // Overlapping layers mix: each adds its colour, the cell stays translucent.
          const n = image.data[i + 3] ? 2 : 1;
          image.data[i] = (image.data[i] * (n - 1) + r) / n;
          image.data[i + 1] = (image.data[i + 1] * (n - 1) + g) / n;
          image.data[i + 2] = (image.data[i + 2] * (n - 1) + b) / n;
          image.data[i + 3] = 140;
        }
      });
    }
    ctx.putImageData(image, 0, 0);
  }

  // --- picking -----------------------------------------------------------------------------------

  toCanvas(event) {
    const rect = this.stage.getBoundingClientRect();
    return [(event.clientX - rect.left) / this.scale, (event.clientY - rect.top) / this.scale];
  }

  // The topmost visible layer with an opaque pixel under the pointer; else the topmost box.
  pick([x, y]) {
    const views = this.state.views.filter((v) => !this.state.hidden.has(v.name));
    const under = views.filter(({ box }) => x >= box[0] && x < box[2] && y >= box[1] && y < box[3]);
    for (const view of [...under].reverse()) {
      if (this.opaqueAt(view, x, y)) return view;
    }
    const subjects = under.filter((v) => v.kind === "subject");
    return subjects.length ? subjects[subjects.length - 1] : under[under.length - 1] || null;
  }

  opaqueAt(view, x, y) {
    const img = this.images.get(view.name);
    if (!img || !img.complete || !img.naturalWidth) return false;
    let entry = this.alpha.get(view.cutout);
    if (!entry) {
      const canvas = document.createElement("canvas");
      canvas.width = img.naturalWidth;
      canvas.height = img.naturalHeight;
      const ctx = canvas.getContext("2d", { willReadFrequently: true });
      ctx.drawImage(img, 0, 0);
      entry = { ctx, width: canvas.width, height: canvas.height };
      this.alpha.set(view.cutout, entry);
    }
    const [x0, y0, x1, y1] = view.box;
    const px = Math.floor(((x - x0) / (x1 - x0)) * entry.width);
    const py = Math.floor(((y - y0) / (y1 - y0)) * entry.height);
    return entry.ctx.getImageData(px, py, 1, 1).data[3] > 0;
  }

  // --- gestures ----------------------------------------------------------------------------------

  pressStage(event) {
    if (event.button !== 0) return;
    const view = this.pick(this.toCanvas(event));
    this.onSelect(view ? view.name : null);
    if (view && view.kind === "subject") this.startMove(event, view);
  }

  pressFrame(event) {
    if (event.button !== 0) return;
    const view = this.state.views.find((v) => v.name === this.state.selected);
    if (!view) return;
    const corner = event.target.dataset.corner;
    if (corner) this.startResize(event, view, corner);
    else this.startMove(event, view);
  }

  startMove(event, view) {
    const layer = this.state.layer(view.name);
    const start = { x: event.clientX, y: event.clientY, box: [...view.box], position: [...layer.position] };
    this.track(event, (e) => {
      const dx = Math.round((e.clientX - start.x) / this.scale);
      const dy = Math.round((e.clientY - start.y) / this.scale);
      layer.position = [start.position[0] + dx, start.position[1] + dy];
      view.box = [start.box[0] + dx, start.box[1] + dy, start.box[2] + dx, start.box[3] + dy];
      return dx !== 0 || dy !== 0;
    });
  }

  // Keep the aspect ratio: the new size is the pointer's projection on the box's diagonal,
  // measured from the opposite corner, which stays where it is.
  startResize(event, view, corner) {
    const layer = this.state.layer(view.name);
    const [sx, sy] = CORNERS[corner];
    const [x0, y0, x1, y1] = view.box;
    const width = x1 - x0;
    const height = y1 - y0;
    const fixed = [sx > 0 ? x0 : x1, sy > 0 ? y0 : y1];
    const scale0 = layer.scale ?? 1;
    const [fx, fy] = ANCHORS[layer.anchor || "center"];
    this.track(event, (e) => {
      const [px, py] = this.toCanvas(e);
      const along = (sx * (px - fixed[0]) * width + sy * (py - fixed[1]) * height) / (width * width + height * height);
      const scale = clamp(round3(scale0 * along), Math.max(MIN_SCALE, (8 / width) * scale0), MAX_SCALE);
      const ratio = scale / scale0;
      const w = width * ratio;
      const h = height * ratio;
      const left = sx > 0 ? fixed[0] : fixed[0] - w;
      const top = sy > 0 ? fixed[1] : fixed[1] - h;
      layer.scale = scale;
      layer.position = [Math.round(left + fx * w), Math.round(top + fy * h)];
      view.box = [left, top, left + w, top + h];
      return true;
    });
  }

  track(event, update) {
    event.preventDefault();
    const target = event.target;
    target.setPointerCapture(event.pointerId);
    let changed = false;
    const move = (e) => {
      if (update(e)) {
        changed = true;
        this.draw();
        this.onChange();
      }
    };
    const up = () => {
      target.removeEventListener("pointermove", move);
      target.removeEventListener("pointerup", up);
      target.removeEventListener("pointercancel", up);
      if (changed) this.onCommit();
    };
    target.addEventListener("pointermove", move);
    target.addEventListener("pointerup", up);
    target.addEventListener("pointercancel", up);
  }
}

function clamp(value, low, high) {
  return Math.min(high, Math.max(low, value));
}

function round3(value) {
  return Math.round(value * 1000) / 1000;
}

function hexRgb(hex) {
  const n = parseInt(hex.slice(1), 16);
  return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
}
