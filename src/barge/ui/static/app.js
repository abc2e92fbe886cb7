// Barge dashboard: plain JavaScript, no dependencies, no build step.
//
// The API key lives in this tab's sessionStorage only (never localStorage, a cookie or a
// URL) and goes to this server alone, as "Authorization: Bearer <key>". Everything the
// API returns is put on the page as text (textContent, setAttribute), never as HTML.
"use strict";

(() => {
  const KEY_ITEM = "barge.apiKey";
  const API_ROOT = new URL("../", document.baseURI); // the page is <root>/ui/
  const PAGE_SIZE = 20;
  const POLL_MS = 2000; // while something shown is unfinished
  const IDLE_POLL_MS = 15000; // otherwise, to notice new batches
  const TERMINAL = new Set(["completed", "failed", "expired", "cancelled"]);
  const CANCELLABLE = new Set(["validating", "in_progress", "finalizing"]);
  const ENDED = [
    ["completed_at", "completed"],
    ["failed_at", "failed"],
    ["expired_at", "expired"],
    ["cancelled_at", "cancelled"],
  ];
  const DELIVERY_OPEN = new Set(["pending", "failing"]);
  const RESULT_ROWS = 20; // the newest results a batch page shows
  const RESULT_PAGE = 200; // results asked for at each refresh; a full page means a backlog

  const state = {
    key: null, // the API key of this tab
    me: null, // GET /v1/me: {account, role, permissions}
    gen: 0, // bumped on every view change; answers for an older view are dropped
    timer: null,
    busy: false,
    view: null, // "sign-in" | "list" | "batch"
    batches: [],
    hasMore: false,
    rows: new Map(), // batch id -> {sig, tr}
    batchId: null, // the batch page's batch
    batch: null,
    deliveries: null, // null: the server has no webhook deliveries for us to show
    confirming: null, // "cancel" | "delete" while its confirmation is shown
    actionsSig: null,
    ui: null, // the batch page's parts that stay between refreshes
    flash: "", // a notice for the next view
    noDeliveries: false, // the deliveries route answered 404: not asked again for this page
    // The batch page's newest results: {cursor, rows, following}. cursor null: ask from
    // "latest" (now); following false: the batch ended, or has no results to follow.
    results: null,
  };

  // -- small helpers ------------------------------------------------------------------

  const $ = (id) => document.getElementById(id);

  /** An element: props.class, props.text, props.attrs ({name: value}), props.on
   *  ({event: handler}); children are nodes or strings (added as text). */
  function el(tag, props = {}, ...children) {
    const node = document.createElement(tag);
    if (props.class) node.className = props.class;
    if (props.text !== undefined && props.text !== null) node.textContent = String(props.text);
    for (const [name, value] of Object.entries(props.attrs || {})) {
      if (value !== undefined && value !== null && value !== false) {
        node.setAttribute(name, value === true ? "" : String(value));
      }
    }
    for (const [event, handler] of Object.entries(props.on || {})) {
      node.addEventListener(event, handler);
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function show(node, visible) {
    node.hidden = !visible;
  }

  function setText(node, text) {
    node.textContent = text || "";
    show(node, Boolean(text));
  }

  const numberFormat = new Intl.NumberFormat("en-US");
  const num = (n) => (typeof n === "number" ? numberFormat.format(n) : "—");

  function pad(n) {
    return String(n).padStart(2, "0");
  }

  /** Unix seconds as local "YYYY-MM-DD HH:MM:SS"; "—" for none. */
  function time(ts) {
    if (typeof ts !== "number") return "—";
    const d = new Date(ts * 1000);
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
      `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }

  /** A <time>; ``short``: only the time of day for today, no seconds for other days. */
  function timeEl(ts, short = false) {
    if (typeof ts !== "number") return el("time", { text: "—" });
    let text = time(ts);
    if (short) text = text.slice(0, 10) === time(Date.now() / 1000).slice(0, 10) ? text.slice(11) : text.slice(0, 16);
    return el("time", { text, attrs: { datetime: new Date(ts * 1000).toISOString(), title: time(ts) } });
  }

  function relative(ts) {
    if (typeof ts !== "number") return "—";
    const s = Math.round(ts - Date.now() / 1000);
    if (s <= 0) return "any moment";
    if (s < 90) return `in ${s} s`;
    if (s < 5400) return `in ${Math.round(s / 60)} min`;
    return `in ${(s / 3600).toFixed(1)} h`;
  }

  function can(action) {
    return Boolean(state.me && state.me.permissions.includes(action));
  }

  function ended(batch) {
    for (const [field, label] of ENDED) {
      if (typeof batch[field] === "number") return { ts: batch[field], label };
    }
    return null;
  }

  function counts(batch) {
    const c = batch.request_counts || {};
    const total = Number(c.total) || 0;
    const completed = Number(c.completed) || 0;
    const failed = Number(c.failed) || 0;
    return { total, completed, failed, done: completed + failed };
  }

  function statusBadge(status) {
    const safe = /^[a-z_]+$/.test(String(status)) ? status : "unknown";
    return el("span", { class: `badge status-${safe}`, text: status });
  }

  function progressBar(batch) {
    const { total, done, failed } = counts(batch);
    const pct = total > 0 ? Math.min(100, (100 * done) / total) : 0;
    const bar = el("div", { class: "bar" });
    bar.style.width = `${pct.toFixed(1)}%`; // CSSOM, which the CSP allows (no style attribute)
    const failedBar = el("div", { class: "bar failed" });
    failedBar.style.width = `${total > 0 ? ((100 * failed) / total).toFixed(1) : 0}%`;
    const label = `${num(done)} / ${num(total)}`;
    return el("div", { class: "progress-cell" },
      el("div", {
        class: `progress status-${/^[a-z_]+$/.test(batch.status) ? batch.status : "unknown"}`,
        attrs: {
          role: "progressbar", "aria-valuemin": 0, "aria-valuemax": total,
          "aria-valuenow": done, "aria-label": `Requests done: ${label}`,
        },
      }, bar, failedBar),
      el("span", { class: "progress-label", text: label }));
  }

  function usageCell(usage) {
    if (!usage || typeof usage !== "object") return ["—"];
    return [
      el("div", { text: num(usage.total_tokens), attrs: { title: "total tokens" } }),
      el("div", { class: "sub", text: `${num(usage.input_tokens)} in · ${num(usage.output_tokens)} out` }),
    ];
  }

  function batchHref(id) {
    return `#/batches/${encodeURIComponent(id)}`;
  }

  // -- the API ------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, message, code) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  /** A call to this server's API with the tab's key; the parsed JSON, or the Response when
   *  raw. Throws ApiError with the API's own message for a non-2xx answer. */
  async function api(method, path, { raw = false, key = state.key } = {}) {
    let res;
    try {
      res = await fetch(new URL(path, API_ROOT), {
        method,
        headers: { Authorization: `Bearer ${key}`, Accept: "application/json" },
        cache: "no-store",
        credentials: "omit",
        referrerPolicy: "no-referrer",
      });
    } catch (e) {
      throw new ApiError(0, "The server could not be reached.", "network_error");
    }
    if (!res.ok) {
      let message = `${res.status} ${res.statusText}`.trim();
      let code = null;
      try {
        const body = await res.json();
        if (body && body.error) {
          message = body.error.message || message;
          code = body.error.code || null;
        }
      } catch (e) {
        // not JSON: keep the status line
      }
      throw new ApiError(res.status, message, code);
    }
    return raw ? res : res.json();
  }

  /** A 401 while signed in: the key was revoked (or the server's admin key changed). */
  function handleAuthLoss(err) {
    if (err instanceof ApiError && err.status === 401 && state.key) {
      signOut(`Signed out: ${err.message}`);
      return true;
    }
    return false;
  }

  // -- sign in and out ----------------------------------------------------------------

  async function signIn(key) {
    const me = await api("GET", "v1/me", { key });
    state.key = key;
    state.me = me;
    sessionStorage.setItem(KEY_ITEM, key);
    $("who").textContent = `${me.account} · ${me.role}`;
    show($("session"), true);
  }

  function signOut(message) {
    sessionStorage.removeItem(KEY_ITEM);
    state.key = null;
    state.me = null;
    state.batches = [];
    state.rows.clear();
    state.batch = null;
    state.ui = null;
    $("batch-rows").replaceChildren();
    $("batch-detail").replaceChildren();
    show($("session"), false);
    setView("sign-in");
    setText($("sign-in-error"), message || "");
  }

  function signInMessage(err) {
    if (err instanceof ApiError && err.status === 401) {
      return `This key was not accepted: ${err.message}`;
    }
    return `Could not sign in: ${err.message}`;
  }

  async function onSignInSubmit(event) {
    event.preventDefault();
    const input = $("api-key");
    const key = input.value.trim();
    if (!key) {
      setText($("sign-in-error"), "Enter an API key.");
      return;
    }
    if (!/^[\x21-\x7e]+$/.test(key)) {
      setText($("sign-in-error"), "An API key is printable ASCII, without spaces.");
      return;
    }
    const button = $("sign-in-button");
    button.disabled = true;
    setText($("sign-in-error"), "");
    try {
      await signIn(key);
      input.value = "";
      route();
    } catch (err) {
      setText($("sign-in-error"), signInMessage(err));
      input.select();
    } finally {
      button.disabled = false;
    }
  }

  // -- views and polling --------------------------------------------------------------

  function setView(view) {
    state.gen += 1;
    state.view = view;
    clearTimeout(state.timer);
    state.timer = null;
    show($("sign-in-view"), view === "sign-in");
    show($("list-view"), view === "list");
    show($("batch-view"), view === "batch");
    if (view === "sign-in") $("api-key").focus();
  }

  function notice(text) {
    setText($("notice"), text);
  }

  function schedule(fast) {
    clearTimeout(state.timer);
    const gen = state.gen;
    state.timer = setTimeout(() => {
      if (gen !== state.gen) return;
      if (document.visibilityState === "hidden") {
        schedule(fast); // look again later; nothing is fetched for a hidden tab
        return;
      }
      if (state.view === "list") refreshList();
      else if (state.view === "batch") refreshBatch();
    }, fast ? POLL_MS : IDLE_POLL_MS);
  }

  function route() {
    if (!state.key) {
      setView("sign-in");
      return;
    }
    const match = /^#\/batches\/([^/]+)$/.exec(location.hash);
    let id = null;
    try {
      id = match ? decodeURIComponent(match[1]) : null;
    } catch (e) {
      id = null; // a malformed fragment: the list
    }
    if (id) {
      setView("batch");
      openBatch(id);
    } else {
      setView("list");
      openList();
    }
  }

  // -- the list of batches -------------------------------------------------------------

  async function fetchBatches(count, after) {
    let items = [];
    let hasMore = true;
    let cursor = after;
    while (hasMore && items.length < count) {
      const limit = Math.min(100, count - items.length);
      const params = new URLSearchParams({ limit: String(limit) });
      if (cursor) params.set("after", cursor);
      const page = await api("GET", `v1/batches?${params}`);
      items = items.concat(page.data);
      hasMore = Boolean(page.has_more) && page.data.length > 0;
      cursor = page.last_id;
    }
    return { items, hasMore };
  }

  function openList() {
    document.title = "Batches · Barge";
    setText($("list-error"), "");
    if (!can("get_batches")) {
      setText($("list-error"),
        `This key's role '${state.me.role}' may not list batches (get_batches).`);
      $("batch-rows").replaceChildren();
      show($("load-more"), false);
      return;
    }
    refreshList();
  }

  async function refreshList() {
    if (state.busy) {
      schedule(true);
      return;
    }
    const gen = state.gen;
    state.busy = true;
    $("list-state").textContent = "Updating…";
    try {
      const { items, hasMore } = await fetchBatches(Math.max(PAGE_SIZE, state.batches.length));
      if (gen !== state.gen) return;
      state.batches = items;
      state.hasMore = hasMore;
      renderList();
      setText($("list-error"), "");
      $("list-state").textContent = `Updated ${time(Date.now() / 1000).slice(11)}`;
    } catch (err) {
      if (gen !== state.gen || handleAuthLoss(err)) return;
      setText($("list-error"), `Could not load batches: ${err.message}`);
      $("list-state").textContent = "";
    } finally {
      state.busy = false;
    }
    if (gen === state.gen) schedule(state.batches.some((b) => !TERMINAL.has(b.status)));
  }

  async function loadMore() {
    if (state.busy || !state.batches.length) return;
    const gen = state.gen;
    const button = $("load-more");
    state.busy = true;
    button.disabled = true;
    try {
      const last = state.batches[state.batches.length - 1].id;
      const { items, hasMore } = await fetchBatches(PAGE_SIZE, last);
      if (gen !== state.gen) return;
      const known = new Set(state.batches.map((b) => b.id));
      state.batches = state.batches.concat(items.filter((b) => !known.has(b.id)));
      state.hasMore = hasMore;
      renderList();
    } catch (err) {
      if (gen !== state.gen || handleAuthLoss(err)) return;
      setText($("list-error"), `Could not load more batches: ${err.message}`);
    } finally {
      state.busy = false;
      button.disabled = false;
    }
  }

  function batchRow(b) {
    const end = ended(b);
    const c = counts(b);
    return el("tr", { attrs: { "data-batch-id": b.id, "data-status": b.status } },
      el("td", { class: "id-cell" },
        el("a", { class: "mono", text: b.id, attrs: { href: batchHref(b.id) } }),
        b.model ? el("div", { class: "sub", text: b.model }) : null),
      el("td", {}, statusBadge(b.status)),
      el("td", {}, progressBar(b)),
      el("td", { class: "nowrap", attrs: { "data-col": "requests" } },
        el("div", { text: `${num(c.completed)} completed` }),
        el("div", { class: c.failed ? "failed-count" : "sub", text: `${num(c.failed)} failed` })),
      el("td", {}, el("code", { text: b.endpoint })),
      el("td", { class: "nowrap" }, timeEl(b.created_at, true)),
      el("td", { class: "nowrap", attrs: { "data-col": "ended" } },
        end ? timeEl(end.ts, true) : "—"),
      el("td", { class: "num nowrap", attrs: { "data-col": "tokens" } }, ...usageCell(b.usage)));
  }

  function renderList() {
    const rows = [];
    const seen = new Map();
    for (const b of state.batches) {
      const sig = JSON.stringify(b);
      const old = state.rows.get(b.id);
      const tr = old && old.sig === sig ? old.tr : batchRow(b);
      seen.set(b.id, { sig, tr });
      rows.push(tr);
    }
    state.rows = seen;
    $("batch-rows").replaceChildren(...rows);
    show($("list-empty"), state.batches.length === 0);
    show($("load-more"), state.hasMore);
  }

  // -- one batch ----------------------------------------------------------------------

  function openBatch(id) {
    state.batchId = id;
    state.batch = null;
    state.deliveries = null;
    state.confirming = null;
    state.actionsSig = null;
    state.ui = null;
    state.noDeliveries = false;
    state.results = { cursor: null, rows: [], following: true };
    document.title = `${id} · Barge`;
    setText($("batch-error"), "");
    $("batch-detail").replaceChildren(el("p", { class: "muted", text: "Loading…" }));
    refreshBatch();
  }

  async function fetchDeliveries(id) {
    if (state.noDeliveries) return null;
    try {
      return await api("GET", `v1/batches/${encodeURIComponent(id)}/webhook_deliveries`);
    } catch (err) {
      // 404: a server without webhook deliveries: the table is left out, quietly.
      if (err instanceof ApiError && err.status === 404) state.noDeliveries = true;
      return null;
    }
  }

  /** One look at the results recorded since the last: the newest RESULT_ROWS are kept.
   *  Following starts from "latest" (what is recorded from now on); a full page means
   *  the batch runs faster than the page refreshes, so the next look skips ahead to now
   *  (every result is in the output and error files once the batch ends). */
  async function followResults(id) {
    const r = state.results;
    if (!r || !r.following) return;
    try {
      const after = r.cursor === null ? "latest" : r.cursor;
      const res = await api("GET", `v1/batches/${encodeURIComponent(id)}/results?` +
        `after=${encodeURIComponent(after)}&limit=${RESULT_PAGE}`, { raw: true });
      const text = await res.text();
      const next = res.headers.get("barge-next-after") || "";
      const lines = text.split("\n").filter((line) => line);
      for (const line of lines) {
        try {
          r.rows.push(resultRow(JSON.parse(line)));
        } catch (e) {
          // not JSON: not a result line; left out
        }
      }
      r.rows.splice(0, Math.max(0, r.rows.length - RESULT_ROWS));
      if (!next) r.following = false;
      else r.cursor = lines.length >= RESULT_PAGE ? null : next;
    } catch (err) {
      if (handleAuthLoss(err)) return;
      // A 4xx (409: a batch whose results are not logged; 404: gone) ends following; an
      // unreachable or restarting server is asked again at the next refresh.
      if (err instanceof ApiError && err.status >= 400 && err.status < 500) r.following = false;
    }
  }

  /** What the results table shows of one output or error line. */
  function resultRow(line) {
    const response = line && typeof line.response === "object" ? line.response : null;
    const error = line && typeof line.error === "object" ? line.error : null;
    const code = response && response.status_code != null ? String(response.status_code) : null;
    return {
      id: String(line && line.custom_id != null ? line.custom_id : "—"),
      answer: error ? String(error.code ?? "error") : (code ?? "—"),
      ok: !error && code !== null && code.startsWith("2"),
    };
  }

  async function refreshBatch() {
    const gen = state.gen;
    const batchId = state.batchId;
    try {
      const path = `v1/batches/${encodeURIComponent(batchId)}`;
      const [batch, deliveries] = await Promise.all([api("GET", path), fetchDeliveries(batchId),
        followResults(batchId)]);
      if (gen !== state.gen) return;
      state.batch = batch;
      state.deliveries = deliveries && Array.isArray(deliveries.data) ? deliveries.data : null;
      renderBatch();
      setText($("batch-error"), "");
    } catch (err) {
      if (gen !== state.gen || handleAuthLoss(err)) return;
      if (err instanceof ApiError && err.status === 404) {
        state.batch = null;
        state.ui = null;
        $("batch-detail").replaceChildren();
        setText($("batch-error"), `No such batch: ${batchId}`);
        return;
      }
      setText($("batch-error"), `Could not load the batch: ${err.message}`);
      if (!state.batch) $("batch-detail").replaceChildren();
    }
    if (gen !== state.gen) return;
    const open = !state.batch || !TERMINAL.has(state.batch.status) ||
      (state.results && state.results.following) || // the last results, once it has ended
      (state.deliveries || []).some((d) => DELIVERY_OPEN.has(d.status));
    schedule(open);
  }

  function fact(label, ...value) {
    return [el("dt", { text: label }), el("dd", {}, ...value)];
  }

  function fileFact(id) {
    return id ? el("span", { class: "mono", text: id }) : "—";
  }

  function renderBatch() {
    const b = state.batch;
    const c = counts(b);
    const end = ended(b);
    const u = b.usage && typeof b.usage === "object" ? b.usage : null;
    const detail = $("batch-detail");

    const facts = el("dl", { class: "facts" },
      fact("Endpoint", el("code", { text: b.endpoint })),
      fact("Model", b.model || "—"),
      fact("Requests", `${num(c.completed)} completed · ${num(c.failed)} failed · ${num(c.total)} total`),
      fact("Created", timeEl(b.created_at)),
      fact("In progress since", timeEl(b.in_progress_at)),
      fact("Finalizing since", timeEl(b.finalizing_at)),
      fact(end ? `Ended (${end.label})` : "Ended", end ? timeEl(end.ts) : "—"),
      fact("Expires", timeEl(b.expires_at)),
      TERMINAL.has(b.status) ? [] : fact("Expected done", relative(b.barge_eta)),
      fact("Completion window", b.completion_window || "—"),
      fact("Input file", fileFact(b.input_file_id)),
      fact("Output file", fileFact(b.output_file_id)),
      fact("Error file", fileFact(b.error_file_id)),
      fact("Tokens", u
        ? `${num(u.input_tokens)} in (${num(u.input_tokens_details && u.input_tokens_details.cached_tokens)} cached) · ` +
          `${num(u.output_tokens)} out (${num(u.output_tokens_details && u.output_tokens_details.reasoning_tokens)} reasoning) · ` +
          `${num(u.total_tokens)} total`
        : "—"),
      fact("Barge status", el("code", { text: b.barge_status || "—" })),
      fact("Updated", timeEl(b.updated_at)));

    const errors = b.errors && Array.isArray(b.errors.data) ? b.errors.data : [];
    const errorSection = el("section", { class: "panel", attrs: { "aria-labelledby": "errors-title" } },
      el("h2", { text: `Errors (${errors.length})`, attrs: { id: "errors-title" } }),
      errors.length
        ? table(["Line", "Code", "Message", "Param"], errors.map((e) => [
          el("span", { class: "num", text: e.line ?? "—" }),
          el("code", { text: e.code ?? "—" }),
          e.message ?? "",
          e.param ?? "—",
        ]), "errors")
        : el("p", { class: "muted", text: "No errors in the input file." }));

    const meta = b.metadata && typeof b.metadata === "object" ? Object.entries(b.metadata) : [];
    const metaSection = el("section", { class: "panel", attrs: { "aria-labelledby": "meta-title" } },
      el("h2", { text: "Metadata", attrs: { id: "meta-title" } }),
      meta.length
        ? table(["Key", "Value"], meta.map(([k, v]) => [el("code", { text: k }), String(v)]), "metadata")
        : el("p", { class: "muted", text: "No metadata." }));

    if (!state.ui) {
      state.ui = {
        head: el("div", { class: "batch-head" }),
        progress: el("div"),
        actions: el("div", { class: "actions", attrs: { id: "batch-actions" } }),
        error: el("p", { class: "error", attrs: { id: "action-error", role: "alert", hidden: true } }),
        body: el("div"),
      };
      detail.replaceChildren(state.ui.head, state.ui.progress, state.ui.actions, state.ui.error,
        state.ui.body);
    }
    state.ui.head.replaceChildren(el("h1", { class: "mono", text: b.id }), statusBadge(b.status));
    state.ui.progress.replaceChildren(progressBar(b));
    state.ui.body.replaceChildren(el("section", { class: "panel" }, facts), resultsSection(),
      errorSection, metaSection, deliveriesSection());
    renderActions();
  }

  function table(headers, rows, name) {
    return el("div", { class: "table-wrap" },
      el("table", { class: "table", attrs: { "data-table": name } },
        el("thead", {}, el("tr", {}, headers.map((h) => el("th", { text: h, attrs: { scope: "col" } })))),
        el("tbody", {}, rows.map((cells) => el("tr", {}, cells.map((cell) => el("td", {}, cell)))))));
  }

  function resultsSection() {
    const r = state.results;
    if (!r || (!r.following && !r.rows.length)) return null; // ended before the page opened
    const rows = r.rows.slice().reverse().map((x) => [
      el("code", { text: x.id }),
      el("span", { class: x.ok ? "answer ok" : "answer failed", text: x.answer }),
    ]);
    return el("section", { class: "panel", attrs: { "aria-labelledby": "results-title" } },
      el("h2", { text: "Newest results", attrs: { id: "results-title" } }),
      el("p", { class: "muted", text: "Recorded since this page opened, newest first; " +
        "every result is in the output and error files once the batch ends." }),
      rows.length
        ? table(["Custom ID", "Answer"], rows, "results")
        : el("p", { class: "muted", text: "None yet." }));
  }

  function deliveriesSection() {
    if (!state.deliveries) return null;
    const rows = state.deliveries.map((d) => [
      el("div", {}, el("code", { text: d.type ?? "—" }), el("div", { class: "sub mono", text: d.event_id ?? "" })),
      el("span", { class: "wrap-anywhere", text: d.url ?? d.endpoint_id ?? "—" }),
      statusBadge(d.status ?? "unknown"),
      el("span", { class: "num", text: num(d.attempts) }),
      d.last_status_code != null ? String(d.last_status_code) : (d.last_error ?? "—"),
      timeEl(d.last_attempt_at),
      timeEl(d.next_attempt_at),
      timeEl(d.delivered_at),
    ]);
    return el("section", { class: "panel", attrs: { "aria-labelledby": "deliveries-title" } },
      el("h2", { text: "Webhook deliveries", attrs: { id: "deliveries-title" } }),
      rows.length
        ? table(["Event", "URL", "Status", "Attempts", "Last answer", "Last attempt", "Next attempt", "Delivered"], rows, "deliveries")
        : el("p", { class: "muted", text: "No webhook deliveries for this batch." }));
  }

  function renderActions() {
    const b = state.batch;
    if (!b || !state.ui) return;
    const sig = JSON.stringify([b.status, b.output_file_id, b.error_file_id, b.input_file_id,
      state.confirming]);
    if (sig === state.actionsSig) return; // unchanged: a click under way is not lost
    state.actionsSig = sig;
    const buttons = [];
    if (can("download_file")) {
      if (b.output_file_id) {
        buttons.push(button("Download output", "btn-primary",
          (e) => download(b.output_file_id, `${b.id}_output.jsonl`, e.currentTarget)));
      }
      if (b.error_file_id) {
        buttons.push(button("Download errors", "",
          (e) => download(b.error_file_id, `${b.id}_errors.jsonl`, e.currentTarget)));
      }
      if (b.input_file_id) {
        buttons.push(button("Download input", "btn-quiet",
          (e) => download(b.input_file_id, `${b.id}_input.jsonl`, e.currentTarget)));
      }
    }
    buttons.push(el("span", { class: "grow" }));
    if (state.confirming === "cancel" && CANCELLABLE.has(b.status)) {
      buttons.push(el("span", { class: "confirm", text: "Cancel this batch? Finished results are kept." }),
        button("Yes, cancel it", "btn-danger", () => act("cancel")),
        button("Keep running", "btn-quiet", () => confirmAction(null)));
    } else if (state.confirming === "delete" && TERMINAL.has(b.status)) {
      buttons.push(el("span", { class: "confirm", text: "Delete this batch with its output and error files?" }),
        button("Yes, delete it", "btn-danger", () => act("delete")),
        button("Keep it", "btn-quiet", () => confirmAction(null)));
    } else {
      if (can("cancel_batch") && CANCELLABLE.has(b.status)) {
        buttons.push(button("Cancel batch", "btn-danger-quiet", () => confirmAction("cancel")));
      }
      if (can("delete_batch") && TERMINAL.has(b.status)) {
        buttons.push(button("Delete batch", "btn-danger-quiet", () => confirmAction("delete")));
      }
    }
    state.ui.actions.replaceChildren(...buttons);
  }

  function button(label, kind, onClick) {
    return el("button", { class: `btn ${kind}`.trim(), text: label, attrs: { type: "button" }, on: { click: onClick } });
  }

  function confirmAction(which) {
    state.confirming = which;
    renderActions();
  }

  function actionError(message) {
    if (state.ui) setText(state.ui.error, message);
  }

  async function act(which) {
    const b = state.batch;
    const gen = state.gen;
    state.confirming = null;
    const path = `v1/batches/${encodeURIComponent(b.id)}`;
    try {
      if (which === "cancel") {
        state.batch = await api("POST", `${path}/cancel`);
        if (gen !== state.gen) return;
        renderBatch();
        schedule(true);
      } else {
        await api("DELETE", path);
        if (gen !== state.gen) return;
        state.rows.delete(b.id);
        state.batches = state.batches.filter((x) => x.id !== b.id);
        state.flash = `Deleted batch ${b.id}.`; // shown by the list this opens
        location.hash = "#/";
      }
    } catch (err) {
      if (gen !== state.gen || handleAuthLoss(err)) return;
      renderActions();
      actionError(`Could not ${which} the batch: ${err.message}`);
    }
  }

  /** Fetch a file with the key and save it through a Blob URL: the key is never put in
   *  a URL, so it is in no history, log or Referer. */
  async function download(fileId, filename, node) {
    const label = node.textContent;
    node.disabled = true;
    node.textContent = "Downloading…";
    actionError("");
    try {
      const res = await api("GET", `v1/files/${encodeURIComponent(fileId)}/content`, { raw: true });
      const blob = await res.blob();
      const url = URL.createObjectURL(blob);
      const link = el("a", { attrs: { href: url, download: filename, hidden: true } });
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60000);
    } catch (err) {
      if (handleAuthLoss(err)) return;
      actionError(`Could not download ${fileId}: ${err.message}`);
    } finally {
      node.disabled = false;
      node.textContent = label;
    }
  }

  // -- start --------------------------------------------------------------------------

  async function start() {
    $("sign-in").addEventListener("submit", onSignInSubmit);
    $("sign-out").addEventListener("click", () => signOut(""));
    $("refresh").addEventListener("click", () => refreshList());
    $("load-more").addEventListener("click", loadMore);
    window.addEventListener("hashchange", () => {
      notice(state.flash);
      state.flash = "";
      if (state.key) route();
    });
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "visible" && state.key) schedule(true);
    });
    const saved = sessionStorage.getItem(KEY_ITEM);
    if (!saved) {
      route();
      return;
    }
    try {
      await signIn(saved);
      route();
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) sessionStorage.removeItem(KEY_ITEM);
      setView("sign-in");
      setText($("sign-in-error"), signInMessage(err));
    }
  }

  start();
})();
