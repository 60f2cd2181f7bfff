//! TODO: filled in by the CPU kernels work.
