//! Stream capture into CUDA graphs, instantiation and replay.
const drv = @import("driver.zig");
const err = @import("../err.zig");

/// CU_STREAM_CAPTURE_MODE_THREAD_LOCAL.
const CU_STREAM_CAPTURE_MODE_THREAD_LOCAL: c_int = 1;

/// Starts capturing `stream` (thread-local mode: only this thread's unsafe calls are refused).
export fn ng_cuda_capture_begin(ctx: u64, stream: u64) i32 {
    const s = drv.bind(ctx);
    if (s != 0) return s;
    const r = drv.api().?.cuStreamBeginCapture_v2(drv.h(stream), CU_STREAM_CAPTURE_MODE_THREAD_LOCAL);
    if (r != 0) return drv.fail(r, "cuStreamBeginCapture_v2");
    return 0;
}

/// Ends the capture of `stream`; the captured graph goes into out[0].
export fn ng_cuda_capture_end(ctx: u64, stream: u64, out: *u64) i32 {
    const s = drv.bind(ctx);
    if (s != 0) return s;
    const a = drv.api().?;
    var g: drv.Handle = null;
    const r = a.cuStreamEndCapture(drv.h(stream), &g);
    if (r != 0) {
        if (g != null) _ = a.cuGraphDestroy(g);
        return drv.fail(r, "cuStreamEndCapture");
    }
    out.* = drv.u(g);
    return 0;
}

/// Ends a capture that failed part-way, if `stream` is capturing, and destroys whatever graph it
/// produced. Never fails (best effort: used while another error is being reported).
export fn ng_cuda_capture_abort(ctx: u64, stream: u64) void {
    const a = drv.api() orelse return;
    if (ctx == 0) return;
    _ = a.cuCtxSetCurrent(drv.h(ctx));
    var capturing: c_int = 0;
    if (a.cuStreamIsCapturing(drv.h(stream), &capturing) != 0) {
        // An invalidated capture still reports its status through cuStreamEndCapture.
        capturing = 1;
    }
    if (capturing == 0) return;
    var g: drv.Handle = null;
    _ = a.cuStreamEndCapture(drv.h(stream), &g);
    if (g != null) _ = a.cuGraphDestroy(g);
}

/// Starts recording a device-side loop: a new graph holding one WHILE conditional node (its handle
/// set to 1 at each launch, so the body runs at least once), whose body graph `stream` now captures.
/// A kernel in the body must call cudaGraphSetConditional(handle, 0) to stop the loop.
/// out[0] = the new graph (to instantiate, then destroy), out[1] = the conditional handle.
export fn ng_cuda_loop_capture_begin(ctx: u64, stream: u64, out: *[2]u64) i32 {
    const s = drv.bind(ctx);
    if (s != 0) return s;
    const a = drv.api().?;
    var g: drv.Handle = null;
    var r = a.cuGraphCreate(&g, 0);
    if (r != 0) return drv.fail(r, "cuGraphCreate");
    var handle: u64 = 0;
    r = a.cuGraphConditionalHandleCreate(&handle, g, drv.h(ctx), 1, drv.graph_cond_assign_default);
    if (r != 0) {
        _ = a.cuGraphDestroy(g);
        return drv.fail(r, "cuGraphConditionalHandleCreate");
    }
    var params = drv.GraphNodeParams{
        .type = drv.graph_node_conditional,
        .handle = handle,
        .cond_type = drv.graph_cond_while,
        .size = 1,
        .graph_out = null,
        .ctx = drv.h(ctx),
    };
    var node: drv.Handle = null;
    r = a.cuGraphAddNode(&node, g, null, 0, &params);
    if (r != 0) {
        _ = a.cuGraphDestroy(g);
        return drv.fail(r, "cuGraphAddNode (conditional WHILE)");
    }
    // The driver points graph_out at its own array of body graphs (one for WHILE).
    const body: drv.Handle = if (params.graph_out) |p| p.* else null;
    if (body == null) {
        _ = a.cuGraphDestroy(g);
        return err.set(drv.status_bad_arg, "cuGraphAddNode (conditional WHILE) returned no body graph", .{});
    }
    r = a.cuStreamBeginCaptureToGraph(drv.h(stream), body, null, null, 0, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL);
    if (r != 0) {
        _ = a.cuGraphDestroy(g);
        return drv.fail(r, "cuStreamBeginCaptureToGraph");
    }
    out[0] = drv.u(g);
    out[1] = handle;
    return 0;
}

/// Ends the capture of a loop body begun by ng_cuda_loop_capture_begin (the body belongs to the
/// loop's graph). With `ok` 0 (a failure part-way) it never fails and destroys the loop's graph.
export fn ng_cuda_loop_capture_end(ctx: u64, stream: u64, graph: u64, ok: i32) i32 {
    const s = drv.bind(ctx);
    if (s != 0) return s;
    const a = drv.api().?;
    var body: drv.Handle = null;
    const r = a.cuStreamEndCapture(drv.h(stream), &body);
    if (ok == 0 or r != 0) _ = a.cuGraphDestroy(drv.h(graph));
    if (ok != 0 and r != 0) return drv.fail(r, "cuStreamEndCapture (loop body)");
    return 0;
}

/// Instantiates `graph` into an executable graph; its handle goes into out[0].
export fn ng_cuda_graph_instantiate(ctx: u64, graph: u64, out: *u64) i32 {
    const s = drv.bind(ctx);
    if (s != 0) return s;
    var e: drv.Handle = null;
    const r = drv.api().?.cuGraphInstantiateWithFlags(&e, drv.h(graph), 0);
    if (r != 0) return drv.fail(r, "cuGraphInstantiateWithFlags");
    out.* = drv.u(e);
    return 0;
}

/// Launches an executable graph on `stream`.
export fn ng_cuda_graph_launch(ctx: u64, exec: u64, stream: u64) i32 {
    const s = drv.bind(ctx);
    if (s != 0) return s;
    const r = drv.api().?.cuGraphLaunch(drv.h(exec), drv.h(stream));
    if (r != 0) return drv.fail(r, "cuGraphLaunch");
    return 0;
}

/// Destroys an executable graph.
export fn ng_cuda_graph_exec_destroy(ctx: u64, exec: u64) i32 {
    const s = drv.bind(ctx);
    if (s != 0) return s;
    const r = drv.api().?.cuGraphExecDestroy(drv.h(exec));
    if (r != 0) return drv.fail(r, "cuGraphExecDestroy");
    return 0;
}

/// Destroys a graph.
export fn ng_cuda_graph_destroy(ctx: u64, graph: u64) i32 {
    const s = drv.bind(ctx);
    if (s != 0) return s;
    const r = drv.api().?.cuGraphDestroy(drv.h(graph));
    if (r != 0) return drv.fail(r, "cuGraphDestroy");
    return 0;
}
