// The page's backends, with the same methods and the same answers' shapes:
// - ServerBackend: the JSON API of `reptorch demo` (reptorch/demo/server.py);
// - BrowserBackend: the static export (`reptorch demo --export DIR`), which renders
//   (static/render.js), fine-tunes and predicts (static/engine.js) in the browser, from the
//   model files next to index.html. Like the server, it keeps the weights fine-tuned on the
//   last 16 support sets, so that the query's strokes cost one forward pass each;
// - WorkerBackend: the page's way to a BrowserBackend running in a Web Worker (static/worker.js),
//   so that the page stays responsive while it fine-tunes.
"use strict";

const ReptorchBackends = (() => {
  async function getJSON(path) {
    const response = await fetch(path);
    if (!response.ok) throw new Error(`${path}: ${response.status} ${response.statusText}`);
    return response.json();
  }

  async function post(path, body) {
    const response = await fetch(path, {
      method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body),
    });
    const data = await response.json();
    if (!response.ok) throw new Error(data.detail || response.statusText);
    return data;
  }

  class ServerBackend {
    constructor() { this.apiDocs = true; }
    info() { return getJSON("api/info"); }
    examples() { return getJSON("api/examples"); }
    render(drawings) { return post("api/render", { drawings }); }
    fineTune(support) { return post("api/fine-tune", { support }); }
    predict(support, query) { return post("api/predict", { support, query }); }
  }

  const CACHED = 16; // fine-tuned weight sets kept (reptorch.demo.engine.CACHED)
  const LIMITS = { strokes: 64, points: 4000 }; // reptorch.demo.server MAX_STROKES, MAX_POINTS
  // In a page (not a worker): lets it paint ("Fine-tuning...") before its thread is busy.
  const paint = () =>
    typeof document === "undefined" ? Promise.resolve() : new Promise((resolve) => setTimeout(resolve, 0));

  class BrowserBackend {
    // root: where index.html and the model's files are, relative to the running script's page
    constructor(root = "") { this.root = root; this.apiDocs = false; this.tuned = new Map(); this.images = new Map(); }

    async load() {
      if (location.protocol === "file:") {
        throw new Error("browsers do not let a page opened from a file read its model: " +
          "serve this directory, e.g. python3 -m http.server -d DIR, and open http://127.0.0.1:8000/");
      }
      const meta = await getJSON(this.root + "model.json");
      const response = await fetch(this.root + meta.weights);
      if (!response.ok) throw new Error(`${meta.weights}: ${response.status} ${response.statusText}`);
      this.meta = meta;
      this.weights = await response.arrayBuffer();
      this.engine = new ReptorchEngine.Engine(meta, this.weights);
      this.engine.warmUp();
      return this;
    }

    async info() {
      const meta = this.meta;
      return {
        model: meta.model, ways: meta.classes, max_shots: meta.max_shots,
        inner_steps: meta.inner_steps, inner_batch: meta.inner_batch,
        learning_rate: meta.learning_rate, limits: LIMITS, engine: "browser",
        kernels: this.engine.kernels,
      };
    }

    examples() { return getJSON(this.root + "examples.json"); }

    // The 28x28 image of a drawing (Float32Array), kept by its points as the server's cache.
    image(drawing, where) {
      const points = drawing.reduce((total, stroke) => total + stroke.length, 0);
      if (drawing.length > LIMITS.strokes) throw new Error(`${where} has ${drawing.length} strokes: at most ${LIMITS.strokes}`);
      if (points > LIMITS.points) throw new Error(`${where} has ${points} points: at most ${LIMITS.points} a drawing`);
      const key = JSON.stringify(drawing);
      let image = this.images.get(key);
      if (!image) image = ReptorchRender.render(drawing);
      this.images.delete(key);
      this.images.set(key, image);
      if (this.images.size > 256) this.images.delete(this.images.keys().next().value);
      return image;
    }

    async render(drawings) {
      return { images: drawings.map((d, i) => ReptorchRender.encode(this.image(d, `drawings[${i}]`))) };
    }

    supportImages(support) {
      const ways = support.length, shots = support[0].length;
      if (ways < 2 || ways > this.meta.classes) throw new Error(`support has ${ways} classes: this model classifies 2 to ${this.meta.classes}`);
      if (support.some((s) => s.length !== shots) || shots < 1 || shots > this.meta.max_shots) {
        throw new Error(`give each class the same number of drawings, 1 to ${this.meta.max_shots}`);
      }
      return support.map((shotsOf, c) => shotsOf.map((d, k) => this.image(d, `support[${c}][${k}]`)));
    }

    // { params, losses, fresh }: the cached fine-tuning on these images, else a new one.
    tune(images) {
      const ways = images.length, shots = images[0].length;
      const key = `${ways}x${shots}:` + images.flat().map(ReptorchRender.encode).join("");
      let entry = this.tuned.get(key);
      const fresh = !entry;
      if (fresh) entry = this.engine.fineTune(images.flat(), ways, shots);
      this.tuned.delete(key);
      this.tuned.set(key, entry);
      if (this.tuned.size > CACHED) this.tuned.delete(this.tuned.keys().next().value);
      return { ...entry, fresh };
    }

    async fineTune(support) {
      await paint();
      const start = performance.now();
      const images = this.supportImages(support);
      const { losses, fresh } = this.tune(images);
      return {
        losses, support: images.map((s) => s.map(ReptorchRender.encode)),
        milliseconds: performance.now() - start, fine_tuned: fresh,
      };
    }

    async predict(support, query) {
      await paint();
      const start = performance.now();
      const images = this.supportImages(support);
      const queryImage = this.image(query, "query");
      const { params, losses, fresh } = this.tune(images);
      const probabilities = this.engine.predict(params, images.flat(), queryImage, images.length);
      return {
        probabilities, predicted: probabilities.indexOf(Math.max(...probabilities)), losses,
        images: { support: images.map((s) => s.map(ReptorchRender.encode)), query: ReptorchRender.encode(queryImage) },
        milliseconds: performance.now() - start, fine_tuned: fresh,
      };
    }
  }

  // A BrowserBackend in a Web Worker: the same methods, answered by messages.
  class WorkerBackend {
    constructor() {
      this.apiDocs = false;
      this.pending = new Map();
      this.next = 0;
      this.worker = new Worker("static/worker.js");
      this.worker.onmessage = ({ data }) => {
        const { resolve, reject } = this.pending.get(data.id);
        this.pending.delete(data.id);
        if (data.error !== undefined) reject(new Error(data.error));
        else resolve(data.result);
      };
    }

    call(method, ...args) {
      const id = this.next++;
      return new Promise((resolve, reject) => {
        this.pending.set(id, { resolve, reject });
        this.worker.postMessage({ id, method, args });
      });
    }

    async load() { await this.info(); return this; } // the worker has loaded and warmed up
    info() { return this.call("info"); }
    examples() { return this.call("examples"); }
    render(drawings) { return this.call("render", drawings); }
    fineTune(support) { return this.call("fineTune", support); }
    predict(support, query) { return this.call("predict", support, query); }
  }

  // The backend the page was built for: <meta name="reptorch-engine" content="server|browser">.
  async function choose() {
    const tag = document.querySelector('meta[name="reptorch-engine"]');
    if (!tag || tag.content !== "browser") return new ServerBackend();
    if (location.protocol === "file:") return new BrowserBackend().load(); // says how to serve it
    return new WorkerBackend().load();
  }

  return { ServerBackend, BrowserBackend, WorkerBackend, choose };
})();
