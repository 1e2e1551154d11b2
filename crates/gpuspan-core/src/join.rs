//! Kernel ↔ scope join. Placeholder.
