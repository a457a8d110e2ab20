// The error banner and the progress bar every widget shows.
import type { AnyModel } from "@anywidget/types";
import { clear, h } from "./dom";

/** A long job's progress (mechwidgets/widgets/_base.py): `id` names the running request. */
export interface Progress {
  kind?: string;
  id?: unknown;
  done?: number;
  total?: number;
  message?: string;
}

/** The traits every widget has: the kernel's last error message and a long job's progress. */
export interface StatusTraits {
  error: string;
  progress: Progress;
}

export interface Status {
  /** Show an error raised in the frontend itself (e.g. a failed request), beside the trait's. */
  setLocalError(message: string): void;
  dispose(): void;
}

/** A banner bound to the `error` trait, plus a progress bar (with cancel) bound to `progress`;
 * the cancel button names the running request (its kind and id). */
export function mountStatus(model: AnyModel<StatusTraits>, el: HTMLElement, onCancel?: (kind: string, id: unknown) => void): Status {
  const banner = h("div", { class: "mw-error", role: "alert" });
  const progress = h("div", { class: "mw-progress" });
  el.append(banner, progress);
  let localError = "";
  const draw = () => {
    const message = model.get("error") || localError;
    banner.textContent = message ?? "";
    banner.style.display = message ? "block" : "none";
    const p = model.get("progress") ?? {};
    clear(progress);
    if (p.kind && p.total) {
      const frac = Math.max(0, Math.min(1, (p.done ?? 0) / p.total));
      const fill = h("div", { class: "mw-progress-fill", style: `width:${(frac * 100).toFixed(1)}%` });
      progress.append(
        h("div", { class: "mw-progress-bar" }, fill),
        h("span", { class: "mw-progress-text" }, `${p.message || p.kind} ${p.done}/${p.total}`),
      );
      if (onCancel) {
        const { kind, id } = p;
        progress.append(h("button", { class: "mw-button", onclick: () => onCancel(kind, id) }, "cancel"));
      }
      progress.style.display = "flex";
    } else {
      progress.style.display = "none";
    }
  };
  model.on("change:error", draw);
  model.on("change:progress", draw);
  draw();
  return {
    setLocalError(message: string) {
      localError = message;
      draw();
    },
    dispose() {
      model.off("change:error", draw);
      model.off("change:progress", draw);
    },
  };
}
