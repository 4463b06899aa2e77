// A small line chart in SVG (no library): values over the last minutes, its own
// scale from 0, the latest value written beside it for reading, not only looking.
const NS = "http://www.w3.org/2000/svg";

function svg(tag, attrs) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  return el;
}

// lineChart(label) -> {el, update(points: [{t, v}], text)}
export function lineChart(label, { width = 480, height = 140, color = "#1558c0" } = {}) {
  const el = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": label, class: "chart" });
  const title = svg("title", {});
  title.textContent = label;
  const grid = svg("g", { stroke: "#d8dde4", "stroke-width": 1 });
  const line = svg("polyline", { fill: "none", stroke: color, "stroke-width": 2, "stroke-linejoin": "round" });
  const top = svg("text", { x: 4, y: 12, "font-size": 11, fill: "#4f5a68" });
  el.append(title, grid, line, top);
  for (const f of [0, 0.5, 1]) grid.append(svg("line", { x1: 0, x2: width, y1: 2 + f * (height - 4), y2: 2 + f * (height - 4) }));
  return {
    el,
    update(points, text) {
      title.textContent = `${label}: ${text}`;
      el.setAttribute("aria-label", `${label}: ${text}`);
      if (points.length < 2) {
        line.setAttribute("points", "");
        return;
      }
      const t0 = points[0].t;
      const span = Math.max(1, points[points.length - 1].t - t0);
      const max = Math.max(1, ...points.map((p) => p.v));
      top.textContent = String(Math.round(max * 100) / 100);
      line.setAttribute("points", points.map((p) =>
        `${((p.t - t0) / span * width).toFixed(1)},${(height - 2 - p.v / max * (height - 16)).toFixed(1)}`).join(" "));
    },
  };
}
