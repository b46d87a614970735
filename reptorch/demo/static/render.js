// Drawings to 28x28 network inputs in the browser: the definition of reptorch/demo/render.py,
// the same float64 operations in the same order, so that both give the same images bit for bit
// (tests/test_demo_static.py compares them on the shipped drawings).
"use strict";

const ReptorchRender = (() => {
  const SIZE = 28; // the network's input side
  const BOX_FRACTION = 1 / 1.9; // longer side of the drawing's bounding box / image side
  const LINE_FRACTION = 0.05; // line width / image side
  const SUPERSAMPLE = 16; // sample points per pixel side

  // The strokes moved into the image frame: p' = (p - c) * s + size / 2 (render.normalise).
  function normalise(drawing, size) {
    const strokes = drawing.filter((stroke) => stroke.length > 0);
    if (!strokes.length) throw new Error("a drawing needs at least one point");
    let lowX = Infinity, lowY = Infinity, highX = -Infinity, highY = -Infinity;
    for (const stroke of strokes) {
      for (const [x, y] of stroke) {
        lowX = Math.min(lowX, x); lowY = Math.min(lowY, y);
        highX = Math.max(highX, x); highY = Math.max(highY, y);
      }
    }
    const centreX = (lowX + highX) / 2, centreY = (lowY + highY) / 2;
    const longer = Math.max(highX - lowX, highY - lowY);
    const scale = longer > 0 ? (size * BOX_FRACTION) / longer : 1.0;
    return strokes.map((stroke) =>
      stroke.map(([x, y]) => [(x - centreX) * scale + size / 2, (y - centreY) * scale + size / 2]));
  }

  // First and last sample index with (i + 0.5) / SUPERSAMPLE in [low, high] (render._window).
  function window_(low, high, samples) {
    return [Math.max(0, Math.ceil(low * SUPERSAMPLE - 0.5)),
      Math.min(samples - 1, Math.floor(high * SUPERSAMPLE - 0.5))];
  }

  // Marks the samples within radius of the segment a-b (render._ink_samples).
  function inkSegment(ink, samples, a, b, radius) {
    const margin = radius + 1 / SUPERSAMPLE;
    const ax = a[0], ay = a[1], dx = b[0] - a[0], dy = b[1] - a[1];
    const [x0, x1] = window_(Math.min(a[0], b[0]) - margin, Math.max(a[0], b[0]) + margin, samples);
    const [y0, y1] = window_(Math.min(a[1], b[1]) - margin, Math.max(a[1], b[1]) + margin, samples);
    const length2 = dx * dx + dy * dy;
    const r2 = radius * radius;
    for (let j = y0; j <= y1; j++) {
      const qy = (j + 0.5) / SUPERSAMPLE;
      for (let i = x0; i <= x1; i++) {
        const qx = (i + 0.5) / SUPERSAMPLE;
        let t = 0;
        if (length2 !== 0) t = Math.min(Math.max(((qx - ax) * dx + (qy - ay) * dy) / length2, 0.0), 1.0);
        const ex = qx - ax - t * dx;
        const ey = qy - ay - t * dy;
        if (ex * ex + ey * ey <= r2) ink[j * samples + i] = 1;
      }
    }
  }

  // The network input: Float32Array(size * size), row-major, ink 0 and paper 1.
  function render(drawing, size = SIZE) {
    const samples = size * SUPERSAMPLE;
    const ink = new Uint8Array(samples * samples);
    const radius = LINE_FRACTION * size / 2;
    for (const stroke of normalise(drawing, size)) {
      if (stroke.length === 1) inkSegment(ink, samples, stroke[0], stroke[0], radius);
      for (let p = 1; p < stroke.length; p++) inkSegment(ink, samples, stroke[p - 1], stroke[p], radius);
    }
    const image = new Float32Array(size * size);
    for (let y = 0; y < size; y++) {
      for (let x = 0; x < size; x++) {
        let count = 0;
        for (let j = 0; j < SUPERSAMPLE; j++) {
          const row = (y * SUPERSAMPLE + j) * samples + x * SUPERSAMPLE;
          for (let i = 0; i < SUPERSAMPLE; i++) count += ink[row + i];
        }
        image[y * size + x] = 2 * count >= SUPERSAMPLE * SUPERSAMPLE ? 0.0 : 1.0;
      }
    }
    return image;
  }

  // 784 characters, '1' where there is ink (server.encode).
  function encode(image) {
    let text = "";
    for (let i = 0; i < image.length; i++) text += image[i] < 0.5 ? "1" : "0";
    return text;
  }

  return { SIZE, render, encode, normalise };
})();
