//! cuBLASLt (libcublasLt.so.13 / .12), opened at run time: matmul plans chosen once by the
//! heuristic query (outside any graph capture), then executed on a stream.
//!
//! Row-major x (M, K) and w (N, K) giving out (M, N) = x @ w^T is, read column-major, the TN gemm
//! out^T (N x M) = w^T(K x N)^T * x^T (K x M): A = w (K x N, ld K, transposed), B = x (K x M,
//! ld K), C = D = out (N x M, ld N); the bias (length N) runs along D's rows as cuBLASLt wants.
const std = @import("std");
const err = @import("../err.zig");
const dl = @import("dl.zig");
const drv = @import("driver.zig");

const Status = c_int;
const Handle = ?*anyopaque;

const HeuristicResult = extern struct {
    algo: [8]u64,
    workspace_size: usize,
    state: Status,
    waves_count: f32,
    reserved: [4]c_int,
};

const Api = struct {
    cublasLtCreate: *const fn (*Handle) callconv(.c) Status,
    cublasLtDestroy: *const fn (Handle) callconv(.c) Status,
    cublasLtGetVersion: *const fn () callconv(.c) usize,
    cublasLtGetStatusName: ?*const fn (Status) callconv(.c) ?[*:0]const u8,
    cublasLtGetStatusString: ?*const fn (Status) callconv(.c) ?[*:0]const u8,
    cublasLtMatmulDescCreate: *const fn (*Handle, c_int, c_int) callconv(.c) Status,
    cublasLtMatmulDescDestroy: *const fn (Handle) callconv(.c) Status,
    cublasLtMatmulDescSetAttribute: *const fn (Handle, c_int, ?*const anyopaque, usize) callconv(.c) Status,
    cublasLtMatrixLayoutCreate: *const fn (*Handle, c_int, u64, u64, i64) callconv(.c) Status,
    cublasLtMatrixLayoutDestroy: *const fn (Handle) callconv(.c) Status,
    cublasLtMatmulPreferenceCreate: *const fn (*Handle) callconv(.c) Status,
    cublasLtMatmulPreferenceDestroy: *const fn (Handle) callconv(.c) Status,
    cublasLtMatmulPreferenceSetAttribute: *const fn (Handle, c_int, ?*const anyopaque, usize) callconv(.c) Status,
    cublasLtMatmulAlgoGetHeuristic: *const fn (Handle, Handle, Handle, Handle, Handle, Handle, Handle, c_int, [*]HeuristicResult, *c_int) callconv(.c) Status,
    cublasLtMatmul: *const fn (Handle, Handle, *const anyopaque, ?*const anyopaque, Handle, ?*const anyopaque, Handle, *const anyopaque, ?*const anyopaque, Handle, ?*anyopaque, Handle, ?*const anyopaque, ?*anyopaque, usize, Handle) callconv(.c) Status,
};

// cublasLtMatmulDescAttributes_t
const DESC_TRANSA: c_int = 3;
const DESC_TRANSB: c_int = 4;
const DESC_EPILOGUE: c_int = 7;
const DESC_BIAS_POINTER: c_int = 8;
// cublasLtMatmulPreferenceAttributes_t
const PREF_MAX_WORKSPACE_BYTES: c_int = 1;
const PREF_MIN_ALIGNMENT_A_BYTES: c_int = 5;
const PREF_MIN_ALIGNMENT_B_BYTES: c_int = 6;
const PREF_MIN_ALIGNMENT_C_BYTES: c_int = 7;
const PREF_MIN_ALIGNMENT_D_BYTES: c_int = 8;
// cublasComputeType_t / cudaDataType_t / cublasOperation_t
const CUBLAS_COMPUTE_32F: c_int = 68;
const CUDA_R_32F: c_int = 0;
const CUDA_R_16F: c_int = 2;
const CUDA_R_16BF: c_int = 14;
const OP_N: i32 = 0;
const OP_T: i32 = 1;
// cublasLtEpilogue_t values accepted from TypeScript.
const EPILOGUE_DEFAULT: u32 = 1;
const EPILOGUE_BIAS: u32 = 4;
const EPILOGUE_GELU: u32 = 32;
const EPILOGUE_GELU_BIAS: u32 = 36;

/// cublasStatus_t CUBLAS_STATUS_NOT_SUPPORTED: also returned when the heuristic finds no algorithm.
pub const CUBLAS_STATUS_NOT_SUPPORTED: i32 = 15;
const status_not_loaded: i32 = -1;
const status_bad_arg: i32 = -3;

var mutex: std.Thread.Mutex = .{};
var table: Api = undefined;
var loaded: bool = false;

fn api() ?*const Api {
    return if (@atomicLoad(bool, &loaded, .acquire)) &table else null;
}

fn status_name(s: Status) []const u8 {
    if (api()) |a| if (a.cublasLtGetStatusName) |f| if (f(s)) |p| return std.mem.span(p);
    return switch (s) {
        1 => "CUBLAS_STATUS_NOT_INITIALIZED",
        3 => "CUBLAS_STATUS_ALLOC_FAILED",
        7 => "CUBLAS_STATUS_INVALID_VALUE",
        8 => "CUBLAS_STATUS_ARCH_MISMATCH",
        11 => "CUBLAS_STATUS_MAPPING_ERROR",
        13 => "CUBLAS_STATUS_EXECUTION_FAILED",
        14 => "CUBLAS_STATUS_INTERNAL_ERROR",
        15 => "CUBLAS_STATUS_NOT_SUPPORTED",
        else => "CUBLAS_STATUS_UNKNOWN",
    };
}

fn status_text(s: Status) []const u8 {
    if (api()) |a| if (a.cublasLtGetStatusString) |f| if (f(s)) |p| return std.mem.span(p);
    return "no description";
}

fn fail(s: Status, comptime name: []const u8) i32 {
    return err.set(s, "{s}: {s} ({s}) [code {d}]", .{ name, status_name(s), status_text(s), s });
}

fn not_loaded() i32 {
    return err.set(status_not_loaded, "cuBLASLt not loaded: call ng_cublaslt_load first", .{});
}

fn cuda_type(dtype: u32) ?c_int {
    return switch (dtype) {
        0 => CUDA_R_32F,
        1 => CUDA_R_16F,
        2 => CUDA_R_16BF,
        else => null,
    };
}

/// Opens the first loadable cuBLASLt among `paths` (NUL-separated, `len` bytes); later calls
/// return 0 once loaded. The error lists every failed try.
export fn ng_cublaslt_load(paths: [*]const u8, len: u64) i32 {
    mutex.lock();
    defer mutex.unlock();
    if (loaded) return 0;
    const handle = dl.open_first("cuBLASLt (libcublasLt)", paths, @intCast(len)) orelse return status_not_loaded;
    if (dl.resolve(Api, handle, &table)) |missing| {
        return err.set(status_not_loaded, "cuBLASLt: symbol {s} not found in the loaded libcublasLt", .{missing});
    }
    @atomicStore(bool, &loaded, true, .release);
    return 0;
}

/// Creates a cuBLASLt handle in context `ctx`; into out[0].
export fn ng_cublaslt_create(ctx: u64, out: *u64) i32 {
    const a = api() orelse return not_loaded();
    const s = drv.bind(ctx);
    if (s != 0) return s;
    var hd: Handle = null;
    const r = a.cublasLtCreate(&hd);
    if (r != 0) return fail(r, "cublasLtCreate");
    out.* = @intFromPtr(hd);
    return 0;
}

/// Destroys a handle from ng_cublaslt_create.
export fn ng_cublaslt_destroy(ctx: u64, handle: u64) i32 {
    const a = api() orelse return not_loaded();
    const s = drv.bind(ctx);
    if (s != 0) return s;
    const r = a.cublasLtDestroy(@ptrFromInt(handle));
    if (r != 0) return fail(r, "cublasLtDestroy");
    return 0;
}

/// Candidates kept per plan for ng_cublaslt_plan_select (timed by the TypeScript autotuner).
const max_algos = 16;

const Plan = struct {
    desc: Handle = null,
    a: Handle = null,
    b: Handle = null,
    cd: Handle = null,
    algo: [8]u64 = undefined,
    /// The heuristic's candidates, best first (algo is one of them: the first until selected).
    algos: [max_algos][8]u64 = undefined,
    n_algos: u32 = 0,
    has_bias: bool = false,
    beta: f32 = 0,

    fn destroy(p: *Plan, a: *const Api) void {
        if (p.desc != null) _ = a.cublasLtMatmulDescDestroy(p.desc);
        if (p.a != null) _ = a.cublasLtMatrixLayoutDestroy(p.a);
        if (p.b != null) _ = a.cublasLtMatrixLayoutDestroy(p.b);
        if (p.cd != null) _ = a.cublasLtMatrixLayoutDestroy(p.cd);
        std.heap.c_allocator.destroy(p);
    }
};

fn set_desc(a: *const Api, desc: Handle, attr: c_int, value: anytype) Status {
    return a.cublasLtMatmulDescSetAttribute(desc, attr, @ptrCast(value), @sizeOf(@TypeOf(value.*)));
}

fn set_pref(a: *const Api, pref: Handle, attr: c_int, value: anytype) Status {
    return a.cublasLtMatmulPreferenceSetAttribute(pref, attr, @ptrCast(value), @sizeOf(@TypeOf(value.*)));
}

/// Creates a plan for out[M, N] (=|+=) x[M, K] @ w[N, K]^T (+ bias) with inputs in `in_dtype` and
/// out in `out_dtype` (0 f32, 1 f16, 2 bf16), f32 compute (never TF32), cublasLtEpilogue_t
/// `epilogue` (1 default, 4 bias, 32 gelu, 36 gelu+bias), `accumulate` (beta = 1, C = D = out);
/// `bias` is a representative bias address (alignment), `align_*` the byte alignments the
/// addresses will have. Picks the heuristic's best algorithm for `workspace_bytes`. Plan into
/// out[0]. Status 15 (CUBLAS_STATUS_NOT_SUPPORTED) when no algorithm fits.
export fn ng_cublaslt_plan_create(
    ctx: u64,
    handle: u64,
    m: u64,
    n: u64,
    k: u64,
    in_dtype: u32,
    out_dtype: u32,
    epilogue: u32,
    accumulate: u32,
    bias: u64,
    align_w: u32,
    align_x: u32,
    align_out: u32,
    workspace_bytes: u64,
    out: *u64,
) i32 {
    const a = api() orelse return not_loaded();
    const s = drv.bind(ctx);
    if (s != 0) return s;
    const in_t = cuda_type(in_dtype) orelse return err.set(status_bad_arg, "ng_cublaslt_plan_create: bad input dtype {d}", .{in_dtype});
    const out_t = cuda_type(out_dtype) orelse return err.set(status_bad_arg, "ng_cublaslt_plan_create: bad output dtype {d}", .{out_dtype});
    switch (epilogue) {
        EPILOGUE_DEFAULT, EPILOGUE_BIAS, EPILOGUE_GELU, EPILOGUE_GELU_BIAS => {},
        else => return err.set(status_bad_arg, "ng_cublaslt_plan_create: unsupported epilogue {d}", .{epilogue}),
    }
    if (m == 0 or n == 0 or k == 0) return err.set(status_bad_arg, "ng_cublaslt_plan_create: empty matmul M={d} N={d} K={d}", .{ m, n, k });

    const p = std.heap.c_allocator.create(Plan) catch return err.set(3, "ng_cublaslt_plan_create: out of host memory", .{});
    p.* = .{};
    var ok = false;
    defer if (!ok) p.destroy(a);

    var r = a.cublasLtMatmulDescCreate(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F);
    if (r != 0) return fail(r, "cublasLtMatmulDescCreate");
    const ta: i32 = OP_T;
    const tb: i32 = OP_N;
    r = set_desc(a, p.desc, DESC_TRANSA, &ta);
    if (r != 0) return fail(r, "cublasLtMatmulDescSetAttribute(TRANSA)");
    r = set_desc(a, p.desc, DESC_TRANSB, &tb);
    if (r != 0) return fail(r, "cublasLtMatmulDescSetAttribute(TRANSB)");
    const epi: u32 = epilogue;
    r = set_desc(a, p.desc, DESC_EPILOGUE, &epi);
    if (r != 0) return fail(r, "cublasLtMatmulDescSetAttribute(EPILOGUE)");
    p.has_bias = epilogue == EPILOGUE_BIAS or epilogue == EPILOGUE_GELU_BIAS;
    if (p.has_bias) {
        if (bias == 0) return err.set(status_bad_arg, "ng_cublaslt_plan_create: bias epilogue without a bias address", .{});
        const bp: u64 = bias;
        r = set_desc(a, p.desc, DESC_BIAS_POINTER, &bp);
        if (r != 0) return fail(r, "cublasLtMatmulDescSetAttribute(BIAS_POINTER)");
    }
    p.beta = if (accumulate != 0) 1.0 else 0.0;

    r = a.cublasLtMatrixLayoutCreate(&p.a, in_t, k, n, @intCast(k));
    if (r != 0) return fail(r, "cublasLtMatrixLayoutCreate(w)");
    r = a.cublasLtMatrixLayoutCreate(&p.b, in_t, k, m, @intCast(k));
    if (r != 0) return fail(r, "cublasLtMatrixLayoutCreate(x)");
    r = a.cublasLtMatrixLayoutCreate(&p.cd, out_t, n, m, @intCast(n));
    if (r != 0) return fail(r, "cublasLtMatrixLayoutCreate(out)");

    var pref: Handle = null;
    r = a.cublasLtMatmulPreferenceCreate(&pref);
    if (r != 0) return fail(r, "cublasLtMatmulPreferenceCreate");
    defer _ = a.cublasLtMatmulPreferenceDestroy(pref);
    const ws: u64 = workspace_bytes;
    r = set_pref(a, pref, PREF_MAX_WORKSPACE_BYTES, &ws);
    if (r != 0) return fail(r, "cublasLtMatmulPreferenceSetAttribute(MAX_WORKSPACE_BYTES)");
    const aw: u32 = align_w;
    const ax: u32 = align_x;
    const ao: u32 = align_out;
    r = set_pref(a, pref, PREF_MIN_ALIGNMENT_A_BYTES, &aw);
    if (r != 0) return fail(r, "cublasLtMatmulPreferenceSetAttribute(MIN_ALIGNMENT_A_BYTES)");
    r = set_pref(a, pref, PREF_MIN_ALIGNMENT_B_BYTES, &ax);
    if (r != 0) return fail(r, "cublasLtMatmulPreferenceSetAttribute(MIN_ALIGNMENT_B_BYTES)");
    r = set_pref(a, pref, PREF_MIN_ALIGNMENT_C_BYTES, &ao);
    if (r != 0) return fail(r, "cublasLtMatmulPreferenceSetAttribute(MIN_ALIGNMENT_C_BYTES)");
    r = set_pref(a, pref, PREF_MIN_ALIGNMENT_D_BYTES, &ao);
    if (r != 0) return fail(r, "cublasLtMatmulPreferenceSetAttribute(MIN_ALIGNMENT_D_BYTES)");

    var results: [max_algos]HeuristicResult = undefined;
    var found: c_int = 0;
    r = a.cublasLtMatmulAlgoGetHeuristic(@ptrFromInt(handle), p.desc, p.a, p.b, p.cd, p.cd, pref, max_algos, &results, &found);
    if (r != 0 and r != CUBLAS_STATUS_NOT_SUPPORTED) return fail(r, "cublasLtMatmulAlgoGetHeuristic");
    if (r == CUBLAS_STATUS_NOT_SUPPORTED or found == 0) {
        return err.set(CUBLAS_STATUS_NOT_SUPPORTED, "cublasLtMatmulAlgoGetHeuristic: no algorithm for M={d} N={d} K={d} dtype {d}->{d} epilogue {d}", .{ m, n, k, in_dtype, out_dtype, epilogue });
    }
    p.n_algos = 0;
    for (results[0..@intCast(found)]) |res| {
        if (res.state != 0) continue;
        p.algos[p.n_algos] = res.algo;
        p.n_algos += 1;
    }
    if (p.n_algos == 0) return err.set(CUBLAS_STATUS_NOT_SUPPORTED, "cublasLtMatmulAlgoGetHeuristic: no usable algorithm for M={d} N={d} K={d}", .{ m, n, k });
    p.algo = p.algos[0];
    ok = true;
    out.* = @intFromPtr(p);
    return 0;
}

/// Number of candidate algorithms a plan holds (the heuristic's, best first).
export fn ng_cublaslt_plan_algos(plan: u64) u32 {
    if (plan == 0) return 0;
    const p: *Plan = @ptrFromInt(plan);
    return p.n_algos;
}

/// Makes candidate `index` the algorithm a plan runs with.
export fn ng_cublaslt_plan_select(plan: u64, index: u32) i32 {
    if (plan == 0) return err.set(status_bad_arg, "ng_cublaslt_plan_select: null plan", .{});
    const p: *Plan = @ptrFromInt(plan);
    if (index >= p.n_algos) return err.set(status_bad_arg, "ng_cublaslt_plan_select: candidate {d} of {d}", .{ index, p.n_algos });
    p.algo = p.algos[index];
    return 0;
}

/// Destroys a plan from ng_cublaslt_plan_create.
export fn ng_cublaslt_plan_destroy(plan: u64) void {
    const a = api() orelse return;
    if (plan == 0) return;
    const p: *Plan = @ptrFromInt(plan);
    p.destroy(a);
}

/// Enqueues a planned matmul on `stream`: out (=|+=) x @ w^T (+ bias, when the plan has one).
export fn ng_cublaslt_matmul(
    ctx: u64,
    handle: u64,
    plan: u64,
    out: u64,
    x: u64,
    w: u64,
    bias: u64,
    workspace: u64,
    workspace_bytes: u64,
    stream: u64,
) i32 {
    const a = api() orelse return not_loaded();
    const s = drv.bind(ctx);
    if (s != 0) return s;
    const p: *Plan = @ptrFromInt(plan);
    var r: Status = 0;
    if (p.has_bias) {
        const bp: u64 = bias;
        r = set_desc(a, p.desc, DESC_BIAS_POINTER, &bp);
        if (r != 0) return fail(r, "cublasLtMatmulDescSetAttribute(BIAS_POINTER)");
    }
    const alpha: f32 = 1.0;
    r = a.cublasLtMatmul(
        @ptrFromInt(handle),
        p.desc,
        &alpha,
        @ptrFromInt(w),
        p.a,
        @ptrFromInt(x),
        p.b,
        &p.beta,
        @ptrFromInt(out),
        p.cd,
        @ptrFromInt(out),
        p.cd,
        &p.algo,
        @ptrFromInt(workspace),
        @intCast(workspace_bytes),
        @ptrFromInt(stream),
    );
    if (r != 0) return fail(r, "cublasLtMatmul");
    return 0;
}
