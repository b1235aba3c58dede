//! Probes: checks that watch the target while faults are active.
