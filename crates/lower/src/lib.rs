//! Target-independent lowering (being built).
