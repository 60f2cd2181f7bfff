/**
 * The graph dictionary: one captured, instantiated CUDA graph per step key.
 * @module
 */
import type { CudaContext } from "./driver.ts";
import { run_all } from "../../util/cleanup.ts";

/** A captured step. */
export interface StepGraph {
  graph: bigint;
  exec: bigint;
}

/** Step graphs by key, owned by one backend. */
export class StepGraphs {
  #ctx: CudaContext;
  #graphs = new Map<string, StepGraph>();

  constructor(ctx: CudaContext) {
    this.#ctx = ctx;
  }

  /** The graph recorded for `key`, if any. */
  get(key: string): StepGraph | undefined {
    return this.#graphs.get(key);
  }

  /** Keeps a new graph under `key`. */
  add(key: string, g: StepGraph): void {
    if (this.#graphs.has(key)) throw new Error(`internal: a graph for step "${key}" already exists`);
    this.#graphs.set(key, g);
  }

  /** Number of graphs held. */
  count(): number {
    return this.#graphs.size;
  }

  /** Destroys every graph (executable and graph), all of them even when some fail; then throws the first failure. */
  clear(): void {
    const graphs = [...this.#graphs.values()];
    this.#graphs.clear();
    run_all(
      graphs.flatMap((
        g,
      ) => [() => this.#ctx.graph_exec_destroy(g.exec), () => this.#ctx.graph_destroy(g.graph)]),
    );
  }
}
