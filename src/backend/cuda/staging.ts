/**
 * Host <-> device copies through page-locked staging memory: two halves used in turn, so that
 * filling one overlaps the DMA of the other (an event per half says when it is free again).
 * Allocated at first use.
 * @module
 */
import type { CudaContext } from "./driver.ts";

/** Bytes per staging half (a multiple of 4, so element chunks never split). */
export const STAGING_CHUNK_BYTES = 8 << 20;
/**
 * Writes up to this size go through a ring of small pinned slots and return without waiting for
 * the device (the bytes are copied at the call; the DMA runs in stream order): per-sequence
 * parameters and token counts written between steps must not stall the device.
 */
export const SMALL_WRITE_BYTES = 64 << 10;
/**
 * The ring's slots. An engine iteration writes up to a few hundred KiB (the decode slots' arrays
 * and block tables, a prefill's inputs) as chunks of SMALL_WRITE_BYTES: half the ring per
 * iteration reuses only slots whose copies ran before the previous launch, so no write waits.
 */
const SMALL_SLOTS = 32;
/** Writes up to this size go through the ring in chunks (larger ones wait for the device). */
export const ASYNC_WRITE_BYTES = (SMALL_SLOTS / 2) * SMALL_WRITE_BYTES;

/** Fills `n` bytes of pinned memory at `pinned` with the bytes at `offset` of the transfer. */
export type Fill = (pinned: bigint, offset: number, n: number) => void;

/** The staging buffers of one backend's stream. */
export class PinnedStaging {
  #ctx: CudaContext;
  #stream: bigint;
  #host: bigint[] = [];
  #events: bigint[] = [];
  #busy = [false, false];
  #small: { host: bigint; event: bigint; busy: boolean }[] = [];
  #next_small = 0;

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
   * Enqueues a copy of at most SMALL_WRITE_BYTES to device address `dst` behind the work already
   * enqueued, without waiting: `fill` writes the bytes into a pinned slot now (a slot is reused
   * once its previous copy has finished).
   */
  upload_small(dst: bigint, bytes: number, fill: Fill): void {
    if (bytes === 0) return;
    if (bytes > SMALL_WRITE_BYTES) throw new Error(`internal: upload_small of ${bytes} bytes`);
    if (this.#small.length < SMALL_SLOTS) {
      const host = this.#ctx.host_alloc(SMALL_WRITE_BYTES);
      try {
        this.#small.push({ host, event: this.#ctx.event_create(), busy: false });
      } catch (e) {
        this.#ctx.host_free(host);
        throw e;
      }
    }
    const slot = this.#small[this.#next_small];
    this.#next_small = (this.#next_small + 1) % SMALL_SLOTS;
    if (slot.busy) this.#ctx.event_sync(slot.event);
    fill(slot.host, 0, bytes);
    this.#ctx.memcpy_htod(dst, slot.host, bytes, this.#stream);
    this.#ctx.event_record(slot.event, this.#stream);
    slot.busy = true;
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
    for (const s of this.#small) {
      this.#ctx.event_destroy(s.event);
      this.#ctx.host_free(s.host);
    }
    this.#small = [];
    for (const e of this.#events) this.#ctx.event_destroy(e);
    for (const h of this.#host) this.#ctx.host_free(h);
    this.#events = [];
    this.#host = [];
  }
}
