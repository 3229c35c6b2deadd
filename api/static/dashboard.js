// The live dashboard: one EventSource on /v1/stream (the browser reconnects it by itself), plain DOM and SVG.
"use strict";

const $ = (id) => document.getElementById(id);
const COLORS = { confirmed: "#3fb950", "cancelled:out_of_stock": "#d29922", "cancelled:payment_declined": "#f85149",
  "cancelled:timeout": "#a371f7", "cancelled:product_unavailable": "#db6d28", "cancelled:customer_request": "#8b98a5" };
const series = { rate: [], lag: [] };
const HISTORY = 60;

function token() {
  const fromHash = new URLSearchParams(location.hash.slice(1)).get("token");
  if (fromHash) { sessionStorage.setItem("streamcart-token", fromHash); window.history.replaceState(null, "", location.pathname); }
  return fromHash || sessionStorage.getItem("streamcart-token");
}

const fmt = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString());
const money = (cents) => (cents / 100).toLocaleString(undefined, { minimumFractionDigits: 2, maximumFractionDigits: 2 });
const clock = (ms) => (ms ? new Date(ms).toLocaleTimeString([], { hour12: false }) + "." + String(ms % 1000).padStart(3, "0") : "–");

function el(tag, attrs = {}, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

function spark(id, values) {
  const target = $(id); target.replaceChildren();
  if (values.length < 2) return;
  const max = Math.max(1, ...values);
  const points = values.map((v, i) => `${(i / (HISTORY - 1)) * 120},${30 - (v / max) * 28}`).join(" ");
  target.appendChild(svg("polyline", { points }));
}

function push(series, value) { series.push(value); if (series.length > HISTORY) series.shift(); }

const CURRENCY_COLORS = ["#58a6ff", "#3fb950", "#d29922", "#bc8cff", "#f778ba"];

function revenueChart(windows, at) {
  // One slot per minute of the 15 up to this minute (or up to the latest window, when event times run ahead of
  // the clock), each window in its own minute's slot (minutes without revenue are not sent); a bar stacks one
  // segment per currency, each labelled with its own sum (cents of two currencies are never added up).
  const target = $("revenue"); target.replaceChildren();
  const since = Math.max(at - (at % 60000), ...windows.map((w) => w.window_start)) - 14 * 60000;
  const currencies = [...new Set(windows.flatMap((w) => Object.keys(w.by_currency)))].sort();
  const max = Math.max(1, ...windows.map((w) => Object.values(w.by_currency).reduce((a, b) => a + b, 0)));
  const width = 600 / 15;
  for (let slot = 0; slot < 15; slot += 3) {
    const label = svg("text", { x: slot * width + 2, y: 155 });
    label.textContent = new Date(since + slot * 60000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hour12: false });
    target.appendChild(label);
  }
  for (const w of windows) {
    const slot = Math.round((w.window_start - since) / 60000);
    if (slot < 0 || slot >= 15) continue;
    let y = 140;
    currencies.forEach((currency, k) => {
      const cents = w.by_currency[currency] || 0;
      if (!cents) return;
      const h = (cents / max) * 135; y -= h;
      const bar = svg("rect", { x: slot * width + 2, y, width: width - 4, height: h, opacity: w.final ? 1 : 0.55,
        style: `fill:${CURRENCY_COLORS[k % CURRENCY_COLORS.length]}` });
      bar.appendChild(svg("title", {})).textContent = `${clock(w.window_start)}: ${money(cents)} ${currency}`;
      target.appendChild(bar);
    });
  }
  const minute = at - (at % 60000);
  const current = windows.find((w) => w.window_start === minute);
  const sums = current ? Object.entries(current.by_currency).map(([c, v]) => `${money(v)} ${c}`).join(", ") : "";
  $("revenue-legend").textContent = windows.length
    ? `this minute: ${sums || "nothing yet"}` + (currencies.length > 1 ? ` · ${currencies.map((c, k) => `${["blue", "green", "amber", "purple", "pink"][k % 5]}: ${c}`).join(", ")}` : "")
    : "no revenue in the last 15 minutes";
}

function outcomes(mix) {
  const total = Object.values(mix).reduce((a, b) => a + b, 0);
  const bar = $("outcome-bar"); bar.replaceChildren();
  const legend = $("outcome-legend"); legend.replaceChildren();
  for (const [name, n] of Object.entries(mix).sort((a, b) => b[1] - a[1])) {
    const color = COLORS[name] || "#58a6ff";
    bar.appendChild(el("div", { style: `width:${(100 * n) / total}%;background:${color}`, title: name }));
    const item = el("li"); item.appendChild(el("i", { style: `background:${color}` }));
    item.appendChild(el("span", { "data-outcome": name }, `${name.replace("cancelled:", "cancelled · ")}: ${fmt(n)} (${Math.round((100 * n) / total)}%)`));
    legend.appendChild(item);
  }
  if (!total) legend.appendChild(el("li", { class: "muted" }, "no outcomes yet"));
}

// The saga's main path, then its ways out; each box is one message the orders flow applied or emitted.
const SAGA = [["PlaceOrder", "placed"], ["StockReserved", "lines reserved"], ["AuthorizePayment", "payment asked"],
  ["PaymentAuthorized", "authorized"], ["OrderConfirmed", "confirmed"], ["ShipmentDispatched", "dispatched"],
  ["ShipmentDelivered", "delivered"]];
const EXITS = [["StockRejected", "lines rejected"], ["PaymentDeclined", "declined"], ["ExpireOrder", "timed out"],
  ["OrderCancelRequested", "cancel asked"], ["OrderCancelled", "cancelled"]];

function sagaFlow(steps, inFlight) {
  const stage = ([name, label]) => {
    const s = steps[name] || { total: 0, per_s: 0 };
    const box = el("div", { class: s.per_s > 0 ? "stage busy" : "stage", "data-step": name });
    box.appendChild(el("div", { class: "rate" }, `${s.per_s.toFixed(1)}/s`));
    box.appendChild(el("div", {}, label));
    box.appendChild(el("div", { class: "muted" }, `${fmt(s.total)} in all`));
    return box;
  };
  $("saga").replaceChildren(...SAGA.map(stage));
  $("saga-exits").replaceChildren(...EXITS.map(stage));
  $("in-flight").textContent = `(${fmt(inFlight)} orders in flight)`;
}

// Topics as rows, partitions as columns: only the topics with records waiting, the cell's shade by how many.
function lagGrid(byPartition) {
  const target = $("lag-partitions"); target.replaceChildren();
  const lag = {}; let partitions = 0; let max = 1;
  for (const [key, n] of Object.entries(byPartition)) {
    const cut = key.lastIndexOf("/"); const topic = key.slice(0, cut); const p = Number(key.slice(cut + 1));
    (lag[topic] ||= {})[p] = n; partitions = Math.max(partitions, p + 1); max = Math.max(max, n);
  }
  const busy = Object.keys(lag).filter((t) => Object.values(lag[t]).some((n) => n > 0)).sort();
  if (!busy.length) { target.textContent = "every partition caught up"; return; }
  const table = el("table", { class: "lag" }); const head = el("tr"); head.appendChild(el("th", {}, "topic"));
  for (let p = 0; p < partitions; p++) head.appendChild(el("th", {}, String(p)));
  table.appendChild(head);
  for (const topic of busy) {
    const tr = el("tr"); tr.appendChild(el("td", {}, topic));
    for (let p = 0; p < partitions; p++) {
      const n = lag[topic][p] || 0;
      tr.appendChild(el("td", n ? { style: `background: rgba(88,166,255,${0.15 + 0.6 * n / max})` } : {}, n ? fmt(n) : "·"));
    }
    table.appendChild(tr);
  }
  target.appendChild(table);
}

function rows(tableId, items, cells) {
  const body = $(tableId).querySelector("tbody"); body.replaceChildren();
  for (const item of items) {
    const tr = el("tr");
    for (const cell of cells(item)) tr.appendChild(cell instanceof Node ? cell : el("td", {}, cell));
    body.appendChild(tr);
  }
}

function render(tick) {
  $("orders-per-s").textContent = tick.orders_per_s.toFixed(1);
  $("orders-placed").textContent = fmt(tick.orders_placed);
  push(series.rate, tick.orders_per_s); spark("rate-spark", series.rate);
  $("p50").textContent = tick.saga_latency_ms.p50 === null ? "–" : `${tick.saga_latency_ms.p50} ms`;
  $("p99").textContent = tick.saga_latency_ms.p99 === null ? "–" : `${tick.saga_latency_ms.p99} ms`;
  $("latency-count").textContent = `(${tick.saga_latency_ms.count} in the last minute)`;
  $("dlq").textContent = fmt(tick.dlq_records);
  $("warehouse-dlq").textContent = fmt(tick.warehouse_dlq_records);
  $("lag").textContent = fmt(tick.consumer_lag.total);
  push(series.lag, tick.consumer_lag.total); spark("lag-spark", series.lag);
  lagGrid(tick.consumer_lag.by_partition);
  if (tick.saga_steps) sagaFlow(tick.saga_steps, tick.in_flight);
  const breakers = $("breakers"); breakers.replaceChildren();
  for (const w of tick.workers) {
    const state = w.breaker;
    const cls = state === "closed" ? "ok" : state === "opened" ? "bad" : "warn";
    const line = el("div"); line.appendChild(el("span", { class: `badge ${cls}` }, state));
    line.appendChild(document.createTextNode(` worker ${w.worker}`)); breakers.appendChild(line);
  }
  if (tick.workers.length < tick.workers_expected) breakers.appendChild(el("div", { class: "muted" }, `${tick.workers_expected - tick.workers.length} worker(s) not answering`));
  outcomes(tick.outcomes);
  if (tick.revenue_per_minute) revenueChart(tick.revenue_per_minute, tick.at);
  // While the analytics are unavailable (a rebalance), their panels keep their last figures: say they are stale.
  const stale = tick.analytics_unavailable || "";
  for (const id of ["revenue", "top-skus"]) $(id).style.opacity = stale ? 0.35 : 1;
  $("analytics-stale").textContent = stale ? `analytics unavailable, figures of an earlier tick: ${stale}` : "";
  $("analytics-stale").hidden = !stale;
  if ($("connection").textContent !== "live") { $("connection").textContent = "live"; $("connection").className = "badge ok"; }
  if (tick.late_events) {
    const late = Object.values(tick.late_events).reduce((a, b) => Math.max(a, b), 0);
    $("late").textContent = late ? `(${fmt(late)} late events counted apart)` : "";
  }
  if (tick.top_skus) {
    const max = Math.max(1, ...tick.top_skus.map((s) => s.units));
    rows("top-skus", tick.top_skus, (s) => {
      const bar = el("td", { class: "bar" }); bar.appendChild(el("span", { style: `width:${(100 * s.units) / max}%` }));
      return [s.sku, fmt(s.units), bar];
    });
  }
  rows("stock", tick.stock, (s) => [s.sku, fmt(s.on_hand), fmt(s.reserved), fmt(s.available)]);
  const dead = tick.dead_letters || [];
  $("dead-letters").hidden = !dead.length; $("dead-letters-none").hidden = !!dead.length;
  rows("dead-letters", dead, (d) => [clock(d.at), d.flow, d.source, d.key || "–", d.error]);
  $("updated").textContent = `updated ${clock(tick.at)}`;
}

function connect(tok) {
  const source = new EventSource(`/v1/stream?token=${encodeURIComponent(tok)}`);
  source.addEventListener("open", () => { $("connection").textContent = "live"; $("connection").className = "badge ok"; });
  source.addEventListener("tick", (e) => render(JSON.parse(e.data)));
  source.addEventListener("unavailable", (e) => {
    $("connection").textContent = "partial: " + JSON.parse(e.data).reason; $("connection").className = "badge warn";
  });
  source.addEventListener("expired", () => {
    // The token the stream was opened with expired: asking again with it would only be refused.
    source.close(); sessionStorage.removeItem("streamcart-token");
    $("connection").textContent = "token expired"; $("connection").className = "badge bad";
    showLogin("The admin token expired: paste a new one");
  });
  source.addEventListener("error", () => {
    // EventSource retries by itself (the server asks for 2 s); say so meanwhile. A browser gives up for good when
    // an answer is not the stream: a proxy's 502 while the worker restarts (start over in 2 s), or a refused token
    // (401, 403: asking again with it would be refused for ever; ask for another).
    $("connection").textContent = "reconnecting…"; $("connection").className = "badge bad";
    if (source.readyState === EventSource.CLOSED) { source.close(); setTimeout(() => retry(tok), 2000); }
  });
}

async function retry(tok) {
  // The stream's own answer says why it closed; its body is not read (the stream would stay open).
  const aborted = new AbortController();
  const giveUp = setTimeout(() => aborted.abort(), 5000); // headers that never come: try the stream again
  let status = 0;
  try {
    const response = await fetch(`/v1/stream?token=${encodeURIComponent(tok)}`, { signal: aborted.signal });
    status = response.status;
  } catch (e) { /* the worker is away: try the stream again */ }
  clearTimeout(giveUp); aborted.abort();
  if (status === 401 || status === 403) {
    sessionStorage.removeItem("streamcart-token");
    $("connection").textContent = status === 401 ? "token refused" : "not an admin"; $("connection").className = "badge bad";
    showLogin(status === 401 ? "The token was refused (expired, or signed with another secret): paste a new admin token"
      : "This token is not an admin's: the dashboard needs an admin token");
    return;
  }
  connect(tok);
}

// An order id as the API takes one (streamcart/ids.py IDENTIFIER_PATTERN): "." or ".." would otherwise be folded
// into the path by the browser and ask for another route.
const ORDER_ID = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$/;

async function showOrder(tok, orderId) {
  if (!ORDER_ID.test(orderId)) {
    $("order-summary").textContent = `${orderId.slice(0, 80)} is not an order id (letters, digits and . _ : -, up to 64)`;
    rows("timeline", [], () => []); return;
  }
  const response = await fetch(`/v1/orders/${encodeURIComponent(orderId)}/timeline`, { headers: { Authorization: `Bearer ${tok}` } });
  const body = await response.json();
  if (!response.ok) { $("order-summary").textContent = body.error ? body.error.message : `HTTP ${response.status}`; rows("timeline", [], () => []); return; }
  $("order-summary").textContent = `${body.order_id} · ${body.status}${body.cancel_reason ? ` (${body.cancel_reason})` : ""}` +
    (body.total_cents !== null ? ` · ${money(body.total_cents)} ${body.currency}` : "") + ` · placed ${clock(body.placed_at)}`;
  rows("timeline", body.steps, (s) => [s.event, clock(s.at), clock(s.recorded_at),
    s.since_placed_ms === null ? "–" : `${s.since_placed_ms} ms`, s.stage_ms === null ? "–" : `+${s.stage_ms} ms`, s.detail || ""]);
}

function showLogin(message) {
  if (message) $("login-message").textContent = message;
  $("login").hidden = false;
}

function start() {
  $("login").addEventListener("submit", (e) => {
    e.preventDefault(); sessionStorage.setItem("streamcart-token", $("token-input").value.trim()); location.reload();
  });
  const tok = token();
  if (!tok) {
    $("board").hidden = true; showLogin();
    $("connection").textContent = "no token"; $("connection").className = "badge bad";
    return;
  }
  connect(tok);
  $("search").addEventListener("submit", (e) => { e.preventDefault(); const id = $("order-id").value.trim(); if (id) showOrder(tok, id); });
}

start();
