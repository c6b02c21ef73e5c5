// The dashboard: hash routes (#/jobs, #/jobs/<id>, #/sweeps, #/sweeps/<id>, #/submit,
// #/datasets), each page
// built with DOM calls from API answers. A page's timers and streams stop when it is left.

import {
  ApiError, clearKey, filenameOf, getBlob, getJSON, getKey, request, saveBlob,
  sendJSON, setKey, sha256Hex, sleep, streamEvents,
} from "./api.js";
import { lineChart } from "./chart.js";
import { announce, fill, fmtAge, fmtBytes, fmtNumber, h } from "./dom.js";

const POLL_MS = 3000;
const VALIDATE_DEBOUNCE_MS = 400;
const ACTIVE = new Set(["queued", "running", "cancelling"]);
// epoch record fields that are bookkeeping, not a model's quality
const NOT_METRICS = new Set(["epoch", "epoch_seconds", "samples_per_second"]);
// which validation metric a job's curves and summary show, when its records have several
const METRIC_PREFERENCE = ["val_accuracy", "val_r2", "val_f1_macro", "val_f1", "val_auc",
                           "val_mae", "val_rmse"];
const main = document.getElementById("main");
const nav = document.getElementById("nav");
const signOutButton = document.getElementById("sign-out");

let page = null; // {controller: AbortController} of the page shown
let catalogCache = null;

// --------------------------------------------------------------------------- routing

function parseRoute() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean)
    .map(decodeURIComponent);
  if (parts[0] === "jobs" && parts[1]) return { name: "job", id: parts[1] };
  if (parts[0] === "sweeps" && parts[1]) return { name: "sweep", id: parts[1] };
  if (parts[0] === "sweeps") return { name: "sweeps" };
  if (parts[0] === "submit") return { name: "submit" };
  if (parts[0] === "datasets") return { name: "datasets" };
  return { name: "jobs" };
}

function go(hash) {
  if (location.hash === hash) render();
  else location.hash = hash;
}

async function render() {
  if (page) page.controller.abort();
  const controller = new AbortController();
  page = { controller };
  const signal = controller.signal;
  const signedIn = getKey() !== null;
  nav.hidden = !signedIn;
  signOutButton.hidden = !signedIn;
  if (!signedIn) {
    signInPage(signal);
    return;
  }
  const route = parseRoute();
  for (const link of nav.querySelectorAll("a[data-section]")) {
    const section = { job: "jobs", sweep: "sweeps" }[route.name] || route.name;
    const current = link.dataset.section === section;
    if (current) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  fill(main);
  try {
    if (route.name === "job") await jobPage(route.id, signal);
    else if (route.name === "sweeps") await sweepsPage(signal);
    else if (route.name === "sweep") await sweepPage(route.id, signal);
    else if (route.name === "submit") await submitPage(signal);
    else if (route.name === "datasets") await datasetsPage(signal);
    else await jobsPage(signal);
  } catch (err) {
    if (signal.aborted) return;
    main.append(errorBox(err));
  }
}

function setTitle(text) {
  document.title = `${text} · MLP Training Service`;
}

function errorBox(err, extra) {
  const message = err instanceof Error ? err.message : String(err);
  return h("p", { class: "error", role: "alert" }, extra ? `${extra}: ${message}` : message);
}

/** Run fn every ms while the page lives (skipped while the tab is hidden). */
function every(ms, signal, fn) {
  (async () => {
    while (!signal.aborted) {
      await sleep(ms, signal);
      if (signal.aborted) return;
      if (document.hidden) continue;
      try { await fn(); } catch (err) { if (!signal.aborted) console.warn(err); }
    }
  })();
}

async function catalog() {
  if (!catalogCache) catalogCache = await getJSON("v1/catalog");
  return catalogCache;
}

// --------------------------------------------------------------------------- sign in

function signInPage(signal) {
  setTitle("Sign in");
  const input = h("input", { id: "api-key", name: "api-key", type: "password",
                             autocomplete: "off", spellcheck: "false",
                             "aria-describedby": "api-key-hint" });
  const message = h("div", { "aria-live": "polite" });
  const button = h("button", { type: "submit" }, "Sign in");
  const form = h("form", { novalidate: true },
    h("div", { class: "field" },
      h("label", { for: "api-key" }, "API key"), input,
      h("span", { id: "api-key-hint", class: "hint" },
        "Kept in this tab's session storage only and sent as a Bearer header; closing the "
        + "tab forgets it. Operators make keys with `mlpctl keys create`.")),
    button, message);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    button.disabled = true;
    fill(message);
    const key = input.value.trim();
    setKey(key);
    try {
      catalogCache = null;
      await catalog();
      announce("Signed in");
      if (!location.hash || location.hash === "#/") go("#/jobs");
      else render();
    } catch (err) {
      clearKey();
      if (!signal.aborted) fill(message, errorBox(err));
    } finally {
      button.disabled = false;
    }
  });
  fill(main, h("section", { class: "panel sign-in", "aria-labelledby": "sign-in-title" },
    h("h2", { id: "sign-in-title" }, "Sign in"), form));
  input.focus();
}

signOutButton.addEventListener("click", () => {
  clearKey();
  catalogCache = null;
  announce("Signed out");
  render();
});

window.addEventListener("mlp:unauthorized", () => {
  // the key stopped working (revoked): back to the sign-in form
  if (getKey() !== null && catalogCache !== null) {
    clearKey();
    catalogCache = null;
    render();
  }
});

// --------------------------------------------------------------------------- jobs list

function statusBadge(status) {
  return h("span", { class: `status status-${status}`, "data-status": status }, status);
}

function progressOf(job) {
  const { epoch = 0, epochs = 0 } = job.progress || {};
  const label = `${epoch}/${epochs} epochs`;
  return [h("progress", { max: String(Math.max(1, epochs)), value: String(epoch),
                          "aria-label": `progress: ${label}` }),
          h("span", { class: "progress-text" }, label)];
}

function bestMetric(job) {
  const m = job.metrics;
  if (!m) return "—";
  const best = m.best || {};
  // the task's metric (accuracy, r2, ...) of the best epoch, else what chose that epoch
  const task = METRIC_PREFERENCE.find((k) => Number.isFinite(best[k]))
    || Object.keys(best).find((k) => k.startsWith("val_") && k !== "val_loss"
                                     && Number.isFinite(best[k]));
  const key = task || m.monitor;
  return key && Number.isFinite(best[key]) ? `${key} ${fmtNumber(best[key])}` : "—";
}

async function jobsPage(signal) {
  setTitle("Jobs");
  const status = h("select", { id: "jobs-status" },
    h("option", { value: "" }, "any status"),
    ["queued", "running", "succeeded", "failed", "cancelling", "cancelled"]
      .map((st) => h("option", { value: st }, st)));
  const tbody = h("tbody");
  const empty = h("p", { class: "muted", hidden: true }, "No jobs yet. ",
                  h("a", { href: "#/submit" }, "Submit one"), ".");
  const problem = h("div", { "aria-live": "polite" });
  const updated = h("span", { class: "muted" });
  fill(main,
    h("div", { class: "row" }, h("h2", {}, "Jobs"), h("span", { class: "spacer" }),
      h("label", { for: "jobs-status" }, "Status"), status,
      h("a", { class: "button", href: "#/submit" }, "New job")),
    problem,
    h("div", { class: "table-wrap" },
      h("table", { id: "jobs-table" },
        h("caption", { class: "visually-hidden" }, "Your jobs, newest first, updated live"),
        h("thead", {}, h("tr", {},
          h("th", { scope: "col" }, "Name"), h("th", { scope: "col" }, "Status"),
          h("th", { scope: "col" }, "Progress"), h("th", { scope: "col" }, "Best metric"),
          h("th", { scope: "col" }, "Device"), h("th", { scope: "col", class: "num" }, "Parameters"),
          h("th", { scope: "col" }, "Age"))),
        tbody)),
    empty, h("p", {}, updated));
  const rows = new Map(); // job id -> {tr, cells}

  function rowOf(job) {
    let row = rows.get(job.id);
    if (!row) {
      const cells = Array.from({ length: 7 }, (_, i) => h("td", i === 5 ? { class: "num" } : {}));
      cells[0].className = "name-cell";
      const tr = h("tr", { "data-job-id": job.id }, cells);
      row = { tr, cells, key: "" };
      rows.set(job.id, row);
    }
    const key = JSON.stringify([job.name, job.status, job.progress, job.metrics, job.device,
                                job.parameter_count]);
    if (row.key !== key) {
      row.key = key;
      const [name, st, prog, best, device, params] = row.cells;
      fill(name, h("a", { href: `#/jobs/${encodeURIComponent(job.id)}` }, job.name || job.id));
      fill(st, statusBadge(job.status));
      fill(prog, progressOf(job));
      fill(best, bestMetric(job));
      fill(device, job.device || "—");
      fill(params, fmtNumber(job.parameter_count));
    }
    fill(row.cells[6], h("time", { datetime: job.created_at }, fmtAge(job.created_at)));
    return row.tr;
  }

  async function refresh() {
    try {
      const list = await getJSON("v1/jobs", { query: { limit: 50, status: status.value }, signal });
      const seen = new Set(list.items.map((j) => j.id));
      for (const id of rows.keys()) if (!seen.has(id)) rows.delete(id);
      const trs = list.items.map(rowOf);
      // re-append only when the order changed, so focus and hover survive an update
      const current = Array.from(tbody.children);
      if (current.length !== trs.length || current.some((tr, i) => tr !== trs[i])) {
        tbody.replaceChildren(...trs);
      }
      empty.hidden = trs.length > 0;
      fill(problem);
      updated.textContent = `Updated ${new Date().toLocaleTimeString()}; refreshes every ${POLL_MS / 1000} s.`;
    } catch (err) {
      if (!signal.aborted) fill(problem, errorBox(err));
    }
  }

  status.addEventListener("change", refresh);
  await refresh();
  every(POLL_MS, signal, refresh);
}

/**
 * The picture `name` of a job or sweep (`owner` its API path) as a <figure>, an error
 * paragraph, or null when it has no such plot. <img> cannot send the Bearer header: the
 * picture is fetched and shown through a blob: URL, revoked when the page is left.
 */
async function plotFigure(owner, name, whose, signal) {
  for (let attempt = 0; attempt < 3; attempt++) {
    let got;
    try {
      got = await getBlob(`${owner}/plots/${encodeURIComponent(name)}.svg`, { signal });
    } catch (err) {
      if (err instanceof ApiError && err.status === 503) { await sleep(1000, signal); continue; }
      if (err instanceof ApiError && err.status === 404) return null;
      return signal.aborted ? null : h("p", { class: "error" }, `${name}: ${err.message}`);
    }
    const url = URL.createObjectURL(got.blob);
    signal.addEventListener("abort", () => URL.revokeObjectURL(url), { once: true });
    return h("figure", { "data-plot": name },
      h("img", { src: url, alt: `${name.replace(/_/g, " ")} plot of ${whose}`, loading: "lazy" }),
      h("figcaption", {}, name.replace(/_/g, " ")));
  }
  return h("p", { class: "error" }, `${name}: the server is busy drawing; reload to try again`);
}

// --------------------------------------------------------------------------- one job

function taskMetricKey(records, job) {
  const monitor = job && job.metrics && job.metrics.monitor;
  if (monitor && monitor.startsWith("val_") && monitor !== "val_loss") return monitor;
  const keys = new Set(records.flatMap((r) => Object.keys(r)));
  return METRIC_PREFERENCE.find((k) => keys.has(k))
    || [...keys].find((k) => k.startsWith("val_") && k !== "val_loss"
                             && records.some((r) => Number.isFinite(r[k]))) || null;
}

function findingItem(f) {
  const where = [f.epoch != null ? `epoch ${f.epoch}` : "before training",
                 f.layer ? `layer ${f.layer}` : null].filter(Boolean).join(", ");
  return h("li", { class: `finding finding-${f.severity}`, "data-rule": f.rule },
    h("div", {}, h("span", { class: "severity" }, f.severity), h("strong", {}, f.rule),
      h("span", { class: "muted" }, ` · ${where}`)),
    h("p", {}, f.message),
    f.explanation ? h("p", { class: "muted" }, f.explanation) : null,
    f.suggestion ? h("p", {}, "Suggestion: ", h("code", {}, JSON.stringify(f.suggestion))) : null);
}

/** A time as the reader's clock shows it, with its RFC 3339 form as the datetime. */
function when(iso, withAge = false) {
  if (!iso) return "—";
  const local = new Date(iso).toLocaleString();
  return h("time", { datetime: iso, title: iso }, withAge ? `${local} (${fmtAge(iso)})` : local);
}

function facts(pairs) {
  return h("dl", { class: "facts" },
    pairs.filter(([, v]) => v !== undefined).map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

async function jobPage(id, signal) {
  const path = `v1/jobs/${encodeURIComponent(id)}`;
  let job = await getJSON(path, { signal });
  const records = [];
  const findingKeys = new Set();

  const title = h("h2", { id: "job-title" });
  const badge = h("span");
  const actions = h("div", { class: "row" });
  const summary = h("div", { class: "panel", id: "job-summary" });
  const problem = h("div", { "aria-live": "polite" });
  const lossChart = lineChart({ title: "Loss", yLabel: "loss",
                                series: [{ key: "train_loss", label: "train loss" },
                                         { key: "val_loss", label: "validation loss" }] });
  lossChart.el.id = "loss-chart";
  const metricSlot = h("div", { id: "metric-chart-slot" });
  let metricChart = null;
  const findingsList = h("ul", { class: "findings", id: "findings" });
  const noFindings = h("p", { class: "muted" }, "No findings.");
  const plots = h("div", { class: "plots", id: "plots" });
  const plotsNote = h("p", { class: "muted" });
  const card = h("div", { id: "model-card" });
  const downloads = h("div", { class: "row", id: "downloads" });
  const downloadStatus = h("p", { id: "download-status", "aria-live": "polite" });
  const logs = h("pre", { class: "logs", id: "logs", tabindex: "0", "aria-label": "job log" });
  let logLine = 0;

  fill(main,
    h("p", {}, h("a", { href: "#/jobs" }, "← All jobs")),
    h("div", { class: "row" }, title, badge, h("span", { class: "spacer" }), actions),
    problem, summary,
    h("h3", {}, "Curves (live)"),
    h("div", { class: "grid-2" }, lossChart.el, metricSlot),
    h("h3", {}, "Findings"), findingsList, noFindings,
    h("h3", {}, "Plots and diagnostics"), plotsNote, plots,
    h("h3", {}, "Model card"), card,
    h("h3", {}, "Downloads"), downloads, downloadStatus,
    h("div", { class: "row" }, h("h3", {}, "Log"),
      h("button", { type: "button", class: "secondary", onclick: () => loadLogs() }, "Refresh log")),
    logs);

  function showJob() {
    title.textContent = job.name || job.id;
    setTitle(job.name || job.id);
    fill(badge, statusBadge(job.status));
    const error = job.error && job.error.message
      ? h("span", { class: "error" }, `${job.error.type || "error"}: ${job.error.message}`) : undefined;
    fill(summary, facts([
      ["ID", h("code", {}, job.id)],
      ["Sweep", job.sweep_id ? h("a", { href: `#/sweeps/${encodeURIComponent(job.sweep_id)}` },
                                 `trial ${job.trial} of sweep ${job.sweep_id}`) : undefined],
      ["Progress", h("span", {}, progressOf(job))],
      ["Best metric", bestMetric(job)],
      ["Device", job.device || "—"],
      ["Parameters", fmtNumber(job.parameter_count)],
      ["Attempts", String(job.attempts ?? 0)],
      ["Created", when(job.created_at, true)],
      ["Started", when(job.started_at)],
      ["Finished", when(job.finished_at)],
      ["Error", error],
    ]));
    fill(actions);
    if (ACTIVE.has(job.status) && job.status !== "cancelling") {
      actions.append(h("button", { type: "button", class: "danger", onclick: cancel }, "Cancel job"));
    }
    for (const f of job.findings || []) addFinding(f);
  }

  async function cancel() {
    try {
      job = await sendJSON(`${path}/cancel`, undefined, { signal });
      showJob();
      announce(`Job ${job.status}`);
    } catch (err) {
      if (!signal.aborted) fill(problem, errorBox(err));
    }
  }

  function addFinding(f) {
    const key = `${f.rule}|${f.layer ?? ""}`;
    if (findingKeys.has(key)) return;
    findingKeys.add(key);
    findingsList.append(findingItem(f));
    noFindings.hidden = true;
  }

  function addRecord(record) {
    if (!record || !Number.isFinite(record.epoch)) return;
    if (records.some((r) => r.epoch === record.epoch)) return;
    records.push(record);
    records.sort((a, b) => a.epoch - b.epoch);
    lossChart.update(records);
    const key = taskMetricKey(records, job);
    if (key && !metricChart) {
      metricChart = lineChart({ title: key.replace(/^val_/, "validation "), yLabel: key,
                                series: [{ key, label: key }] });
      metricChart.el.id = "metric-chart";
      metricChart.key = key;
      fill(metricSlot, metricChart.el);
    }
    if (metricChart) metricChart.update(records);
  }

  async function loadPlots() {
    const key = taskMetricKey(records, job);
    const names = ["loss", key ? key.replace(/^val_/, "") : null, "lr", "gradient_norms",
                   "activations", "linear_regions"].filter(Boolean);
    const shown = [];
    plotsNote.textContent = "Drawing…";
    const figures = [];
    for (const name of names) {
      if (signal.aborted) return;
      const figure = await plotFigure(path, name, `job ${job.name || job.id}`, signal);
      if (!figure) continue;
      figures.push(figure);
      if (figure.tagName === "FIGURE") shown.push(name);
    }
    for (const img of plots.querySelectorAll("img")) URL.revokeObjectURL(img.src);
    fill(plots, figures);
    plotsNote.textContent = shown.length
      ? (ACTIVE.has(job.status) ? "Pictures of the epochs so far; they are drawn again when the job ends." : "")
      : "No plots yet.";
  }

  async function loadCard() {
    fill(downloads);
    try {
      const mc = await getJSON(`${path}/model`, { signal });
      const layerRows = mc.layers.map((l) => h("tr", {},
        h("td", {}, h("code", {}, l.name)), h("td", {}, `[${l.shape.join(", ")}]`),
        h("td", {}, l.dtype), h("td", { class: "num" }, fmtNumber(l.parameters)),
        h("td", {}, l.trainable ? "yes" : "no")));
      const final = mc.metrics && mc.metrics.final ? Object.entries(mc.metrics.final)
        .filter(([k, v]) => typeof v === "number" && !NOT_METRICS.has(k)).map(([k, v]) => `${k} ${fmtNumber(v)}`).join(", ") : "—";
      fill(card,
        h("div", { class: "panel" }, facts([
          ["Task", mc.task || "—"],
          ["Parameters", fmtNumber(mc.parameter_count)],
          ["Loss unit", mc.loss_unit || "—"],
          ["Class labels", mc.class_labels ? mc.class_labels.map(String).join(", ") : "—"],
          ["Final metrics", final],
          ["Weights", mc.weights && mc.weights.sha256
            ? h("span", {}, `${fmtBytes(mc.weights.bytes)}, sha256 `, h("code", {}, mc.weights.sha256)) : "—"],
          ["Formats", (mc.formats || []).join(", ")],
        ])),
        h("div", { class: "table-wrap" }, h("table", { id: "layers-table" },
          h("caption", { class: "visually-hidden" }, "Layers of the model"),
          h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Tensor"), h("th", { scope: "col" }, "Shape"),
            h("th", { scope: "col" }, "Type"), h("th", { scope: "col", class: "num" }, "Parameters"),
            h("th", { scope: "col" }, "Trainable"))),
          h("tbody", {}, layerRows))));
      const labels = { safetensors: "Download safetensors", pt: "Download PyTorch (.pt)",
                       onnx: "Download ONNX" };
      for (const format of mc.formats || ["safetensors"]) {
        downloads.append(h("button", { type: "button", "data-format": format,
                                       onclick: (e) => download(format, e.currentTarget) },
                           labels[format] || `Download ${format}`));
      }
    } catch (err) {
      if (signal.aborted) return;
      if (err instanceof ApiError && err.status === 409) {
        fill(card, h("p", { class: "muted" }, "The model card and the weights exist once the job has succeeded."));
      } else {
        fill(card, errorBox(err));
      }
    }
  }

  async function download(format, button) {
    button.disabled = true;
    fill(downloadStatus, `Downloading ${format}…`);
    try {
      const { blob, headers } = await getBlob(`${path}/weights`, { query: { format }, signal });
      const etag = (headers.get("ETag") || "").replace(/^W\//, "").replace(/"/g, "");
      const digest = await sha256Hex(blob);
      saveBlob(blob, filenameOf(headers, `${job.id}.${format}`));
      const verified = etag && digest === etag;
      fill(downloadStatus,
        h("span", { class: verified ? "ok" : "" },
          verified ? `${format}: ${fmtBytes(blob.size)}, sha256 matches the ETag ` : `${format}: ${fmtBytes(blob.size)}, sha256 `),
        h("code", {}, digest || "—"),
        etag && !verified ? h("span", { class: "error" }, ` differs from the ETag ${etag}`) : null);
    } catch (err) {
      if (!signal.aborted) fill(downloadStatus, errorBox(err, `${format}`));
    } finally {
      button.disabled = false;
    }
  }

  let logsBusy = null;
  function loadLogs() {
    // one read at a time, so that two never append the same lines
    logsBusy = (logsBusy || Promise.resolve()).then(readLogs);
    return logsBusy;
  }

  async function readLogs() {
    try {
      const response = await request(`${path}/logs`, { query: { since: logLine || undefined }, signal });
      const text = await response.text();
      const last = Number(response.headers.get("X-Log-Last-Line"));
      if (Number.isFinite(last)) logLine = last;
      if (text) {
        const atBottom = logs.scrollTop + logs.clientHeight >= logs.scrollHeight - 4;
        logs.append(document.createTextNode(text));
        if (atBottom) logs.scrollTop = logs.scrollHeight;
      }
      if (!logs.textContent) logs.textContent = "";
    } catch (err) {
      if (!signal.aborted) logs.append(document.createTextNode(`(${err.message})\n`));
    }
  }

  async function finished() {
    await Promise.all([loadCard(), loadLogs()]);
    await loadPlots();
  }

  showJob();
  const terminal = !ACTIVE.has(job.status);
  if (terminal) {
    // a finished job: the records at once, then the pictures
    const metrics = await getJSON(`${path}/metrics`, { signal });
    metrics.epochs.forEach(addRecord);
    await finished();
    return;
  }
  loadCard();
  loadLogs();
  loadPlots();
  every(POLL_MS, signal, () => (ACTIVE.has(job.status) ? loadLogs() : null));
  streamEvents(`${path}/events`, {
    signal,
    onEvent(type, data) {
      if (type === "status" && data && data.id) {
        job = data;
        showJob();
      } else if (type === "metrics") {
        addRecord(data);
        job.progress = { ...job.progress, epoch: Math.max(job.progress.epoch, data.epoch) };
        const prog = summary.querySelector("progress");
        if (prog) fill(prog.parentElement, progressOf(job));
      } else if (type === "finding") {
        addFinding(data);
      } else if (type === "end") {
        announce(`Job ${data.status}`);
        getJSON(path, { signal }).then((fresh) => { job = fresh; showJob(); finished(); })
          .catch((err) => { if (!signal.aborted) fill(problem, errorBox(err)); });
      }
    },
    onError(err) { if (!signal.aborted) fill(problem, errorBox(err, "live updates")); },
  });
}

// --------------------------------------------------------------------------- sweeps

const SWEEP_ACTIVE = new Set(["queued", "running"]);

function sweepProgress(sweep) {
  const counts = sweep.counts || {};
  const done = ["succeeded", "failed", "cancelled", "pruned"]
    .reduce((n, st) => n + (counts[st] || 0), 0);
  const total = Math.max(1, sweep.trials_total || 0);
  const label = `${done}/${sweep.trials_total} trials ended`;
  return [h("progress", { max: String(total), value: String(done), "aria-label": `progress: ${label}` }),
          h("span", { class: "progress-text" }, label)];
}

function sweepBest(sweep) {
  const best = sweep.best;
  if (!best || !Number.isFinite(best.objective)) return "—";
  return `${sweep.objective.metric} ${fmtNumber(best.objective)} (trial ${best.trial})`;
}

function valuesText(values) {
  return Object.entries(values || {}).map(([k, v]) => `${k}=${JSON.stringify(v)}`).join(", ");
}

async function sweepsPage(signal) {
  setTitle("Sweeps");
  const tbody = h("tbody");
  const empty = h("p", { class: "muted", hidden: true },
    "No sweeps yet. Submit one with POST /v1/sweeps or `mlpctl sweeps submit sweep.yaml`.");
  const problem = h("div", { "aria-live": "polite" });
  const updated = h("span", { class: "muted" });
  fill(main,
    h("div", { class: "row" }, h("h2", {}, "Sweeps")),
    problem,
    h("div", { class: "table-wrap" },
      h("table", { id: "sweeps-table" },
        h("caption", { class: "visually-hidden" }, "Your sweeps, newest first, updated live"),
        h("thead", {}, h("tr", {},
          h("th", { scope: "col" }, "Name"), h("th", { scope: "col" }, "Status"),
          h("th", { scope: "col" }, "Trials"), h("th", { scope: "col" }, "Best"),
          h("th", { scope: "col" }, "Strategy"), h("th", { scope: "col" }, "Age"))),
        tbody)),
    empty, h("p", {}, updated));

  async function refresh() {
    try {
      const list = await getJSON("v1/sweeps", { query: { limit: 50 }, signal });
      tbody.replaceChildren(...list.items.map((sw) => h("tr", { "data-sweep-id": sw.id },
        h("td", { class: "name-cell" },
          h("a", { href: `#/sweeps/${encodeURIComponent(sw.id)}` }, sw.name || sw.id)),
        h("td", {}, statusBadge(sw.status)), h("td", {}, sweepProgress(sw)),
        h("td", {}, sweepBest(sw)), h("td", {}, sw.strategy),
        h("td", {}, h("time", { datetime: sw.created_at }, fmtAge(sw.created_at))))));
      empty.hidden = list.items.length > 0;
      fill(problem);
      updated.textContent = `Updated ${new Date().toLocaleTimeString()}; refreshes every ${POLL_MS / 1000} s.`;
    } catch (err) {
      if (!signal.aborted) fill(problem, errorBox(err));
    }
  }

  await refresh();
  every(POLL_MS, signal, refresh);
}

async function sweepPage(id, signal) {
  const path = `v1/sweeps/${encodeURIComponent(id)}`;
  let sweep = await getJSON(path, { signal });
  const title = h("h2", { id: "sweep-title" });
  const badge = h("span");
  const actions = h("div", { class: "row" });
  const problem = h("div", { "aria-live": "polite" });
  const summary = h("div", { class: "panel", id: "sweep-summary" });
  const tbody = h("tbody");
  const plots = h("div", { class: "plots", id: "sweep-plots" });
  const plotsNote = h("p", { class: "muted" });
  const objectiveHead = h("th", { scope: "col", class: "num" });
  fill(main,
    h("p", {}, h("a", { href: "#/sweeps" }, "← All sweeps")),
    h("div", { class: "row" }, title, badge, h("span", { class: "spacer" }), actions),
    problem, summary,
    h("h3", {}, "Leaderboard (live)"),
    h("div", { class: "table-wrap" },
      h("table", { id: "leaderboard" },
        h("caption", { class: "visually-hidden" }, "Trials, best first"),
        h("thead", {}, h("tr", {},
          h("th", { scope: "col", class: "num" }, "Rank"), h("th", { scope: "col" }, "Trial"),
          h("th", { scope: "col" }, "Status"), objectiveHead,
          h("th", { scope: "col" }, "Epochs"), h("th", { scope: "col" }, "Values"))),
        tbody)),
    h("h3", {}, "Plots"), plotsNote, plots);

  function showSweep() {
    title.textContent = sweep.name || sweep.id;
    setTitle(sweep.name || sweep.id);
    fill(badge, statusBadge(sweep.status));
    const { metric, mode } = sweep.objective;
    objectiveHead.textContent = `${metric} (${mode})`;
    fill(summary, facts([
      ["ID", h("code", {}, sweep.id)],
      ["Trials", h("span", {}, sweepProgress(sweep))],
      ["Best", sweep.best ? h("a", { href: `#/jobs/${encodeURIComponent(sweep.best.job_id)}` },
                             sweepBest(sweep)) : "—"],
      ["Best values", sweep.best ? valuesText(sweep.best.values) : undefined],
      ["Strategy", `${sweep.strategy}, seed ${sweep.seed}, at most ${sweep.max_concurrent} at once`],
      ["Early stopping", sweep.early_stopping ? JSON.stringify(sweep.early_stopping) : "none"],
      ["Created", when(sweep.created_at, true)],
      ["Finished", when(sweep.finished_at)],
    ]));
    fill(actions);
    if (SWEEP_ACTIVE.has(sweep.status)) {
      actions.append(h("button", { type: "button", class: "danger", onclick: cancel }, "Cancel sweep"));
    }
  }

  async function cancel() {
    try {
      sweep = await sendJSON(`${path}/cancel`, undefined, { signal });
      showSweep();
      announce(`Sweep ${sweep.status}`);
    } catch (err) {
      if (!signal.aborted) fill(problem, errorBox(err));
    }
  }

  async function loadBoard() {
    const board = await getJSON(`${path}/trials`, { signal });
    tbody.replaceChildren(...board.trials.map((t) => h("tr", { "data-trial": String(t.trial) },
      h("td", { class: "num" }, String(t.rank)),
      h("td", {}, h("a", { href: `#/jobs/${encodeURIComponent(t.job_id)}` }, `trial ${t.trial}`)),
      h("td", {}, statusBadge(t.status)),
      h("td", { class: "num" }, Number.isFinite(t.objective) ? fmtNumber(t.objective) : "—"),
      h("td", {}, `${t.epochs_run ?? 0}/${t.epochs ?? "?"}`),
      h("td", {}, h("code", {}, valuesText(t.values))))));
  }

  async function loadPlots() {
    plotsNote.textContent = "Drawing…";
    const figures = [];
    for (const name of ["objective", "parallel"]) {
      const figure = await plotFigure(path, name, `sweep ${sweep.name || sweep.id}`, signal);
      if (signal.aborted) return;
      if (figure) figures.push(figure);
    }
    fill(plots, figures);
    plotsNote.textContent = SWEEP_ACTIVE.has(sweep.status)
      ? "Pictures of the trials so far; they are drawn again as trials end." : "";
  }

  async function refresh() {
    try {
      sweep = await getJSON(path, { signal });
      showSweep();
      await loadBoard();
      fill(problem);
    } catch (err) {
      if (!signal.aborted) fill(problem, errorBox(err));
    }
  }

  showSweep();
  await loadBoard();
  await loadPlots();
  if (!SWEEP_ACTIVE.has(sweep.status)) return;
  // events come in bursts (every trial is replayed on connect): one refresh per burst
  let pending = null;
  let pendingPlots = null;
  const soon = () => { pending = pending || sleep(300, signal).then(() => { pending = null; return refresh(); }); };
  const plotsSoon = () => { pendingPlots = pendingPlots || sleep(2000, signal).then(() => { pendingPlots = null; return loadPlots(); }); };
  streamEvents(`${path}/events`, {
    signal,
    onEvent(type, data) {
      if (type === "trial_finished" || type === "trial_pruned" || type === "best") {
        soon();
        plotsSoon();
      } else if (type === "trial_started" || type === "sweep") {
        soon();
      } else if (type === "end") {
        announce(`Sweep ${data.status}`);
        refresh().then(loadPlots);
      }
    },
    onError(err) { if (!signal.aborted) fill(problem, errorBox(err, "live updates")); },
  });
}

// --------------------------------------------------------------------------- submit

const DEFAULT_SPEC = {
  name: "my-job",
  dataset: { builtin: "iris" },
  model: { hidden_dims: [64, 64], activation: "relu" },
  optimizer: { name: "adam", lr: 0.001 },
  training: { epochs: 20 },
};

function getPath(obj, path) {
  return path.split(".").reduce((o, k) => (o && typeof o === "object" ? o[k] : undefined), obj);
}

function setPath(obj, path, value) {
  const keys = path.split(".");
  let o = obj;
  for (const k of keys.slice(0, -1)) {
    if (!o[k] || typeof o[k] !== "object" || Array.isArray(o[k])) o[k] = {};
    o = o[k];
  }
  const last = keys[keys.length - 1];
  if (value === undefined) delete o[last];
  else o[last] = value;
}

/** A named choice is "name" or {"name": ..., params}: read and write its name either way. */
function choiceName(value) {
  return value && typeof value === "object" ? value.name : value;
}

function parseNumberList(text) {
  const parts = text.split(/[\s,]+/).filter(Boolean);
  return parts.map((p) => (/^-?\d+(\.\d+)?$/.test(p) ? Number(p) : p));
}

async function submitPage(signal) {
  setTitle("Submit a job");
  const cat = await catalog();
  let uploaded = [];
  try {
    uploaded = (await getJSON("v1/datasets", { query: { limit: 100 }, signal })).items;
  } catch { /* the builtin datasets are enough to go on */ }

  const fieldDefs = [
    { id: "f-name", path: "name", label: "Name", kind: "text" },
    { id: "f-dataset", path: "dataset", label: "Dataset", kind: "dataset" },
    { id: "f-hidden", path: "model.hidden_dims", label: "Hidden widths", kind: "list",
      hint: "comma-separated, one per hidden layer" },
    { id: "f-activation", path: "model.activation", label: "Activation", kind: "choice",
      options: cat.activations.map((a) => a.name) },
    { id: "f-optimizer", path: "optimizer", label: "Optimizer", kind: "choice-object",
      options: cat.optimizers.map((o) => o.name) },
    { id: "f-lr", path: "optimizer.lr", label: "Learning rate", kind: "number", step: "any" },
    { id: "f-epochs", path: "training.epochs", label: "Epochs", kind: "number", step: "1" },
  ];
  const controls = new Map();
  const errors = new Map();
  const fieldEls = fieldDefs.map((def) => {
    let control;
    if (def.kind === "choice" || def.kind === "choice-object") {
      control = h("select", { id: def.id }, def.options.map((o) => h("option", { value: o }, o)));
    } else if (def.kind === "dataset") {
      control = h("select", { id: def.id },
        h("optgroup", { label: "Builtin" },
          cat.datasets.map((d) => h("option", { value: `builtin:${d.name}` }, `${d.name} (${d.task})`))),
        uploaded.length ? h("optgroup", { label: "Uploaded" },
          uploaded.map((d) => h("option", { value: `id:${d.id}` }, `${d.name} (${d.n_rows} rows)`))) : null);
    } else {
      control = h("input", { id: def.id, type: def.kind === "number" ? "number" : "text",
                             step: def.step, inputmode: def.kind === "list" ? "numeric" : undefined,
                             autocomplete: "off" });
    }
    const error = h("p", { class: "field-error", id: `${def.id}-error`, "aria-live": "polite" });
    control.setAttribute("aria-describedby", `${def.id}-error${def.hint ? ` ${def.id}-hint` : ""}`);
    controls.set(def.path, control);
    errors.set(def.path, { control, error });
    return h("div", { class: "field", "data-path": def.path },
      h("label", { for: def.id }, def.label), control,
      def.hint ? h("span", { class: "hint", id: `${def.id}-hint` }, def.hint) : null, error);
  });
  const specText = h("textarea", { id: "spec-json", rows: "18", spellcheck: "false",
                                   "aria-describedby": "spec-json-error spec-json-hint" });
  const specError = h("p", { class: "field-error", id: "spec-json-error", "aria-live": "polite" });
  errors.set("", { control: specText, error: specError });
  const result = h("div", { class: "validation", id: "validation", "aria-live": "polite" });
  const formMessage = h("div", { id: "form-message", "aria-live": "assertive" });
  const submit = h("button", { type: "submit", id: "submit-job" }, "Submit job");
  const form = h("form", { id: "submit-form", novalidate: true },
    h("div", { class: "panel" }, h("h3", {}, "Quick fields"), h("div", { class: "fields" }, fieldEls)),
    h("div", { class: "panel" },
      h("label", { for: "spec-json" }, "Job spec (JSON)"),
      h("p", { class: "hint muted", id: "spec-json-hint" },
        "The quick fields edit this spec; anything else (loss, init, training options, diagnostics) goes here."),
      specText, specError),
    h("div", { class: "row" }, submit), formMessage);
  fill(main, h("h2", {}, "Submit a job"),
    h("div", { class: "grid-2" }, form,
      h("section", { class: "panel", "aria-labelledby": "validation-title" },
        h("h3", { id: "validation-title" }, "Validation (as you type)"), result)));

  let spec = structuredClone(DEFAULT_SPEC);

  function writeSpec() {
    specText.value = JSON.stringify(spec, null, 2);
  }

  function readFields() {
    for (const def of fieldDefs) {
      const control = controls.get(def.path);
      const value = getPath(spec, def.path);
      if (def.kind === "list") control.value = Array.isArray(value) ? value.join(", ") : (value ?? "");
      else if (def.kind === "choice" || def.kind === "choice-object") {
        const name = choiceName(value);
        if (name !== undefined && !def.options.includes(name)) {
          control.append(h("option", { value: name }, name));
        }
        control.value = name ?? def.options[0];
      } else if (def.kind === "dataset") {
        const ds = value || {};
        const v = ds.builtin ? `builtin:${ds.builtin}` : ds.id ? `id:${ds.id}` : "";
        if (v && !Array.from(control.options).some((o) => o.value === v)) {
          control.append(h("option", { value: v }, v.replace(/^\w+:/, "")));
        }
        control.value = v;
      } else control.value = value ?? "";
    }
  }

  function fieldChanged(def) {
    const control = controls.get(def.path);
    const raw = control.value.trim();
    if (def.kind === "list") {
      setPath(spec, def.path, raw ? parseNumberList(raw) : undefined);
    } else if (def.kind === "number") {
      setPath(spec, def.path, raw === "" ? undefined : Number(raw));
    } else if (def.kind === "choice") {
      const current = getPath(spec, def.path);
      setPath(spec, def.path, current && typeof current === "object" ? { ...current, name: raw } : raw);
    } else if (def.kind === "choice-object") {
      const current = getPath(spec, def.path);
      setPath(spec, def.path, current && typeof current === "object"
        ? { ...current, name: raw } : { name: raw });
    } else if (def.kind === "dataset") {
      const [kind, ...rest] = raw.split(":");
      const ref = { [kind]: rest.join(":") };
      const current = getPath(spec, "dataset");
      if (kind === "builtin" && current && current.builtin === ref.builtin && current.params) {
        ref.params = current.params;
      }
      spec.dataset = ref;
    } else {
      setPath(spec, def.path, raw === "" ? undefined : raw);
    }
    writeSpec();
    scheduleValidate();
  }

  for (const def of fieldDefs) {
    const control = controls.get(def.path);
    control.addEventListener(control.tagName === "SELECT" ? "change" : "input", () => fieldChanged(def));
  }
  specText.addEventListener("input", () => {
    try {
      const parsed = JSON.parse(specText.value);
      if (!parsed || typeof parsed !== "object" || Array.isArray(parsed)) throw new Error("the spec is a JSON object");
      spec = parsed;
      readFields();
      scheduleValidate();
    } catch (err) {
      clearFieldErrors();
      showFieldError("", `not valid JSON: ${err.message}`);
      fill(result, h("p", { class: "muted" }, "Fix the JSON to validate."));
    }
  });

  function clearFieldErrors() {
    for (const { control, error } of errors.values()) {
      control.removeAttribute("aria-invalid");
      fill(error);
    }
  }

  function showFieldError(path, text) {
    const entry = errors.get(path) || errors.get("");
    entry.control.setAttribute("aria-invalid", "true");
    entry.error.append(h("span", { class: "field-error-text" }, text), h("br"));
  }

  /** The quick field a loc names (the longest path that prefixes it), or "" (the JSON). */
  function fieldFor(loc) {
    const dotted = loc.filter((p, i) => !(i === 0 && p === "body")).join(".");
    let best = "";
    for (const path of controls.keys()) {
      if ((dotted === path || dotted.startsWith(`${path}.`)) && path.length > best.length) best = path;
    }
    return [best, dotted];
  }

  function showApiError(err) {
    clearFieldErrors();
    const items = err.detail || [];
    for (const item of items) {
      const [path, dotted] = fieldFor(item.loc || []);
      showFieldError(path, dotted ? `${dotted}: ${item.msg}` : item.msg);
    }
    return errorBox(err);
  }

  let timer = null;
  let inflight = null;
  let seq = 0;

  function scheduleValidate() {
    clearTimeout(timer);
    timer = setTimeout(validate, VALIDATE_DEBOUNCE_MS);
  }
  signal.addEventListener("abort", () => {
    clearTimeout(timer);
    if (inflight) inflight.abort();
  }, { once: true });

  async function validate() {
    const mine = ++seq;
    if (inflight) inflight.abort();
    inflight = new AbortController();
    result.setAttribute("aria-busy", "true");
    try {
      const answer = await sendJSON("v1/specs/validate", spec, { signal: inflight.signal });
      if (mine !== seq) return;
      clearFieldErrors();
      fill(result, validationView(answer));
    } catch (err) {
      if (mine !== seq || err.name === "AbortError") return;
      fill(result, err instanceof ApiError && err.status === 422 ? showApiError(err) : errorBox(err));
    } finally {
      if (mine === seq) result.removeAttribute("aria-busy");
    }
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    submit.disabled = true;
    fill(formMessage);
    try {
      const job = await sendJSON("v1/jobs", spec, { signal });
      announce(`Job ${job.id} queued`);
      go(`#/jobs/${encodeURIComponent(job.id)}`);
    } catch (err) {
      if (signal.aborted) return;
      fill(formMessage, err instanceof ApiError && err.status === 422 ? showApiError(err) : errorBox(err));
    } finally {
      submit.disabled = false;
    }
  });

  writeSpec();
  readFields();
  validate();
}

function validationView(v) {
  const formula = v.parameter_count_formula_detail;
  const bound = v.linear_regions_bound;
  const memory = v.memory_estimate;
  const out = [
    h("p", { class: "ok" }, "The spec is valid."),
    facts([
      ["Parameters", h("span", { id: "v-parameter-count" }, fmtNumber(v.parameter_count))],
      ["Closed form", v.parameter_count_formula != null
        ? h("span", {}, `${fmtNumber(v.parameter_count_formula)} = `,
            h("code", {}, formula ? formula.formula : ""),
            formula ? ` with n0=${formula.n0}, n=${formula.n}, L=${formula.L}, k=${formula.k}` : "")
        : "— (widths not uniform, or batch norm)"],
      ["Linear regions (lower bound)", bound
        ? h("span", {}, `${bound.decimal.length > 40 ? `${bound.decimal.slice(0, 40)}…` : bound.decimal} (10^${fmtNumber(bound.log10, 2)})`)
        : "— (not a piecewise-linear activation)"],
      ["Memory estimate", memory ? `${fmtBytes(memory.bytes)}${memory.summary ? ` — ${memory.summary}` : ""}` : "—"],
      ["Queue", v.device_queue || "—"],
    ]),
  ];
  if (v.findings && v.findings.length) {
    out.push(h("h4", {}, "Findings before training"), h("ul", { class: "findings" }, v.findings.map(findingItem)));
  } else {
    out.push(h("p", { class: "muted" }, "No findings before training."));
  }
  return out;
}

// --------------------------------------------------------------------------- datasets

async function datasetsPage(signal) {
  setTitle("Datasets");
  const cat = await catalog();
  const tbody = h("tbody");
  const listProblem = h("div", { "aria-live": "polite" });
  const empty = h("p", { class: "muted", hidden: true }, "No datasets uploaded yet.");
  const file = h("input", { id: "ds-file", name: "file", type: "file", required: true,
                            accept: ".csv,.npz,.parquet" });
  const name = h("input", { id: "ds-name", name: "name", type: "text", autocomplete: "off" });
  const target = h("input", { id: "ds-target", name: "target", type: "text", autocomplete: "off",
                              "aria-describedby": "ds-target-hint" });
  const format = h("select", { id: "ds-format", name: "format" },
    h("option", { value: "" }, "from the file name"),
    (cat.upload_formats || ["csv", "npz", "parquet"]).map((f) => h("option", { value: f }, f)));
  const button = h("button", { type: "submit" }, "Upload");
  const message = h("div", { id: "upload-message", "aria-live": "polite" });
  const form = h("form", { id: "upload-form", class: "panel", novalidate: true },
    h("h3", {}, "Upload a dataset"),
    h("div", { class: "fields" },
      h("div", { class: "field" }, h("label", { for: "ds-file" }, "File (CSV, NPZ or Parquet)"), file),
      h("div", { class: "field" }, h("label", { for: "ds-name" }, "Name"), name),
      h("div", { class: "field" }, h("label", { for: "ds-target" }, "Target column(s)"), target,
        h("span", { class: "hint", id: "ds-target-hint" }, "comma-separated for multilabel")),
      h("div", { class: "field" }, h("label", { for: "ds-format" }, "Format"), format)),
    h("div", { class: "row" }, button), message);

  fill(main, h("h2", {}, "Datasets"), form, listProblem,
    h("div", { class: "table-wrap" }, h("table", { id: "datasets-table" },
      h("caption", { class: "visually-hidden" }, "Your datasets"),
      h("thead", {}, h("tr", {},
        ["Name", "ID", "Format", "Rows", "Features", "Classes", "Target", "Size", "Uploaded", ""]
          .map((t, i) => h("th", { scope: "col", class: [3, 4, 5, 7].includes(i) ? "num" : null }, t)))),
      tbody)), empty);

  async function refresh() {
    try {
      const list = await getJSON("v1/datasets", { query: { limit: 100 }, signal });
      tbody.replaceChildren(...list.items.map((d) => h("tr", { "data-dataset-id": d.id },
        h("td", { class: "name-cell" }, d.name), h("td", {}, h("code", {}, d.id)), h("td", {}, d.format),
        h("td", { class: "num" }, fmtNumber(d.n_rows)), h("td", { class: "num" }, fmtNumber(d.n_features)),
        h("td", { class: "num" }, fmtNumber(d.n_classes)), h("td", {}, (d.target || []).join(", ")),
        h("td", { class: "num" }, fmtBytes(d.bytes)),
        h("td", {}, h("time", { datetime: d.created_at }, fmtAge(d.created_at))),
        h("td", {}, h("button", { type: "button", class: "danger",
                                  "aria-label": `Delete dataset ${d.name}`,
                                  onclick: () => remove(d) }, "Delete")))));
      empty.hidden = list.items.length > 0;
      fill(listProblem);
    } catch (err) {
      if (!signal.aborted) fill(listProblem, errorBox(err));
    }
  }

  async function remove(d) {
    if (!window.confirm(`Delete dataset ${d.name} (${d.id})?`)) return;
    try {
      await request(`v1/datasets/${encodeURIComponent(d.id)}`, { method: "DELETE", signal });
      announce(`Dataset ${d.name} deleted`);
      await refresh();
    } catch (err) {
      if (!signal.aborted) fill(listProblem, errorBox(err));
    }
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    fill(message);
    if (!file.files.length) {
      file.setAttribute("aria-invalid", "true");
      fill(message, h("p", { class: "error" }, "Choose a file to upload."));
      file.focus();
      return;
    }
    file.removeAttribute("aria-invalid");
    const body = new FormData();
    body.append("file", file.files[0]);
    if (name.value.trim()) body.append("name", name.value.trim());
    if (target.value.trim()) body.append("target", target.value.trim());
    if (format.value) body.append("format", format.value);
    button.disabled = true;
    fill(message, h("p", { class: "muted" }, `Uploading ${file.files[0].name} (${fmtBytes(file.files[0].size)})…`));
    try {
      const response = await request("v1/datasets", { method: "POST", body, signal });
      const d = await response.json();
      fill(message, h("p", { class: "notice" },
        `Uploaded ${d.name}: ${d.n_rows} rows, ${d.n_features} features`,
        d.n_classes ? `, ${d.n_classes} classes` : "", `, target ${(d.target || []).join(", ")}`,
        d.target_defaulted ? " (no target was given: the last column was taken)" : "", "."));
      form.reset();
      await refresh();
    } catch (err) {
      if (!signal.aborted) fill(message, errorBox(err));
    } finally {
      button.disabled = false;
    }
  });

  await refresh();
}

// --------------------------------------------------------------------------- start

window.addEventListener("hashchange", () => {
  render().then(() => main.focus({ preventScroll: true }));
});
render();
