//! peerd: VPC peering for Linux hypervisor hosts.
pub mod compile;
pub mod config;
pub mod control;
pub mod daemon;
pub mod datapath;
pub mod ethtool;
pub mod flowlog;
pub mod metrics;
pub mod netns;
pub mod state;
pub mod tables;
pub mod watch;
