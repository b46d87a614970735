// The static demo's engine off the page's main thread: a BrowserBackend (static/browser.js) in a
// Web Worker, so that drawing and repainting go on during the fine-tuning's half second. The
// page's WorkerBackend sends {id, method, args} and gets {id, result} or {id, error}.
"use strict";

importScripts("render.js", "kernels.js", "kernel-sets.js", "engine.js", "browser.js");

const ready = new ReptorchBackends.BrowserBackend("../").load();

self.onmessage = async ({ data: { id, method, args } }) => {
  try {
    const backend = await ready;
    self.postMessage({ id, result: await backend[method](...args) });
  } catch (error) {
    self.postMessage({ id, error: error.message });
  }
};
