//! The validated configuration model.
use std::{
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use ipnet::IpNet;

/// Where something was written: 1-based line and column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DatapathMode {
    #[default]
    Tc,
    Xdp,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DaemonConfig {
    pub netns_prefix: String,
    pub datapath: DatapathMode,
    pub state_dir: PathBuf,
    pub pin_dir: PathBuf,
    pub socket: PathBuf,
    /// Group allowed to use the control socket besides root (name syntax checked here; the
    /// daemon resolves it).
    pub socket_group: Option<String>,
    pub metrics: Option<SocketAddr>,
    pub flow_log: Option<PathBuf>,
    /// Aggregation window of the flow log.
    pub flow_log_interval: Duration,
    /// Size at which the flow log is rotated (`flows.jsonl` -> `flows.jsonl.1` ...).
    pub flow_log_max_bytes: u64,
    /// Rotated files kept.
    pub flow_log_keep: u32,
    pub pending_expiry: Duration,
    pub max_active_peerings_per_vpc: u32,
    pub max_pending_peerings_per_vpc: u32,
    /// Per-VPC quotas checked at validation (an excess is an error of the VPC's file, so with
    /// includes only that tenant's file falls back to its last good version). They keep one
    /// tenant from filling the datapath's shared maps.
    /// Source prefixes: CIDRs plus subnets, both families.
    pub max_prefixes_per_vpc: u32,
    /// Explicit routes over all of the VPC's route tables. Automatic routes are bounded by
    /// `max_peerings_per_vpc` x the peers' `max_prefixes_per_vpc`.
    pub max_routes_per_vpc: u32,
    pub max_route_tables_per_vpc: u32,
    /// Declared peering ends, whatever their state.
    pub max_peerings_per_vpc: u32,
    /// `[cluster]`: this host is one of a fleet sharing VPCs through etcd (SPEC §7). Kept with
    /// the daemon settings because, like them, it comes from the main file only.
    pub cluster: Option<ClusterConfig>,
}

/// `[cluster]` of a host file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    /// etcd endpoints (`http://` or `https://` URLs).
    pub etcd: Vec<String>,
    /// This host's name in the fleet (unique).
    pub host: String,
    /// This host's VXLAN source address (IPv4 or IPv6), reached through the routes of the
    /// namespace peerd runs in.
    pub underlay: std::net::IpAddr,
    /// VPCs with a presence (a namespace) on this host.
    pub vpcs: Vec<String>,
    /// Prefix of every key peerd uses in etcd (several fleets can share one etcd).
    pub key_prefix: String,
    /// TTL of the host's lease: a host that stops renewing it leaves the fleet after this long.
    pub lease_ttl: Duration,
    /// UDP port of the VXLAN underlay.
    pub vxlan_port: u16,
    /// MTU of the underlay path (default: the MTU of the link that holds `underlay`).
    pub underlay_mtu: Option<u32>,
    pub tls: Option<Tls>,
}

/// TLS towards etcd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tls {
    pub ca: PathBuf,
    /// Client certificate and key, both or neither.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl ClusterConfig {
    pub const DEFAULT_KEY_PREFIX: &'static str = "/peerd/";
    pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(15);
    pub const DEFAULT_VXLAN_PORT: u16 = 4789;
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            netns_prefix: "vpc-".into(),
            datapath: DatapathMode::Tc,
            state_dir: "/var/lib/peerd".into(),
            pin_dir: "/sys/fs/bpf/peerd".into(),
            socket: "/run/peerd/peerd.sock".into(),
            socket_group: None,
            metrics: None,
            flow_log: None,
            flow_log_interval: Duration::from_secs(60),
            flow_log_max_bytes: 100 << 20,
            flow_log_keep: 5,
            pending_expiry: Duration::from_secs(168 * 3600),
            max_active_peerings_per_vpc: 50,
            max_pending_peerings_per_vpc: 25,
            max_prefixes_per_vpc: 64,
            max_routes_per_vpc: 1000,
            max_route_tables_per_vpc: 32,
            max_peerings_per_vpc: 100,
            cluster: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeeringEnd {
    pub id: String,
    pub peer: String,
    pub reject: bool,
    pub location: Location,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subnet {
    pub cidr: IpNet,
    pub route_table: String,
    pub location: Location,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub destination: IpNet,
    pub peering: String,
    pub location: Location,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteTable {
    pub name: String,
    pub routes: Vec<Route>,
    pub location: Location,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vpc {
    pub name: String,
    /// Where the name was written (duplicate names across files point here).
    pub name_location: Location,
    pub cidrs: Vec<IpNet>,
    pub mtu: Option<u32>,
    pub peerings: Vec<PeeringEnd>,
    pub subnets: Vec<Subnet>,
    pub route_tables: Vec<RouteTable>,
    pub location: Location,
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Config {
    pub daemon: DaemonConfig,
    pub vpcs: Vec<Vpc>,
    /// Every file read, the main one first.
    pub files: Vec<PathBuf>,
    /// Directories whose changes can change the configuration: those of every file read and
    /// of every include pattern (a new file there may match).
    pub watch_dirs: Vec<PathBuf>,
}

/// One problem, where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub location: Option<Location>,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.location {
            Some(l) => write!(f, "{l}: {}", self.message),
            None => write!(f, "{}", self.message),
        }
    }
}

/// A configuration that cannot be used, with every problem found.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub errors: Vec<Diagnostic>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl Config {
    /// Reads `path` and its includes, parses and validates. Strict: any error in any file
    /// rejects the whole set (`peerd check`, `peerd plan`). The daemon uses
    /// [`load_resilient`](super::load_resilient), where the unit is the file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        super::load::strict(path, None)
    }

    /// The same for one in-memory main file (includes resolve relative to `file`'s directory).
    pub fn from_str(text: &str, file: &Path) -> Result<Config, ConfigError> {
        super::load::strict(file, Some(text))
    }

    pub fn vpc(&self, name: &str) -> Option<&Vpc> {
        self.vpcs.iter().find(|v| v.name == name)
    }
}
