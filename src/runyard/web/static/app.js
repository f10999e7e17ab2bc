/* Runyard dashboard: the few live parts. No dependencies. */
"use strict";

(function () {
  const body = document.body;
  const csrf = body.dataset.csrf || "";
  const team = body.dataset.team || "";

  function api(path, options) {
    const opts = options || {};
    const headers = Object.assign({ "X-Team-ID": team }, opts.headers || {});
    if (opts.method && opts.method !== "GET") headers["X-CSRF-Token"] = csrf;
    return fetch("/api/v1" + path, Object.assign({}, opts, { headers, credentials: "same-origin" }));
  }

  async function errorOf(response) {
    try {
      const body = await response.json();
      return body.error_message || response.statusText;
    } catch (e) {
      return response.statusText || "request failed";
    }
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== null && v !== undefined) node.setAttribute(k, v);
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function size(bytes) {
    if (bytes === null || bytes === undefined) return "—";
    const units = ["B", "KB", "MB", "GB", "TB"];
    let value = Number(bytes);
    let unit = 0;
    while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit++; }
    return unit === 0 ? value.toFixed(0) + " B" : value.toFixed(1) + " " + units[unit];
  }

  function ago(iso) {
    if (!iso) return "—";
    const seconds = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
    if (seconds < 60) return seconds + " s ago";
    if (seconds < 3600) return Math.round(seconds / 60) + " min ago";
    return new Date(iso).toISOString().replace("T", " ").slice(0, 19) + " UTC";
  }

  /* The team switcher submits itself when a team is chosen. */
  document.querySelectorAll("select[data-autosubmit]").forEach((select) => {
    select.addEventListener("change", () => select.form.submit());
    const button = select.form.querySelector(".js-hide");
    if (button) button.hidden = true;
  });

  /* Confirm destructive forms. */
  document.querySelectorAll("form[data-confirm]").forEach((form) => {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  });

  /* Copy buttons next to secrets shown once. */
  document.querySelectorAll("button[data-copy]").forEach((button) => {
    button.addEventListener("click", async () => {
      const input = document.getElementById(button.dataset.copy);
      input.select();
      try { await navigator.clipboard.writeText(input.value); button.textContent = "Copied"; }
      catch (e) { document.execCommand && document.execCommand("copy"); }
    });
  });

  /* Import: a chosen JSON file fills its textarea. */
  document.querySelectorAll("input[type=file][data-load-into]").forEach((input) => {
    input.addEventListener("change", async () => {
      const file = input.files && input.files[0];
      if (!file) return;
      document.getElementById(input.dataset.loadInto).value = await file.text();
    });
  });

  /* Agents: refresh the table every few seconds from GET /api/v1/agents. */
  const agentsTable = document.querySelector("table[data-live-agents]");
  if (agentsTable) {
    const tbody = agentsTable.querySelector("tbody");
    const status = document.querySelector("[data-live-status]");
    const render = (agents) => {
      const rows = agents.map((a) => {
        let label = a.agent_status;
        if (a.agent_status === "syncing" && a.sync_percent !== null) label += " " + Math.round(a.sync_percent) + "%";
        const devices = ((a.system_stats || {}).gpu_devices || []).filter((d) => d.device_type !== "cpu");
        const gpus = devices.length
          ? devices.map((d) => el("div", { class: "gpu" }, (d.device_name || "GPU") + " — " + size(d.vram_free) + " free of " + size(d.vram_total)))
          : [el("span", { class: "muted" }, "none reported")];
        const running = a.running_tasks.length
          ? a.running_tasks.flatMap((t) => [el("a", { href: "/tasks/" + t }, t.slice(0, 8)), " "])
          : [el("span", { class: "muted" }, "—")];
        return el("tr", {},
          el("th", { scope: "row" }, a.agent_id, el("div", { class: "muted small" }, a.tool + " " + (a.comfyui_version || ""))),
          el("td", {}, el("span", { class: "status status-" + a.agent_status }, label)),
          el("td", {}, ...a.agent_labels.flatMap((l) => [el("span", { class: "label" }, l), " "])),
          el("td", {}, ...gpus),
          el("td", {}, ...running),
          el("td", {}, el("time", { datetime: a.last_heartbeat || "" }, ago(a.last_heartbeat))));
      });
      if (!rows.length) rows.push(el("tr", { class: "empty" }, el("td", { colspan: "6" }, "No agent is connected.")));
      tbody.replaceChildren(...rows);
    };
    const poll = async () => {
      try {
        const response = await api("/agents?per_page=100");
        if (response.status === 401) { window.location.reload(); return; }
        if (!response.ok) throw new Error(await errorOf(response));
        render((await response.json()).agent_list);
        status.textContent = "";
        agentsTable.dataset.updated = String(Date.now());
      } catch (e) {
        status.textContent = "Could not refresh: " + e.message;
      }
    };
    poll();
    setInterval(poll, 3000);
  }

  /* Run form: file parameters upload through a signed link first. */
  const runForm = document.querySelector("form[data-run-form]");
  if (runForm) {
    const submit = runForm.querySelector("button[type=submit]");
    let uploading = 0;
    runForm.querySelectorAll("input[type=file][data-upload-for]").forEach((input) => {
      const target = runForm.querySelector("input[type=hidden][name='" + input.dataset.uploadFor + "']");
      const note = runForm.querySelector("[data-upload-status='" + input.dataset.uploadFor + "']");
      input.addEventListener("change", async () => {
        const file = input.files && input.files[0];
        target.value = "";
        if (!file) return;
        uploading++;
        submit.disabled = true;
        note.textContent = "Uploading " + file.name + "…";
        try {
          const presign = await api("/r/files/presign", {
            method: "POST",
            headers: { "Content-Type": "application/json" },
            body: JSON.stringify({ file_name: file.name, file_size: file.size, content_type: file.type || "application/octet-stream" }),
          });
          if (!presign.ok) throw new Error(await errorOf(presign));
          const link = await presign.json();
          const put = await fetch(link.upload_url, { method: "PUT", headers: link.upload_headers, body: file });
          if (!put.ok) throw new Error(await errorOf(put));
          target.value = link.file_key;
          note.textContent = "Uploaded " + file.name + " (" + size(file.size) + ").";
        } catch (e) {
          note.textContent = "Upload failed: " + e.message;
        } finally {
          uploading--;
          submit.disabled = uploading > 0;
        }
      });
    });
  }

  /* Task detail: live status, progress and log lines from the event stream (SSE). */
  const live = document.querySelector("[data-task][data-events]");
  if (live) follow(live, live.dataset.terminal === "true");

  function follow(section, replayOnly) {
    const statusEl = section.querySelector("[data-task-status]");
    const bar = section.querySelector("[data-task-progress]");
    const step = section.querySelector("[data-task-step]");
    const error = section.querySelector("[data-task-error]");
    const agent = section.querySelector("[data-task-agent]");
    const log = document.querySelector("[data-task-log]");
    const lines = [];
    const setStatus = (value) => {
      statusEl.textContent = value;
      statusEl.className = "status status-" + value;
      section.dataset.status = value;
    };
    const source = new EventSource(section.dataset.events);
    source.addEventListener("status", (event) => {
      const data = JSON.parse(event.data);
      if (data.status) setStatus(data.status);
      if (data.agent_id && agent) agent.textContent = data.agent_id;
    });
    source.addEventListener("progress", (event) => {
      const data = JSON.parse(event.data);
      if (typeof data.progress === "number") {
        const percent = Math.round(data.progress * 100);
        bar.value = percent;
        bar.textContent = percent + "%";
        section.dataset.progress = String(percent);
      }
      const parts = [];
      if (data.current_node) parts.push("node " + data.current_node);
      if (data.step_total) parts.push("step " + (data.step_current || 0) + "/" + data.step_total);
      if (typeof data.progress === "number") parts.push(Math.round(data.progress * 100) + "%");
      if (data.message) parts.push(data.message);
      step.textContent = parts.join(" · ");
    });
    source.addEventListener("log", (event) => {
      const data = JSON.parse(event.data);
      for (const line of data.lines || []) lines.push(line);
      log.textContent = lines.slice(-50).join("\n");
    });
    const end = (kind) => (event) => {
      const data = JSON.parse(event.data);
      source.close();
      setStatus(kind);
      if (kind === "completed") { bar.value = 100; bar.textContent = "100%"; }
      if (kind === "failed" && data.error) { error.textContent = data.error; error.hidden = false; }
      // The outputs gallery is drawn by the server: show it.
      if (!replayOnly) window.setTimeout(() => window.location.reload(), 300);
    };
    for (const kind of ["completed", "failed", "cancelled"]) source.addEventListener(kind, end(kind));
    source.addEventListener("error", () => {
      if (source.readyState === EventSource.CLOSED) step.textContent = "Live updates stopped; reload the page.";
    });
  }
})();
