import HTTPTypes
import Hummingbird
import NIOCore

/// The operators' console: the changes with their delivery phase and what blocks each, the
/// evidence grid (baseline × lane) behind each release approval, the approvals, seeding and
/// activation per segment, the chase list with reasons, and the agents with their last
/// check-in — from `GET /v1/admin/console`, refreshed on every event of the status stream.
///
/// Nothing an agent or operator typed is ever parsed as markup: the script builds the page
/// from elements and text nodes only, and the Content-Security-Policy allows no inline
/// script or style, so a stored `<img onerror=…>` stays text. The operator logs in with
/// their token once (POST /v1/login); the session is an HttpOnly, SameSite=Strict cookie.
enum Dashboard {
    static let contentSecurityPolicy =
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
        + "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

    static func response(_ text: String, type: String) -> Response {
        Response(
            status: .ok,
            headers: [
                .contentType: type, .contentSecurityPolicy: contentSecurityPolicy, .xContentTypeOptions: "nosniff",
                .cacheControl: "no-store", .init("Referrer-Policy")!: "no-referrer",
                .init("X-Frame-Options")!: "DENY",
            ],
            body: .init(byteBuffer: ByteBuffer(string: text)))
    }

    static let html = """
        <!doctype html>
        <html><head><meta charset="utf-8"><title>changelab — operators' console</title>
        <link rel="stylesheet" href="/dashboard.css"></head>
        <body><h1>changelab operators' console</h1>
        <form id="login"><label>Operator token <input id="token" type="password" autocomplete="off"></label>
        <button type="submit">Log in</button> <span id="login-status"></span></form>
        <main id="console"><section id="changes"></section><section id="agents"></section></main>
        <p id="updated"></p>
        <script src="/dashboard.js"></script></body></html>
        """

    static let style = """
        body { font: 14px system-ui, sans-serif; margin: 2em; color: #222; }
        h2 { margin-top: 1.5em; } h3 { margin: 1.5em 0 0.3em; } h4 { margin: 0.8em 0 0.2em; }
        table { border-collapse: collapse; margin-bottom: 0.5em; }
        td, th { padding: 2px 10px; text-align: left; border-bottom: 1px solid #ddd; vertical-align: top; }
        .change { border-left: 4px solid #ccc; padding-left: 1em; margin-bottom: 2em; }
        .phase { font-weight: bold; } .ok { color: #070; } .bad, .halted { color: #b00; font-weight: bold; }
        .blockers li { color: #b00; }
        td.green { background: #dfd; } td.red { background: #fdd; } td.missing { background: #eee; color: #777; }
        .unverified { color: #b00; }
        .bar { display: inline-block; width: 120px; height: 10px; background: #eee; vertical-align: middle; }
        .bar span { display: block; height: 100%; background: #3a7; }
        """

    static let script = #"""
        "use strict";
        // Every value from the core becomes a text node: no markup is ever parsed from data.
        function el(tag, attrs, ...children) {
          const node = document.createElement(tag);
          for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
          for (const child of children) {
            node.appendChild(child instanceof Node ? child : document.createTextNode(str(child)));
          }
          return node;
        }
        function str(v) { return v === null || v === undefined ? "" : String(v); }
        function list(v) { return Array.isArray(v) ? v : []; }
        function table(headers, rows) {
          const t = el("table", {}, el("tr", {}, ...headers.map(h => el("th", {}, h))));
          for (const row of rows) t.appendChild(el("tr", {}, ...row.map(c => c instanceof Node && c.tagName === "TD" ? c : el("td", {}, c))));
          return t;
        }
        function bar(n, d) {
          const p = d ? Math.round(100 * n / d) : 0;
          const fill = el("span");
          fill.style.width = p + "%";
          return el("span", {}, el("span", {class: "bar"}, fill), " " + n + "/" + d);
        }
        function ago(iso) {
          const s = Math.round((Date.now() - Date.parse(iso)) / 1000);
          if (!isFinite(s)) return "";
          return s < 120 ? s + " s ago" : s < 7200 ? Math.round(s / 60) + " min ago" : Math.round(s / 3600) + " h ago";
        }
        function renderChange(c) {
          const box = el("section", {class: "change"});
          box.appendChild(el("h3", {}, str(c.change) + " ", el("small", {},
            str(c.package) + " " + str(c.version) + " · release " + str(c.release) + " · " + str(c.digest).slice(0, 19) + "…")));
          box.appendChild(el("p", {}, "delivery: ", el("span", {class: c.phase === "halted" ? "phase halted" : "phase"}, c.phase),
            " · approval: ", c.releaseApproved ? el("span", {class: "ok"}, "release approved") : el("span", {class: "bad"}, "not release-approved"),
            " · next: " + str(c.nextStep) + " · targets: " + str(c.query) + " · rings: " + str(c.rings)));
          const blockers = list(c.blockers);
          box.appendChild(blockers.length
            ? el("div", {}, el("h4", {}, "Blocks the next step"), el("ul", {class: "blockers"}, ...blockers.map(b => el("li", {}, b))))
            : el("p", {class: "ok"}, "nothing blocks the next step"));

          const ev = c.evidence || {};
          const lanes = list(ev.lanes), required = list(ev.requiredLanes);
          box.appendChild(el("h4", {}, "Evidence (baseline × lane)"));
          if (list(ev.rows).length) {
            box.appendChild(table(["baseline", "targets"].concat(lanes.map(l => required.includes(l) ? l + " (required)" : l)),
              list(ev.rows).map(r => [r.baseline, r.targets].concat(list(r.cells).map(cell =>
                el("td", {class: cell.green ? "green" : cell.verdict === "missing" ? "missing" : "red"},
                  cell.verdict + (cell.tested ? " (" + cell.tested + ")" : "")))))));
          } else {
            box.appendChild(el("p", {}, "no verified evidence and no target baselines"));
          }
          for (const st of list(ev.statements)) {
            box.appendChild(st.verified
              ? el("p", {}, "run " + str(st.run) + ": verified lab evidence, " + str(st.cells) + " cell(s), "
                  + (list(st.shownTo).length ? "shown to " + list(st.shownTo).join(", ") : "named by no counted approval"))
              : el("p", {class: "unverified"}, "UNVERIFIED evidence claiming run " + str(st.run) + ": " + str(st.problem)));
          }

          const approvals = list(c.approvals);
          box.appendChild(el("h4", {}, "Approvals"));
          box.appendChild(approvals.length
            ? table(["signer", "role", "stage", "decision", "counts", "signed", "note"], approvals.map(a => [
                a.verified ? a.signer : el("span", {class: "unverified"}, a.signer + " (unverified)"),
                str(a.role), str(a.stage), str(a.decision), a.counts ? "yes" : "no", str(a.signedAt),
                str(a.problem || a.comment)]))
            : el("p", {}, "no approvals"));

          box.appendChild(el("h4", {}, "Seeding and activation per segment"));
          box.appendChild(table(["segment", "targets", "seeded", "verified", "activated", "failed", "offline", "sent"],
            list(c.segments).concat(c.total ? [c.total] : []).map(s => [s.segment, s.targets, bar(s.seeded, s.targets),
              s.verified, bar(s.activated, s.targets), s.failed, s.offline, (s.bytesSent / 1048576).toFixed(1) + " MiB"])));

          const chase = list(c.chase);
          box.appendChild(el("h4", {}, "Chase list (" + str(c.chaseTotal) + ")"));
          box.appendChild(chase.length
            ? table(["target", "segment", "site", "phase", "reason", "detail", "attempts", "last seen"], chase.map(e => [
                e.name, e.segment, e.site, e.phase, e.reason + (e.gaveUp ? " (gave up)" : ""), e.detail,
                "seed " + e.seedAttempts + ", activate " + e.activationAttempts, ago(e.lastSeen)]))
            : el("p", {}, "nothing to chase"));
          return box;
        }
        function render(view) {
          const changes = document.getElementById("changes");
          const changeList = list(view.changes);
          changes.replaceChildren(el("h2", {}, "Changes (" + changeList.length + " of " + str(view.changesTotal) + ")"));
          if (!changeList.length) changes.appendChild(el("p", {}, "no changes promoted yet"));
          for (const c of changeList) changes.appendChild(renderChange(c));
          const agents = list(view.agents);
          document.getElementById("agents").replaceChildren(
            el("h2", {}, "Agents (" + agents.length + " of " + str(view.agentsTotal) + ")"),
            table(["agent", "segment", "baseline", "site", "state", "last check-in", "last refusal"], agents.map(a => [
              a.name, a.segment, str(a.baseline), str(a.site),
              a.revoked ? "revoked" : a.online ? "online" : el("span", {class: "bad"}, "offline"),
              ago(a.lastSeen) + " (" + str(a.lastSeen) + ")", str(a.lastRefusal)])));
          document.getElementById("updated").textContent = "updated " + str(view.generatedAt);
        }
        let pending = false;
        async function refresh() {
          if (pending) return false;
          pending = true;
          try {
            const reply = await fetch("/v1/admin/console", {credentials: "same-origin"});
            if (!reply.ok) return false;
            render(await reply.json());
            return true;
          } catch (error) {
            document.getElementById("updated").textContent = "the console could not be read: " + error;
            return false;
          } finally { pending = false; }
        }
        let events = null;
        function listen() {
          if (events) return;
          events = new EventSource("/v1/admin/events");
          events.addEventListener("status", () => { refresh(); });
          events.onerror = () => { document.getElementById("login-status").textContent = "disconnected; retrying…"; };
          // Check-ins change no status: the agents' last check-in is refreshed every 30 s.
          setInterval(refresh, 30000);
        }
        document.getElementById("login").addEventListener("submit", async e => {
          e.preventDefault();
          const status = document.getElementById("login-status");
          const reply = await fetch("/v1/login", {method: "POST", credentials: "same-origin",
            headers: {"Content-Type": "application/json"},
            body: JSON.stringify({token: document.getElementById("token").value})});
          document.getElementById("token").value = "";
          if (!reply.ok) { status.textContent = "login refused"; return; }
          const who = await reply.json();
          status.textContent = "logged in as " + who.operator + " (" + who.role + ")";
          if (await refresh()) listen();
        });
        refresh().then(ok => { if (ok) listen(); });
        """#
}
