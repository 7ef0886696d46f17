import HTTPTypes
import Hummingbird
import NIOCore

/// The dashboard: each change's progress per segment, live from the status stream.
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
        <html><head><meta charset="utf-8"><title>changelab — distribution</title>
        <link rel="stylesheet" href="/dashboard.css"></head>
        <body><h1>changelab distribution</h1>
        <form id="login"><label>Operator token <input id="token" type="password" autocomplete="off"></label>
        <button type="submit">Log in</button> <span id="login-status"></span></form>
        <div id="changes"></div>
        <script src="/dashboard.js"></script></body></html>
        """

    static let style = """
        body { font: 14px system-ui, sans-serif; margin: 2em; color: #222; }
        h2 { margin-top: 1.5em; } table { border-collapse: collapse; }
        td, th { padding: 2px 10px; text-align: right; border-bottom: 1px solid #ddd; }
        td:first-child, th:first-child { text-align: left; }
        .bar { display: inline-block; width: 160px; height: 10px; background: #eee; vertical-align: middle; }
        .bar span { display: block; height: 100%; background: #3a7; }
        .halted { color: #b00; font-weight: bold; }
        """

    static let script = #"""
        "use strict";
        // Every value from the core becomes a text node: no markup is ever parsed from data.
        function el(tag, attrs, ...children) {
          const node = document.createElement(tag);
          for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
          for (const child of children) {
            node.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
          }
          return node;
        }
        function bar(n, d) {
          const p = d ? Math.round(100 * n / d) : 0;
          const fill = el("span");
          fill.style.width = p + "%";
          return [el("span", {class: "bar"}, fill), " " + p + "%"];
        }
        function render(reports) {
          const root = document.getElementById("changes");
          root.replaceChildren();
          if (!reports.length) { root.appendChild(document.createTextNode("no changes promoted yet")); return; }
          for (const r of reports) {
            const state = r.halted ? el("span", {class: "halted"}, "halted: " + r.halted)
              : r.rollbackRequested ? "rolling back"
              : r.activationRequested ? (r.total.activated === r.total.targets ? "activated" : "activating")
              : (r.total.verified === r.total.targets ? "seeded" : "seeding");
            root.appendChild(el("h2", {}, r.change + " ", el("small", {}, "(" + r.release + ", ", state, ")")));
            const table = el("table", {}, el("tr", {}, ...["segment", "targets", "seeded", "verified", "activated",
              "failed", "offline", "sent"].map(h => el("th", {}, h))));
            for (const s of r.segments.concat([r.total])) {
              table.appendChild(el("tr", {}, el("td", {}, s.segment), el("td", {}, s.targets),
                el("td", {}, ...bar(s.seeded, s.targets)), el("td", {}, s.verified),
                el("td", {}, ...bar(s.activated, s.targets)), el("td", {}, s.failed), el("td", {}, s.offline),
                el("td", {}, (s.bytesSent / 1048576).toFixed(1) + " MiB")));
            }
            root.appendChild(table);
          }
        }
        function listen() {
          const events = new EventSource("/v1/admin/events");
          events.addEventListener("status", e => render(JSON.parse(e.data)));
          events.onerror = () => { document.getElementById("login-status").textContent = "disconnected; retrying…"; };
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
          listen();
        });
        fetch("/v1/admin/changes", {credentials: "same-origin"}).then(r => r.ok ? r.json() : null).then(reports => {
          if (reports) { render(reports); listen(); }
        });
        """#
}
