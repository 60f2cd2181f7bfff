//! The CUDA backend's native half: the driver API, cuBLASLt and NVRTC, each opened at run time
//! with dlopen (the library links only libc, so it loads and the CPU backend works on machines
//! without CUDA). Every entry point that touches a context takes it as its first argument and
//! makes it current first: the current context is per-thread state, and a process may hold the
//! contexts of several devices, so no call depends on which context the previous one used.
//!
//! Statuses: 0 ok; CUDA's CUresult / cublasStatus_t / nvrtcResult codes as they come (e.g. 2 is
//! CUDA_ERROR_OUT_OF_MEMORY from ng_cuda_mem_alloc); -1 library not found, -2 no CUDA device,
//! -3 bad argument. The message (ng_last_error) names the API: "cuMemAlloc_v2:
//! CUDA_ERROR_OUT_OF_MEMORY (out of memory)".
comptime {
    _ = @import("device.zig");
    _ = @import("memory.zig");
    _ = @import("stream.zig");
    _ = @import("module.zig");
    _ = @import("graph.zig");
    _ = @import("nvrtc.zig");
    _ = @import("cublaslt.zig");
}
