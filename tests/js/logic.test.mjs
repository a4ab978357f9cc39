// Unit checks of the dashboard's page logic (nodepass/master/dashboard/logic.js), run with
// node's built-in test runner: `node --test tests/js/`.

import assert from "node:assert/strict";
import { describe, it } from "node:test";

import {
  PSEUDO_ID,
  TrafficHistory,
  applyEvent,
  buildURL,
  describeURL,
  filterInstances,
  formatBytes,
  formatDuration,
  formatRate,
  formatTags,
  parseQuery,
  parseTags,
  rateBetween,
  splitTargets,
} from "../../nodepass/master/dashboard/logic.js";

const forwarder = {
  role: "client",
  host: "127.0.0.1",
  port: "8080",
  targets: "127.0.0.1:80",
  mode: "1",
};

describe("buildURL", () => {
  it("builds a single-end forwarder with only the parameters that differ", () => {
    assert.deepEqual(buildURL(forwarder), {
      url: "client://127.0.0.1:8080/127.0.0.1:80?mode=1",
      errors: {},
    });
  });

  it("builds a TLS server with a key, several targets and the common parameters", () => {
    const { url, errors } = buildURL({
      role: "server",
      key: "s3cr3t",
      host: "",
      port: "10101",
      targets: " 10.0.0.1:443 , ,10.0.0.2:443",
      tls: "2",
      crt: "/etc/np/cert.pem",
      keyFile: "/etc/np/key.pem",
      mode: "2",
      log: "debug",
      type: "2",
      max: "512",
      min: "8",
      rate: "100",
      slot: "1000",
      read: "30s",
      proxy: true,
    });
    assert.deepEqual(errors, {});
    assert.equal(
      url,
      "server://s3cr3t@:10101/10.0.0.1:443,10.0.0.2:443?tls=2&crt=%2Fetc%2Fnp%2Fcert.pem" +
        "&key=%2Fetc%2Fnp%2Fkey.pem&mode=2&type=2&log=debug&max=512&rate=100&slot=1000" +
        "&read=30s&proxy=1",
    );
  });

  it("leaves out what the other role does not read", () => {
    const { url } = buildURL({ ...forwarder, tls: "1", type: "3", max: "9", min: "4" });
    assert.equal(url, "client://127.0.0.1:8080/127.0.0.1:80?mode=1&min=4");
  });

  it("encodes the tunnel key and brackets IPv6 hosts", () => {
    const { url } = buildURL({ ...forwarder, key: "a@b/c", host: "::1", targets: "[::1]:80" });
    assert.equal(url, "client://a%40b%2Fc@[::1]:8080/[::1]:80?mode=1");
  });

  it("names every field that is wrong and gives no URL", () => {
    const { url, errors } = buildURL({
      role: "relay",
      host: "a b",
      port: "70000",
      targets: "nohost, 1.2.3.4:99999",
      tls: "2",
      min: "-1",
      read: "soon",
      notcp: true,
      noudp: true,
    });
    assert.equal(url, "");
    assert.deepEqual(Object.keys(errors).sort(), [
      "host",
      "min",
      "noudp",
      "port",
      "read",
      "role",
      "targets",
    ]);
    assert.match(errors.targets, /nohost/);
  });

  it("asks for certificate files with tls=2 on a server", () => {
    const { errors } = buildURL({ ...forwarder, role: "server", tls: "2" });
    assert.deepEqual(Object.keys(errors).sort(), ["crt", "keyFile"]);
  });

  it("needs a port and a target", () => {
    const { errors } = buildURL({ role: "server", port: "", targets: " , " });
    assert.ok(errors.port);
    assert.ok(errors.targets);
  });
});

describe("describeURL", () => {
  it("splits a URL and hides the tunnel key", () => {
    const parts = describeURL("server://key@:10101/a:1,b:2?tls=1&log=debug&x=%2Fy");
    assert.deepEqual(parts, {
      role: "server",
      hasKey: true,
      tunnel: ":10101",
      targets: ["a:1", "b:2"],
      params: [
        ["tls", "1"],
        ["log", "debug"],
        ["x", "/y"],
      ],
    });
    assert.equal(JSON.stringify(parts).includes("key@"), false);
  });

  it("survives what is not a URL", () => {
    assert.deepEqual(describeURL(""), {
      role: "",
      hasKey: false,
      tunnel: "",
      targets: [],
      params: [],
    });
  });

  it("round-trips what buildURL makes", () => {
    const parts = describeURL(buildURL(forwarder).url);
    assert.equal(parts.tunnel, "127.0.0.1:8080");
    assert.deepEqual(parts.targets, ["127.0.0.1:80"]);
    assert.equal(parts.hasKey, false);
  });
});

describe("rates", () => {
  it("divides the growth of the counters by the time between readings", () => {
    assert.deepEqual(
      rateBetween({ time: 1000, rx: 100, tx: 0 }, { time: 3000, rx: 2100, tx: 500 }),
      { rx: 1000, tx: 250 },
    );
  });

  it("has no rate without time, and none below zero after a reset", () => {
    assert.equal(rateBetween({ time: 5, rx: 1, tx: 1 }, { time: 5, rx: 2, tx: 2 }), null);
    assert.deepEqual(
      rateBetween({ time: 0, rx: 900, tx: 0 }, { time: 1000, rx: 0, tx: 10 }),
      { rx: 0, tx: 10 },
    );
  });

  it("keeps a history of the last minutes from successive instance objects", () => {
    const history = new TrafficHistory(60);
    const at = (seconds, tcprx, udprx, tcptx) =>
      history.add({ tcprx, udprx, tcptx, udptx: 0 }, seconds * 1000);
    assert.equal(at(0, 0, 0, 0), null);
    assert.deepEqual(history.current(), { rx: 0, tx: 0 });
    assert.deepEqual(at(5, 4000, 1000, 500), { rx: 1000, tx: 100 });
    assert.deepEqual(at(10, 4000, 1000, 500), { rx: 0, tx: 0 });
    assert.equal(history.peak(), 1000);
    assert.equal(at(9, 0, 0, 0), null); // out of order: ignored
    at(70, 4000, 1000, 500);
    assert.deepEqual(
      history.samples.map((s) => s.time),
      [10000, 70000],
    );
    assert.equal(history.peak(), 0);
  });
});

describe("filtering", () => {
  const instances = [
    { id: PSEUDO_ID, alias: "", status: "", url: "", meta: { tags: {} } },
    {
      id: "aaaa0001",
      alias: "web",
      status: "running",
      url: "client://:8080/10.0.0.1:80",
      meta: { tags: { site: "lab", tier: "front" } },
    },
    {
      id: "bbbb0002",
      alias: "db",
      status: "stopped",
      url: "server://k@db.example:5432/:5432",
      meta: { tags: { site: "prod" } },
    },
    { id: "cccc0003", alias: "", status: "error", url: "client://:1/a:2", meta: { tags: {} } },
  ];
  const ids = (text, status) => filterInstances(instances, text, status).map((i) => i.id);

  it("never lists the key holder and sorts by alias, then id", () => {
    assert.deepEqual(ids(""), ["cccc0003", "bbbb0002", "aaaa0001"]);
  });

  it("matches words against alias, id, tunnel and tags, ignoring case", () => {
    assert.deepEqual(ids("WEB"), ["aaaa0001"]);
    assert.deepEqual(ids("bbbb"), ["bbbb0002"]);
    assert.deepEqual(ids("db.example"), ["bbbb0002"]);
    assert.deepEqual(ids("front"), ["aaaa0001"]);
    assert.deepEqual(ids("web lab"), ["aaaa0001"]);
    assert.deepEqual(ids("web prod"), []);
  });

  it("matches tags by key=value and by key", () => {
    assert.deepEqual(ids("site=lab"), ["aaaa0001"]);
    assert.deepEqual(ids("site=la"), []);
    assert.deepEqual(ids("#site"), ["bbbb0002", "aaaa0001"]);
    assert.deepEqual(ids("tag:tier"), ["aaaa0001"]);
  });

  it("filters by status from the menu or the search text", () => {
    assert.deepEqual(ids("", "stopped"), ["bbbb0002"]);
    assert.deepEqual(ids("status:error"), ["cccc0003"]);
    assert.deepEqual(ids("site=lab", "stopped"), []);
  });

  it("parses a query into words, tags and a status", () => {
    assert.deepEqual(parseQuery("  Web  a=b #c status:Running "), {
      words: ["web"],
      tags: [
        { key: "a", value: "b" },
        { key: "c", value: null },
      ],
      status: "running",
    });
  });
});

describe("tags", () => {
  it("parses key=value pairs and formats them back", () => {
    const { tags, error } = parseTags(" site = lab, owner=ops ,,");
    assert.equal(error, "");
    assert.deepEqual(tags, { site: "lab", owner: "ops" });
    assert.equal(formatTags(tags), "site=lab, owner=ops");
    assert.deepEqual(parseTags(""), { tags: {}, error: "" });
  });

  it("refuses what is not key=value, and repeated keys", () => {
    assert.match(parseTags("site").error, /site/);
    assert.match(parseTags("=x").error, /=x/);
    assert.match(parseTags("a=1, a=2").error, /twice/);
  });
});

describe("formatting", () => {
  it("formats bytes, rates and durations for people", () => {
    assert.equal(formatBytes(0), "0 B");
    assert.equal(formatBytes(1023), "1023 B");
    assert.equal(formatBytes(1536), "1.5 KiB");
    assert.equal(formatBytes(50 * 1024 * 1024), "50 MiB");
    assert.equal(formatBytes(-5), "0 B");
    assert.equal(formatRate(2048), "2.0 KiB/s");
    assert.equal(formatDuration(42), "42s");
    assert.equal(formatDuration(303), "5m 3s");
    assert.equal(formatDuration(7800), "2h 10m");
    assert.equal(formatDuration(273600), "3d 4h");
  });

  it("splits target lists", () => {
    assert.deepEqual(splitTargets(" a:1, ,b:2,"), ["a:1", "b:2"]);
    assert.deepEqual(splitTargets(undefined), []);
  });
});

describe("applyEvent", () => {
  const instance = (status, tcprx = 0) => ({ id: "aaaa0001", alias: "web", status, tcprx });

  it("follows creation, updates, log lines and deletion", () => {
    const map = new Map();
    assert.equal(applyEvent(map, { type: "initial", instance: instance("stopped") }).kind, "create");
    const update = applyEvent(map, { type: "update", instance: instance("running", 5) });
    assert.deepEqual([update.kind, update.previous], ["update", "stopped"]);
    assert.equal(update.before.status, "stopped");
    assert.equal(map.get("aaaa0001").tcprx, 5);
    const log = applyEvent(map, { type: "log", instance: instance("stopped"), logs: "x" });
    assert.equal(log.kind, "log");
    assert.equal(map.get("aaaa0001").status, "running"); // a log line changes nothing
    assert.equal(applyEvent(map, { type: "delete", instance: instance("running") }).kind, "delete");
    assert.equal(map.size, 0);
  });

  it("ignores the key holder and reports the end of the stream", () => {
    const map = new Map();
    const pseudo = { id: PSEUDO_ID, status: "" };
    assert.equal(applyEvent(map, { type: "initial", instance: pseudo }).kind, "ignored");
    assert.equal(applyEvent(map, { type: "shutdown", instance: null }).kind, "shutdown");
    assert.equal(map.size, 0);
  });
});
