// The service map: /api/graph.json drawn with cytoscape.js (vendored, no CDN), every
// namespace at once (one box per namespace), refreshed every 2 seconds. A token, when
// the server needs one, is read from the page's #token=... and sent as a bearer token.
(function () {
  "use strict";
  var token = (location.hash.match(/token=([^&]+)/) || [])[1];
  var cy = cytoscape({
    container: document.getElementById("map"),
    wheelSensitivity: 0.3,
    style: [
      { selector: "node", style: { "label": "data(label)", "font-size": 11,
        "background-color": "#4a7bd0", "text-valign": "bottom", "text-margin-y": 4 } },
      { selector: "node[kind = 'external']", style: { "background-color": "#e08a2e",
        "shape": "round-rectangle" } },
      { selector: "node[kind = 'service']", style: { "shape": "hexagon",
        "background-color": "#3a9e6b" } },
      { selector: ":parent", style: { "background-opacity": 0.06, "label": "data(label)",
        "text-valign": "top", "border-color": "#bbb", "shape": "round-rectangle" } },
      { selector: "edge", style: { "curve-style": "bezier", "target-arrow-shape": "triangle",
        "width": "data(width)", "line-color": "data(color)", "target-arrow-color": "data(color)",
        "label": "data(label)", "font-size": 9, "text-rotation": "autorotate",
        "color": "#555" } }
    ]
  });
  var shape = "";

  function params() {
    var q = new URLSearchParams();
    ["stats", "namespace", "include", "exclude"].forEach(function (name) {
      var v = document.getElementById(name).value.trim();
      if (v) { q.set(name === "stats" ? "stats-type" : name, v); }
    });
    return q.toString();
  }

  function item(list, text, failed) {
    var li = document.createElement("li");
    li.textContent = text;
    if (failed) { li.style.color = "#d33"; }
    list.appendChild(li);
  }

  function draw(graph) {
    var elements = [], parents = {};
    graph.nodes.forEach(function (n) {
      var ns = n.detail__namespace;
      if (ns && !parents[ns]) {
        parents[ns] = true;
        elements.push({ data: { id: "ns:" + ns, label: ns } });
      }
      elements.push({ data: { id: n.id, label: n.title, kind: n.detail__kind,
                              parent: ns ? "ns:" + ns : undefined } });
    });
    graph.edges.forEach(function (e) {
      var bytes = e.detail__bytes_sent + e.detail__bytes_received;
      elements.push({ data: { id: e.id, source: e.source, target: e.target,
        label: ":" + e.detail__port + " " + e.mainStat,
        color: e.detail__failed > 0 || e.detail__dropped > 0 ? "#d33" : "#999",
        width: 1 + Math.min(8, Math.log10(1 + bytes)) } });
    });
    var next = elements.map(function (el) { return el.data.id; }).sort().join("|");
    cy.batch(function () {
      if (next !== shape) { cy.elements().remove(); cy.add(elements); }
      else { elements.forEach(function (el) { cy.getElementById(el.data.id).data(el.data); }); }
    });
    if (next !== shape) {
      shape = next;
      cy.layout({ name: "cose", animate: false, nodeDimensionsIncludeLabels: true }).run();
    }
    var nodes = document.getElementById("nodes"), edges = document.getElementById("edges");
    nodes.textContent = ""; edges.textContent = "";
    graph.nodes.forEach(function (n) { item(nodes, n.title + " (" + n.subTitle + ")"); });
    graph.edges.forEach(function (e) {
      item(edges, e.source + " \u2192 " + e.target + ":" + e.detail__port + " " +
           e.mainStat + ", " + e.secondaryStat +
           (e.detail__dropped > 0 ? ", " + e.detail__dropped + " dropped" : ""),
           e.detail__failed > 0 || e.detail__dropped > 0);
    });
    document.getElementById("status").textContent = graph.nodes.length + " nodes, " +
      graph.edges.length + " edges, " + new Date().toLocaleTimeString();
    document.body.setAttribute("data-loaded", "yes");
  }

  function refresh() {
    var headers = token ? { "Authorization": "Bearer " + token } : {};
    fetch("api/graph.json?" + params(), { headers: headers })
      .then(function (r) {
        if (!r.ok) { throw new Error("HTTP " + r.status); }
        return r.json();
      })
      .then(draw)
      .catch(function (err) {
        document.getElementById("status").textContent = "error: " + err.message;
      });
  }
  ["stats", "namespace", "include", "exclude"].forEach(function (name) {
    document.getElementById(name).addEventListener("change", refresh);
  });
  refresh();
  setInterval(refresh, 2000);
})();
