//! Configuration (SPEC §3): a typed model parsed with serde + toml (with spans), then a
//! separate validation pass that collects every error with file:line:column. Peering states
//! decidable from the configuration alone are in [`peering`].
//!
//! - [`read`]: files are read without trusting the file system (confined includes, regular
//!   files only, size and time bounds);
//! - [`parse`]: one file, the rules that need nothing else (syntax, CIDRs, special-purpose
//!   ranges, routes, `[daemon]`, per-VPC quotas);
//! - [`cross`]: rules across files (names, peering ends, datapath capacity);
//! - [`load`]: the file set, strict ([`Config::load`]) or resilient ([`load_resilient`], with
//!   per-file last good versions).
mod cross;
mod load;
mod model;
mod parse;
mod peering;
mod read;

pub use load::{
    check_vpc_sources, load_resilient, load_resilient_at_start, BrokenFile, Fallback, LastGood,
    Loaded,
};
pub use model::*;
pub use peering::{evaluate_peerings, Peering, PeeringState};
/// For `peerd apply`, which reads its files as `check` reads configuration files.
pub(crate) use read::read_config_file;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_cluster;
#[cfg(test)]
mod tests_files;
#[cfg(test)]
mod tests_prop;
