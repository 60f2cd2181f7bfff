//! Builds native/ into one shared library, zig-out/lib/libngpt.so, that Deno loads with Deno.dlopen.
//! It links only libc: libcuda.so.1, cuBLASLt and NVRTC are opened at run time (native/cuda/).
const std = @import("std");

pub fn build(b: *std.Build) void {
    const target = b.standardTargetOptions(.{});
    const optimize = b.standardOptimizeOption(.{});

    const root = b.createModule(.{
        .root_source_file = b.path("native/root.zig"),
        .target = target,
        .optimize = optimize,
        .link_libc = true,
    });
    const lib = b.addLibrary(.{ .linkage = .dynamic, .name = "ngpt", .root_module = root });
    b.installArtifact(lib);

    const tests = b.addTest(.{ .root_module = root });
    const run_tests = b.addRunArtifact(tests);
    b.step("test", "Run the Zig unit tests of native/").dependOn(&run_tests.step);
}
