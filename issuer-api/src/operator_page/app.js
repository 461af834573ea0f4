// Renders /ops/state.json. Every value goes in through textContent, never as markup.
"use strict";

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

function clear(id) {
  const e = document.getElementById(id);
  e.replaceChildren();
  return e;
}

function row(...cells) {
  return el("tr", {}, ...cells.map((c) => el("td", {}, c)));
}

function timeline(issuers, now) {
  const box = clear("timeline");
  const t = (s) => Date.parse(s);
  const lo = Math.min(...issuers.map((i) => t(i.not_before)));
  const hi = Math.max(...issuers.map((i) => t(i.not_after)), now + 1);
  const pct = (x) => ((x - lo) / (hi - lo)) * 100;
  const table = el("table", {});
  for (const i of issuers) {
    const bar = el("div", { class: "bar" });
    const span = el("span", { class: i.state, title: `${i.not_before} – ${i.not_after}` });
    span.style.left = pct(t(i.not_before)) + "%";
    span.style.width = Math.max(pct(t(i.not_after)) - pct(t(i.not_before)), 0.5) + "%";
    const mark = el("i", { title: "now" });
    mark.style.left = pct(now) + "%";
    bar.append(span, mark);
    const valid = i.valid_certificates === null ? "" : ` (${i.valid_certificates} valid certificates)`;
    table.append(
      el("tr", { "data-issuer": i.id },
        el("td", {}, `${i.kind} ${i.id}`),
        el("td", {}, el("span", { class: "state-" + i.state }, i.state + valid)),
        el("td", { style: "width:55%" }, bar)),
    );
  }
  box.append(table);
}

function rotation(s) {
  const box = clear("rotation-body");
  if (s.gate) {
    const g = s.gate;
    box.append(
      el("p", { class: g.overdue ? "bad" : "warn", id: "gate" },
        `${g.step} of ${g.issuer} waits for the fleet: ${g.confirmed} of ${g.required} confirmations` +
          (g.overdue ? " — OVERDUE" : "")),
      el("p", { class: "muted" }, g.reason),
      el("p", {}, `due since ${g.due_at}`),
    );
  }
  if (s.windows.length) {
    const t = el("table", { id: "windows" }, el("tr", {}, el("th", {}, "rotation"), el("th", {}, "kind"), el("th", {}, "waiting for"), el("th", {}, "deadline")));
    for (const w of s.windows) t.append(row(w.rotation, w.kind, w.target, w.deadline));
    box.append(t);
  }
  const soaking = s.canary && s.canary.state === "soaking";
  if (soaking) box.append(el("p", { class: "warn" }, `Canary ${s.canary.rotation}: ${s.canary.successor} on trial (see Canary).`));
  if (!s.gate && !s.windows.length && !soaking) box.append(el("p", { class: "ok" }, "No rotation in progress."));
}

function fleet(s) {
  const f = s.fleet;
  const box = clear("fleet-body");
  const share = f.live ? f.confirmed / f.live : 1;
  const meter = el("div", { class: "meter" }, el("div", {}));
  meter.firstChild.style.width = share * 100 + "%";
  box.append(
    el("p", { id: "convergence" }, `${f.confirmed} of ${f.live} live workloads on bundle ${f.sequence}; ${f.gone} gone`),
    meter,
    el("p", {}, `handshakes reported: ${f.accepted} accepted, ` +
      Object.entries(f.refused).map(([r, n]) => `${n} refused (${r})`).join(", ")),
  );
  if (!f.warm) box.append(el("p", { class: "warn" }, "The fleet view is still warming up after a start."));
  if (f.behind.length) {
    box.append(el("p", {}, "Behind: " + f.behind.map((b) => `${b.workload} (bundle ${b.sequence})`).join(", ")));
  }
}

function canary(s) {
  const box = clear("canary-body");
  const c = s.canary;
  if (!c) {
    box.append(el("p", { class: "muted", id: "canary-state" }, "No canary yet ([rotation.canary] or rotate intermediate --canary-prefix)."));
    return;
  }
  const who = c.prefix ? `SPIFFE IDs under ${c.prefix}` + (c.fraction > 0 ? ` and ${c.fraction * 100} %` : "") : `${c.fraction * 100} % of workloads`;
  const cls = { soaking: "warn", completed: "ok", rolled_back: "bad" }[c.state] || "";
  const head = {
    soaking: `Canary ${c.rotation} soaking until ${c.soak_until}: ${c.successor} signs for ${who}`,
    completed: `Canary ${c.rotation} completed: ${c.successor} is active`,
    rolled_back: `Canary ${c.rotation} rolled back: ${c.previous} signs for everyone, ${c.successor} discarded`,
  }[c.state] || c.state;
  box.append(el("p", { class: cls, id: "canary-state", "data-state": c.state }, head));
  if (c.reason) box.append(el("p", { class: "muted" }, c.reason));
  const t = el("table", { id: "canary-signals" });
  t.append(
    row("live workloads serving the successor", String(c.serving_successor)),
    row("live workloads serving the previous", String(c.serving_previous)),
    row("handshakes reported since start", `${c.handshakes_accepted} accepted, ${c.handshakes_refused} refused`),
    row("canary certificates signed / failed", `${c.signed} / ${c.failed_renewals}`),
  );
  box.append(t);
}

function slis(s) {
  const m = s.slis;
  const t = clear("sli-table");
  const secs = (x) => (x === null || x === undefined ? "–" : `${Math.round(x * 100) / 100} s`);
  t.append(
    row("M1 rotations converged", `${m.m1_m3.converged} of ${m.m1_m3.converged + m.m1_m3.partial} (recent)`),
    row("M2 last time to converge", secs(m.m2_last_seconds)),
    row("M3 partial rotations", String(m.m1_m3.partial)),
    row("M4 fetch latency (agents, mean)", secs(m.m4_agent_mean_seconds)),
    row("M5 refused in rotation windows", m.m5.map((x) => `${x.rotation}: ${x.refused}`).join(", ") || "–"),
    row("M6 valid under retired issuers", m.m6.map((x) => `${x.issuer}: ${x.valid}`).join(", ") || "–"),
    row("M7 emergency rotations", m.m7.map((x) => `${x.rotation}: ${x.duration_seconds} s, ${x.outstanding} outstanding`).join(", ") || "–"),
    row("M8 audit", `${m.m8.audited} audited changes, ${m.m8.outside_chain} outside the chain`),
  );
}

function audit(s) {
  const t = clear("audit-table");
  t.append(el("tr", {}, ...["#", "at", "actor", "action", "target", "outcome", "detail"].map((h) => el("th", {}, h))));
  for (const a of s.audit) t.append(row(a.seq ?? "", a.at, a.actor, a.action, a.target, a.outcome, a.detail));
}

async function refresh() {
  try {
    const r = await fetch("/ops/state.json", { cache: "no-store" });
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    const s = await r.json();
    timeline(s.issuers, Date.parse(s.generated_at));
    rotation(s);
    fleet(s);
    canary(s);
    slis(s);
    audit(s);
    document.getElementById("updated").textContent = `bundle ${s.bundle_sequence} · updated ${s.generated_at}`;
    document.body.dataset.loaded = "true";
  } catch (e) {
    document.getElementById("updated").textContent = `cannot load the state: ${e.message}`;
  }
}

refresh();
setInterval(refresh, 2000);
