// Unit checks of the traffic chart's arithmetic (nodepass/master/dashboard/chart.js).

import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { points, scale } from "../../nodepass/master/dashboard/chart.js";

describe("scale", () => {
  it("rounds the top up to 1, 2 or 5 times a power of ten of its unit, in four ticks", () => {
    assert.deepEqual(scale(0), { top: 1, ticks: [0, 0.25, 0.5, 0.75, 1] });
    assert.equal(scale(730).top, 1000);
    assert.equal(scale(1000).top, 1000);
    assert.equal(scale(1001).top, 2000);
    assert.equal(scale(4200).top, 5 * 1024); // 4.1 KiB/s: up to 5 KiB/s
    assert.equal(scale(6e6).top, 10 * 1024 ** 2); // 5.7 MiB/s: up to 10 MiB/s
    assert.deepEqual(scale(700 * 1024).ticks, [0, 250, 500, 750, 1000].map((n) => n * 1024));
    assert.deepEqual(scale(180).ticks, [0, 50, 100, 150, 200]);
  });
});

describe("points", () => {
  it("places samples of the span from left to right and rates from bottom to top", () => {
    const now = 300_000;
    const samples = [
      { time: -1, rx: 1, tx: 1 }, // older than the span: left out
      { time: 0, rx: 0, tx: 100 },
      { time: 150_000, rx: 50, tx: 0 },
      { time: 300_000, rx: 100, tx: 400 }, // above the top: clipped
    ];
    assert.deepEqual(points(samples, now, 300, 600, 200, 100), [
      { x: 0, rx: 200, tx: 0 },
      { x: 300, rx: 100, tx: 200 },
      { x: 600, rx: 0, tx: 0 },
    ]);
  });
});
