//! Configuration (SPEC §3): a typed model parsed with serde + toml (with spans), then a
//! separate validation pass that collects every error with file:line:column. Peering states
//! decidable from the configuration alone are in [`peering`].
mod model;
mod parse;
mod peering;

pub use model::*;
pub use peering::{evaluate_peerings, Peering, PeeringState};

#[cfg(test)]
mod tests;
