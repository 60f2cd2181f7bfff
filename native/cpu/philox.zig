//! Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3"; the generator of
//! Random123, curand and JAX): a counter-based generator, four 32-bit output words per
//! (counter, key). The sampler derives its uniforms from it so CPU and CUDA draw identical numbers.
const std = @import("std");

const m0: u32 = 0xD2511F53;
const m1: u32 = 0xCD9E8D57;
const w0: u32 = 0x9E3779B9;
const w1: u32 = 0xBB67AE85;

inline fn mulhilo(a: u32, b: u32) [2]u32 {
    const p = @as(u64, a) * b;
    return .{ @intCast(p >> 32), @truncate(p) };
}

/// The 4 output words of Philox4x32 with 10 rounds for `counter` and `key`.
pub fn philox4x32_10(counter: [4]u32, key: [2]u32) [4]u32 {
    var c = counter;
    var k = key;
    for (0..10) |r| {
        if (r > 0) {
            k[0] +%= w0;
            k[1] +%= w1;
        }
        const a = mulhilo(m0, c[0]);
        const b = mulhilo(m1, c[2]);
        c = .{ b[0] ^ c[1] ^ k[0], b[1], a[0] ^ c[3] ^ k[1], a[1] };
    }
    return c;
}

/// A uniform float in [0, 1) from a Philox output word: (x >> 8) * 2^-24.
pub fn uniform(x: u32) f32 {
    return @as(f32, @floatFromInt(x >> 8)) * (1.0 / 16777216.0);
}

test "philox4x32-10 known answers (Random123 KAT)" {
    try std.testing.expectEqual(
        [4]u32{ 0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8 },
        philox4x32_10(.{ 0, 0, 0, 0 }, .{ 0, 0 }),
    );
    const f: u32 = 0xffffffff;
    try std.testing.expectEqual(
        [4]u32{ 0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd },
        philox4x32_10(.{ f, f, f, f }, .{ f, f }),
    );
    // The third Random123 vector (pi digits).
    try std.testing.expectEqual(
        [4]u32{ 0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1 },
        philox4x32_10(.{ 0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344 }, .{ 0xa4093822, 0x299f31d0 }),
    );
}
