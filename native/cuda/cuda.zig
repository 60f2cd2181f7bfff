//! TODO: CUDA driver, cuBLASLt and NVRTC, loaded at run time.
