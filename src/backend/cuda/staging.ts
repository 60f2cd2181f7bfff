/**
 * Host <-> device copies through page-locked staging memory: two halves used in turn, so that
 * filling one overlaps the DMA of the other (an event per half says when it is free again).
 * Allocated at first use.
 * @module
 */
import type { CudaContext } from "./driver.ts";

/** Bytes per staging half (a multiple of 4, so element chunks never split). */
export const STAGING_CHUNK_BYTES = 8 << 20;

/** Fills `n` bytes of pinned memory at `pinned` with the bytes at `offset` of the transfer. */
export type Fill = (pinned: bigint, offset: number, n: number) => void;

/** The staging buffers of one backend's stream. */
export class PinnedStaging {
  #ctx: CudaContext;
  #stream: bigint;
  #host: bigint[] = [];
  #events: bigint[] = [];
  #busy = [false, false];

  constructor(ctx: CudaContext, stream: bigint) {
    this.#ctx = ctx;
    this.#stream = stream;
  }

  #ensure(): void {
    if (this.#host.length === 2) return;
    while (this.#host.length < 2) this.#host.push(this.#ctx.host_alloc(STAGING_CHUNK_BYTES));
    while (this.#events.length < 2) this.#events.push(this.#ctx.event_create());
  }

  /**
   * Copies `bytes` to device address `dst`, chunk by chunk: `fill` writes each chunk into pinned
   * memory, then its DMA is enqueued. Returns after the stream has finished (all copies done).
   */
  upload(dst: bigint, bytes: number, fill: Fill): void {
    if (bytes === 0) return;
    this.#ensure();
    let slot = 0;
    for (let off = 0; off < bytes; off += STAGING_CHUNK_BYTES) {
      const n = Math.min(STAGING_CHUNK_BYTES, bytes - off);
      if (this.#busy[slot]) this.#ctx.event_sync(this.#events[slot]);
      fill(this.#host[slot], off, n);
      this.#ctx.memcpy_htod(dst + BigInt(off), this.#host[slot], n, this.#stream);
      this.#ctx.event_record(this.#events[slot], this.#stream);
      this.#busy[slot] = true;
      slot ^= 1;
    }
    this.#ctx.stream_sync(this.#stream);
    this.#busy = [false, false];
  }

  /**
   * Copies `bytes` from device address `src` to the host, after the work already enqueued:
   * `take` receives each chunk's pinned address, offset and size once it has arrived.
   */
  download(src: bigint, bytes: number, take: Fill): void {
    if (bytes === 0) {
      this.#ctx.stream_sync(this.#stream);
      return;
    }
    this.#ensure();
    for (let off = 0; off < bytes; off += STAGING_CHUNK_BYTES) {
      const n = Math.min(STAGING_CHUNK_BYTES, bytes - off);
      this.#ctx.memcpy_dtoh(this.#host[0], src + BigInt(off), n, this.#stream);
      this.#ctx.stream_sync(this.#stream);
      take(this.#host[0], off, n);
    }
  }

  /** Frees the pinned memory and events. */
  dispose(): void {
    for (const e of this.#events) this.#ctx.event_destroy(e);
    for (const h of this.#host) this.#ctx.host_free(h);
    this.#events = [];
    this.#host = [];
  }
}
