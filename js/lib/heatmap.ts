// A canvas heatmap with DOM token labels, hover and click. Cells are painted as one ImageData at
// one pixel per cell and scaled by CSS (image-rendering: pixelated), so a 512×512 pattern draws
// in a few milliseconds. Labels are DOM text (never HTML), so they stay selectable and safe.

import { css, type RGB } from "./colormap";
import { clip, h, showToken } from "./dom";

export interface HeatmapSpec {
  rows: number;
  cols: number;
  value: (i: number, j: number) => number;
  color: (v: number) => RGB;
  rowLabels?: string[];
  colLabels?: string[];
  /** Cell size in CSS pixels (default: fits ~480px, between 3 and 24). */
  cell?: number;
  /** Cells to leave blank (e.g. the masked upper triangle of a causal pattern). */
  masked?: (i: number, j: number) => boolean;
}

export interface Cell {
  i: number;
  j: number;
}

export class HeatmapView {
  readonly el: HTMLDivElement;
  private canvas: HTMLCanvasElement;
  private overlay: HTMLDivElement;
  private rowBox: HTMLDivElement;
  private colBox: HTMLDivElement;
  private spec: HeatmapSpec | null = null;
  private cell = 8;
  onHover: (c: Cell | null) => void = () => {};
  onClick: (c: Cell) => void = () => {};

  constructor(className = "mw-heatmap") {
    this.canvas = h("canvas", { class: "mw-heatmap-canvas" });
    this.overlay = h("div", { class: "mw-heatmap-overlay" });
    this.rowBox = h("div", { class: "mw-heatmap-rows" });
    this.colBox = h("div", { class: "mw-heatmap-cols" });
    const plot = h("div", { class: "mw-heatmap-plot" }, this.canvas, this.overlay);
    this.el = h("div", { class: className }, h("div", { class: "mw-heatmap-corner" }), this.colBox, this.rowBox, plot);
    this.canvas.addEventListener("mousemove", (e) => this.onHover(this.cellAt(e)));
    this.canvas.addEventListener("mouseleave", () => this.onHover(null));
    this.canvas.addEventListener("click", (e) => {
      const c = this.cellAt(e);
      if (c) this.onClick(c);
    });
  }

  private cellAt(e: MouseEvent): Cell | null {
    if (!this.spec) return null;
    const r = this.canvas.getBoundingClientRect();
    const j = Math.floor(((e.clientX - r.left) / r.width) * this.spec.cols);
    const i = Math.floor(((e.clientY - r.top) / r.height) * this.spec.rows);
    if (i < 0 || j < 0 || i >= this.spec.rows || j >= this.spec.cols) return null;
    return { i, j };
  }

  draw(spec: HeatmapSpec): void {
    this.spec = spec;
    const { rows, cols } = spec;
    this.cell = spec.cell ?? Math.max(3, Math.min(24, Math.floor(480 / Math.max(rows, cols, 1))));
    this.canvas.width = cols;
    this.canvas.height = rows;
    this.canvas.style.width = `${cols * this.cell}px`;
    this.canvas.style.height = `${rows * this.cell}px`;
    const ctx = this.canvas.getContext("2d");
    if (ctx) {
      const img = ctx.createImageData(cols, rows);
      for (let i = 0; i < rows; i++) {
        for (let j = 0; j < cols; j++) {
          const k = 4 * (i * cols + j);
          if (spec.masked?.(i, j)) {
            img.data[k] = 246;
            img.data[k + 1] = 246;
            img.data[k + 2] = 246;
          } else {
            const [r, g, b] = spec.color(spec.value(i, j));
            img.data[k] = r;
            img.data[k + 1] = g;
            img.data[k + 2] = b;
          }
          img.data[k + 3] = 255;
        }
      }
      ctx.putImageData(img, 0, 0);
    }
    this.drawLabels(this.rowBox, spec.rowLabels, rows, "row");
    this.drawLabels(this.colBox, spec.colLabels, cols, "col");
    this.highlight(null);
  }

  private drawLabels(box: HTMLDivElement, labels: string[] | undefined, n: number, axis: "row" | "col"): void {
    box.replaceChildren();
    if (!labels) return;
    const show = this.cell >= 8;
    box.style.setProperty("--mw-cell", `${this.cell}px`);
    if (!show) return;
    for (let k = 0; k < n; k++) {
      const text = labels[k] ?? "";
      box.append(h("div", { class: `mw-heatmap-${axis}label`, title: text }, clip(showToken(text), 14)));
    }
  }

  /** Outline a row (or a column, or one cell) on top of the canvas. */
  highlight(target: { row?: number; col?: number } | null): void {
    this.overlay.replaceChildren();
    if (!target || !this.spec) return;
    const c = this.cell;
    const box = (x: number, y: number, w: number, hgt: number) =>
      h("div", { class: "mw-heatmap-outline", style: `left:${x}px;top:${y}px;width:${w}px;height:${hgt}px` });
    if (target.row !== undefined && target.col !== undefined) {
      this.overlay.append(box(target.col * c, target.row * c, c, c));
    } else if (target.row !== undefined) {
      this.overlay.append(box(0, target.row * c, this.spec.cols * c, c));
    } else if (target.col !== undefined) {
      this.overlay.append(box(target.col * c, 0, c, this.spec.rows * c));
    }
  }
}

/** A horizontal legend for a colour map. */
export function legend(color: (v: number) => RGB, lo: number, hi: number, label: string): HTMLDivElement {
  const stops = Array.from({ length: 11 }, (_, k) => {
    const v = lo + ((hi - lo) * k) / 10;
    return `${css(color(v))} ${k * 10}%`;
  });
  return h(
    "div",
    { class: "mw-legend" },
    h("span", {}, String(lo)),
    h("div", { class: "mw-legend-bar", style: `background:linear-gradient(to right, ${stops.join(",")})` }),
    h("span", {}, String(hi)),
    h("span", { class: "mw-legend-label" }, label),
  );
}
