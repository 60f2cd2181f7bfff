//! Streams and events.
const drv = @import("driver.zig");

/// CU_STREAM_NON_BLOCKING: no implicit synchronisation with the legacy default stream.
const CU_STREAM_NON_BLOCKING: c_uint = 1;

/// Creates a non-blocking stream; its handle goes into out[0].
export fn ng_cuda_stream_create(ctx: u64, out: *u64) i32 {
    const s = drv.bind(ctx);
    if (s != 0) return s;
    var st: drv.Handle = null;
    const r = drv.api().?.cuStreamCreate(&st, CU_STREAM_NON_BLOCKING);
    if (r != 0) return drv.fail(r, "cuStreamCreate");
    out.* = drv.u(st);
    return 0;
}

/// Destroys a stream from ng_cuda_stream_create.
export fn ng_cuda_stream_destroy(ctx: u64, stream: u64) i32 {
    const s = drv.bind(ctx);
    if (s != 0) return s;
    const r = drv.api().?.cuStreamDestroy_v2(drv.h(stream));
    if (r != 0) return drv.fail(r, "cuStreamDestroy_v2");
    return 0;
}

/// Waits until all work enqueued on `stream` has finished.
export fn ng_cuda_stream_sync(ctx: u64, stream: u64) i32 {
    const s = drv.bind(ctx);
    if (s != 0) return s;
    const r = drv.api().?.cuStreamSynchronize(drv.h(stream));
    if (r != 0) return drv.fail(r, "cuStreamSynchronize");
    return 0;
}

/// Creates an event with CUevent_flags `flags` (2 = CU_EVENT_DISABLE_TIMING); handle into out[0].
export fn ng_cuda_event_create(ctx: u64, flags: u32, out: *u64) i32 {
    const s = drv.bind(ctx);
    if (s != 0) return s;
    var ev: drv.Handle = null;
    const r = drv.api().?.cuEventCreate(&ev, flags);
    if (r != 0) return drv.fail(r, "cuEventCreate");
    out.* = drv.u(ev);
    return 0;
}

/// Destroys an event from ng_cuda_event_create.
export fn ng_cuda_event_destroy(ctx: u64, event: u64) i32 {
    const s = drv.bind(ctx);
    if (s != 0) return s;
    const r = drv.api().?.cuEventDestroy_v2(drv.h(event));
    if (r != 0) return drv.fail(r, "cuEventDestroy_v2");
    return 0;
}

/// Records `event` on `stream`.
export fn ng_cuda_event_record(ctx: u64, event: u64, stream: u64) i32 {
    const s = drv.bind(ctx);
    if (s != 0) return s;
    const r = drv.api().?.cuEventRecord(drv.h(event), drv.h(stream));
    if (r != 0) return drv.fail(r, "cuEventRecord");
    return 0;
}

/// Writes 1 into out[0] when the work before `event` is done, 0 when not yet (never blocks).
export fn ng_cuda_event_query(ctx: u64, event: u64, out: *i32) i32 {
    const s = drv.bind(ctx);
    if (s != 0) return s;
    const r = drv.api().?.cuEventQuery(drv.h(event));
    if (r == drv.CUDA_ERROR_NOT_READY) {
        out.* = 0;
        return 0;
    }
    if (r != 0) return drv.fail(r, "cuEventQuery");
    out.* = 1;
    return 0;
}

/// Waits until the work before `event` is done.
export fn ng_cuda_event_sync(ctx: u64, event: u64) i32 {
    const s = drv.bind(ctx);
    if (s != 0) return s;
    const r = drv.api().?.cuEventSynchronize(drv.h(event));
    if (r != 0) return drv.fail(r, "cuEventSynchronize");
    return 0;
}

/// Writes the milliseconds between two recorded (timing) events into out[0].
export fn ng_cuda_event_elapsed(ctx: u64, start: u64, end: u64, out: *f32) i32 {
    const s = drv.bind(ctx);
    if (s != 0) return s;
    var ms: f32 = 0;
    const r = drv.api().?.cuEventElapsedTime(&ms, drv.h(start), drv.h(end));
    if (r != 0) return drv.fail(r, "cuEventElapsedTime");
    out.* = ms;
    return 0;
}
