//! Stage classification. Placeholder.
