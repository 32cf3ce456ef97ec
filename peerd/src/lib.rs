//! peerd: VPC peering for Linux hypervisor hosts.
//!
//! The control plane in one line: [`config`] (files) → [`lifecycle`] (peering states with
//! history) → [`state`] (slots) → [`desired`] (pure desired state) → [`reconcile`] (one
//! reconciler per resource) — driven by [`daemon`], the one task that owns mutable state.
pub mod agent;
pub mod api;
pub mod attach;
pub mod cli;
pub mod cluster;
pub mod cni;
pub mod config;
pub mod control;
pub mod daemon;
pub mod datapath;
pub mod desired;
pub mod endpoints;
pub mod ethtool;
pub mod flowlog;
pub mod gen;
pub mod lifecycle;
pub mod metrics;
pub mod netlink;
pub mod netns;
pub mod notify;
pub mod reconcile;
pub mod state;
pub mod status;
pub mod tables;
pub mod teardown;
#[cfg(test)]
pub(crate) mod testing;
pub mod watch;
