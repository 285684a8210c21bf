// Scout's browser page: submit a question, review the plan, follow the job live.
//
// Untrusted text (questions, plans, sources, the report) only ever reaches the page
// through textContent or DOM nodes built here, never through innerHTML.
"use strict";

(() => {
  // Plan limits, the same as graph/plan.py enforces on the server.
  const MAX_STEPS = 12;
  const MAX_QUERIES_PER_STEP = 6;
  const MAX_GOAL_CHARS = 500;
  const MAX_QUERY_CHARS = 300;

  const TERMINAL_STATUSES = new Set(["done", "partial", "failed"]);
  const STREAM_EVENTS = ["status", "plan", "source", "source_dropped", "token", "report", "error", "end"];
  const POLL_INTERVAL_MS = 1000;
  // Consecutive stream errors with no successful connection in between before the page polls.
  const MAX_STREAM_FAILURES = 3;
  const RECENT_LIMIT = 20;
  const RECENT_REFRESH_DELAY_MS = 300;
  const API_KEY_STORAGE_NAME = "scout.apiKey";

  const STATUS_LABELS = {
    pending: "Planning",
    awaiting_approval: "Awaiting approval",
    running: "Researching",
    done: "Done",
    partial: "Partial",
    failed: "Failed",
  };

  const $ = (id) => document.getElementById(id);
  const ui = {
    questionForm: $("question-form"),
    question: $("question"),
    questionSubmit: $("question-submit"),
    questionProblem: $("question-problem"),
    jobMissing: $("job-missing"),
    job: $("job"),
    jobQuestion: $("job-question"),
    jobStatus: $("job-status"),
    jobConnection: $("job-connection"),
    jobDetails: $("job-details"),
    jobNotice: $("job-notice"),
    jobError: $("job-error"),
    planSection: $("plan-section"),
    plan: $("plan"),
    reportBody: $("report-body"),
    reportEmpty: $("report-empty"),
    sourcesSection: $("sources-section"),
    sources: $("sources"),
    droppedSection: $("dropped-section"),
    droppedSources: $("dropped-sources"),
    timeline: $("timeline"),
    recentRefresh: $("recent-refresh"),
    recentMessage: $("recent-message"),
    recentJobs: $("recent-jobs"),
    authButton: $("auth-button"),
    authDialog: $("auth-dialog"),
    authForm: $("auth-form"),
    authMessage: $("auth-message"),
    authKey: $("auth-key"),
    authDismiss: $("auth-dismiss"),
    jobCancel: $("job-cancel"),
    jobActionProblem: $("job-action-problem"),
  };

  /** The job shown on the page, or null when none is open. */
  let session = null;
  let recentTimer = null;

  // ---------------------------------------------------------------------------
  // DOM helpers

  /** Create an element; string children become text nodes, so they are never parsed as HTML. */
  function el(tag, attributes = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes)) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "className") node.className = value;
      else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child !== null && child !== undefined && child !== false) node.append(child);
    }
    return node;
  }

  /** Replace a node's children, skipping null, undefined and false (replaceChildren would print them). */
  function setChildren(node, ...children) {
    node.replaceChildren(...children.flat().filter((child) => child !== null && child !== undefined && child !== false));
  }

  function formatTime(unixSeconds) {
    if (typeof unixSeconds !== "number") return "";
    return new Date(unixSeconds * 1000).toLocaleString([], {
      dateStyle: "medium",
      timeStyle: "medium",
    });
  }

  function timeElement(unixSeconds) {
    if (typeof unixSeconds !== "number") return null;
    const date = new Date(unixSeconds * 1000);
    return el("time", { datetime: date.toISOString() }, formatTime(unixSeconds));
  }

  function formatSeconds(seconds) {
    if (typeof seconds !== "number") return null;
    return seconds < 10 ? `${seconds.toFixed(1)} s` : `${Math.round(seconds)} s`;
  }

  /**
   * Return a safe link target for a source url, or null when it must not be linked.
   * Local-corpus urls such as `corpus/recovery.md#section` are served from the site root.
   */
  function sourceHref(url) {
    if (typeof url !== "string" || !url.trim()) return null;
    const trimmed = url.trim();
    if (/^https?:\/\//i.test(trimmed)) return trimmed;
    if (/^[a-z][a-z0-9+.-]*:/i.test(trimmed)) return null; // javascript:, data: and the like
    return "/" + trimmed.replace(/^[/\\]+/, "");
  }

  // ---------------------------------------------------------------------------
  // Problem responses (RFC 9457)

  /** Read an error response as a problem document. A body that is not JSON becomes its detail. */
  async function readProblem(response) {
    let text = "";
    try {
      text = await response.text();
      const body = JSON.parse(text);
      if (body && typeof body === "object") {
        return {
          status: response.status,
          title: typeof body.title === "string" ? body.title : `HTTP ${response.status}`,
          detail: typeof body.detail === "string" ? body.detail : "",
          errors: Array.isArray(body.errors) ? body.errors : [],
        };
      }
    } catch {
      // Not JSON: fall through and show the status line and the text.
    }
    return {
      status: response.status,
      title: `HTTP ${response.status} ${response.statusText}`.trim(),
      detail: text.slice(0, 500),
      errors: [],
    };
  }

  function networkProblem(error) {
    return {
      status: 0,
      title: "Network error",
      detail: `The request failed before Scout answered (${error.message}). Check that the server is running, then try again.`,
      errors: [],
    };
  }

  /** Fill a problem box: its title, detail and one line per field error. */
  function showProblem(box, problem, describeField = (field) => field) {
    setChildren(
      box,
      el("p", { className: "problem-title" }, problem.title),
      problem.detail ? el("p", {}, problem.detail) : null,
    );
    if (problem.errors.length) {
      box.append(
        el(
          "ul",
          {},
          problem.errors.map((error) =>
            el("li", {}, el("strong", {}, describeField(String(error.field ?? ""))), ": ", String(error.message ?? "")),
          ),
        ),
      );
    }
    box.hidden = false;
  }

  function hideProblem(box) {
    box.hidden = true;
    box.replaceChildren();
  }

  // ---------------------------------------------------------------------------
  // API key: asked for on the first 401, kept in sessionStorage, sent with every request

  const auth = {
    key: readStoredKey(),
    // True once a request got 401, so this server needs a key.
    required: false,
    // True after the user closed the key dialog without a key. Background requests then
    // stop asking until the user asks for the dialog with the header button.
    dismissed: false,
    // Resolve functions of the requests that wait for a key from the dialog.
    waiters: [],
  };

  function readStoredKey() {
    try {
      return window.sessionStorage.getItem(API_KEY_STORAGE_NAME) ?? "";
    } catch {
      return ""; // Storage is disabled: the key lasts until the page closes.
    }
  }

  function storeKey(key) {
    auth.key = key;
    try {
      if (key) window.sessionStorage.setItem(API_KEY_STORAGE_NAME, key);
      else window.sessionStorage.removeItem(API_KEY_STORAGE_NAME);
    } catch {
      // Storage is disabled: keep the key in memory only.
    }
    renderAuthButton();
  }

  function renderAuthButton() {
    ui.authButton.hidden = !auth.key && !auth.required;
    ui.authButton.textContent = auth.key ? "Forget key" : "Enter API key";
  }

  /**
   * Show the key dialog and resolve with the key the user enters, or null if they close it.
   * Requests that get 401 while the dialog is open share it.
   */
  function askForKey(reason) {
    if (auth.dismissed) return Promise.resolve(null);
    return new Promise((resolve) => {
      auth.waiters.push(resolve);
      showKeyDialog(reason);
    });
  }

  function showKeyDialog(reason) {
    const opening = !ui.authDialog.open;
    if (opening || reason === "rejected") {
      ui.authMessage.textContent =
        reason === "rejected"
          ? "Scout rejected this API key. Check the key and enter it again."
          : "This Scout server needs an API key. Enter the key you were given.";
    }
    if (!opening) return;
    ui.authKey.value = "";
    ui.authKey.removeAttribute("aria-invalid");
    ui.authDialog.showModal();
    ui.authKey.focus();
  }

  function resolveKeyWaiters(key) {
    for (const resolve of auth.waiters.splice(0)) resolve(key);
  }

  function onKeySubmit(event) {
    event.preventDefault();
    const key = ui.authKey.value.trim();
    if (!key) {
      ui.authMessage.textContent = "Enter the API key, or choose Not now.";
      ui.authKey.setAttribute("aria-invalid", "true");
      ui.authKey.focus();
      return;
    }
    auth.dismissed = false;
    storeKey(key);
    ui.authKey.value = "";
    ui.authDialog.close();
    resolveKeyWaiters(key);
  }

  /** Resolve the waiting requests with null when the dialog closes without a key (Not now or Escape). */
  function onKeyDialogClose() {
    ui.authKey.value = "";
    if (!auth.waiters.length) return;
    auth.dismissed = true;
    resolveKeyWaiters(null);
  }

  /**
   * fetch() with the API key. On 401 it opens the key dialog, once for all requests waiting
   * at that moment, and sends the request again with the key entered. It returns the 401
   * response when the user closes the dialog without a key. `interactive` marks a request
   * that the user started, which opens the dialog even after the user closed it once.
   */
  async function apiFetch(url, options = {}, { interactive = false } = {}) {
    if (interactive) auth.dismissed = false;
    for (;;) {
      const sentKey = auth.key;
      const headers = new Headers(options.headers);
      if (sentKey) headers.set("Authorization", `Bearer ${sentKey}`);
      const response = await fetch(url, { ...options, headers });
      if (response.status !== 401) return response;

      auth.required = true;
      renderAuthButton();
      if (auth.key !== sentKey) continue; // Another request stored a new key meanwhile.
      if (sentKey) storeKey(""); // The server no longer accepts the stored key.
      const key = await askForKey(sentKey ? "rejected" : "missing");
      if (!key) return response;
    }
  }

  async function onAuthButton() {
    if (auth.key) {
      forgetKey();
      return;
    }
    auth.dismissed = false; // The user asked for the dialog.
    const key = await askForKey("missing");
    if (!key) return;
    loadRecentJobs();
    if (session) openJob(session.jobId);
  }

  /**
   * Drop the key and what the page loaded with it, so the next request opens the key dialog.
   */
  function forgetKey() {
    storeKey("");
    auth.dismissed = false;
    if (window.location.hash) {
      window.history.replaceState(null, "", window.location.pathname + window.location.search);
    }
    closeJob();
    ui.recentJobs.replaceChildren();
    ui.recentMessage.textContent = "API key forgotten. The page asks for it again on the next request.";
  }

  // ---------------------------------------------------------------------------
  // Markdown subset: headings, paragraphs, lists, code blocks, bold, italic, code, [n]

  const LIST_ITEM = /^\s*(?:([-*+])|(\d{1,9})[.)])\s+(.*)$/;
  const HEADING = /^(#{1,6})\s+(.*?)\s*#*\s*$/;
  const FENCE = /^\s*```/;
  const INLINE = new RegExp(
    [
      "`([^`\\n]+)`", // 1: code
      "\\*\\*(?=\\S)([\\s\\S]+?)(?<=\\S)\\*\\*", // 2: bold
      "(?<![\\w*])\\*(?=[^\\s*])([^*]+?)(?<=\\S)\\*(?![\\w*])", // 3: italic with *
      "(?<!\\w)_(?=[^\\s_])([^_]+?)(?<=\\S)_(?!\\w)", // 4: italic with _
      "\\[(\\d{1,4}(?:\\s*,\\s*\\d{1,4})*)\\]", // 5: citations [1] or [1, 2]
    ].join("|"),
    "g",
  );

  /** Split Markdown text into blocks. Each block keeps its source text, so unchanged blocks are reused. */
  function parseBlocks(text) {
    const lines = text.split("\n");
    const blocks = [];
    let i = 0;
    while (i < lines.length) {
      const line = lines[i];
      if (!line.trim()) {
        i += 1;
        continue;
      }
      const start = i;
      if (FENCE.test(line)) {
        i += 1;
        while (i < lines.length && !FENCE.test(lines[i])) i += 1;
        const code = lines.slice(start + 1, i).join("\n");
        i = Math.min(i + 1, lines.length);
        blocks.push({ type: "code", code, raw: lines.slice(start, i).join("\n") });
        continue;
      }
      const heading = HEADING.exec(line);
      if (heading) {
        blocks.push({ type: "heading", level: heading[1].length, text: heading[2], raw: line });
        i += 1;
        continue;
      }
      const first = LIST_ITEM.exec(line);
      if (first) {
        const ordered = first[2] !== undefined;
        const items = [];
        while (i < lines.length && lines[i].trim()) {
          const item = LIST_ITEM.exec(lines[i]);
          if (item && (item[2] !== undefined) === ordered) items.push(item[3]);
          else if (!item && !HEADING.test(lines[i]) && items.length) items[items.length - 1] += " " + lines[i].trim();
          else break;
          i += 1;
        }
        const startNumber = ordered ? Number.parseInt(first[2], 10) : 1;
        blocks.push({ type: "list", ordered, start: startNumber, items, raw: lines.slice(start, i).join("\n") });
        continue;
      }
      while (i < lines.length && lines[i].trim() && !(i > start && startsBlock(lines[i]))) i += 1;
      const paragraphLines = lines.slice(start, i);
      blocks.push({ type: "paragraph", lines: paragraphLines.map((l) => l.trim()), raw: paragraphLines.join("\n") });
    }
    return blocks;
  }

  function startsBlock(line) {
    return HEADING.test(line) || FENCE.test(line) || LIST_ITEM.test(line);
  }

  /** Append inline Markdown to `parent` as nodes. `citation(n)` builds the node for source n. */
  function appendInline(parent, text, citation) {
    let last = 0;
    for (const match of text.matchAll(INLINE)) {
      if (match.index > last) parent.append(text.slice(last, match.index));
      if (match[1] !== undefined) {
        parent.append(el("code", {}, match[1]));
      } else if (match[2] !== undefined) {
        const strong = el("strong");
        appendInline(strong, match[2], citation);
        parent.append(strong);
      } else if (match[3] !== undefined || match[4] !== undefined) {
        const em = el("em");
        appendInline(em, match[3] ?? match[4], citation);
        parent.append(em);
      } else {
        for (const number of match[5].split(",")) parent.append(citation(Number.parseInt(number, 10)));
      }
      last = match.index + match[0].length;
    }
    if (last < text.length) parent.append(text.slice(last));
  }

  /** Build the node of one block. Report headings start at h4, below the page's own h1 to h3. */
  function renderBlock(block, citation) {
    if (block.type === "heading") {
      const level = Math.min(block.level + 3, 6);
      const node = el(`h${level}`, { className: `md-h${block.level}` });
      appendInline(node, block.text, citation);
      return node;
    }
    if (block.type === "list") {
      const list = block.ordered ? el("ol", { start: block.start === 1 ? null : block.start }) : el("ul");
      for (const item of block.items) {
        const li = el("li");
        appendInline(li, item, citation);
        list.append(li);
      }
      return list;
    }
    if (block.type === "code") return el("pre", {}, el("code", {}, block.code));
    const paragraph = el("p");
    block.lines.forEach((line, index) => {
      if (index > 0) paragraph.append(el("br"));
      appendInline(paragraph, line, citation);
    });
    return paragraph;
  }

  // ---------------------------------------------------------------------------
  // Report rendering, throttled to one pass per animation frame

  function citationNode(number) {
    const source = session?.sources.get(number);
    const href = source ? sourceHref(source.url) : null;
    if (!href) return `[${number}]`;
    const title = source.title || source.url;
    return el(
      "a",
      {
        className: "citation",
        href,
        target: "_blank",
        rel: "noopener noreferrer",
        title,
        "aria-label": `Source ${number}: ${title}`,
        "data-source-id": number,
      },
      `[${number}]`,
    );
  }

  function scheduleReportRender() {
    if (!session || session.renderQueued) return;
    session.renderQueued = true;
    const current = session;
    requestAnimationFrame(() => {
      current.renderQueued = false;
      if (current === session) renderReport(current);
    });
  }

  /**
   * Re-render the report, replacing only the blocks whose text changed since the last pass.
   * While tokens stream in, that is usually just the last block.
   */
  function renderReport(job) {
    const blocks = parseBlocks(job.report);
    const keyPrefix = `${job.sourcesVersion}:`;
    const rendered = job.renderedBlocks;
    blocks.forEach((block, index) => {
      const key = keyPrefix + block.type + ":" + block.raw;
      if (rendered[index]?.key === key) return;
      const node = renderBlock(block, citationNode);
      if (rendered[index]) rendered[index].node.replaceWith(node);
      else ui.reportBody.append(node);
      rendered[index] = { key, node };
    });
    for (const stale of rendered.splice(blocks.length)) stale.node.remove();

    const writing = job.status === "running" && job.report.length > 0 && !job.reportFinal;
    ui.reportBody.classList.toggle("streaming", writing);
    ui.reportBody.setAttribute("aria-busy", String(writing));
    ui.reportEmpty.hidden = blocks.length > 0;
    if (!blocks.length) {
      ui.reportEmpty.textContent =
        TERMINAL_STATUSES.has(job.status) ? "This job has no report." : "The report appears here while Scout writes it.";
    }
  }

  // ---------------------------------------------------------------------------
  // Job header, timeline and sources

  function setConnection(job, text) {
    if (job === session) ui.jobConnection.textContent = text;
  }

  function addTimeline(job, text, { kind = "info", time = null } = {}) {
    if (job !== session) return;
    ui.timeline.append(
      el(
        "li",
        { className: `timeline-${kind}` },
        el("span", { className: "timeline-text" }, text),
        time === null ? null : el("span", { className: "timeline-time" }, timeElement(time)),
      ),
    );
  }

  /** Describe a status change. A failure's message has its own entry and the error box. */
  function statusTimelineEntry(view) {
    const kinds = { done: "success", partial: "warn", failed: "error" };
    const texts = {
      pending: "Submitted; drafting a plan",
      awaiting_approval: "Plan ready; awaiting your approval",
      running: "Plan approved; researching",
      done: "Done",
      partial: "Finished with a partial report",
      failed: "Failed",
    };
    return { text: texts[view.status] ?? `Status: ${view.status}`, kind: kinds[view.status] ?? "info" };
  }

  function renderHeader(job) {
    const view = job.view;
    ui.jobQuestion.textContent = view?.question ?? job.question ?? "";
    const status = job.status ?? "";
    ui.jobStatus.textContent = STATUS_LABELS[status] ?? (status || "Loading");
    ui.jobStatus.dataset.status = status;
    ui.jobCancel.hidden = !status || TERMINAL_STATUSES.has(status);
    ui.jobCancel.disabled = Boolean(job.cancelling);

    const rows = [["Job id", el("code", {}, job.jobId)]];
    if (view) {
      rows.push(["Submitted", timeElement(view.created_at)]);
      rows.push(["Model", `${view.model} · search: ${view.search}`]);
      const timings = view.timings ?? {};
      const phases = [
        ["planning", timings.planning_s],
        ["approval", timings.awaiting_approval_s],
        ["research", timings.research_s],
        ["total", timings.total_s],
      ]
        .filter(([, seconds]) => typeof seconds === "number")
        .map(([name, seconds]) => `${name} ${formatSeconds(seconds)}`);
      if (phases.length) rows.push(["Timings", phases.join(" · ")]);
    }
    ui.jobDetails.replaceChildren(...rows.flatMap(([term, value]) => [el("dt", {}, term), el("dd", {}, value)]));

    ui.jobNotice.hidden = !view?.notice;
    ui.jobNotice.textContent = view?.notice ?? "";

    if (job.error) {
      ui.jobError.replaceChildren(el("p", { className: "problem-title" }, "The job reported an error"), el("p", {}, job.error));
      ui.jobError.hidden = false;
    } else {
      hideProblem(ui.jobError);
    }
  }

  function mergeSources(job, sources) {
    let added = false;
    for (const source of sources ?? []) {
      if (!source || typeof source.id !== "number") continue;
      const known = job.sources.get(source.id);
      if (!known || JSON.stringify(known) !== JSON.stringify(source)) {
        job.sources.set(source.id, source);
        added = true;
      }
    }
    if (added) {
      job.sourcesVersion += 1;
      if (job === session) {
        renderSources(job);
        scheduleReportRender();
      }
    }
  }

  function renderSources(job) {
    const sources = [...job.sources.values()].sort((a, b) => a.id - b.id);
    ui.sourcesSection.hidden = sources.length === 0;
    ui.sources.replaceChildren(
      ...sources.map((source) => {
        const href = sourceHref(source.url);
        const title = source.title || source.url;
        const heading = href
          ? el("a", { href, target: "_blank", rel: "noopener noreferrer" }, title, el("span", { className: "visually-hidden" }, " (opens in a new tab)"))
          : el("span", {}, title);
        return el(
          "li",
          { id: `source-${source.id}`, value: source.id, "data-source-id": source.id },
          el("p", { className: "source-title" }, heading),
          el("p", { className: "source-meta" }, source.url, source.query ? ` · found by “${source.query}”` : ""),
          source.excerpt ? el("p", { className: "source-excerpt" }, source.excerpt) : null,
        );
      }),
    );
  }

  /** Add search results that the source rail dropped, skipping urls already listed. Return whether any was new. */
  function mergeDroppedSources(job, dropped) {
    let added = false;
    for (const item of dropped ?? []) {
      if (!item || typeof item.url !== "string" || job.droppedSources.has(item.url)) continue;
      job.droppedSources.set(item.url, item);
      added = true;
    }
    if (added && job === session) renderDroppedSources(job);
    return added;
  }

  /** List the dropped results as plain text without links, because the rail flagged their pages. */
  function renderDroppedSources(job) {
    const dropped = [...job.droppedSources.values()];
    ui.droppedSection.hidden = dropped.length === 0;
    ui.droppedSources.replaceChildren(
      ...dropped.map((item) =>
        el(
          "li",
          {},
          el("p", { className: "source-title" }, String(item.title || item.url)),
          el("p", { className: "source-meta" }, item.url),
          el("p", { className: "dropped-reason" }, `Reason: ${String(item.reason ?? "not given")}`),
        ),
      ),
    );
  }

  function droppedTimelineText(item) {
    return `Source dropped by the source rail: ${item.title || item.url} (${item.reason ?? "no reason given"})`;
  }

  // ---------------------------------------------------------------------------
  // Plan: read-only view, and the review form while the job awaits approval

  function normalizedPlan(steps) {
    return steps.map((step) => ({
      goal: String(step.goal ?? "").trim(),
      queries: (step.queries ?? []).map((query) => String(query).trim()).filter((query) => query.length > 0),
    }));
  }

  function renderPlan(job) {
    const awaiting = job.status === "awaiting_approval" && job.plan && !job.decisionSent;
    ui.planSection.hidden = !job.plan;
    if (!job.plan) {
      ui.plan.replaceChildren();
      job.review = null;
      return;
    }
    if (awaiting) {
      const planKey = JSON.stringify(job.plan);
      if (job.review?.planKey !== planKey) {
        job.review = {
          planKey,
          steps: job.plan.steps.map((step) => ({ goal: step.goal, queries: step.queries.join("\n") })),
          fieldErrors: new Map(),
        };
        renderReviewForm(job);
      }
      return;
    }
    job.review = null;
    const steps = job.plan.steps ?? [];
    setChildren(
      ui.plan,
      job.planEdited ? el("p", { className: "muted" }, "You edited this plan before approving it.") : null,
      job.decisionSent && job.status === "awaiting_approval"
        ? el("p", { className: "muted" }, "Decision sent; waiting for Scout to continue.")
        : null,
      el(
        "ol",
        { className: "plan-steps" },
        steps.map((step) =>
          el(
            "li",
            {},
            el("p", { className: "plan-goal" }, step.goal),
            el("ul", { className: "plan-queries" }, step.queries.map((query) => el("li", {}, query))),
          ),
        ),
      ),
    );
  }

  function describePlanField(field) {
    const match = /^body\.edited_plan\.steps\.(\d+)\.(goal|queries)(?:\.(\d+))?/.exec(field);
    if (match) {
      const step = Number(match[1]) + 1;
      if (match[2] === "goal") return `Step ${step}, goal`;
      return match[3] === undefined ? `Step ${step}, queries` : `Step ${step}, query ${Number(match[3]) + 1}`;
    }
    if (field === "body.edited_plan.steps") return "Steps";
    return field;
  }

  /** Build the review form from `job.review`, again each time a step is added or removed. */
  function renderReviewForm(job, focusTarget = null) {
    const review = job.review;
    const stepCount = review.steps.length;
    const problemBox = el("div", { className: "problem", role: "alert", id: "plan-problem", hidden: true });

    const stepNodes = review.steps.map((step, index) => {
      const number = index + 1;
      const goalId = `step-${index}-goal`;
      const queriesId = `step-${index}-queries`;
      const goalError = review.fieldErrors.get(`${index}.goal`);
      const queriesError = review.fieldErrors.get(`${index}.queries`);

      const goal = el("textarea", {
        id: goalId,
        name: "goal",
        rows: 2,
        maxlength: MAX_GOAL_CHARS,
        "aria-invalid": goalError ? "true" : null,
        "aria-describedby": goalError ? `${goalId}-error` : null,
        oninput: (event) => {
          step.goal = event.target.value;
        },
      });
      goal.value = step.goal;

      const queries = el("textarea", {
        id: queriesId,
        name: "queries",
        rows: Math.min(Math.max(step.queries.split("\n").length, 2), MAX_QUERIES_PER_STEP),
        spellcheck: "false",
        "aria-invalid": queriesError ? "true" : null,
        "aria-describedby": `${queriesId}-hint` + (queriesError ? ` ${queriesId}-error` : ""),
        oninput: (event) => {
          step.queries = event.target.value;
        },
      });
      queries.value = step.queries;

      return el(
        "fieldset",
        { className: "step", "data-step": number },
        el("legend", {}, `Step ${number}`),
        el("label", { for: goalId }, "Goal"),
        goal,
        goalError ? el("p", { className: "field-error", id: `${goalId}-error` }, goalError) : null,
        el("label", { for: queriesId }, "Search queries"),
        el(
          "p",
          { className: "hint", id: `${queriesId}-hint` },
          `One query per line: 1 to ${MAX_QUERIES_PER_STEP} queries of at most ${MAX_QUERY_CHARS} characters.`,
        ),
        queries,
        queriesError ? el("p", { className: "field-error", id: `${queriesId}-error` }, queriesError) : null,
        el(
          "div",
          { className: "step-actions" },
          el(
            "button",
            {
              type: "button",
              className: "small danger",
              disabled: stepCount <= 1,
              onclick: () => removeStep(job, index),
            },
            `Remove step ${number}`,
          ),
        ),
      );
    });

    const form = el(
      "form",
      {
        id: "plan-form",
        className: "plan-form",
        novalidate: true,
        "aria-describedby": "plan-form-hint",
        onsubmit: (event) => {
          event.preventDefault();
          sendDecision(job, true);
        },
      },
      el(
        "p",
        { className: "hint", id: "plan-form-hint" },
        `Review the plan before Scout searches. Edit goals and queries, or add and remove steps (1 to ${MAX_STEPS}).`,
      ),
      stepNodes,
      el(
        "div",
        { className: "actions" },
        el(
          "button",
          { type: "button", id: "add-step", className: "small", disabled: stepCount >= MAX_STEPS, onclick: () => addStep(job) },
          "Add step",
        ),
      ),
      problemBox,
      el(
        "div",
        { className: "actions decision" },
        el("button", { type: "submit", className: "primary", id: "approve-plan" }, "Approve plan"),
        el("button", { type: "button", className: "danger", id: "reject-plan", onclick: () => sendDecision(job, false) }, "Reject plan"),
      ),
    );
    ui.plan.replaceChildren(form);
    if (review.problem) showProblem(problemBox, review.problem, describePlanField);
    if (focusTarget) form.querySelector(focusTarget)?.focus();
  }

  function addStep(job) {
    const review = job.review;
    if (!review || review.steps.length >= MAX_STEPS) return;
    review.steps.push({ goal: "", queries: "" });
    review.fieldErrors.clear();
    review.problem = null;
    renderReviewForm(job, `#step-${review.steps.length - 1}-goal`);
  }

  function removeStep(job, index) {
    const review = job.review;
    if (!review || review.steps.length <= 1) return;
    review.steps.splice(index, 1);
    review.fieldErrors.clear();
    review.problem = null;
    const next = Math.min(index, review.steps.length - 1);
    renderReviewForm(job, `#step-${next}-goal`);
  }

  /** Build the approval body, with edited_plan only when the reviewed plan differs from the draft. */
  function approvalBody(job) {
    const edited = normalizedPlan(
      job.review.steps.map((step) => ({ goal: step.goal, queries: step.queries.split("\n") })),
    );
    const draft = normalizedPlan(job.plan.steps);
    if (JSON.stringify(edited) === JSON.stringify(draft)) return { approved: true };
    return { approved: true, edited_plan: { steps: edited } };
  }

  async function sendDecision(job, approved) {
    const review = job.review;
    if (!review || review.sending) return;
    const body = approved ? approvalBody(job) : { approved: false };
    const buttons = ui.plan.querySelectorAll(".decision button");
    review.sending = true;
    buttons.forEach((button) => {
      button.disabled = true;
    });

    let problem = null;
    try {
      const response = await apiFetch(`/research/${encodeURIComponent(job.jobId)}/approve`, {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "application/json, application/problem+json" },
        body: JSON.stringify(body),
      }, { interactive: true });
      if (response.ok) {
        const view = await response.json();
        job.decisionSent = true;
        // The stream delivers the same change as events, so only a polling page applies the view.
        if (job.mode === "poll") applyPolledView(job, view);
        else if (job === session) renderPlan(job);
        return;
      }
      problem = await readProblem(response);
    } catch (error) {
      problem = networkProblem(error);
    } finally {
      review.sending = false;
    }
    if (job !== session || job.review !== review) return;

    review.problem = problem;
    review.fieldErrors = new Map();
    for (const error of problem.errors) {
      const match = /^body\.edited_plan\.steps\.(\d+)\.(goal|queries)/.exec(String(error.field ?? ""));
      if (match && !review.fieldErrors.has(`${match[1]}.${match[2]}`)) {
        review.fieldErrors.set(`${match[1]}.${match[2]}`, String(error.message ?? "Invalid value"));
      }
    }
    renderReviewForm(job, "#plan-problem");
    ui.plan.querySelector("#plan-problem")?.setAttribute("tabindex", "-1");
  }

  // ---------------------------------------------------------------------------
  // Cancelling a job

  /** Cancel an unfinished job. It ends `failed` with the error "cancelled". */
  async function cancelJob(job) {
    if (!job || job.cancelling || TERMINAL_STATUSES.has(job.status)) return;
    job.cancelling = true;
    ui.jobCancel.disabled = true;
    hideProblem(ui.jobActionProblem);

    let problem = null;
    try {
      const response = await apiFetch(`/research/${encodeURIComponent(job.jobId)}/cancel`, {
        method: "POST",
        headers: { Accept: "application/json, application/problem+json" },
      }, { interactive: true });
      if (response.ok) {
        const view = await response.json();
        // The stream delivers the same change as events, so only a polling page applies the view.
        if (job.mode === "poll" && !job.closed) applyPolledView(job, view);
      } else {
        problem = await readProblem(response);
      }
    } catch (error) {
      problem = networkProblem(error);
    } finally {
      job.cancelling = false;
    }
    if (job !== session) return;
    ui.jobCancel.disabled = false;
    if (problem) showProblem(ui.jobActionProblem, problem);
  }

  // ---------------------------------------------------------------------------
  // Applying job state from stream events or from polled views

  function applyView(job, view) {
    const previous = job.status;
    job.view = view;
    job.status = view.status;
    if (view.plan) {
      job.plan = view.plan;
      job.planEdited = Boolean(view.plan_edited);
    }
    if (view.error) job.error = view.error;
    mergeSources(job, view.sources);
    mergeDroppedSources(job, view.dropped_sources);
    if (TERMINAL_STATUSES.has(view.status) && typeof view.report === "string" && !job.report) {
      job.report = view.report;
      job.reportFinal = true;
    }
    if (job !== session) return;

    if (previous !== view.status) {
      const entry = statusTimelineEntry(view);
      addTimeline(job, entry.text, { kind: entry.kind, time: view.updated_at });
      scheduleRecentRefresh();
    }
    renderHeader(job);
    renderPlan(job);
    scheduleReportRender();
  }

  function applyEvent(job, name, data) {
    switch (name) {
      case "status":
        applyView(job, data);
        break;
      case "plan": {
        const steps = data.plan?.steps ?? [];
        job.plan = data.plan;
        job.planEdited = Boolean(data.edited);
        addTimeline(job, `${data.edited ? "Plan edited" : "Plan drafted"}: ${steps.length} step${steps.length === 1 ? "" : "s"}`);
        renderPlan(job);
        break;
      }
      case "source":
        addTimeline(job, `Source ${data.id} gathered: ${data.title || data.url}`, { kind: "source" });
        mergeSources(job, [data]);
        break;
      case "source_dropped":
        if (mergeDroppedSources(job, [data])) addTimeline(job, droppedTimelineText(data), { kind: "warn" });
        break;
      case "token":
        if (!job.writingNoted) {
          job.writingNoted = true;
          addTimeline(job, "Writing the report");
        }
        if (data.reset === true) {
          // A resumed run writes the report again from its start, so the text so far is stale.
          job.report = "";
          job.reportFinal = false;
          addTimeline(job, "Report restarted after the job resumed", { kind: "warn" });
        }
        job.report += String(data.text ?? "");
        scheduleReportRender();
        break;
      case "report":
        mergeSources(job, data.sources);
        if (typeof data.report === "string" && data.report !== job.report) {
          // The final text is authoritative. A mismatch means tokens were lost or repeated.
          console.warn("Scout: the streamed report differs from the final report; showing the final report.");
          job.report = data.report;
        }
        job.reportFinal = true;
        addTimeline(job, `Report finished, citing ${(data.citations ?? []).length} source(s)`, { kind: "success" });
        scheduleReportRender();
        break;
      case "error":
        job.error = String(data.error ?? "Unknown error");
        addTimeline(job, `Error: ${job.error}`, { kind: "error" });
        renderHeader(job);
        break;
      case "end":
        job.reportFinal = true;
        scheduleReportRender();
        break;
      default:
        break;
    }
  }

  /** Turn the difference between the last view and a polled one into timeline entries. */
  function applyPolledView(job, view) {
    if (job.view && typeof view.updated_at === "number" && view.updated_at < job.view.updated_at) return;
    if (view.plan && JSON.stringify(view.plan) !== JSON.stringify(job.plan)) {
      const steps = view.plan.steps ?? [];
      addTimeline(job, `${view.plan_edited ? "Plan edited" : "Plan drafted"}: ${steps.length} step${steps.length === 1 ? "" : "s"}`);
    }
    for (const source of view.sources ?? []) {
      if (!job.sources.has(source.id)) {
        addTimeline(job, `Source ${source.id} gathered: ${source.title || source.url}`, { kind: "source" });
      }
    }
    for (const item of view.dropped_sources ?? []) {
      if (item && !job.droppedSources.has(item.url)) addTimeline(job, droppedTimelineText(item), { kind: "warn" });
    }
    if (view.error && view.error !== job.error) addTimeline(job, `Error: ${view.error}`, { kind: "error" });
    if (typeof view.report === "string" && view.report !== job.report) {
      job.report = view.report;
      job.reportFinal = TERMINAL_STATUSES.has(view.status);
    }
    applyView(job, view);
  }

  // ---------------------------------------------------------------------------
  // Event stream with resume, and the polling fallback

  function eventsUrl(job) {
    const params = new URLSearchParams();
    if (job.lastEventId > 0) params.set("last_event_id", String(job.lastEventId));
    // EventSource cannot set headers, so the events route also accepts the key here.
    if (auth.key) params.set("access_token", auth.key);
    const query = params.toString();
    return `/research/${encodeURIComponent(job.jobId)}/events` + (query ? `?${query}` : "");
  }

  function statusUrl(job) {
    return `/status/${encodeURIComponent(job.jobId)}`;
  }

  function connectStream(job) {
    if (job.closed) return;
    if (typeof window.EventSource !== "function") {
      startPolling(job, "this browser has no EventSource");
      return;
    }
    const source = new EventSource(eventsUrl(job));
    job.stream = source;
    job.streamKey = auth.key;
    setConnection(job, "Connecting…");

    source.addEventListener("open", () => {
      if (job.stream !== source) return;
      job.streamFailures = 0;
      setConnection(job, "Live");
    });
    for (const name of STREAM_EVENTS) {
      source.addEventListener(name, (event) => onStreamEvent(job, source, name, event));
    }
    // `reconnect` has no id. The server closes the stream and expects a new one after our last id.
    source.addEventListener("reconnect", (event) => onReconnectRequest(job, source, event));
    // The job's `error` event and a failed connection share the name "error", but only the
    // job's event is a MessageEvent.
    source.addEventListener("error", (event) => {
      if (!(event instanceof MessageEvent)) onStreamError(job, source);
    });
  }

  function onStreamEvent(job, source, name, event) {
    if (job.closed || job.stream !== source || !(event instanceof MessageEvent)) return;
    const id = Number.parseInt(event.lastEventId, 10);
    if (Number.isFinite(id)) {
      if (id <= job.lastEventId) return; // Already applied: a resumed stream may repeat events.
      job.lastEventId = id;
    }
    let data;
    try {
      data = JSON.parse(event.data);
    } catch (error) {
      console.warn(`Scout: ignored event ${name} with invalid JSON data`, error);
      return;
    }
    job.streamFailures = 0;
    applyEvent(job, name, data ?? {});
    if (name === "end") {
      source.close();
      job.stream = null;
      setConnection(job, "");
    }
  }

  function onReconnectRequest(job, source, event) {
    if (job.closed || job.stream !== source) return;
    let reason = "no reason given";
    try {
      reason = JSON.parse(event.data).reason || reason;
    } catch {
      // Keep the default reason.
    }
    source.close();
    job.stream = null;
    addTimeline(job, `Stream restarted by the server (${reason}); resuming after event ${job.lastEventId}`, { kind: "warn" });
    connectStream(job);
  }

  function onStreamError(job, source) {
    if (job.closed || job.stream !== source) return;
    job.streamFailures += 1;
    // CLOSED means the browser gave up after an HTTP error or a wrong content type.
    // CONNECTING means it retries by itself.
    if (source.readyState === EventSource.CLOSED || job.streamFailures >= MAX_STREAM_FAILURES) {
      source.close();
      job.stream = null;
      recoverStream(job);
      return;
    }
    setConnection(job, "Connection lost; reconnecting…");
  }

  /**
   * Choose between a new stream and polling after the stream failed for good.
   *
   * EventSource does not expose the HTTP status, so one status request finds out whether
   * the key was missing or rejected. apiFetch then opens the key dialog, and the stream opens
   * again with it. Any other failure falls back to polling.
   */
  async function recoverStream(job) {
    let response = null;
    try {
      response = await apiFetch(statusUrl(job), { headers: { Accept: "application/json" }, cache: "no-store" });
    } catch {
      // A network error: polling retries and reports it.
    }
    if (job.closed) return;
    // The stream failed with another key than the one that works now: open it again.
    if (response?.ok && auth.key && auth.key !== job.streamKey) {
      job.streamFailures = 0;
      connectStream(job);
      return;
    }
    startPolling(job, "the event stream failed");
  }

  function startPolling(job, reason) {
    if (job.closed || job.mode === "poll") return;
    job.mode = "poll";
    addTimeline(job, `Live updates unavailable (${reason}); checking the status every second`, { kind: "warn" });
    setConnection(job, "Checking the status every second");
    pollStatus(job);
  }

  async function pollStatus(job) {
    if (job.closed) return;
    try {
      const response = await apiFetch(statusUrl(job), {
        headers: { Accept: "application/json" },
        cache: "no-store",
      });
      if (job.closed) return;
      if (response.status === 404) {
        showJobNotFound(job);
        return;
      }
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const view = await response.json();
      if (job.closed) return;
      job.pollFailures = 0;
      applyPolledView(job, view);
      if (TERMINAL_STATUSES.has(view.status)) {
        setConnection(job, "");
        return;
      }
    } catch (error) {
      job.pollFailures += 1;
      if (job.pollFailures === 1) {
        addTimeline(job, `Status check failed (${error.message}); retrying`, { kind: "warn" });
      }
      setConnection(job, `Status check failed ${job.pollFailures} time(s); retrying`);
    }
    job.pollTimer = setTimeout(() => pollStatus(job), POLL_INTERVAL_MS);
  }

  // ---------------------------------------------------------------------------
  // Opening and closing jobs

  function newJobState(jobId) {
    return {
      jobId,
      question: null,
      view: null,
      status: null,
      plan: null,
      planEdited: false,
      review: null,
      decisionSent: false,
      sources: new Map(),
      sourcesVersion: 0,
      // Dropped search results by url, in the order they arrived.
      droppedSources: new Map(),
      report: "",
      reportFinal: false,
      renderedBlocks: [],
      renderQueued: false,
      writingNoted: false,
      error: null,
      lastEventId: 0,
      stream: null,
      streamKey: "",
      streamFailures: 0,
      mode: "stream",
      pollTimer: null,
      pollFailures: 0,
      cancelling: false,
      closed: false,
    };
  }

  function closeSession() {
    if (!session) return;
    session.closed = true;
    session.stream?.close();
    clearTimeout(session.pollTimer);
    session = null;
  }

  function resetJobPanel() {
    ui.jobQuestion.textContent = "";
    ui.jobStatus.textContent = "Loading";
    ui.jobStatus.dataset.status = "";
    ui.jobConnection.textContent = "";
    ui.jobDetails.replaceChildren();
    ui.jobNotice.hidden = true;
    ui.jobCancel.hidden = true;
    ui.jobCancel.disabled = false;
    hideProblem(ui.jobError);
    hideProblem(ui.jobActionProblem);
    ui.planSection.hidden = true;
    ui.plan.replaceChildren();
    ui.reportBody.replaceChildren();
    ui.reportBody.classList.remove("streaming");
    ui.reportBody.setAttribute("aria-busy", "false");
    ui.reportEmpty.hidden = false;
    ui.reportEmpty.textContent = "The report appears here while Scout writes it.";
    ui.sourcesSection.hidden = true;
    ui.sources.replaceChildren();
    ui.droppedSection.hidden = true;
    ui.droppedSources.replaceChildren();
    ui.timeline.replaceChildren();
  }

  /** Show a job and follow it: its stream replays the whole history, then continues live. */
  function openJob(jobId, { focus = false } = {}) {
    closeSession();
    resetJobPanel();
    session = newJobState(jobId);
    ui.job.hidden = false;
    ui.jobMissing.hidden = true;
    renderHeader(session);
    markCurrentRecent();
    if (focus) ui.jobQuestion.focus();
    connectStream(session);
  }

  function closeJob() {
    closeSession();
    resetJobPanel();
    ui.job.hidden = true;
    ui.jobMissing.hidden = false;
    markCurrentRecent();
  }

  function showJobNotFound(job) {
    if (job !== session) return;
    closeSession();
    resetJobPanel();
    ui.jobQuestion.textContent = "Job not found";
    ui.jobStatus.textContent = "Unknown";
    ui.jobError.replaceChildren(
      el("p", { className: "problem-title" }, "Job not found"),
      el("p", {}, `Scout has no job with id ${job.jobId}. Open one from the list of recent jobs.`),
    );
    ui.jobError.hidden = false;
  }

  function jobIdFromHash() {
    const match = /^#job=([^&]+)$/.exec(window.location.hash);
    if (!match) return null;
    try {
      return decodeURIComponent(match[1]);
    } catch {
      return null;
    }
  }

  function onHashChange() {
    const jobId = jobIdFromHash();
    if (!jobId) closeJob();
    else if (jobId !== session?.jobId) openJob(jobId, { focus: true });
  }

  // ---------------------------------------------------------------------------
  // Submitting a question

  async function submitQuestion(event) {
    event.preventDefault();
    const question = ui.question.value.trim();
    hideProblem(ui.questionProblem);
    ui.question.removeAttribute("aria-invalid");
    if (!question) {
      showProblem(ui.questionProblem, {
        title: "Missing question",
        detail: "Type a research question, then submit it.",
        errors: [],
      });
      ui.question.setAttribute("aria-invalid", "true");
      ui.question.focus();
      return;
    }

    ui.questionSubmit.disabled = true;
    ui.questionSubmit.textContent = "Submitting…";
    try {
      const response = await apiFetch("/research", {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "application/json, application/problem+json" },
        body: JSON.stringify({ question }),
      }, { interactive: true });
      if (!response.ok) {
        const problem = await readProblem(response);
        showProblem(ui.questionProblem, problem, (field) => (field === "body.question" ? "Question" : field));
        if (problem.errors.some((error) => String(error.field).startsWith("body.question"))) {
          ui.question.setAttribute("aria-invalid", "true");
        }
        return;
      }
      const created = await response.json();
      ui.question.value = "";
      window.location.hash = `job=${encodeURIComponent(created.job_id)}`;
      scheduleRecentRefresh();
    } catch (error) {
      showProblem(ui.questionProblem, networkProblem(error));
    } finally {
      ui.questionSubmit.disabled = false;
      ui.questionSubmit.textContent = "Start research";
    }
  }

  // ---------------------------------------------------------------------------
  // Recent jobs

  function scheduleRecentRefresh() {
    clearTimeout(recentTimer);
    recentTimer = setTimeout(loadRecentJobs, RECENT_REFRESH_DELAY_MS);
  }

  async function loadRecentJobs({ interactive = false } = {}) {
    clearTimeout(recentTimer);
    ui.recentRefresh.disabled = true;
    try {
      const response = await apiFetch(`/research?limit=${RECENT_LIMIT}`, {
        headers: { Accept: "application/json" },
        cache: "no-store",
      }, { interactive });
      if (!response.ok) {
        const problem = await readProblem(response);
        ui.recentMessage.textContent = `Could not load recent jobs: ${problem.detail || problem.title}`;
        return;
      }
      const body = await response.json();
      renderRecentJobs(Array.isArray(body.jobs) ? body.jobs : []);
    } catch (error) {
      ui.recentMessage.textContent = `Could not load recent jobs (${error.message}). Use Refresh to try again.`;
    } finally {
      ui.recentRefresh.disabled = false;
    }
  }

  function renderRecentJobs(jobs) {
    ui.recentMessage.textContent = jobs.length ? "" : "No jobs yet.";
    ui.recentJobs.replaceChildren(
      ...jobs.map((job) => {
        const status = String(job.status ?? "");
        return el(
          "li",
          { "data-job-id": job.job_id },
          el(
            "a",
            { href: `#job=${encodeURIComponent(job.job_id)}`, className: "recent-link" },
            el("span", { className: "recent-question" }, job.question || "(no question)"),
            el(
              "span",
              { className: "recent-meta" },
              el("span", { className: "badge", "data-status": status }, STATUS_LABELS[status] ?? status),
              " ",
              timeElement(job.created_at),
            ),
          ),
        );
      }),
    );
    markCurrentRecent();
  }

  function markCurrentRecent() {
    for (const item of ui.recentJobs.children) {
      const link = item.querySelector("a");
      if (!link) continue;
      if (session && item.dataset.jobId === session.jobId) link.setAttribute("aria-current", "true");
      else link.removeAttribute("aria-current");
    }
  }

  // ---------------------------------------------------------------------------
  // Start-up

  ui.questionForm.addEventListener("submit", submitQuestion);
  ui.question.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      ui.questionForm.requestSubmit();
    }
  });
  ui.recentRefresh.addEventListener("click", () => loadRecentJobs({ interactive: true }));
  ui.jobCancel.addEventListener("click", () => cancelJob(session));
  ui.authButton.addEventListener("click", onAuthButton);
  ui.authForm.addEventListener("submit", onKeySubmit);
  ui.authDismiss.addEventListener("click", () => ui.authDialog.close());
  ui.authDialog.addEventListener("close", onKeyDialogClose);
  window.addEventListener("hashchange", onHashChange);

  renderAuthButton();

  loadRecentJobs();
  const initialJob = jobIdFromHash();
  if (initialJob) openJob(initialJob);
})();
