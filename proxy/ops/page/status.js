// The pkproxy status page: polls status/live once a second and draws what it answers.
// Plain browser JavaScript, no build step, no dependencies. Charts are SVG drawn here.
"use strict";
(() => {
  const POLL_MS = 1000;
  const RETRY_MS = 2000;
  const TIMEOUT_MS = 5000;
  const BIN_S = 5; // upstream req/s: mean over 5 s
  const HIT_BIN_S = 15; // hit ratio: over 15 s
  const RESTART_NOTICE_MS = 60000;
  const SVG = "http://www.w3.org/2000/svg";
  // Why the proxy answered a consumer 429 itself (ThrottleReason), in a few words.
  const REASONS = {
    deadline: "deadline",
    queue_full: "queue full",
    consumer_quota: "quota",
    consumer_queue_full: "own queue full",
  };

  const state = {
    startId: null,
    seq: 0,
    history: null,
    failures: 0,
    lostAt: null,
    restartedAt: null,
    refused: null,
    data: null,
  };

  // -- DOM helpers: text only, never markup, so names from the proxy stay text. --------
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    setAttrs(node, attrs);
    node.append(...children.filter((c) => c !== null && c !== undefined));
    return node;
  }
  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG, tag);
    setAttrs(node, attrs);
    node.append(...children.filter((c) => c !== null && c !== undefined));
    return node;
  }
  function setAttrs(node, attrs) {
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value !== null && value !== undefined && value !== false) node.setAttribute(key, value);
    }
  }
  function title(text) {
    return svg("title", {}, text);
  }
  function $(id) {
    return document.getElementById(id);
  }
  function kv(items, cls) {
    return el(
      "dl",
      { class: cls || "kv" },
      ...items.map(([label, value, field, alert]) =>
        el("div", {}, el("dt", {}, label), el("dd", { "data-field": field, class: alert ? "alert" : null }, value)),
      ),
    );
  }

  // -- Formats: every number carries its unit. -------------------------------------------
  function group(n) {
    return Math.round(n).toString().replace(/\B(?=(\d{3})+(?!\d))/g, "\u202f");
  }
  function fmtCount(n, unit) {
    return unit ? `${group(n)} ${unit}` : group(n);
  }
  function fmtMs(ms) {
    if (ms === null || ms === undefined) return "–";
    if (ms < 10) return `${ms.toFixed(1)} ms`;
    if (ms < 1000) return `${Math.round(ms)} ms`;
    return `${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)} s`;
  }
  function fmtPct(ratio) {
    if (ratio === null || ratio === undefined) return "–";
    const pct = ratio * 100;
    return `${pct < 10 && pct > 0 ? pct.toFixed(1) : Math.round(pct)} %`;
  }
  function fmtBytes(n) {
    if (n === null || n === undefined) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) {
      n /= 1024;
      i += 1;
    }
    return `${i === 0 ? n : n.toFixed(n < 10 ? 1 : 0)} ${units[i]}`;
  }
  function fmtRate(rate) {
    return `${Number.isInteger(rate) ? rate : rate.toFixed(2)} req/s`;
  }
  function fmtDuration(seconds) {
    const s = Math.max(0, Math.floor(seconds));
    const pad = (v) => String(v).padStart(2, "0");
    if (s < 60) return `${s} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${pad(s % 60)} s`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ${pad(Math.floor((s % 3600) / 60))} min`;
    return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
  }
  function fmtClock(wallSeconds) {
    const d = new Date(wallSeconds * 1000);
    const pad = (v) => String(v).padStart(2, "0");
    return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }

  // -- History: the client's copy of the server's ring. ---------------------------------
  function resetHistory() {
    state.seq = 0;
    state.history = { t: [], lookups: [], hits: [], scopes: {}, window: 900, resolution: 1 };
  }
  function appendHistory(h) {
    if (h.first_seq !== state.seq + 1) resetHistory(); // first load, or points were missed
    const mine = state.history;
    mine.window = h.window_s;
    mine.resolution = h.resolution_s;
    const max = Math.round(h.window_s / h.resolution_s);
    const push = (target, values) => {
      target.push(...values);
      if (target.length > max) target.splice(0, target.length - max);
    };
    push(mine.t, h.t);
    push(mine.lookups, h.lookups);
    push(mine.hits, h.hits);
    for (const [name, cols] of Object.entries(h.scopes)) {
      const scope = (mine.scopes[name] ||= { sent: [], throttled: [], depth: [], paused: [] });
      for (const key of Object.keys(scope)) push(scope[key], cols[key]);
    }
    state.seq = h.seq;
  }

  // Sum `values` into bins of `width` seconds over the window ending at `now`.
  function bins(now, width, window, values, resolution) {
    // Bins sit on multiples of `width`, so that they do not shift between polls; the
    // newest is partial and averages over the seconds it has.
    const count = Math.ceil(window / width);
    const start = (Math.floor(now / width) - count + 1) * width;
    const sums = new Array(count).fill(0);
    const covered = new Array(count).fill(0);
    const t = state.history.t;
    for (let i = 0; i < t.length; i += 1) {
      const b = Math.floor((t[i] - start) / width);
      if (b < 0 || b >= count) continue;
      covered[b] += resolution;
      for (const [k, v] of Object.entries(values)) {
        sums[b] ||= {};
        sums[b][k] = (sums[b][k] || 0) + v[i];
      }
    }
    return { start, width, count, sums, covered };
  }

  // -- Charts ----------------------------------------------------------------------------
  let chartId = 0;
  function timeChart(opts) {
    const { width, height, now, window } = opts;
    const pad = { left: 44, right: opts.ref ? 60 : 12, top: 8, bottom: 14 };
    const w = Math.max(10, width - pad.left - pad.right);
    const h = Math.max(10, height - pad.top - pad.bottom);
    const x = (t) => pad.left + ((t - (now - window)) / window) * w;
    const y = (v) => pad.top + h - (Math.min(v, opts.yMax) / opts.yMax) * h;
    const id = `c${(chartId += 1)}`;
    const root = svg("svg", {
      class: "chart",
      width,
      height,
      viewBox: `0 0 ${width} ${height}`,
      role: "img",
      "aria-label": opts.label,
    });
    root.append(
      svg(
        "defs",
        {},
        svg(
          "pattern",
          { id: `${id}-hatch`, width: 6, height: 6, patternUnits: "userSpaceOnUse", patternTransform: "rotate(45)" },
          svg("line", { class: "hatch", x1: 0, y1: 0, x2: 0, y2: 6 }),
        ),
      ),
    );
    for (const tick of opts.yTicks) {
      root.append(
        svg("line", { class: "grid", x1: pad.left, x2: pad.left + w, y1: y(tick), y2: y(tick) }),
        svg("text", { x: pad.left - 4, y: y(tick) + 3, "text-anchor": "end" }, opts.yFormat(tick)),
      );
    }
    for (const minutes of [15, 10, 5, 0]) {
      const label = minutes === 0 ? "now" : `−${minutes} min`;
      const anchor = minutes === 15 ? "start" : minutes === 0 ? "end" : "middle";
      root.append(svg("text", { x: x(now - minutes * 60), y: height - 2, "text-anchor": anchor }, label));
    }
    for (const band of opts.bands || []) {
      const attrs = { x: x(band.from), y: pad.top, width: Math.max(2, x(band.to) - x(band.from)), height: h };
      root.append(
        svg("rect", { ...attrs, class: "paused" }, title(`paused ${fmtClock(band.from)}–${fmtClock(band.to)}`)),
        svg("rect", { ...attrs, fill: `url(#${id}-hatch)` }),
      );
    }
    for (const series of opts.series) drawSeries(root, series, x, y, pad.top + h);
    if (opts.ref) {
      root.append(
        svg("line", { class: "ref", x1: pad.left, x2: pad.left + w, y1: y(opts.ref.value), y2: y(opts.ref.value) }),
        svg("text", { class: "ref-label", x: pad.left + w + 4, y: y(opts.ref.value) + 3 }, opts.ref.label),
      );
    }
    for (const mark of opts.markers || []) {
      const mx = x(mark.t);
      root.append(
        svg(
          "path",
          { class: "marker", d: `M${mx - 4},${pad.top + 7} L${mx + 4},${pad.top + 7} L${mx},${pad.top} Z` },
          title(mark.label),
        ),
      );
    }
    return root;
  }

  function drawSeries(root, series, x, y, base) {
    let line = "";
    let area = "";
    let run = [];
    const flush = () => {
      if (run.length === 0) return;
      line += run.map(([px, py], i) => `${i ? "L" : "M"}${px.toFixed(1)},${py.toFixed(1)}`).join("");
      if (series.area) {
        const [fx] = run[0];
        const [lx] = run[run.length - 1];
        area += `M${fx.toFixed(1)},${base}` + run.map(([px, py]) => `L${px.toFixed(1)},${py.toFixed(1)}`).join("");
        area += `L${lx.toFixed(1)},${base}Z`;
      }
      run = [];
    };
    for (const [t, v] of series.points) {
      if (v === null) flush();
      else run.push([x(t), y(v)]);
    }
    flush();
    if (series.area && area) root.append(svg("path", { class: "area", d: area }));
    if (line) root.append(svg("path", { class: series.className, d: line }));
    if (series.dots) {
      for (const [t, v] of series.points) {
        if (v !== null) root.append(svg("circle", { class: series.dots, cx: x(t), cy: y(v), r: 1.8 }));
      }
    }
  }

  function legendItem(kind, text) {
    const icon = svg("svg", { width: 18, height: 10, "aria-hidden": "true", class: "icon" });
    if (kind === "line") icon.append(svg("line", { class: "series", x1: 0, x2: 18, y1: 5, y2: 5 }));
    if (kind === "ref") icon.append(svg("line", { class: "ref", x1: 0, x2: 18, y1: 5, y2: 5 }));
    if (kind === "hits") {
      icon.append(svg("line", { class: "hits", x1: 0, x2: 18, y1: 5, y2: 5 }));
      icon.append(svg("circle", { class: "hit-dot", cx: 9, cy: 5, r: 2 }));
    }
    if (kind === "marker") icon.append(svg("path", { class: "marker", d: "M5,9 L13,9 L9,1 Z" }));
    if (kind === "paused") icon.append(svg("rect", { class: "paused", x: 1, y: 1, width: 16, height: 8 }));
    return el("span", {}, icon, text);
  }

  function niceMax(v) {
    const steps = [1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10];
    const magnitude = 10 ** Math.floor(Math.log10(Math.max(v, 1e-9)));
    for (const s of steps) if (s * magnitude >= v) return s * magnitude;
    return 10 * magnitude;
  }

  // -- Sections ----------------------------------------------------------------------------
  function renderHeader(data) {
    const s = data.status;
    $("upstream-url").textContent = s.upstream;
    $("upstream-url").title = s.upstream;
    $("state").textContent = s.draining ? "⏻ draining" : s.ready ? "✓ ready" : "… starting";
    $("uptime").textContent = fmtDuration(s.uptime_s);
    const redis = s.redis;
    $("redis").hidden = !redis;
    if (redis) {
      const degraded = redis.state === "degraded";
      const replicas =
        redis.replicas === null || redis.replicas === undefined
          ? "replicas unknown"
          : fmtCount(redis.replicas, redis.replicas === 1 ? "replica" : "replicas");
      const text = redis.state === "off" ? "off (one process)" : `${degraded ? "⚠ DEGRADED" : "✓ ok"} · ${replicas}`;
      $("redis-state").replaceChildren(el("span", { class: `badge ${degraded ? "alert" : "ok"}` }, text));
    }
  }

  function renderBanners(data) {
    const banners = [];
    const now = Date.now();
    if (state.refused) {
      banners.push(
        state.refused === 403
          ? "⚠ This key may not read the status: it needs a consumer key with ops = true."
          : "⚠ This page needs an ops key: reload and give it as the password.",
      );
    }
    if (state.failures > 0) {
      banners.push(`⚠ Connection to pkproxy lost at ${fmtClock(state.lostAt / 1000)}: retrying every ${RETRY_MS / 1000} s.`);
    }
    if (state.restartedAt && now - state.restartedAt < RESTART_NOTICE_MS) {
      banners.push(`↻ pkproxy restarted (noticed at ${fmtClock(state.restartedAt / 1000)}): its history starts again.`);
    }
    const redis = data && data.status.redis;
    if (redis && redis.state === "degraded") {
      banners.push("⚠ Redis degraded: shared state is unreachable, this replica sends on a local share of the rate.");
    }
    if (data && data.status.draining) banners.push("⏻ pkproxy is draining: it is shutting down.");
    $("banners").replaceChildren(...banners.map((text) => el("p", { class: "banner" }, text)));
  }

  function renderScopes(data) {
    const names = Object.keys(data.status.scopes);
    const list = $("scope-list");
    const width = list.clientWidth || 600;
    const height = names.length <= 1 ? 200 : names.length === 2 ? 150 : names.length === 3 ? 104 : 70;
    list.replaceChildren(...names.map((name) => scopeCard(data, name, width - 22, height)));
  }

  function scopeCard(data, name, width, height) {
    const s = data.status.scopes[name];
    const d = data.scopes[name] || {};
    const hist = state.history.scopes[name] || { sent: [], throttled: [], paused: [] };
    const res = state.history.resolution;
    const b = bins(data.now, BIN_S, state.history.window, { sent: hist.sent }, res);
    const points = b.sums.map((sum, i) => [
      b.start + (i + 0.5) * b.width,
      b.covered[i] ? (sum ? sum.sent : 0) / b.covered[i] : null,
    ]);
    const peak = Math.max(s.rate, ...points.map(([, v]) => v || 0));
    const yMax = niceMax(peak * 1.15);
    const t = state.history.t;
    const markers = [];
    const bands = [];
    let bandFrom = null;
    for (let i = 0; i < t.length; i += 1) {
      if (hist.throttled[i]) markers.push({ t: t[i] + res / 2, label: `${hist.throttled[i]} upstream 429 at ${fmtClock(t[i])}` });
      if (hist.paused[i] && bandFrom === null) bandFrom = t[i];
      if (!hist.paused[i] && bandFrom !== null) {
        bands.push({ from: bandFrom, to: t[i] });
        bandFrom = null;
      }
    }
    if (bandFrom !== null) bands.push({ from: bandFrom, to: t.length ? t[t.length - 1] + res : bandFrom });
    const chart = timeChart({
      width,
      height,
      now: data.now,
      window: state.history.window,
      yMax,
      yTicks: [0, yMax / 2, yMax],
      yFormat: (v) => `${+v.toFixed(2)}/s`,
      label: `${name}: upstream requests per second over the last 15 minutes, against the rate of ${fmtRate(s.rate)}`,
      series: [{ points, className: "series", area: true }],
      ref: { value: s.rate, label: `rate ${+s.rate.toFixed(2)}/s` },
      markers,
      bands,
    });
    const paused = d.paused_until;
    const badge = paused
      ? el("span", { class: "badge alert", "data-field": "paused" }, `⏸ paused until ${fmtClock(paused)} (${(s.paused_ms / 1000).toFixed(1)} s)`)
      : el("span", { class: "badge ok", "data-field": "paused" }, "▶ sending");
    const throttled = d.upstream_429 || 0;
    return el(
      "article",
      { class: "card scope", "data-scope": name },
      el(
        "div",
        { class: "scope-head" },
        el("h3", {}, name),
        el("span", { class: "rate", "data-field": "rate" }, `${fmtRate(s.rate)} · burst ${s.burst}`),
        badge,
      ),
      chart,
      el(
        "div",
        { class: "legend" },
        legendItem("line", `upstream req/s (${BIN_S} s mean)`),
        legendItem("ref", "rate"),
        legendItem("marker", "upstream 429"),
        legendItem("paused", "paused"),
      ),
      kv(
        [
          ["queue", fmtCount(s.queue_depth, "req"), "queue"],
          ["wait p50 / p99", `${fmtMs(d.wait_p50_ms)} / ${fmtMs(d.wait_p99_ms)}`, "wait"],
          ["used (1 min)", fmtPct(s.utilisation_1m), "utilisation"],
          ["sent", fmtCount(s.sent, "req"), "sent"],
          ["upstream 429s", fmtCount(throttled), "throttled", throttled > 0],
        ],
        "stats",
      ),
    );
  }

  function renderCache(data) {
    const c = data.status.cache;
    const body = $("cache-body");
    if (c.lookups === undefined) {
      body.replaceChildren(el("p", { class: "muted" }, "The cache is disabled."));
      return;
    }
    const width = (body.clientWidth || 500) - 2;
    const b = bins(data.now, HIT_BIN_S, state.history.window, { lookups: state.history.lookups, hits: state.history.hits }, state.history.resolution);
    const points = b.sums.map((sum, i) => [
      b.start + (i + 0.5) * b.width,
      sum && sum.lookups ? sum.hits / sum.lookups : null,
    ]);
    const chart = timeChart({
      width,
      height: 84,
      now: data.now,
      window: state.history.window,
      yMax: 1,
      yTicks: [0, 0.5, 1],
      yFormat: (v) => `${Math.round(v * 100)} %`,
      label: "Cache hit ratio over the last 15 minutes",
      series: [{ points, className: "hits", dots: "hit-dot" }],
    });
    const tiers = el(
      "table",
      {},
      el("thead", {}, el("tr", {}, el("th", {}, "tier"), el("th", { class: "num" }, "entries"), el("th", { class: "num" }, "size"))),
      el(
        "tbody",
        {},
        ...["memory", "disk"]
          .filter((tier) => c[`${tier}_entries`] !== undefined)
          .map((tier) =>
            el(
              "tr",
              { "data-tier": tier },
              el("td", {}, tier),
              el("td", { class: "num" }, fmtCount(c[`${tier}_entries`], "entries")),
              el("td", { class: "num" }, fmtBytes(c[`${tier}_bytes`])),
            ),
          ),
      ),
    );
    const details = data.cache;
    const skips = Object.entries(details.skips);
    const skipCount = skips.reduce((n, [, v]) => n + v, 0);
    const skipText = skipCount ? `${fmtCount(skipCount)} (${skips.map(([k, v]) => `${k.replaceAll("_", " ")} ${group(v)}`).join(", ")})` : "0";
    body.replaceChildren(
      kv([
        ["hit ratio", `${fmtPct(c.hit_ratio)} since start`, "hit-ratio"],
        ["lookups", fmtCount(c.lookups), "lookups"],
        ["in flight", fmtCount(c.in_flight, "req"), "in-flight"],
      ]),
      chart,
      el("div", { class: "legend" }, legendItem("hits", `hit ratio (${HIT_BIN_S} s)`)),
      tiers,
      kv([
        ["stores", fmtCount(details.stores), "stores"],
        ["skips", skipText, "skips"],
        ["evictions", `${fmtCount(details.evictions.memory)} (memory)`, "evictions"],
      ]),
    );
  }

  function renderUpstream(data) {
    const u = data.upstream;
    const errors = Object.entries(u.errors);
    $("upstream-body").replaceChildren(
      kv([
        ["latency p50 / p99", `${fmtMs(u.latency_p50_ms)} / ${fmtMs(u.latency_p99_ms)}`, "latency"],
        ["of", `${fmtCount(u.samples, "answers")} in the last minute`, "samples"],
        ["answers since start", fmtCount(u.answers), "answers"],
      ]),
      kv(
        errors.map(([kind, count]) => [
          kind === "429" ? "429 (throttled)" : kind,
          count ? `⚠ ${group(count)}` : "0",
          `error-${kind}`,
          count > 0,
        ]),
      ),
    );
  }

  function shareBar(row) {
    const width = 64;
    const bar = svg("svg", { width, height: 10, "aria-hidden": "true" });
    bar.append(svg("rect", { class: "track", x: 0, y: 2, width, height: 6 }));
    if (row.slot_share !== null) bar.append(svg("rect", { class: "bar", x: 0, y: 2, width: row.slot_share * width, height: 6 }));
    if (row.weight_share !== null) {
      const fx = Math.min(width - 1, Math.max(1, row.weight_share * width));
      bar.append(svg("line", { class: "fair", x1: fx, x2: fx, y1: 0, y2: 10 }));
    }
    const text = row.slot_share === null && row.weight_share === null ? "idle" : `${fmtPct(row.slot_share ?? 0)} · fair ${fmtPct(row.weight_share)}`;
    return el("td", { class: "share" }, bar, text);
  }

  function renderConsumers(data) {
    const rows = data.consumers;
    if (rows.length === 0) {
      $("consumers-body").replaceChildren(el("p", { class: "muted" }, "No consumer seen yet."));
      return;
    }
    const head = ["consumer", "weight", "slots", "share vs fair", "queued", "oldest", "local 429s", "quota"];
    const numeric = new Set(["weight", "slots", "queued", "oldest"]);
    const table = el(
      "table",
      {},
      el("thead", {}, el("tr", {}, ...head.map((h) => el("th", { class: numeric.has(h) ? "num" : null }, h)))),
      el("tbody", {}, ...rows.map(consumerRow)),
    );
    $("consumers-body").replaceChildren(
      table,
      el("p", { class: "small" }, "share: bar = slots taken, | = fair share by weight among the active consumers."),
    );
  }

  function consumerRow(row) {
    const reasons = Object.entries(row.local_429);
    const refused = reasons.reduce((n, [, v]) => n + v, 0);
    const why = reasons.length === 1 ? REASONS[reasons[0][0]] || reasons[0][0] : reasons.map(([k, v]) => `${REASONS[k] || k} ${group(v)}`).join(", ");
    const refusedText = refused ? `${group(refused)} (${why})` : "0";
    let quota = "–";
    if (row.quota && row.quota.rate !== null) {
      quota = `${row.quota.burst - row.quota.remaining}/${row.quota.burst} used · ${+row.quota.rate.toFixed(2)}/s`;
    } else if (row.quota && row.quota.max_queued !== null) {
      quota = `queue ≤ ${row.quota.max_queued}`;
    }
    return el(
      "tr",
      { "data-consumer": row.name },
      el("td", {}, row.name, row.configured ? null : el("span", { class: "small" }, " (address)")),
      el("td", { class: "num" }, `×${+row.weight.toFixed(2)}`),
      el("td", { class: "num" }, fmtCount(row.slots_1m)),
      shareBar(row),
      el("td", { class: "num" }, fmtCount(row.queued, "req")),
      el("td", { class: "num" }, fmtMs(row.oldest_wait_ms)),
      el("td", { class: refused ? "alert" : null, "data-field": "local-429" }, refusedText),
      el("td", {}, quota),
    );
  }

  function render() {
    const data = state.data;
    renderBanners(data);
    if (!data) return;
    renderHeader(data);
    renderScopes(data);
    renderCache(data);
    renderUpstream(data);
    renderConsumers(data);
  }

  // -- Polling -----------------------------------------------------------------------------
  function receive(data) {
    if (state.startId !== null && data.start_id !== state.startId) {
      state.restartedAt = Date.now();
      resetHistory();
      state.startId = data.start_id;
      return false; // ask again from the start of the new process's history
    }
    state.startId = data.start_id;
    appendHistory(data.history);
    state.data = data;
    return true;
  }

  async function poll() {
    let delay = POLL_MS;
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), TIMEOUT_MS);
    try {
      const response = await fetch(`status/live?since=${state.seq}`, {
        cache: "no-store",
        headers: { Accept: "application/json" },
        signal: controller.signal,
      });
      if (response.status === 401 || response.status === 403) {
        state.refused = response.status;
        delay = RETRY_MS * 5;
      } else if (!response.ok) {
        throw new Error(`HTTP ${response.status}`);
      } else {
        const data = await response.json();
        state.refused = null;
        state.failures = 0;
        state.lostAt = null;
        if (!receive(data)) delay = 0;
      }
      const conn = $("conn");
      conn.className = "conn";
      conn.textContent = `● live · updated ${fmtClock(Date.now() / 1000)}`;
    } catch (error) {
      state.failures += 1;
      state.lostAt ||= Date.now();
      delay = RETRY_MS;
      const conn = $("conn");
      conn.className = "conn lost";
      conn.textContent = "○ disconnected: retrying";
    } finally {
      clearTimeout(timer);
    }
    try {
      render();
    } finally {
      setTimeout(poll, delay);
    }
  }

  resetHistory();
  let resizeTimer = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(render, 150);
  });
  poll();
})();
