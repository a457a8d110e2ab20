// The page side of the light browser harness (tests/browser/harness.py): a fake anywidget model
// whose get/set/on/off/save_changes/send talk to a REAL Python widget object in the test process
// through one Playwright binding, window.__mw_to_py(widgetId, json) → json of the messages the
// kernel side sent back. Messages are the ipywidgets comm messages themselves
// ({method: "update" | "echo_update" | "custom", state, buffer_paths, content}). Their binary
// buffers come as binary over HTTP from the 127.0.0.1 test server (each message lists the paths
// to fetch, once), and are handed to the widget as DataView, as anywidget does. Page → Python
// buffers (rare) travel as base64. Messages are applied strictly in the order Python sent them.
"use strict";

(() => {
  const fetchBuffer = async (path) => {
    const r = await fetch(path, { cache: "no-store" });
    if (!r.ok) throw new Error(`buffer ${path}: HTTP ${r.status}`);
    return new DataView(await r.arrayBuffer());
  };

  const viewToB64 = (v) => {
    let bytes;
    if (v instanceof ArrayBuffer) bytes = new Uint8Array(v);
    else if (ArrayBuffer.isView(v)) bytes = new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
    else throw new Error("not a binary buffer: " + String(v));
    let s = "";
    for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
    return btoa(s);
  };

  const isBinary = (v) => v instanceof ArrayBuffer || ArrayBuffer.isView(v);

  // ipywidgets' _put_buffers: place buffers at their paths inside a state object.
  const putBuffers = (state, paths, buffers) => {
    paths.forEach((path, i) => {
      let obj = state;
      for (let k = 0; k < path.length - 1; k++) obj = obj[path[k]];
      obj[path[path.length - 1]] = buffers[i];
    });
  };

  // ipywidgets' _remove_buffers: pull binary values out of a state object.
  const removeBuffers = (value) => {
    const paths = [];
    const buffers = [];
    const walk = (v, path) => {
      if (isBinary(v)) {
        paths.push(path);
        buffers.push(viewToB64(v));
        return null;
      }
      if (Array.isArray(v)) return v.map((x, i) => walk(x, [...path, i]));
      if (v && typeof v === "object") {
        const out = {};
        for (const k of Object.keys(v)) out[k] = walk(v[k], [...path, k]);
        return out;
      }
      return v;
    };
    return { state: walk(value, []), buffer_paths: paths, buffers };
  };

  const widgets = {};
  let inflight = 0;
  const errors = [];

  function makeModel(id, state) {
    const listeners = new Map();
    const dirty = new Set();
    const emit = (event, ...args) => {
      for (const cb of [...(listeners.get(event) ?? [])]) {
        try {
          cb(...args);
        } catch (e) {
          errors.push(String(e && e.stack ? e.stack : e));
          console.error(e);
        }
      }
    };
    const toPy = (data, buffers) => {
      inflight++;
      const payload = JSON.stringify({ data, buffers: (buffers ?? []).map(viewToB64) });
      return window
        .__mw_to_py(id, payload)
        .then((out) => deliver(id, JSON.parse(out)))
        .catch((e) => {
          errors.push(String(e && e.stack ? e.stack : e));
          console.error(e);
        })
        .finally(() => inflight--);
    };
    const model = {
      get: (name) => state[name],
      set: (name, value) => {
        state[name] = value;
        dirty.add(name);
        emit(`change:${name}`, model, value);
        emit("change", model);
      },
      on: (events, cb) => {
        for (const ev of events.split(/\s+/).filter(Boolean)) {
          if (!listeners.has(ev)) listeners.set(ev, new Set());
          listeners.get(ev).add(cb);
        }
      },
      off: (events, cb) => {
        if (!events) return listeners.clear();
        for (const ev of events.split(/\s+/).filter(Boolean)) {
          if (cb) listeners.get(ev)?.delete(cb);
          else listeners.delete(ev);
        }
      },
      save_changes: () => {
        if (!dirty.size) return;
        const changed = {};
        for (const k of dirty) changed[k] = state[k];
        dirty.clear();
        const { state: s, buffer_paths, buffers } = removeBuffers(changed);
        inflight++;
        const payload = JSON.stringify({ data: { method: "update", state: s, buffer_paths }, buffers });
        window
          .__mw_to_py(id, payload)
          .then((out) => deliver(id, JSON.parse(out)))
          .catch((e) => errors.push(String(e)))
          .finally(() => inflight--);
      },
      send: (content, _callbacks, buffers) => {
        void toPy({ method: "custom", content }, buffers);
      },
      widget_manager: {},
      _emit: emit,
      _listeners: listeners,
    };
    return model;
  }

  // Apply kernel → frontend messages, in order, as the widget manager would. The buffers of a
  // batch are fetched at once; batches are applied one after the other.
  function deliver(id, messages) {
    const w = widgets[id];
    if (!w || !messages.length) return Promise.resolve();
    inflight++;
    const fetched = Promise.all(messages.map((m) => Promise.all((m.buffers ?? []).map(fetchBuffer))));
    w.queue = w.queue
      .then(() => fetched)
      .then((bufs) => messages.forEach((msg, i) => apply(w, msg, bufs[i])))
      .catch((e) => {
        errors.push(String(e && e.stack ? e.stack : e));
        console.error(e);
      })
      .finally(() => inflight--);
    return w.queue;
  }

  function apply(w, msg, buffers) {
    if (msg.method === "update") {
      const state = msg.state ?? {};
      putBuffers(state, msg.buffer_paths ?? [], buffers);
      for (const k of Object.keys(state)) w.state[k] = state[k];
      for (const k of Object.keys(state)) w.model._emit(`change:${k}`, w.model, state[k]);
      if (Object.keys(state).length) w.model._emit("change", w.model);
    } else if (msg.method === "custom") {
      w.model._emit("msg:custom", msg.content, buffers);
    }
    // echo_update repeats what this frontend just sent: the real manager ignores it too.
  }

  async function mount(id, payload) {
    const { state, buffer_paths, buffers } = payload;
    putBuffers(state, buffer_paths, await Promise.all(buffers.map(fetchBuffer)));
    const model = makeModel(id, state);
    if (state._css) {
      const style = document.createElement("style");
      style.dataset.mwCss = id;
      style.textContent = state._css;
      document.head.append(style);
    }
    // anywidget imports an inline _esm through a Blob URL; do the same.
    const url = URL.createObjectURL(new Blob([state._esm], { type: "text/javascript" }));
    let mod;
    try {
      mod = await import(url);
    } finally {
      URL.revokeObjectURL(url);
    }
    let widget = mod.default ?? mod;
    if (typeof widget === "function") widget = await widget();
    const el = document.createElement("div");
    el.className = "mw-host";
    el.dataset.mwHost = id;
    document.body.append(el);
    const cleanupInit = widget.initialize ? await widget.initialize({ model, experimental: {} }) : undefined;
    const cleanupRender = widget.render ? await widget.render({ model, el, experimental: {} }) : undefined;
    widgets[id] = { model, state, el, cleanup: [cleanupRender, cleanupInit], queue: Promise.resolve() };
  }

  function unmount(id) {
    const w = widgets[id];
    if (!w) return;
    for (const c of w.cleanup) if (typeof c === "function") c();
    w.el.remove();
    document.querySelector(`style[data-mw-css="${id}"]`)?.remove();
    delete widgets[id];
  }

  window.__mw = {
    mount,
    unmount,
    deliver,
    widgets,
    errors,
    idle: () => inflight === 0,
    get: (id, name) => widgets[id]?.state[name],
  };
})();
