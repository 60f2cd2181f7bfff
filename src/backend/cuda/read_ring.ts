/**
 * Asynchronous device-to-host reads into a ring of pinned slots, each with an event, so the
 * engine can fetch sampled tokens without waiting on every step. A slot reused while its read is
 * still unclaimed first moves that read's bytes into the read's own array.
 * @module
 */
import type { PendingRead } from "../backend.ts";
import type { CudaContext } from "./driver.ts";

const SLOTS = 8;
/**
 * The smallest slot (16384 int32: 16 decode steps of 1024 sequences). Growing a slot later frees
 * its old buffer only at dispose: cuMemFreeHost would wait for all the device's work.
 */
const MIN_SLOT_BYTES = 64 << 10;

interface Slot {
  host: bigint;
  capacity: number;
  event: bigint;
  pending: AsyncRead | null;
}

class AsyncRead implements PendingRead {
  #ring: ReadRing;
  #slot: Slot | null;
  #bytes: number;
  #data: Uint8Array | null = null;

  constructor(ring: ReadRing, slot: Slot, bytes: number) {
    this.#ring = ring;
    this.#slot = slot;
    this.#bytes = bytes;
  }

  done(): boolean {
    if (this.#data || !this.#slot) return true;
    return this.#ring.ctx.event_done(this.#slot.event);
  }

  wait(): Uint8Array {
    if (this.#data) return this.#data;
    const slot = this.#slot;
    if (!slot) throw new Error("read_async: the backend was disposed before this read was claimed");
    this.#ring.ctx.event_sync(slot.event);
    const out = new Uint8Array(this.#bytes);
    if (this.#bytes > 0) this.#ring.ctx.lib.symbols.ng_host_read(slot.host, out, BigInt(this.#bytes));
    this.#data = out;
    this.#slot = null;
    slot.pending = null;
    return out;
  }

  /** Drops the slot without reading (dispose). */
  orphan(): void {
    this.#slot = null;
  }
}

/** The pinned ring of one backend's stream. */
export class ReadRing {
  /** The context the slots live in. */
  readonly ctx: CudaContext;
  #stream: bigint;
  #slots: Slot[] = [];
  #next = 0;
  /** Pinned buffers of slots that grew, freed at dispose. */
  #retired: bigint[] = [];

  constructor(ctx: CudaContext, stream: bigint) {
    this.ctx = ctx;
    this.#stream = stream;
  }

  /** Enqueues a copy of `bytes` from device address `src` behind the work already enqueued. */
  read(src: bigint, bytes: number): PendingRead {
    if (this.#slots.length < SLOTS) {
      this.#slots.push({ host: 0n, capacity: 0, event: this.ctx.event_create(), pending: null });
    }
    const slot = this.#slots[this.#next];
    this.#next = (this.#next + 1) % SLOTS;
    slot.pending?.wait();
    if (bytes > slot.capacity) {
      if (slot.host) this.#retired.push(slot.host);
      slot.host = 0n;
      slot.capacity = 0;
      let cap = MIN_SLOT_BYTES;
      while (cap < bytes) cap *= 2;
      slot.host = this.ctx.host_alloc(cap);
      slot.capacity = cap;
    }
    if (bytes > 0) this.ctx.memcpy_dtoh(slot.host, src, bytes, this.#stream);
    this.ctx.event_record(slot.event, this.#stream);
    const r = new AsyncRead(this, slot, bytes);
    slot.pending = r;
    return r;
  }

  /** Frees the slots; unclaimed reads fail on wait(). */
  dispose(): void {
    for (const s of this.#slots) {
      s.pending?.orphan();
      this.ctx.event_destroy(s.event);
      if (s.host) this.ctx.host_free(s.host);
    }
    this.#slots = [];
    for (const h of this.#retired) this.ctx.host_free(h);
    this.#retired = [];
  }
}
