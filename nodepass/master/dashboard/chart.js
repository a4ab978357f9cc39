// The traffic chart: received and sent bytes per second over the last minutes, drawn on a
// canvas.  `scale` is plain arithmetic (tested under node); `drawTraffic` needs a canvas.

import { formatRate } from "./logic.js";

/**
 * A round top for the vertical axis at or above `peak` bytes/s, and its tick values: 1, 2
 * or 5 times a power of ten of the binary unit the peak is in (B, KiB, MiB...), split in
 * four, so the labels read as round figures.
 */
export function scale(peak) {
  const top = Math.max(Number(peak) || 0, 1);
  const unit = 1024 ** Math.max(0, Math.floor(Math.log(top) / Math.log(1024)));
  const amount = top / unit;
  const power = 10 ** Math.floor(Math.log10(amount));
  const nice = [1, 2, 5, 10].map((m) => m * power).find((m) => m >= amount) ?? 10 * power;
  const step = nice * unit;
  const ticks = [0, 1, 2, 3, 4].map((n) => (step * n) / 4);
  return { top: step, ticks };
}

/**
 * Where each sample goes: `{x, rx, tx}` in canvas units, for a plot `width` by `height`
 * showing `span` seconds up to `now` (ms).
 */
export function points(samples, now, span, width, height, top) {
  const start = now - span * 1000;
  return samples
    .filter((s) => s.time >= start)
    .map((s) => ({
      x: ((s.time - start) / (span * 1000)) * width,
      rx: height - (Math.min(s.rx, top) / top) * height,
      tx: height - (Math.min(s.tx, top) / top) * height,
    }));
}

/**
 * Draw `samples` (`{time, rx, tx}`) on `canvas` for the `span` seconds before `now`.
 * Colours come from the CSS custom properties --chart-rx, --chart-tx, --chart-grid and
 * --text of the canvas, so the chart follows the light or dark theme.
 */
export function drawTraffic(canvas, samples, now, span) {
  const ratio = globalThis.devicePixelRatio || 1;
  const cssWidth = canvas.clientWidth || 600;
  const cssHeight = canvas.clientHeight || 200;
  if (canvas.width !== Math.round(cssWidth * ratio)) canvas.width = Math.round(cssWidth * ratio);
  if (canvas.height !== Math.round(cssHeight * ratio)) {
    canvas.height = Math.round(cssHeight * ratio);
  }
  const context = canvas.getContext("2d");
  if (context === null) return;
  const style = getComputedStyle(canvas);
  const colour = (name, fallback) => style.getPropertyValue(name).trim() || fallback;
  const peak = samples.reduce((top, s) => Math.max(top, s.rx, s.tx), 0);
  const { top, ticks } = scale(peak);
  const left = 76;
  const bottom = 22;
  const width = cssWidth - left - 8;
  const height = cssHeight - bottom - 8;
  context.setTransform(ratio, 0, 0, ratio, 0, 0);
  context.clearRect(0, 0, cssWidth, cssHeight);
  context.font = "12px system-ui, sans-serif";
  context.fillStyle = colour("--text", "#222");
  context.strokeStyle = colour("--chart-grid", "#ccc");
  context.lineWidth = 1;
  context.textAlign = "right";
  context.textBaseline = "middle";
  for (const tick of ticks) {
    const y = 8 + height - (tick / top) * height;
    context.beginPath();
    context.moveTo(left, Math.round(y) + 0.5);
    context.lineTo(left + width, Math.round(y) + 0.5);
    context.stroke();
    context.fillText(formatRate(tick), left - 6, y);
  }
  context.textAlign = "center";
  context.textBaseline = "top";
  const minutes = Math.round(span / 60);
  for (let m = 0; m <= minutes; m += 1) {
    const x = left + (m / minutes) * width;
    context.textAlign = m === 0 ? "left" : m === minutes ? "right" : "center";
    context.fillText(m === minutes ? "now" : `-${minutes - m}m`, x, 8 + height + 4);
  }
  const placed = points(samples, now, span, width, height, top);
  for (const [key, name] of [
    ["rx", "--chart-rx"],
    ["tx", "--chart-tx"],
  ]) {
    // Receive wide and solid, send narrow and dashed on top: both show where they meet.
    context.strokeStyle = colour(name, key === "rx" ? "#1565c0" : "#c62828");
    context.lineWidth = key === "rx" ? 4 : 2;
    context.setLineDash(key === "rx" ? [] : [6, 4]);
    context.beginPath();
    placed.forEach((p, n) => {
      const x = left + p.x;
      const y = 8 + p[key];
      if (n === 0) context.moveTo(x, y);
      else context.lineTo(x, y);
    });
    context.stroke();
  }
  context.setLineDash([]);
  canvas.dataset.points = String(placed.length);
  canvas.dataset.peak = String(Math.round(peak));
}
