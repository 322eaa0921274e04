//! WAL reader (placeholder).
