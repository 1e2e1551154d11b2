//! gpuspan
