// duckagents live dashboard: one WebSocket to the gateway, plain DOM and SVG, no framework, no build step.
// What each figure means and where it comes from: docs/dashboard.md.
"use strict";

(() => {
  const BUCKET_MS = 5000;         // chart resolution
  const BUCKETS = 60;             // 60 x 5 s: the last five minutes...
  const MIN_BUCKETS = 12;         // ...or since the page opened, but at least one minute
  const FEED_KEPT = 500;          // requests remembered (the filter looks through these)
  const FEED_SHOWN = 100;         // rows shown
  const LATENCIES_KEPT = 256;     // per agent, for p50/p95
  const AGENTS_MAX = 256;
  const KINDS_MAX = 12;           // error kinds charted apart; the rest are "other"
  const STALE_ATTEMPT_MS = 15 * 60 * 1000;  // an attempt whose terminal never came (dropped frames)
  const FLASH_MS = 1600;
  const TYPES = ["provider_status", "supervisor_event", "provider_request", "provider_response",
                 "provider_error", "control_reply", "fleet_degraded", "fleet_rejoined"];
  const BREAKER_TEXT = {closed: "closed", half_open: "half-open", open: "open", forced_open: "forced open",
                        disabled: "disabled"};
  const PALETTE = ["#e8590c", "#c92a2a", "#9c36b5", "#1971c2", "#0c8599", "#5c940d", "#e67700", "#862e9c",
                   "#364fc7", "#a61e4d", "#2b8a3e", "#495057"];

  const $ = (id) => document.getElementById(id);
  const state = {
    agents: new Map(),      // key ("provider", or "instance/provider" in a fleet) -> agent
    feed: new Map(),        // request id -> entry, oldest first
    buckets: new Map(),     // bucket number -> {ok, failed, errors: {kind: n}, latencies: [ms]}
    kinds: new Map(),       // error kind -> colour
    replicas: new Map(),    // instance -> {name, seen, degraded, reason}
    missed: 0,
    lastEventId: null,
    dirty: true,
    firstBucket: Math.floor(Date.now() / BUCKET_MS),
  };

  // --- connection -------------------------------------------------------------------------------------

  let config = {gateway: null, auth: false, server: ""};
  let token = null;
  let socket = null;
  let helloSeen = false;      // on the current connection
  let everConnected = false;
  let failures = 0;
  let reconnectTimer = null;
  let statusOp = null;        // true / false once known: does the gateway answer "status"?

  async function start() {
    try {
      const reply = await fetch("dashboard.json", {cache: "no-store"});
      if (reply.ok) config = Object.assign(config, await reply.json());
    } catch (e) { /* served without its config: same-origin gateway, no token */ }
    token = takeToken();
    $("login").addEventListener("submit", onLogin);
    $("filter-provider").addEventListener("change", () => { state.dirty = true; });
    $("filter-kind").addEventListener("change", () => { state.dirty = true; });
    if (config.auth && !token) showLogin("");
    else connect();
    setInterval(render, 250);
  }

  // The token comes from the URL fragment (never sent to a server, and removed from the address bar at
  // once) or the form; it is kept in sessionStorage only when the user ticks the box, never in a cookie.
  function takeToken() {
    const match = /(?:^#|&)token=([^&]*)/.exec(location.hash);
    if (match) {
      history.replaceState(null, "", location.pathname + location.search);
      return decodeURIComponent(match[1]);
    }
    try { return sessionStorage.getItem("duckagents.token"); } catch (e) { return null; }
  }

  function onLogin(event) {
    event.preventDefault();
    token = $("token").value.trim();
    $("token").value = "";
    try {
      if ($("remember").checked) sessionStorage.setItem("duckagents.token", token);
      else sessionStorage.removeItem("duckagents.token");
    } catch (e) { /* storage disabled: keep it in memory only */ }
    $("login").hidden = true;
    failures = 0;
    connect();
  }

  function showLogin(note) {
    $("login-note").textContent = note;
    $("login").hidden = false;
  }

  function gatewayUrl() {
    const base = config.gateway || `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/`;
    if (!token) return base;
    // Browsers cannot set headers on a WebSocket: the query form (docs/gateway.md, Security).
    return `${base}${base.includes("?") ? "&" : "?"}token=${encodeURIComponent(token)}`;
  }

  function connect() {
    clearTimeout(reconnectTimer);
    helloSeen = false;
    setConnection("connecting", failures ? `reconnecting (try ${failures + 1})…` : "connecting…");
    let ws;
    try {
      ws = new WebSocket(gatewayUrl());
    } catch (e) {
      scheduleReconnect(`cannot open the WebSocket: ${e.message}`);
      return;
    }
    socket = ws;
    ws.onmessage = (event) => { if (socket === ws) onFrame(JSON.parse(event.data)); };
    ws.onclose = (event) => { if (socket === ws) { socket = null; onClosed(event); } };
  }

  function onClosed(event) {
    let why = event.code === 1006 ? "connection lost" : `closed ${event.code}${event.reason ? ": " + event.reason : ""}`;
    if (!helloSeen) {
      why = config.auth ? "cannot connect: server down, or the token was refused" : "cannot connect: server down?";
      if (config.auth && !everConnected) showLogin("The gateway did not accept the connection: check the token.");
    }
    for (const agent of state.agents.values()) agent.attempts.clear();  // their terminals may be lost now
    scheduleReconnect(why);
  }

  function scheduleReconnect(why) {
    failures += 1;
    const delay = Math.min(5000, 250 * 2 ** Math.min(failures, 5)) * (0.75 + Math.random() / 2);
    setConnection("disconnected", `disconnected (${why}); retrying in ${(delay / 1000).toFixed(1)} s`);
    reconnectTimer = setTimeout(connect, delay);
  }

  function setConnection(kind, text) {
    const el = $("connection");
    el.dataset.state = kind;
    el.textContent = text;
    document.body.classList.toggle("offline", kind !== "live");
  }

  function send(message) {
    if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({v: 1, ...message}));
  }

  function onFrame(frame) {
    switch (frame.type) {
      case "hello": {
        helloSeen = everConnected = true;
        failures = 0;
        $("login").hidden = true;
        setConnection("live", "live");
        const fleet = frame.fleet && frame.fleet.instance ? ` · replica ${frame.fleet.instance}` : "";
        $("server").textContent = `${frame.server || config.server || ""}${fleet}`;
        const subscribe = {type: "subscribe", id: "live", filter: {types: TYPES}};
        // A fleet gateway that keeps a stream can replay what this page missed (docs/dashboard.md).
        // (Signals delivered while its replica was degraded carry local ids, which cannot resume.)
        if (frame.resume && /^\d+-\d+$/.test(state.lastEventId || "")) subscribe.since = state.lastEventId;
        send(subscribe);
        send({type: "status", id: "status"});
        break;
      }
      case "ack":
        if (frame.id === "status" && frame.status) { statusOp = true; applyStatusDocument(frame.status); }
        if (frame.id === "live" && frame.missed) noteMissed(frame.missed === true ? 1 : frame.missed);
        break;
      case "error":
        if (frame.id === "status") statusOp = false;  // an older gateway: the agents' status signals will do
        else console.warn("gateway:", frame.code, frame.message);
        break;
      case "signal":
        if (frame.event) onEvent(frame.event);
        break;
      case "dropped":
        noteMissed(frame.count);
        break;
    }
  }

  function noteMissed(count) {
    state.missed += count;
    const el = $("missed");
    el.hidden = false;
    el.textContent = `${state.missed} event(s) missed`;
    el.title = "The page read too slowly (or reconnected past the server's window): figures may be short.";
  }

  // --- the model: what the signals say ----------------------------------------------------------------

  function agentOf(provider, instance) {
    const key = instance ? `${instance}/${provider}` : provider;
    let agent = state.agents.get(key);
    if (agent === undefined) {
      agent = {
        key, provider, instance, kind: "", model: "", up: null, gaveUp: false, health: null, reachable: null,
        breaker: null, halfOpenAt: null, draining: false, headroom: null, statusLatency: null,
        latencies: [], attempts: new Map(), attemptsSeen: false, activeReported: null, spendBase: null,
        spendLive: 0, restarts: 0, requests: null, lastCrash: "", flashes: 0, flashKind: "", flashUntil: 0,
      };
      if (state.agents.size >= AGENTS_MAX) return agent;  // shown nowhere, bounded
      state.agents.set(key, agent);
    }
    return agent;
  }

  function flash(agent, kind) {
    agent.flashes += 1;
    agent.flashKind = kind;
    agent.flashUntil = Date.now() + FLASH_MS;
  }

  function setBreaker(agent, breaker, retryIn, now) {
    if (!breaker) return;
    if (agent.breaker !== null && agent.breaker !== breaker) flash(agent, "breaker");
    agent.breaker = breaker;
    const seconds = Number(retryIn);
    agent.halfOpenAt = breaker === "open" && retryIn != null && isFinite(seconds) ? now + 1000 * seconds : null;
  }

  function restartsFromId(agent, agentId) {
    const match = /#(\d+)$/.exec(agentId || "");  // "<name>#<incarnation>": incarnation 1 is the first run
    if (match) agent.restarts = Math.max(agent.restarts, Number(match[1]) - 1);
  }

  function applyStatusDocument(doc) {
    const now = Date.now();
    // The status document: one object per agent in `data`, its counts under `metrics` (an older flat
    // form, `agents`, is read too).
    for (const entry of doc.data || doc.agents || []) {
      const metrics = entry.metrics || {};
      const instance = entry.instance || entry.replica || null;
      if (instance) touchReplica(instance, now);
      const agent = agentOf(entry.provider, instance);
      const detail = entry.detail || {};
      agent.kind = entry.kind || detail.provider_kind || agent.kind;
      agent.model = (entry.models && entry.models[0]) || detail.default_model || agent.model;
      agent.up = entry.up !== false;
      if (entry.health != null) agent.health = entry.health;
      if (entry.reachable != null) agent.reachable = entry.reachable;
      agent.draining = !!entry.draining;
      setBreaker(agent, entry.breaker_state, detail.breaker_retry_in, now);
      const latency = metrics.latency || entry.latency;
      if (latency && latency.samples) agent.statusLatency = latency;
      const inFlight = metrics.in_flight != null ? metrics.in_flight : entry.in_flight;
      if (typeof inFlight === "number") agent.activeReported = inFlight;
      const requests = metrics.total_requests != null ? metrics.total_requests : entry.requests;
      if (typeof requests === "number") agent.requests = requests;
      const spend = metrics.cost != null ? metrics.cost : entry.spend;
      if (typeof spend === "number") { agent.spendBase = spend; agent.spendLive = 0; }
      if (entry.headroom) {
        if (!agent.headroom) agent.headroom = {requests: null, tokens: null, refusing: false};
        agent.headroom.requests = entry.headroom.requests;
        agent.headroom.tokens = entry.headroom.tokens;
        agent.headroom.refusing = entry.headroom.retry_after != null;
      }
      if (typeof entry.restarts === "number") agent.restarts = Math.max(agent.restarts, entry.restarts);
      restartsFromId(agent, detail.agent_id);
      limitsFromDetail(agent, detail);
    }
    state.dirty = true;
  }

  function limitsFromDetail(agent, detail) {
    if (!agent.headroom) agent.headroom = {requests: null, tokens: null, refusing: false};
    agent.headroom.limitRequests = detail.limit_requests != null ? Number(detail.limit_requests) : null;
    agent.headroom.limitTokens = detail.limit_tokens != null ? Number(detail.limit_tokens) : null;
  }

  function onEvent(event) {
    if (event.id) state.lastEventId = event.id;
    const now = Date.now();
    const data = event.data || {};
    const instance = event.instance || null;  // set by fleet gateways
    if (instance) touchReplica(instance, now);
    switch (event.type) {
      case "provider_status": onStatus(agentOf(data.provider, instance), data, now); break;
      case "supervisor_event": onSupervisor(data, instance); break;
      case "provider_request": onRequest(event, data, instance, now); break;
      case "provider_response":
      case "provider_error": onTerminal(event, data, instance, now); break;
      case "control_reply":
        if (data.provider) {
          const agent = agentOf(data.provider, instance);
          if (typeof data.draining === "boolean") agent.draining = data.draining;
          setBreaker(agent, data.breaker_state, null, now);
        }
        break;
      case "fleet_degraded":
      case "fleet_rejoined": {
        // A replica lost the fleet's Redis (with why) or reaches it again (docs/signals.md).
        const replica = touchReplica(data.instance || instance || "?", now);
        replica.degraded = event.type === "fleet_degraded";
        replica.reason = replica.degraded ? (data.reason || "") : "";
        break;
      }
    }
    state.dirty = true;
  }

  function onStatus(agent, data, now) {
    const detail = data.detail || {};
    agent.up = true;
    agent.health = data.health;
    agent.reachable = data.reachable;
    agent.kind = detail.provider_kind || agent.kind;
    agent.model = detail.default_model || agent.model;
    if (typeof data.draining === "boolean") agent.draining = data.draining;  // with the operator controls
    else if (detail.draining != null) agent.draining = detail.draining === "true";
    setBreaker(agent, data.breaker_state, detail.breaker_retry_in, now);
    limitsFromDetail(agent, detail);
    const headroom = data.headroom || {};
    Object.assign(agent.headroom, {requests: headroom.requests, tokens: headroom.tokens,
                                   refusing: headroom.retry_at != null});
    const metrics = data.metrics || {};
    if (metrics.latency && metrics.latency.samples) agent.statusLatency = metrics.latency;
    if (typeof metrics.total_requests === "number") agent.requests = metrics.total_requests;
    if (typeof metrics.cost === "number") { agent.spendBase = metrics.cost; agent.spendLive = 0; }
    if (detail.active != null) agent.activeReported = Number(detail.active);
    restartsFromId(agent, detail.agent_id);
  }

  function onSupervisor(data, instance) {
    // Each agent runs under a supervisor of its own, "agent:<name>", whose only child has the same id.
    const match = /^agent:(.+)$/.exec(data.supervisor || "");
    if (!match || data.child !== data.supervisor) return;
    const agent = agentOf(match[1], instance);
    agent.restarts = Math.max(agent.restarts, data.restarts || 0);
    if (data.event === "crashed" || data.event === "gave_up") {
      agent.up = false;
      agent.gaveUp = data.event === "gave_up";
      agent.lastCrash = data.error_type ? `${data.error_type}: ${data.error_message}` : (data.reason || "");
      flash(agent, "crash");
    } else if (data.event === "restarted" || data.event === "started") {
      agent.up = true;
      agent.gaveUp = false;
      if (data.event === "restarted") flash(agent, "crash");
    }
  }

  const isAttempt = (event) => (event.subject || "").includes("#");

  function feedEntry(requestId, now) {
    let entry = state.feed.get(requestId);
    if (entry === undefined) {
      entry = {id: requestId, at: now, started: null, model: "", provider: "", attempts: 0, tried: [],
               outcome: "", ok: null, latency: null};
      state.feed.set(requestId, entry);
      if (state.feed.size > FEED_KEPT) state.feed.delete(state.feed.keys().next().value);
    }
    return entry;
  }

  function onRequest(event, data, instance, now) {
    const entry = feedEntry(data.request_id, now);
    if (!isAttempt(event)) {  // the caller's request, as the router took it in
      entry.started = now;
      entry.model = entry.model || data.model || "";
      return;
    }
    const agent = agentOf(data.provider, instance);
    agent.attempts.set(event.subject, now);
    agent.attemptsSeen = true;
    entry.attempts = Math.max(entry.attempts, data.attempt || 1);
    if (data.provider && !entry.tried.includes(data.provider)) entry.tried.push(data.provider);
  }

  function onTerminal(event, data, instance, now) {
    const bucket = bucketAt(now);
    const response = event.type === "provider_response";
    if (isAttempt(event)) {
      const agent = agentOf(data.provider, instance);
      agent.attempts.delete(event.subject);
      if (response) {
        agent.latencies.push(data.latency * 1000);
        if (agent.latencies.length > LATENCIES_KEPT) agent.latencies.shift();
        bucket.latencies.push(data.latency * 1000);
        const cost = data.usage && data.usage.cost;
        if (typeof cost === "number") agent.spendLive += cost;
      } else {
        countError(bucket, data.kind);
      }
      return;
    }
    // The one final result of a request (source /router, or /gateway when the router refused it).
    const entry = feedEntry(data.request_id, now);
    entry.ok = response;
    entry.done = now;
    entry.provider = data.provider || "";
    entry.model = data.model || entry.model;
    entry.attempts = Math.max(entry.attempts, data.attempt || 0);
    entry.outcome = response ? (data.finish_reason || "stop") : (data.kind || "error");
    entry.latency = entry.started !== null ? now - entry.started : (response ? data.latency * 1000 : null);
    if (response) bucket.ok += 1; else bucket.failed += 1;
    if (!response && !data.attempt) countError(bucket, data.kind);  // refused before any attempt
  }

  function countError(bucket, kind) {
    kind = kind || "error";
    if (!state.kinds.has(kind)) {
      if (state.kinds.size >= KINDS_MAX) kind = "other";
      if (!state.kinds.has(kind)) state.kinds.set(kind, PALETTE[state.kinds.size % PALETTE.length]);
    }
    bucket.errors[kind] = (bucket.errors[kind] || 0) + 1;
  }

  function bucketAt(now) {
    const number = Math.floor(now / BUCKET_MS);
    let bucket = state.buckets.get(number);
    if (bucket === undefined) {
      bucket = {ok: 0, failed: 0, errors: {}, latencies: []};
      state.buckets.set(number, bucket);
      for (const old of state.buckets.keys()) if (old <= number - BUCKETS) state.buckets.delete(old);
    }
    return bucket;
  }

  function touchReplica(name, now) {
    let replica = state.replicas.get(name);
    if (replica === undefined) {
      replica = {name, seen: now, degraded: false, reason: ""};
      if (state.replicas.size < AGENTS_MAX) state.replicas.set(name, replica);
    }
    replica.seen = now;
    return replica;
  }

  // --- rendering ----------------------------------------------------------------------------------------

  const fmt = {
    ms: (v) => v == null || !isFinite(v) ? "–" : v >= 10000 ? `${(v / 1000).toFixed(1)} s` : `${Math.round(v)} ms`,
    usd: (v) => v == null ? "–" : v >= 100 ? `$${v.toFixed(0)}` : v >= 1 ? `$${v.toFixed(2)}` : `$${v.toFixed(4)}`,
    num: (v) => v == null ? "–" : v >= 10000 ? `${(v / 1000).toFixed(0)}k` : `${Math.round(v)}`,
    clock: (t) => new Date(t).toTimeString().slice(0, 8),
  };

  function percentile(values, q) {
    if (!values.length) return null;
    const sorted = [...values].sort((a, b) => a - b);
    return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text != null) node.textContent = text;
    return node;
  }

  function render() {
    const now = Date.now();
    renderAgents(now);  // every tick: countdowns and flashes move on their own
    if (!state.dirty) return;
    state.dirty = false;
    renderReplicas(now);
    renderCharts(now);
    renderFeed();
  }

  function card(agent) {
    const root = el("article", "card");
    root.dataset.provider = agent.provider;
    if (agent.instance) root.dataset.instance = agent.instance;
    const head = el("header");
    head.append(el("h3", "name", agent.provider), el("span", "model"), el("span", "up"));
    const breaker = el("div", "breaker-row");
    breaker.append(el("span", "breaker"), el("span", "eta"), el("span", "draining", "draining"));
    const bars = el("div", "bars");
    for (const [name, label] of [["health", "health"], ["requests", "req headroom"], ["tokens", "tok headroom"]]) {
      const row = el("div", `bar-row ${name}`);
      const bar = el("div", "bar");
      bar.append(el("i"));
      row.append(el("span", "label", label), bar, el("span", "value"));
      bars.append(row);
    }
    const figures = el("dl", "figures");
    for (const [name, label] of [["inflight", "in flight"], ["p50", "p50"], ["p95", "p95"], ["spend", "spend"],
                                 ["restarts", "restarts"], ["requests", "requests"]]) {
      const cell = el("div", name);
      cell.append(el("dt", null, label), el("dd"));
      figures.append(cell);
    }
    root.append(head, breaker, bars, figures, el("p", "crash"));
    return root;
  }

  function setBar(row, fraction, text) {
    row.querySelector(".bar i").style.width = `${Math.round(100 * Math.max(0, Math.min(1, fraction)))}%`;
    row.querySelector(".bar").classList.toggle("low", fraction < 0.2);
    row.querySelector(".value").textContent = text;
  }

  function renderAgents(now) {
    const box = $("agents");
    const agents = [...state.agents.values()].sort((a, b) => a.key.localeCompare(b.key));
    $("no-agents").hidden = agents.length > 0;
    for (const agent of agents) {
      let node = box.querySelector(`article[data-key="${CSS.escape(agent.key)}"]`);
      if (!node) {
        node = card(agent);
        node.dataset.key = agent.key;
        box.append(node);
      }
      fillCard(node, agent, now);
    }
  }

  function fillCard(node, agent, now) {
    const q = (selector) => node.querySelector(selector);
    q(".model").textContent = [agent.kind, agent.model].filter(Boolean).join(" · ");
    const up = agent.gaveUp ? "gave up" : agent.up === false ? "down" : agent.up ? "up" : "…";
    q(".up").textContent = up;
    q(".up").dataset.state = agent.gaveUp ? "down" : agent.up === false ? "down" : "up";
    const breaker = q(".breaker");
    breaker.dataset.state = agent.breaker || "unknown";
    breaker.textContent = agent.breaker ? BREAKER_TEXT[agent.breaker] || agent.breaker : "breaker ?";
    const eta = agent.halfOpenAt === null ? "" :
      agent.halfOpenAt > now ? `half-open in ${Math.ceil((agent.halfOpenAt - now) / 1000)} s` : "half-open due";
    q(".eta").textContent = eta;
    q(".draining").hidden = !agent.draining;

    const health = agent.health;
    setBar(q(".bar-row.health"), health == null ? 0 : health,
           health == null ? "–" : `${health.toFixed(2)}${agent.reachable === false ? " unreachable" : ""}`);
    const head = agent.headroom || {};
    for (const [name, limit] of [["requests", head.limitRequests], ["tokens", head.limitTokens]]) {
      const value = head[name];
      const row = q(`.bar-row.${name}`);
      if (value == null) setBar(row, 1, "unlimited");
      else if (head.refusing) setBar(row, 0, "refusing");
      else if (limit) setBar(row, value / limit, `${fmt.num(value)} / ${fmt.num(limit)}`);
      else setBar(row, 1, fmt.num(value));
    }

    const live = agent.latencies.length > 0;
    const p50 = live ? percentile(agent.latencies, 0.5) : agent.statusLatency && agent.statusLatency.p50 * 1000;
    const p95 = live ? percentile(agent.latencies, 0.95) : agent.statusLatency && agent.statusLatency.p95 * 1000;
    for (const [at, time] of agent.attempts) if (now - time > STALE_ATTEMPT_MS) agent.attempts.delete(at);
    const inflight = agent.attemptsSeen ? agent.attempts.size : agent.activeReported;
    const spend = agent.spendBase === null && !agent.spendLive ? null : (agent.spendBase || 0) + agent.spendLive;
    const figures = {inflight: fmt.num(inflight), p50: fmt.ms(p50), p95: fmt.ms(p95), spend: fmt.usd(spend),
                     restarts: String(agent.restarts), requests: fmt.num(agent.requests)};
    for (const [name, text] of Object.entries(figures)) q(`.figures .${name} dd`).textContent = text;

    const crash = q(".crash");
    crash.hidden = !agent.lastCrash;
    crash.textContent = agent.lastCrash ? `last crash: ${agent.lastCrash}` : "";
    const flashing = agent.flashUntil > now;
    node.classList.toggle("flash-crash", flashing && agent.flashKind === "crash");
    node.classList.toggle("flash-breaker", flashing && agent.flashKind === "breaker");
    node.dataset.flashes = String(agent.flashes);
    node.classList.toggle("down", agent.up === false);
  }

  function renderReplicas(now) {
    $("replicas-section").hidden = state.replicas.size === 0;
    const box = $("replicas");
    box.replaceChildren();
    for (const replica of [...state.replicas.values()].sort((a, b) => a.name.localeCompare(b.name))) {
      const agents = [...state.agents.values()].filter((a) => a.instance === replica.name).length;
      const node = el("div", `replica${replica.degraded ? " degraded" : ""}`);
      node.dataset.instance = replica.name;
      node.append(el("b", null, replica.name), el("span", null, `${agents} agent(s)`),
                  el("span", null, replica.degraded ? `degraded: ${replica.reason}` : "joined"),
                  el("span", "seen", `seen ${Math.round((now - replica.seen) / 1000)} s ago`));
      box.append(node);
    }
  }

  // Each chart: slots of BUCKET_MS, the newest on the right, values per second. The span is the last
  // BUCKETS slots, or the time since the page opened when that is shorter (at least MIN_BUCKETS).
  function series(now) {
    const last = Math.floor(now / BUCKET_MS);
    const first = Math.max(last - BUCKETS + 1, Math.min(state.firstBucket, last - MIN_BUCKETS + 1));
    const slots = [];
    for (let n = first; n <= last; n++) slots.push(state.buckets.get(n) || null);
    return slots;
  }

  function svgNode(tag, attrs) {
    const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    return node;
  }

  const W = 300, H = 90;
  const y = (value, max) => (H - 2 - (H - 6) * (value / max)).toFixed(1);

  // A step line: each bucket's value spans the bucket's width; empty buckets (null) leave a gap.
  function path(values, max) {
    const step = W / values.length;
    let d = "", pen = false;
    values.forEach((v, i) => {
      if (v == null) { pen = false; return; }
      const level = y(v, max);
      d += `${pen ? "L" : "M"}${(i * step).toFixed(1)},${level}L${((i + 1) * step).toFixed(1)},${level}`;
      pen = true;
    });
    return d;
  }

  function scale(svg, max, unit, slots) {
    const caption = svg.parentElement.querySelector("figcaption");
    let label = caption.querySelector(".max");
    if (!label) { label = el("span", "max"); caption.append(label); }
    const span = slots * BUCKET_MS / 1000;
    const last = span >= 120 ? `${Math.round(span / 60)} min` : `${span} s`;
    label.textContent = `max ${max >= 10 ? Math.round(max) : max.toFixed(1)}${unit} · last ${last}`;
  }

  function lineChart(svg, lines, unit) {
    const max = Math.max(1, ...lines.flatMap((l) => l.values.filter((v) => v != null)));
    svg.replaceChildren(svgNode("line", {x1: 0, x2: W, y1: H - 2, y2: H - 2, class: "axis"}));
    for (const line of lines) svg.append(svgNode("path", {d: path(line.values, max), class: line.className}));
    scale(svg, max, unit, lines[0].values.length);
  }

  function renderCharts(now) {
    const slots = series(now);
    const perSecond = (n) => n / (BUCKET_MS / 1000);
    lineChart($("chart-rate"), [
      {values: slots.map((b) => perSecond(b ? b.ok : 0)), className: "ok"},
      {values: slots.map((b) => perSecond(b ? b.failed : 0)), className: "failed"},
    ], "/s");
    lineChart($("chart-latency"), [
      {values: slots.map((b) => b && percentile(b.latencies, 0.5)), className: "p50"},
      {values: slots.map((b) => b && percentile(b.latencies, 0.95)), className: "p95"},
    ], " ms");

    const svg = $("chart-errors");
    const totals = slots.map((b) => b ? Object.values(b.errors).reduce((s, n) => s + n, 0) : 0);
    const max = Math.max(1, ...totals.map(perSecond));
    const step = W / slots.length;
    svg.replaceChildren(svgNode("line", {x1: 0, x2: W, y1: H - 2, y2: H - 2, class: "axis"}));
    slots.forEach((bucket, i) => {
      if (!bucket) return;
      let base = 0;
      for (const [kind, count] of Object.entries(bucket.errors)) {
        const top = base + perSecond(count);
        svg.append(svgNode("rect", {x: (i * step + step * 0.1).toFixed(1), width: (step * 0.8).toFixed(1),
                                    y: y(top, max), height: (y(base, max) - y(top, max)).toFixed(1),
                                    fill: state.kinds.get(kind) || "#868e96"}));
        base = top;
      }
    });
    scale(svg, max, "/s", slots.length);
    const legend = $("error-legend");
    legend.replaceChildren();
    for (const [kind, colour] of state.kinds) {
      const swatch = el("i");
      swatch.style.background = colour;
      legend.append(swatch, document.createTextNode(`${kind} `));
    }
  }

  function renderFeed() {
    const select = $("filter-provider");
    const known = new Set([...select.options].map((o) => o.value));
    for (const agent of state.agents.values()) {
      if (!known.has(agent.provider)) { select.append(new Option(agent.provider, agent.provider)); known.add(agent.provider); }
    }
    const kindSelect = $("filter-kind");
    const kinds = new Set([...kindSelect.options].map((o) => o.value));
    for (const kind of state.kinds.keys()) if (!kinds.has(kind)) kindSelect.append(new Option(kind, kind));

    const provider = select.value, kind = kindSelect.value;
    const rows = [];
    for (const entry of [...state.feed.values()].reverse()) {
      if (provider && entry.provider !== provider && !entry.tried.includes(provider)) continue;
      if (kind === "ok" && entry.ok !== true) continue;
      if (kind === "failed" && entry.ok !== false) continue;
      if (kind === "failover" && entry.attempts < 2) continue;
      if (kind === "running" && entry.ok !== null) continue;
      if (kind && !["ok", "failed", "failover", "running"].includes(kind) && entry.outcome !== kind) continue;
      rows.push(feedRow(entry));
      if (rows.length >= FEED_SHOWN) break;
    }
    $("feed").tBodies[0].replaceChildren(...rows);
  }

  function feedRow(entry) {
    const row = el("tr");
    row.dataset.requestId = entry.id;
    row.className = entry.ok === null ? "running" : entry.ok ? "ok" : "failed";
    const failover = entry.attempts > 1;
    if (failover) row.classList.add("failover");
    const answered = entry.provider || (entry.ok === null ? "…" : "–");
    const others = entry.tried.filter((p) => p !== entry.provider);
    const providerCell = el("td", "provider", answered);
    if (failover && others.length) providerCell.append(el("span", "tried", ` ← ${others.join(", ")}`));
    const attempts = el("td", "attempts", entry.attempts ? String(entry.attempts) : "–");
    if (failover) attempts.append(el("span", "failover-mark", " ↻"));
    row.append(el("td", "time", fmt.clock(entry.at)), el("td", "id", entry.id), el("td", "model", entry.model || "–"),
               providerCell, attempts, el("td", "latency", entry.latency == null ? "–" : fmt.ms(entry.latency)),
               el("td", "outcome", entry.ok === null ? "running" : entry.outcome));
    return row;
  }

  start();
})();
