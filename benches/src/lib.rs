//! weft-benches
