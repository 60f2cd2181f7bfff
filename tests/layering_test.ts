/**
 * Imports point down: mod.ts -> load -> server -> engine -> model (with loaders and tokenizers
 * beside it) -> backend -> native -> util. No module imports from a layer above its own.
 */
import { assert } from "./helpers/assert.ts";

const root = decodeURIComponent(new URL("../", import.meta.url).pathname);

/** The layer of a source path under src/ (higher may import lower, never the reverse). */
export function layer(path: string): number {
  const rel = path.slice(path.indexOf("src/") + 4);
  const top = rel.split("/")[0];
  const layers: Record<string, number> = {
    util: 0,
    native: 1,
    backend: 2,
    model: 3,
    loaders: 4,
    tokenizer: 4,
    engine: 5,
    server: 6,
    "load.ts": 7,
  };
  const l = layers[top];
  if (l === undefined) throw new Error(`${path}: no layer for src/${top}: add it to tests/layering_test.ts`);
  return l;
}

function sources(dir: string, out: string[] = []): string[] {
  for (const e of Deno.readDirSync(dir)) {
    const p = `${dir}/${e.name}`;
    if (e.isDirectory) sources(p, out);
    else if (e.name.endsWith(".ts")) out.push(p);
  }
  return out;
}

/** The relative module specifiers a source imports or re-exports (static and literal dynamic). */
function imports(text: string): string[] {
  const out: string[] = [];
  for (const m of text.matchAll(/(?:^|\n)\s*(?:import|export)\b[^;]*?\bfrom\s+"(\.[^"]+)"/g)) out.push(m[1]);
  for (const m of text.matchAll(/import\(\s*"(\.[^"]+)"\s*\)|typeof import\("(\.[^"]+)"\)/g)) {
    out.push(m[1] ?? m[2]);
  }
  return out;
}

Deno.test("layering: no module under src/ imports from a layer above its own", () => {
  const files = sources(`${root}src`);
  assert(files.length > 50, `only ${files.length} sources found`);
  const bad: string[] = [];
  for (const f of files) {
    const from = layer(f);
    for (const spec of imports(Deno.readTextFileSync(f))) {
      const target = new URL(spec, `file://${f}`).pathname;
      if (layer(target) > from) bad.push(`${f.slice(root.length)} imports ${target.slice(root.length)}`);
    }
  }
  assert(bad.length === 0, `upward imports:\n${bad.join("\n")}`);
});

Deno.test("layering: the checker sees an upward import", () => {
  assert(layer(`${root}src/model/gpt.ts`) < layer(`${root}src/engine/engine.ts`));
  assert(imports(`import type { X } from "../engine/engine.ts";\nexport { y } from "./y.ts";`).length === 2);
});
