/// The dashboard page: each change's progress per segment, live from the status stream.
enum Dashboard {
    static let html = """
        <!doctype html>
        <html><head><meta charset="utf-8"><title>changelab — distribution</title>
        <style>
        body { font: 14px system-ui, sans-serif; margin: 2em; color: #222; }
        h2 { margin-top: 1.5em; } table { border-collapse: collapse; }
        td, th { padding: 2px 10px; text-align: right; border-bottom: 1px solid #ddd; }
        td:first-child, th:first-child { text-align: left; }
        .bar { display: inline-block; width: 160px; height: 10px; background: #eee; vertical-align: middle; }
        .bar span { display: block; height: 100%; background: #3a7; }
        .halted { color: #b00; font-weight: bold; }
        </style></head>
        <body><h1>changelab distribution</h1><div id="changes">connecting…</div>
        <script>
        const token = new URLSearchParams(location.search).get("token") || "";
        function bar(n, d) { const p = d ? Math.round(100 * n / d) : 0;
          return `<span class="bar"><span style="width:${p}%"></span></span> ${p}%`; }
        function render(reports) {
          const root = document.getElementById("changes");
          if (!reports.length) { root.textContent = "no changes promoted yet"; return; }
          root.innerHTML = reports.map(r => {
            const state = r.halted ? `<span class="halted">halted: ${r.halted}</span>`
              : r.rollbackRequested ? "rolling back"
              : r.activationRequested ? (r.total.activated === r.total.targets ? "activated" : "activating")
              : (r.total.verified === r.total.targets ? "seeded" : "seeding");
            const rows = r.segments.concat([r.total]).map(s => `<tr><td>${s.segment}</td><td>${s.targets}</td>
              <td>${bar(s.seeded, s.targets)}</td><td>${s.verified}</td><td>${bar(s.activated, s.targets)}</td>
              <td>${s.failed}</td><td>${s.offline}</td><td>${(s.bytesSent / 1048576).toFixed(1)} MiB</td></tr>`).join("");
            return `<h2>${r.change} <small>(${r.release}, ${state})</small></h2><table>
              <tr><th>segment</th><th>targets</th><th>seeded</th><th>verified</th><th>activated</th>
              <th>failed</th><th>offline</th><th>sent</th></tr>${rows}</table>`;
          }).join("");
        }
        const events = new EventSource("/v1/admin/events?token=" + encodeURIComponent(token));
        events.addEventListener("status", e => render(JSON.parse(e.data)));
        events.onerror = () => { document.getElementById("changes").textContent = "disconnected; retrying…"; };
        </script></body></html>
        """
}
