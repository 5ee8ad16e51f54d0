//! Test support shared by the protocol's property tests (and, by path, the fuzz
//! targets in `fuzz/`).

pub mod reference;
