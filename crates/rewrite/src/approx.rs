//! Approximate rules (placeholder while being written).
