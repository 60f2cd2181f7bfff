/**
 * Joins the JSON of several `deno task bench` runs from one device call (each with a label that
 * becomes its engine-name suffix, e.g. the same engine with the fused decode on) and
 * torch_baseline.py's JSON lines into one JSON file and one throughput chart.
 *   deno run -A tests/bench/chart_runs.ts --out docs/x.json --svg docs/x.svg --title T \
 *     [--peer peers.jsonl] run.json[=suffix] ...
 * @module
 */
import { parseArgs } from "node:util";
import { render_chart, throughput_series } from "../../examples/bench_chart.ts";

const { values, positionals } = parseArgs({
  args: Deno.args,
  allowPositionals: true,
  options: {
    out: { type: "string" },
    svg: { type: "string" },
    title: { type: "string", default: "Decode throughput vs batch size" },
    peer: { type: "string" },
  },
});
type Row = { model: string; batch: number; engine: string; tok_s: number; error?: string };
const rows: Row[] = [];
let device = "unknown device";
for (const arg of positionals) {
  const [path, suffix] = arg.split("=");
  const run = JSON.parse(Deno.readTextFileSync(path)) as { device: string; rows: Row[] };
  device = run.device;
  for (const r of run.rows) rows.push({ ...r, engine: r.engine + (suffix ? `-${suffix}` : "") });
}
if (values.peer) {
  for (const line of Deno.readTextFileSync(values.peer).split("\n")) {
    if (!line.trimStart().startsWith("{")) continue; // torch_baseline.py ends with a table
    const r = JSON.parse(line);
    if (r.engine && r.tok_s) rows.push({ ...r, engine: `torch-${r.engine}` });
  }
}
if (values.out) Deno.writeTextFileSync(values.out, JSON.stringify({ device, rows }, null, 2) + "\n");
if (values.svg) {
  Deno.writeTextFileSync(values.svg, render_chart(throughput_series(rows), `${values.title} on ${device}`));
}
