//! The CPU backend's one persistent thread pool.
//!
//! `run(n_tasks, ctx, func)` calls `func(ctx, task, worker)` for every task in 0..n_tasks on the
//! calling thread plus the pool's workers (tasks are handed out by an atomic counter, so uneven
//! tasks balance themselves) and returns when all are done. `worker` is in 0..threads() and is
//! unique among the threads running at once, so kernels can give each one a scratch slice.
//!
//! Workers join a job only while it is open: the caller opens it, runs tasks itself, then closes
//! it and waits just for the workers that joined (and are computing). A worker that is still
//! asleep when the job closes never delays the caller, which matters in VMs, where waking an idle
//! core can take a millisecond. Between jobs workers spin for `spin_ns` and then sleep on a futex.
//! Jobs from several caller threads are serialised by a mutex; a job must not start another job.
const std = @import("std");
const err = @import("../err.zig");

const Futex = std.Thread.Futex;
const Atomic = std.atomic.Value;

/// A task function: `ctx` is the caller's context, `task` the task index, `worker` the thread slot.
pub const TaskFn = *const fn (ctx: *const anyopaque, task: usize, worker: usize) void;

/// The most threads the pool runs (caller included).
pub const max_threads: usize = 256;
/// How long an idle worker spins for the next job before it sleeps.
const spin_ns: u64 = 2 * std.time.ns_per_ms;

var job_mutex: std.Thread.Mutex = .{};
var job_func: TaskFn = undefined;
var job_ctx: *const anyopaque = undefined;
var job_n: usize = 0;
var next_task: Atomic(usize) = .init(0);
/// Bit 0: the job is open (workers may join); bits 1..: twice the number of workers in it.
var ctl: Atomic(u32) = .init(0);
/// Bumped when a job opens (and on shutdown); idle workers wait for it to change.
var generation: Atomic(u32) = .init(0);
var shutdown: Atomic(bool) = .init(false);
/// Workers asleep on the generation futex (run() skips the wake syscall when there are none).
var sleepers: Atomic(u32) = .init(0);

var workers: [max_threads]std.Thread = undefined;
var n_workers: usize = 0;
var initialized: bool = false;

/// Spins (checking the clock now and then) while `ptr` holds `value`, for at most `limit_ns`;
/// returns true when it changed.
fn spin_while(ptr: *const Atomic(u32), value: u32, limit_ns: u64) bool {
    const t0 = std.time.Instant.now() catch return false;
    var i: usize = 0;
    while (ptr.load(.acquire) == value) : (i += 1) {
        std.atomic.spinLoopHint();
        if (i % 64 == 63) {
            const t = std.time.Instant.now() catch return false;
            if (t.since(t0) > limit_ns) return false;
        }
    }
    return true;
}

fn worker_main(slot: usize, first_generation: u32) void {
    var seen: u32 = first_generation;
    while (true) {
        if (!spin_while(&generation, seen, spin_ns)) {
            // Announce the sleep before re-checking, so run() either sees us or we see its bump.
            _ = sleepers.fetchAdd(1, .seq_cst);
            while (generation.load(.seq_cst) == seen) Futex.wait(&generation, seen);
            _ = sleepers.fetchSub(1, .seq_cst);
        }
        seen = generation.load(.acquire);
        if (shutdown.load(.acquire)) return;
        // Join the job if it is still open.
        var c = ctl.load(.acquire);
        const joined = while (c & 1 == 1) {
            c = ctl.cmpxchgWeak(c, c + 2, .acq_rel, .acquire) orelse break true;
        } else false;
        if (!joined) continue;
        drain(slot);
        // The last worker out of a closed job wakes the caller.
        if (ctl.fetchSub(2, .acq_rel) == 2) Futex.wake(&ctl, 1);
    }
}

fn drain(slot: usize) void {
    const n = job_n;
    while (true) {
        const i = next_task.fetchAdd(1, .monotonic);
        if (i >= n) return;
        job_func(job_ctx, i, slot);
    }
}

fn stop_workers() void {
    if (n_workers == 0) return;
    shutdown.store(true, .release);
    _ = generation.fetchAdd(1, .release);
    Futex.wake(&generation, std.math.maxInt(u32));
    for (workers[0..n_workers]) |t| t.join();
    n_workers = 0;
    shutdown.store(false, .release);
}

fn start(n_threads: usize) i32 {
    std.debug.assert(n_threads >= 1 and n_threads <= max_threads);
    stop_workers();
    const g = generation.load(.acquire);
    var i: usize = 0;
    while (i + 1 < n_threads) : (i += 1) {
        workers[i] = std.Thread.spawn(.{}, worker_main, .{ i + 1, g }) catch |e| {
            n_workers = i;
            stop_workers();
            initialized = false;
            return err.set(2, "ng_cpu_init: could not start worker thread {d} of {d}: {s}", .{
                i + 1, n_threads, @errorName(e),
            });
        };
        n_workers = i + 1;
    }
    initialized = true;
    return 0;
}

/// Stops the workers when the library is unloaded (dlclose, process exit): a worker still
/// spinning in unmapped code would crash the process. Later jobs run on the caller alone.
fn fini() callconv(.c) void {
    job_mutex.lock();
    defer job_mutex.unlock();
    stop_workers();
    initialized = true;
}

const fini_array: [1]*const fn () callconv(.c) void linksection(".fini_array") = .{&fini};
comptime {
    @export(&fini_array, .{ .name = "ng_cpu_pool_fini_array", .visibility = .hidden });
}

fn default_threads() usize {
    const n = std.Thread.getCpuCount() catch 1;
    return std.math.clamp(n, 1, max_threads);
}

/// Starts (or restarts with a new size) the pool with `n_threads` threads in all, the caller
/// included; 0 means one per CPU core. Calling it again with the same count does nothing.
export fn ng_cpu_init(n_threads: u32) i32 {
    if (n_threads > max_threads) {
        return err.set(1, "ng_cpu_init: n_threads {d} is more than the maximum {d}", .{ n_threads, max_threads });
    }
    job_mutex.lock();
    defer job_mutex.unlock();
    const n: usize = if (n_threads == 0) default_threads() else n_threads;
    if (initialized and n == n_workers + 1) return 0;
    return start(n);
}

/// Threads the pool runs jobs on (caller included); starts the default pool when none runs.
export fn ng_cpu_threads() u32 {
    return @intCast(threads());
}

/// Threads the pool runs jobs on (caller included); the default pool is started on first use.
pub fn threads() usize {
    job_mutex.lock();
    defer job_mutex.unlock();
    ensure_started();
    return n_workers + 1;
}

fn ensure_started() void {
    if (initialized) return;
    // Falls back to running on the caller alone when threads cannot be spawned.
    if (start(default_threads()) != 0) initialized = true;
}

/// Runs `func(ctx, task, worker)` for task in 0..n_tasks on all pool threads; returns when done.
pub fn run(n_tasks: usize, ctx: *const anyopaque, func: TaskFn) void {
    if (n_tasks == 0) return;
    job_mutex.lock();
    defer job_mutex.unlock();
    ensure_started();
    if (n_tasks == 1 or n_workers == 0) {
        for (0..n_tasks) |i| func(ctx, i, 0);
        return;
    }
    job_func = func;
    job_ctx = ctx;
    job_n = n_tasks;
    next_task.store(0, .monotonic);
    ctl.store(1, .release);
    _ = generation.fetchAdd(1, .seq_cst);
    if (sleepers.load(.seq_cst) > 0) Futex.wake(&generation, std.math.maxInt(u32));
    drain(0);
    // Close the job, then wait for the workers that joined it.
    var c = ctl.fetchAnd(~@as(u32, 1), .acq_rel) & ~@as(u32, 1);
    while (c != 0) {
        if (!spin_while(&ctl, c, spin_ns)) Futex.wait(&ctl, c);
        c = ctl.load(.acquire);
    }
}

/// Typed convenience over `run`: calls `func(ctx, task, worker)` with `ctx: *const Ctx`.
pub fn run_typed(
    comptime Ctx: type,
    n_tasks: usize,
    ctx: *const Ctx,
    comptime func: fn (ctx: *const Ctx, task: usize, worker: usize) void,
) void {
    const Wrap = struct {
        fn call(p: *const anyopaque, task: usize, worker: usize) void {
            func(@ptrCast(@alignCast(p)), task, worker);
        }
    };
    run(n_tasks, ctx, Wrap.call);
}

/// Splits `n` items into about `parts` chunks of at least `min_chunk` items; returns the chunk size.
pub fn chunk_size(n: usize, parts: usize, min_chunk: usize) usize {
    const c = (n + parts - 1) / @max(parts, 1);
    return @max(c, @max(min_chunk, 1));
}

test "pool runs every task exactly once" {
    try std.testing.expectEqual(@as(i32, 0), ng_cpu_init(3));
    const Ctx = struct { hits: []Atomic(u32) };
    var hits: [1000]Atomic(u32) = undefined;
    for (&hits) |*h| h.* = .init(0);
    const ctx = Ctx{ .hits = &hits };
    const F = struct {
        fn f(c: *const Ctx, task: usize, worker: usize) void {
            std.debug.assert(worker < 3);
            _ = c.hits[task].fetchAdd(1, .monotonic);
        }
    };
    for (0..50) |_| run_typed(Ctx, hits.len, &ctx, F.f);
    for (hits) |h| try std.testing.expectEqual(@as(u32, 50), h.load(.monotonic));
    try std.testing.expectEqual(@as(u32, 3), ng_cpu_threads());
    try std.testing.expectEqual(@as(i32, 0), ng_cpu_init(1));
    run_typed(Ctx, hits.len, &ctx, F.f);
    try std.testing.expectEqual(@as(u32, 51), hits[999].load(.monotonic));
    try std.testing.expectEqual(@as(i32, 0), ng_cpu_init(0));
}
