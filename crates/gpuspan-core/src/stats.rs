//! Trace statistics (`gpuspan stats`). Placeholder: filled in by the stats work.
