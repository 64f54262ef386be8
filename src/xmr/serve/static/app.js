// xmr search page: plain JS, no build step. The query lives in the URL (?q=&k=&category= or
// ?similar=ID), so a search can be bookmarked, shared, reloaded and walked with back/forward.
"use strict";

(() => {
  const CHUNK = 120; // cards rendered per step; the rest follow as the user scrolls

  const $ = (id) => document.getElementById(id);
  const form = $("search-form");
  const qInput = $("q");
  const kInput = $("k");
  const catSelect = $("category");
  const upload = $("upload");
  const grid = $("results");
  const more = $("more");
  const statusLine = $("status");
  const empty = $("empty");
  const banner = $("query-banner");
  const bannerThumb = $("query-thumb");
  const bannerLabel = $("query-label");
  const drop = $("drop");

  let info = null;
  let controller = null; // aborts the previous request when a new search starts
  let pending = []; // results not rendered yet
  let rendered = 0;
  let imageSeq = 0;
  const uploadedImages = new Map(); // history token -> File, so back/forward can redo it
  let bannerUrl = null;

  // ---- URL state -------------------------------------------------------------------------

  function stateFromUrl() {
    const p = new URLSearchParams(location.search);
    return {
      q: p.get("q") || "",
      k: p.get("k") || "",
      category: p.get("category") || "",
      similar: p.get("similar") || "",
    };
  }

  function urlOf(state) {
    const p = new URLSearchParams();
    if (state.similar) p.set("similar", state.similar);
    else if (state.q) p.set("q", state.q);
    if (state.k) p.set("k", state.k);
    if (state.category) p.set("category", state.category);
    const s = p.toString();
    return s ? `?${s}` : location.pathname;
  }

  function formState() {
    return { q: qInput.value.trim(), k: kInput.value.trim(), category: catSelect.value, similar: "" };
  }

  function fillForm(state) {
    qInput.value = state.q || "";
    if (state.k) kInput.value = state.k;
    if (state.category !== undefined) catSelect.value = state.category || "";
  }

  // ---- requests --------------------------------------------------------------------------

  async function request(url, options) {
    if (controller) controller.abort();
    controller = new AbortController();
    const response = await fetch(url, { ...options, signal: controller.signal });
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      /* not JSON: reported below */
    }
    if (!response.ok) {
      const message = (body && body.error && body.error.message) || (body && body.detail) ||
        `${response.status} ${response.statusText}`;
      throw new Error(message);
    }
    return body;
  }

  function commonParams(state) {
    const out = {};
    if (state.k) out.k = Number(state.k);
    if (state.category) out.category = state.category;
    return out;
  }

  async function run(state, { push = false, image = null } = {}) {
    const token = image ? `img${++imageSeq}` : null;
    if (push) history.pushState(token ? { image: token } : null, "", image ? urlOf({ ...state, q: "", similar: "" }) : urlOf(state));
    if (image) uploadedImages.set(token, image);
    fillForm(state);
    showBanner(state, image);
    if (!state.q && !state.similar && !image) {
      clearResults();
      empty.hidden = false;
      setStatus("");
      return;
    }
    empty.hidden = true;
    setStatus("Searching…", "busy");
    const started = performance.now();
    try {
      let body;
      if (image) {
        const fd = new FormData();
        fd.append("image", image, image.name || "upload");
        if (state.k) fd.append("k", state.k);
        if (state.category) fd.append("category", state.category);
        body = await request("/api/search", { method: "POST", body: fd });
      } else if (state.similar) {
        body = await request("/api/search", {
          method: "POST",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ item_id: state.similar, ...commonParams(state) }),
        });
      } else {
        const p = new URLSearchParams({ q: state.q });
        if (state.k) p.set("k", state.k);
        if (state.category) p.set("category", state.category);
        body = await request(`/api/search?${p}`);
      }
      showResults(body, performance.now() - started);
    } catch (err) {
      if (err.name === "AbortError") return;
      clearResults();
      setStatus(err.message, "error");
    }
  }

  // ---- rendering -------------------------------------------------------------------------

  function setStatus(text, kind = "") {
    statusLine.textContent = text;
    statusLine.className = `status ${kind}`;
  }

  function clearResults() {
    grid.replaceChildren();
    pending = [];
    rendered = 0;
  }

  function describeQuery(q) {
    if (!q) return "";
    if (q.type === "text") return `“${q.text}”`;
    if (q.type === "item") return `items similar to ${q.item_id}`;
    if (q.type === "image") return `your image (${q.width}×${q.height})`;
    return "";
  }

  function showResults(body, elapsedMs) {
    clearResults();
    pending = body.results || [];
    const n = pending.length;
    const what = describeQuery(body.query);
    const where = body.category ? ` in ${body.category}` : "";
    setStatus(n ? `${n} result${n === 1 ? "" : "s"} for ${what}${where} · ${body.took_ms.toFixed(1)} ms on the server, ${elapsedMs.toFixed(0)} ms here`
      : `No results for ${what}${where}.`);
    renderMore();
  }

  const VECTOR = /^\s*-?\d+(\.\d+)?(\s*,\s*-?\d+(\.\d+)?){3,}\s*$/;
  const isVector = (text) => typeof text === "string" && VECTOR.test(text);

  function card(r, rank) {
    const li = document.createElement("li");
    li.className = "card";
    li.dataset.id = r.id;

    const fig = document.createElement("figure");
    const a = document.createElement("a");
    a.className = "thumb";
    if (r.image_url) {
      a.href = r.image_url;
      a.target = "_blank";
      a.rel = "noopener";
      const img = document.createElement("img");
      img.loading = "lazy";
      img.decoding = "async";
      img.src = r.thumbnail_url || r.image_url;
      img.alt = r.caption || r.id;
      // A missing image shows the placeholder only: the <img> goes, and with it the browser's
      // broken-image icon and alt text, which covered the score badge.
      img.addEventListener("error", () => {
        img.remove();
        a.classList.add("broken");
        a.title = "image unavailable";
      }, { once: true });
      a.append(img);
    } else {
      a.classList.add("broken");
      a.title = "no image";
    }
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = r.score.toFixed(3);
    score.title = r.reranked
      ? `rank ${rank + 1} (first stage ${r.first_stage_rank}), match probability ` +
        `${r.match_prob}, similarity ${r.first_stage_score}`
      : `rank ${rank + 1}, similarity ${r.score}`;
    a.append(score);
    fig.append(a);

    const cap = document.createElement("figcaption");
    const text = document.createElement("p");
    text.className = "caption";
    const texts = r.captions && r.captions.length;
    const vector = !texts && isVector(r.attribute);
    if (!texts && r.attribute_labels) {
      // The service knows the vector's layout: the names of the attributes set.
      text.textContent = r.attribute_labels.length ? r.attribute_labels.join(", ") : "no attribute set";
    } else if (vector) {
      // An attribute vector without a declared layout (Track2 pedestrians: 0/1 flags): which
      // positions are set, numbered from 1, instead of an unreadable row of digits.
      const values = r.attribute.split(",").map((v) => v.trim());
      if (values.every((v) => v === "0" || v === "1")) {
        const set = values.flatMap((v, i) => (v === "1" ? [i + 1] : []));
        text.textContent = set.length
          ? `attributes ${set.join(", ")} of ${values.length}`
          : `no attribute set (of ${values.length})`;
      } else {
        text.classList.add("vector");
        text.textContent = values.join(", ");
      }
    } else {
      text.textContent = r.caption || r.attribute || r.id;
    }
    const details = [...(r.captions || [])];
    if (r.attribute && !details.includes(r.attribute)) details.push(`attribute: ${r.attribute}`);
    text.title = [`id: ${r.id}`, ...details].join("\n");
    cap.append(text);

    const meta = document.createElement("div");
    meta.className = "meta";
    if (r.category) {
      const chip = document.createElement("span");
      chip.className = "chip";
      chip.textContent = r.category;
      meta.append(chip);
    }
    const sim = document.createElement("button");
    sim.type = "button";
    sim.className = "similar";
    sim.dataset.id = r.id;
    sim.textContent = "Similar";
    sim.title = "find items similar to this one";
    meta.append(sim);
    cap.append(meta);
    fig.append(cap);
    li.append(fig);
    return li;
  }

  function renderMore() {
    if (rendered >= pending.length) return;
    const frag = document.createDocumentFragment();
    const end = Math.min(pending.length, rendered + CHUNK);
    for (let i = rendered; i < end; i++) frag.append(card(pending[i], i));
    rendered = end;
    grid.append(frag);
    // The observer fires on changes only: keep going while the end is still near the viewport.
    if (rendered < pending.length) {
      requestAnimationFrame(() => {
        if (more.getBoundingClientRect().top < window.innerHeight + 800) renderMore();
      });
    }
  }

  new IntersectionObserver((entries) => {
    if (entries.some((e) => e.isIntersecting)) renderMore();
  }, { rootMargin: "800px" }).observe(more);

  function showBanner(state, image) {
    if (bannerUrl) {
      URL.revokeObjectURL(bannerUrl);
      bannerUrl = null;
    }
    if (image) {
      bannerUrl = URL.createObjectURL(image);
      bannerThumb.src = bannerUrl;
      bannerLabel.textContent = `Searching by your image ${image.name ? `“${image.name}”` : ""}`;
      banner.hidden = false;
    } else if (state.similar) {
      bannerThumb.src = `/api/items/${encodeURIComponent(state.similar)}/thumbnail`;
      bannerLabel.textContent = `Items similar to ${state.similar}`;
      banner.hidden = false;
    } else {
      banner.hidden = true;
      bannerThumb.removeAttribute("src");
    }
  }

  // ---- events ----------------------------------------------------------------------------

  form.addEventListener("submit", (e) => {
    e.preventDefault();
    run(formState(), { push: true });
  });

  catSelect.addEventListener("change", () => {
    const cur = stateFromUrl();
    if (cur.q || cur.similar) run({ ...cur, category: catSelect.value, k: kInput.value.trim() }, { push: true });
  });

  grid.addEventListener("click", (e) => {
    const btn = e.target.closest("button.similar");
    if (!btn) return;
    run({ q: "", similar: btn.dataset.id, k: kInput.value.trim(), category: catSelect.value }, { push: true });
    window.scrollTo({ top: 0, behavior: "smooth" });
  });

  upload.addEventListener("change", () => {
    const file = upload.files && upload.files[0];
    if (file) run({ ...formState(), q: "" }, { push: true, image: file });
    upload.value = "";
  });

  $("query-clear").addEventListener("click", () => {
    run({ q: "", k: kInput.value.trim(), category: catSelect.value, similar: "" }, { push: true });
    qInput.focus();
  });

  window.addEventListener("popstate", (e) => {
    const token = e.state && e.state.image;
    const file = token && uploadedImages.get(token);
    if (file) run({ ...stateFromUrl(), q: "" }, { image: file });
    else run(stateFromUrl());
  });

  // Drop or paste an image anywhere to search by it.
  let dragDepth = 0;
  const hasFiles = (e) => e.dataTransfer && [...e.dataTransfer.types].includes("Files");
  window.addEventListener("dragenter", (e) => {
    if (!hasFiles(e)) return;
    dragDepth++;
    drop.hidden = false;
  });
  window.addEventListener("dragleave", () => {
    if (--dragDepth <= 0) {
      dragDepth = 0;
      drop.hidden = true;
    }
  });
  window.addEventListener("dragover", (e) => {
    if (hasFiles(e)) e.preventDefault();
  });
  window.addEventListener("drop", (e) => {
    if (!hasFiles(e)) return;
    e.preventDefault();
    dragDepth = 0;
    drop.hidden = true;
    const file = [...e.dataTransfer.files].find((f) => f.type.startsWith("image/"));
    if (file) run({ ...formState(), q: "" }, { push: true, image: file });
  });
  window.addEventListener("paste", (e) => {
    const file = [...(e.clipboardData ? e.clipboardData.files : [])].find((f) => f.type.startsWith("image/"));
    if (file) run({ ...formState(), q: "" }, { push: true, image: file });
  });

  // ---- start -----------------------------------------------------------------------------

  async function loadInfo() {
    try {
      const r = await fetch("/api/info");
      info = await r.json();
    } catch (_) {
      return;
    }
    const limits = info.limits || {};
    if (limits.max_k) kInput.max = limits.max_k;
    if (limits.default_k && !stateFromUrl().k) kInput.value = limits.default_k;
    if (limits.max_query_chars) qInput.maxLength = limits.max_query_chars;
    const cats = Object.entries(info.categories || {});
    if (cats.length) {
      const frag = document.createDocumentFragment();
      for (const [name, count] of cats) {
        const opt = document.createElement("option");
        opt.value = name;
        opt.textContent = `${name} (${count})`;
        frag.append(opt);
      }
      catSelect.append(frag);
      catSelect.hidden = false;
    }
    const parts = [`${info.size} items`];
    if (info.model) {
      const spec = String(info.model);
      parts.push(`model ${spec.length > 48 ? `…${spec.slice(-47)}` : spec}`);
    }
    if (info.index_type) parts.push(`${info.index_type} index, ${info.dim}-d`);
    $("info").textContent = parts.join(" · ");
    $("info").title = info.model || "";
  }

  loadInfo().then(() => {
    const state = stateFromUrl();
    history.replaceState(null, "", location.href);
    run(state);
  });
})();
