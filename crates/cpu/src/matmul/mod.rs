//! Matrix products (being built).
