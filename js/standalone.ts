// The standalone runtime of exported HTML (mechwidgets/_export.py inlines it in every page).
//
// It reads the page's payload (<script type="application/json" id="mw-export-data">):
//   {version, modules: {hash: esm text}, styles: {hash: css text},
//    models: {model_id: {module, style, state, buffers: [{path, data, encoding}]}}}
// and, for every element <div class="mw-export-widget" data-mw-model-id="..."> on the page, builds
// a StaticModel over the saved state, imports the widget's ES module from a Blob URL (nothing is
// fetched from the network) and calls its render({model, el}). Which modules are in the payload
// is the exporter's decision (its trust rules): this runtime runs what the payload holds. The element's fallback picture (a child with class
// mw-export-fallback) is removed once the widget has drawn, and kept if anything fails.
//
// Progress is visible to tests: every host gets data-mw-status="rendered" | "failed", the <html>
// element gets data-mw-export="done", and window.__mwExport holds the models and a `done` promise.

import { StaticModel, putSavedBuffers, type SavedBuffer } from "./lib/static_model";

interface SavedModel {
  module: string;
  style?: string | null;
  state: Record<string, unknown>;
  buffers?: SavedBuffer[];
}

interface Payload {
  version: number;
  modules: Record<string, string>;
  styles: Record<string, string>;
  models: Record<string, SavedModel>;
}

interface WidgetDef {
  initialize?: (ctx: unknown) => unknown;
  render?: (ctx: { model: StaticModel; el: HTMLElement; experimental: unknown }) => unknown;
}

const experimental = {
  invoke: (): Promise<never> => Promise.reject(new Error("no kernel: this is a static export")),
};

// The payload is the LAST <script type="application/json" id="mw-export-data"> (the exporter
// writes it after all of the notebook's cells). Never getElementById: a notebook's sanitized
// HTML may keep an element with that id (e.g. a <div>) placed before it, and a payload read from
// it would choose the code to run.
function readPayload(): Payload | null {
  const nodes = document.querySelectorAll<HTMLScriptElement>('script[type="application/json"]#mw-export-data');
  const node = nodes[nodes.length - 1];
  if (!node || !node.textContent) return null;
  return JSON.parse(node.textContent) as Payload;
}

const moduleCache = new Map<string, Promise<unknown>>();

async function importText(code: string): Promise<unknown> {
  const url = URL.createObjectURL(new Blob([code], { type: "text/javascript" }));
  try {
    return await import(/* @vite-ignore */ url);
  } catch (blobError) {
    // Some hosts forbid blob: modules; a data: URL is the same code, still with no network.
    try {
      return await import(/* @vite-ignore */ "data:text/javascript;charset=utf-8," + encodeURIComponent(code));
    } catch {
      throw blobError;
    }
  } finally {
    URL.revokeObjectURL(url);
  }
}

function loadModule(payload: Payload, hash: string): Promise<unknown> {
  let p = moduleCache.get(hash);
  if (!p) {
    const code = Object.prototype.hasOwnProperty.call(payload.modules, hash) ? payload.modules[hash] : undefined;
    p = code === undefined ? Promise.reject(new Error(`module ${hash} missing from the export`)) : importText(code);
    moduleCache.set(hash, p);
  }
  return p;
}

const injectedStyles = new Set<string>();

function injectStyle(payload: Payload, hash: string | null | undefined): void {
  if (!hash || injectedStyles.has(hash) || payload.styles[hash] === undefined) return;
  injectedStyles.add(hash);
  const style = document.createElement("style");
  style.dataset.mwStyle = hash;
  style.textContent = payload.styles[hash]; // text, never parsed as HTML
  document.head.append(style);
}

async function widgetDef(mod: unknown): Promise<WidgetDef> {
  const m = mod as Record<string, unknown>;
  let def: unknown = m.default ?? m;
  if (typeof def === "function") def = await (def as () => unknown)(); // anywidget's "() => ({render})"
  return def as WidgetDef;
}

function note(host: HTMLElement, text: string): void {
  const div = document.createElement("div");
  div.className = "mw-export-note";
  div.style.cssText = "color:#82071e;font:12px sans-serif;margin:4px 0";
  div.textContent = text;
  host.append(div);
}

const models = new Map<string, StaticModel>();

async function renderHost(payload: Payload, host: HTMLElement): Promise<void> {
  const id = host.dataset.mwModelId ?? "";
  const saved = Object.prototype.hasOwnProperty.call(payload.models, id) ? payload.models[id] : undefined;
  if (!saved) {
    host.dataset.mwStatus = "failed";
    return;
  }
  const fallback = host.querySelector(":scope > .mw-export-fallback");
  const view = document.createElement("div");
  view.className = "mw-export-view";
  try {
    const state = putSavedBuffers(structuredClone(saved.state), saved.buffers ?? []);
    const model = new StaticModel(state);
    models.set(id, model);
    injectStyle(payload, saved.style);
    const def = await widgetDef(await loadModule(payload, saved.module));
    if (typeof def.render !== "function") throw new Error("the widget module has no render function");
    host.append(view);
    if (typeof def.initialize === "function") await def.initialize({ model, experimental });
    await def.render({ model, el: view, experimental });
    fallback?.remove();
    host.dataset.mwStatus = "rendered";
  } catch (e) {
    view.remove();
    host.dataset.mwStatus = "failed";
    console.error("mechwidgets export: widget failed to render", e);
    note(host, `The interactive view could not be drawn (${e instanceof Error ? e.message : String(e)}); showing the saved picture.`);
  }
}

async function main(): Promise<void> {
  const payload = readPayload();
  if (!payload) return;
  const hosts = Array.from(document.querySelectorAll<HTMLElement>(".mw-export-widget[data-mw-model-id]"));
  await Promise.all(hosts.map((host) => renderHost(payload, host)));
}

const done = main()
  .catch((e) => console.error("mechwidgets export: runtime failed", e))
  .finally(() => {
    document.documentElement.dataset.mwExport = "done";
  });

(window as unknown as { __mwExport: unknown }).__mwExport = { done, models };
