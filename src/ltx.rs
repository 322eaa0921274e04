//! LTX v3 codec (placeholder).
