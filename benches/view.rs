//! View benchmarks (placeholder until written).
fn main() {}
