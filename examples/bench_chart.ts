/**
 * A small SVG line chart, one line a series, both axes logarithmic: by default throughput (log10)
 * against batch size (log2); the serving bench draws latency against request rate.
 * @module
 */

/** One line of the chart: (batch, tok/s) points. */
export interface Series {
  name: string;
  points: [number, number][];
}

const COLORS = [
  "#1f77b4",
  "#d62728",
  "#2ca02c",
  "#ff7f0e",
  "#9467bd",
  "#8c564b",
  "#e377c2",
  "#7f7f7f",
  "#17becf",
];

function esc(s: string): string {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
}

/** One line per (model, engine) of bench rows: (batch, tok/s) points; rows with an error are left out. */
export function throughput_series(
  rows: readonly { model: string; engine: string; batch: number; tok_s: number; error?: string }[],
): Series[] {
  const series = new Map<string, Series>();
  for (const r of rows) {
    if (r.error || !r.tok_s) continue;
    const key = `${r.model} ${r.engine}`;
    if (!series.has(key)) series.set(key, { name: key, points: [] });
    series.get(key)!.points.push([r.batch, r.tok_s]);
  }
  return [...series.values()];
}

/** Axis labels of a chart. */
export interface ChartAxes {
  x_label?: string;
  y_label?: string;
}

/** Renders the series as an SVG document. */
export function render_chart(series: Series[], title: string, axes: ChartAxes = {}): string {
  const W = 900, H = 520, L = 80, R = 250, T = 50, Bm = 60;
  const pts = series.flatMap((s) => s.points);
  if (pts.length === 0) {
    return `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="80"><text x="10" y="40">${
      esc(title)
    }: no data</text></svg>`;
  }
  const xs = pts.map((p) => Math.log2(p[0])), ys = pts.map((p) => Math.log10(p[1]));
  const x0 = Math.min(...xs), x1 = Math.max(...xs, x0 + 1);
  const y0 = Math.floor(Math.min(...ys)), y1 = Math.ceil(Math.max(...ys, y0 + 1));
  const px = (b: number) => L + (Math.log2(b) - x0) / (x1 - x0) * (W - L - R);
  const py = (v: number) => H - Bm - (Math.log10(v) - y0) / (y1 - y0) * (H - T - Bm);
  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${W / 2}" y="24" text-anchor="middle" font-size="14">${esc(title)}</text>`,
  ];
  for (let e = y0; e <= y1; e++) {
    for (const m of [1, 2, 5]) {
      const v = m * 10 ** e;
      if (Math.log10(v) > y1) continue;
      const y = py(v);
      out.push(`<line x1="${L}" x2="${W - R}" y1="${y}" y2="${y}" stroke="#eee"/>`);
      out.push(`<text x="${L - 6}" y="${y + 4}" text-anchor="end">${v >= 1000 ? `${v / 1000}k` : v}</text>`);
    }
  }
  for (let e = Math.ceil(x0); e <= x1; e++) {
    const x = px(2 ** e);
    out.push(`<line x1="${x}" x2="${x}" y1="${T}" y2="${H - Bm}" stroke="#eee"/>`);
    out.push(`<text x="${x}" y="${H - Bm + 18}" text-anchor="middle">${2 ** e}</text>`);
  }
  out.push(
    `<text x="${(L + W - R) / 2}" y="${H - 18}" text-anchor="middle">${
      esc(axes.x_label ?? "batch size")
    }</text>`,
  );
  out.push(
    `<text x="18" y="${(T + H - Bm) / 2}" text-anchor="middle" transform="rotate(-90 18 ${
      (T + H - Bm) / 2
    })">${esc(axes.y_label ?? "decode tokens/s")}</text>`,
  );
  series.forEach((s, i) => {
    const c = COLORS[i % COLORS.length];
    const p = [...s.points].sort((a, b) => a[0] - b[0]);
    const dash = s.name.includes("torch") ? ` stroke-dasharray="6 4"` : "";
    out.push(
      `<polyline fill="none" stroke="${c}" stroke-width="2"${dash} points="${
        p.map(([b, v]) => `${px(b).toFixed(1)},${py(v).toFixed(1)}`).join(" ")
      }"/>`,
    );
    for (const [b, v] of p) {
      out.push(`<circle cx="${px(b).toFixed(1)}" cy="${py(v).toFixed(1)}" r="3" fill="${c}"/>`);
    }
    const ly = T + 10 + i * 18;
    out.push(
      `<line x1="${W - R + 15}" x2="${
        W - R + 40
      }" y1="${ly}" y2="${ly}" stroke="${c}" stroke-width="2"${dash}/>`,
    );
    out.push(`<text x="${W - R + 46}" y="${ly + 4}">${esc(s.name)}</text>`);
  });
  out.push("</svg>");
  return out.join("\n");
}
