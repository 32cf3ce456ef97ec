//! One file: TOML into raw spanned structs, then the checks that need nothing but that file
//! (and, for an included file, the main file's `[daemon]` quotas). Checks across files are
//! in [`super::cross`], reading and includes in [`super::load`].
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Component, Path, PathBuf},
    time::Duration,
};

use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

use super::model::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    daemon: Option<Spanned<RawDaemon>>,
    cluster: Option<Spanned<RawCluster>>,
    include: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    vpc: Vec<Spanned<RawVpc>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    netns_prefix: Option<Spanned<String>>,
    datapath: Option<Spanned<String>>,
    state_dir: Option<Spanned<String>>,
    pin_dir: Option<Spanned<String>>,
    socket: Option<Spanned<String>>,
    socket_group: Option<Spanned<String>>,
    metrics: Option<Spanned<String>>,
    flow_log: Option<PathBuf>,
    flow_log_interval: Option<Spanned<String>>,
    flow_log_max_bytes: Option<u64>,
    flow_log_keep: Option<u32>,
    pending_expiry: Option<Spanned<String>>,
    max_active_peerings_per_vpc: Option<u32>,
    max_pending_peerings_per_vpc: Option<u32>,
    max_prefixes_per_vpc: Option<Spanned<u32>>,
    max_routes_per_vpc: Option<u32>,
    max_route_tables_per_vpc: Option<u32>,
    max_peerings_per_vpc: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    etcd: Spanned<Vec<Spanned<String>>>,
    host: Spanned<String>,
    underlay: Spanned<String>,
    #[serde(default)]
    vpcs: Vec<Spanned<String>>,
    key_prefix: Option<Spanned<String>>,
    lease_ttl: Option<Spanned<String>>,
    vxlan_port: Option<Spanned<i64>>,
    underlay_mtu: Option<Spanned<i64>>,
    tls: Option<Spanned<RawTls>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca: Spanned<String>,
    cert: Option<Spanned<String>>,
    key: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVpc {
    name: Spanned<String>,
    cidrs: Spanned<Vec<Spanned<String>>>,
    mtu: Option<Spanned<i64>>,
    #[serde(default)]
    peering: Vec<Spanned<RawPeering>>,
    #[serde(default)]
    subnet: Vec<Spanned<RawSubnet>>,
    #[serde(default)]
    route_table: Vec<Spanned<RawTable>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeering {
    id: Spanned<String>,
    peer: Spanned<String>,
    #[serde(default)]
    reject: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSubnet {
    cidr: Spanned<String>,
    route_table: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTable {
    name: Spanned<String>,
    #[serde(default)]
    routes: Vec<Spanned<RawRoute>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    destination: Spanned<String>,
    peering: Spanned<String>,
}

/// Turns byte offsets of one file into locations.
struct Source {
    file: PathBuf,
    line_starts: Vec<usize>,
}

impl Source {
    fn new(file: &Path, text: &str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Self {
            file: file.to_owned(),
            line_starts,
        }
    }

    fn at(&self, offset: usize) -> Location {
        // `line_starts[0] == 0 <= offset`, so the point is at least 1.
        let line = self.line_starts.partition_point(|&s| s <= offset).max(1);
        let start = self.line_starts.get(line - 1).copied().unwrap_or(0);
        Location {
            file: self.file.clone(),
            line,
            column: offset.saturating_sub(start) + 1,
        }
    }

    fn of<T>(&self, s: &Spanned<T>) -> Location {
        self.at(s.span().start)
    }
}

/// Which file this is: the main one (with `[daemon]`) or an included one, checked against the
/// main file's quotas.
#[derive(Clone, Copy)]
pub(crate) enum Role<'a> {
    Main,
    Included(&'a DaemonConfig),
}

/// An include pattern that passed the static checks (relative, no `..`, valid glob).
#[derive(Clone, Debug)]
pub(crate) struct Include {
    pub pattern: String,
    pub location: Location,
}

/// What one file says, and what is wrong with it on its own.
#[derive(Debug)]
pub(crate) struct ParsedFile {
    /// The main file's `[daemon]` (defaults when absent); `None` for an included file.
    pub daemon: Option<DaemonConfig>,
    pub includes: Vec<Include>,
    pub vpcs: Vec<Vpc>,
    pub errors: Vec<Diagnostic>,
}

pub(crate) fn parse_file(path: &Path, text: &str, role: Role<'_>) -> ParsedFile {
    let src = Source::new(path, text);
    let mut out = ParsedFile {
        daemon: matches!(role, Role::Main).then(DaemonConfig::default),
        includes: Vec::new(),
        vpcs: Vec::new(),
        errors: Vec::new(),
    };
    let raw: RawFile = match toml::from_str(text) {
        Ok(r) => r,
        Err(e) => {
            let loc = e.span().map(|s| src.at(s.start)).unwrap_or(Location {
                file: path.into(),
                line: 1,
                column: 1,
            });
            let mut msg = e.message().trim().to_owned();
            if msg.contains("unknown field `include`") {
                msg += " (include is a top-level key: write it before the first [table] header)";
            }
            out.errors.push(Diagnostic {
                location: Some(loc),
                message: msg,
            });
            return out;
        }
    };
    let mut errors = Vec::new();
    let mut daemon = match (role, raw.daemon) {
        (Role::Main, Some(d)) => daemon(d.into_inner(), &src, &mut errors),
        (Role::Main, None) => DaemonConfig::default(),
        (Role::Included(main), d) => {
            if let Some(d) = d {
                errors.push(Diagnostic {
                    location: Some(src.of(&d)),
                    message: "[daemon] is only allowed in the main configuration file".into(),
                });
            }
            main.clone()
        }
    };
    match (role, raw.cluster) {
        (Role::Main, Some(c)) => {
            daemon.cluster = cluster(c.into_inner(), &src, &mut errors);
            if daemon.datapath == DatapathMode::Xdp {
                errors.push(Diagnostic {
                    location: Some(Location {
                        file: path.into(),
                        line: 1,
                        column: 1,
                    }),
                    message: "datapath = \"xdp\" cannot carry cluster traffic: the VXLAN tunnel key is set by a TC program (XDP has no bpf_skb_set_tunnel_key); use datapath = \"tc\" with [cluster]".into(),
                });
            }
        }
        (Role::Main, None) => {}
        (Role::Included(_), Some(c)) => errors.push(Diagnostic {
            location: Some(src.of(&c)),
            message: "[cluster] is only allowed in the main configuration file".into(),
        }),
        (Role::Included(_), None) => {}
    }
    if matches!(role, Role::Main) {
        out.daemon = Some(daemon.clone());
    }
    let dir = path.parent().unwrap_or(Path::new(""));
    for p in raw.include.unwrap_or_default() {
        if let Some(inc) = include(&p, &src, dir, &mut errors) {
            out.includes.push(inc);
        }
    }
    let mut seen: BTreeMap<String, Location> = BTreeMap::new();
    for v in raw.vpc {
        let loc = src.of(&v);
        if daemon.cluster.is_some() {
            errors.push(Diagnostic {
                location: Some(loc),
                message: "in cluster mode VPCs live in etcd: write them with `peerd apply`, not in the host's configuration ([cluster] vpcs lists the VPCs present on this host)".into(),
            });
            continue;
        }
        if let Some(vpc) = vpc(v.into_inner(), loc, &src, &daemon, &mut seen, &mut errors) {
            out.vpcs.push(vpc);
        }
    }
    out.errors = errors;
    out
}

fn err(errors: &mut Vec<Diagnostic>, location: Location, message: String) {
    errors.push(Diagnostic {
        location: Some(location),
        message,
    });
}

fn include(
    p: &Spanned<String>,
    src: &Source,
    dir: &Path,
    errors: &mut Vec<Diagnostic>,
) -> Option<Include> {
    let pattern = p.get_ref();
    let loc = src.of(p);
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let problem = if pattern.is_empty() {
        Some("is empty".to_owned())
    } else if pattern.starts_with('/') {
        Some(format!(
            "is an absolute path: include patterns are relative to the including file's directory ({}) and stay inside it",
            dir.display()
        ))
    } else if Path::new(pattern)
        .components()
        .any(|c| c == Component::ParentDir)
    {
        Some(format!(
            "has a \"..\" component: include patterns stay inside the including file's directory ({})",
            dir.display()
        ))
    } else {
        glob::Pattern::new(pattern)
            .err()
            .map(|e| format!("is not a valid pattern: {e}"))
    };
    match problem {
        Some(why) => {
            err(errors, loc, format!("include {pattern:?} {why}"));
            None
        }
        None => Some(Include {
            pattern: pattern.clone(),
            location: loc,
        }),
    }
}

/// Longest durations accepted: beyond them a value is a typo, and date arithmetic downstream
/// could overflow.
const MAX_EXPIRY: Duration = Duration::from_secs(3650 * 86400);
const MAX_FLOW_LOG_INTERVAL: Duration = Duration::from_secs(86400);

/// "168h", "30m", "90s", "2h30m", "1d12h", "7d" (the `humantime` grammar: units from ns to
/// years, optionally separated by spaces).
pub(crate) fn parse_duration(s: &str) -> Option<Duration> {
    humantime::parse_duration(s.trim()).ok()
}

/// Longest control socket path: `sun_path` holds 108 bytes with the final NUL.
const MAX_SOCKET_PATH: usize = 107;
/// The bpffs root: removing or pinning into it directly would touch every program's pins.
const BPFFS_ROOT: &str = "/sys/fs/bpf";

fn is_root(p: &Path) -> bool {
    p.components().all(|c| c == Component::RootDir)
}

/// An absolute path without `..` (or an error naming `key`).
fn abs_path(
    s: &Spanned<String>,
    key: &str,
    src: &Source,
    errors: &mut Vec<Diagnostic>,
) -> Option<PathBuf> {
    let p = Path::new(s.get_ref());
    let why = if !p.is_absolute() {
        "must be an absolute path"
    } else if p.components().any(|c| c == Component::ParentDir) {
        "must not contain \"..\""
    } else if is_root(p) {
        "must not be /"
    } else {
        return Some(p.to_owned());
    };
    err(errors, src.of(s), format!("{key} {:?} {why}", s.get_ref()));
    None
}

/// A group name as `groupadd` accepts it: letters, digits, `_`, `.` and `-`, not starting with
/// `-` or a digit, at most 32 characters, optionally ending in `$`.
fn valid_group_name(n: &str) -> bool {
    let body = n.strip_suffix('$').unwrap_or(n);
    (1..=32).contains(&n.len())
        && body
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && body
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// A host name: a-z 0-9 - and ., 1 to 63 characters.
fn valid_host_name(n: &str) -> bool {
    (1..=63).contains(&n.len())
        && n.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
}

fn cluster(c: RawCluster, src: &Source, errors: &mut Vec<Diagnostic>) -> Option<ClusterConfig> {
    let before = errors.len();
    if c.etcd.get_ref().is_empty() {
        err(
            errors,
            src.of(&c.etcd),
            "[cluster] etcd needs at least one endpoint".into(),
        );
    }
    for e in c.etcd.get_ref() {
        let ok = e
            .get_ref()
            .strip_prefix("http://")
            .or_else(|| e.get_ref().strip_prefix("https://"))
            .is_some_and(|rest| !rest.is_empty() && !rest.contains(char::is_whitespace));
        if !ok {
            err(
                errors,
                src.of(e),
                format!(
                    "etcd endpoint {:?} is not an http:// or https:// URL",
                    show(e.get_ref())
                ),
            );
        }
    }
    if !valid_host_name(c.host.get_ref()) {
        err(
            errors,
            src.of(&c.host),
            format!(
                "host {:?} must be 1 to 63 characters of a-z, 0-9, - and .",
                show(c.host.get_ref())
            ),
        );
    }
    let underlay = match c.underlay.get_ref().parse::<std::net::IpAddr>() {
        Ok(a) if a.is_unspecified() || a.is_multicast() || a.is_loopback() => {
            err(
                errors,
                src.of(&c.underlay),
                format!("underlay {a} must be a unicast address other hosts can reach"),
            );
            None
        }
        Ok(a) => Some(a),
        Err(_) => {
            err(
                errors,
                src.of(&c.underlay),
                format!(
                    "underlay {:?} is not an IP address",
                    show(c.underlay.get_ref())
                ),
            );
            None
        }
    };
    let mut vpcs: Vec<String> = Vec::new();
    for v in &c.vpcs {
        if !valid_vpc_name(v.get_ref()) {
            err(
                errors,
                src.of(v),
                format!(
                    "VPC name {:?} must be 1 to 32 characters of a-z, 0-9 and -",
                    show(v.get_ref())
                ),
            );
        } else if vpcs.contains(v.get_ref()) {
            err(
                errors,
                src.of(v),
                format!("VPC {:?} is listed twice", v.get_ref()),
            );
        } else {
            vpcs.push(v.get_ref().clone());
        }
    }
    let key_prefix = match &c.key_prefix {
        None => ClusterConfig::DEFAULT_KEY_PREFIX.to_owned(),
        Some(p) => {
            let v = p.get_ref();
            let ok = v.starts_with('/')
                && v.ends_with('/')
                && v.len() <= 128
                && v.chars().all(|c| c.is_ascii_graphic());
            if !ok {
                err(
                    errors,
                    src.of(p),
                    format!("key_prefix {:?} must start and end with / (at most 128 printable characters)", show(v)),
                );
            }
            v.clone()
        }
    };
    let lease_ttl = match &c.lease_ttl {
        None => ClusterConfig::DEFAULT_LEASE_TTL,
        Some(s) => match parse_duration(s.get_ref()) {
            Some(d) if (2..=3600).contains(&d.as_secs()) => d,
            _ => {
                err(
                    errors,
                    src.of(s),
                    format!(
                        "lease_ttl {:?} must be a duration from 2s to 1h",
                        show(s.get_ref())
                    ),
                );
                ClusterConfig::DEFAULT_LEASE_TTL
            }
        },
    };
    let vxlan_port = match &c.vxlan_port {
        None => ClusterConfig::DEFAULT_VXLAN_PORT,
        Some(p) => match u16::try_from(*p.get_ref()) {
            Ok(v) if v > 0 => v,
            _ => {
                err(
                    errors,
                    src.of(p),
                    format!("vxlan_port {} is not a UDP port", p.get_ref()),
                );
                ClusterConfig::DEFAULT_VXLAN_PORT
            }
        },
    };
    let underlay_mtu = c
        .underlay_mtu
        .as_ref()
        .and_then(|m| match u32::try_from(*m.get_ref()) {
            Ok(v) if (1280 + 70..=65535).contains(&v) => Some(v),
            _ => {
                err(
                    errors,
                    src.of(m),
                    format!(
                        "underlay_mtu {} must be 1350..=65535 (IPv6 inside VXLAN needs 1280 + 70)",
                        m.get_ref()
                    ),
                );
                None
            }
        });
    let tls = c.tls.map(|t| {
        let loc = src.of(&t);
        let t = t.into_inner();
        let path = |s: &Spanned<String>, errors: &mut Vec<Diagnostic>| {
            abs_path(s, "tls path", src, errors)
        };
        let tls = Tls {
            ca: path(&t.ca, errors).unwrap_or_default(),
            cert: t.cert.as_ref().and_then(|p| path(p, errors)),
            key: t.key.as_ref().and_then(|p| path(p, errors)),
        };
        if tls.cert.is_some() != tls.key.is_some() {
            err(
                errors,
                loc,
                "[cluster.tls] needs both cert and key, or neither".into(),
            );
        }
        tls
    });
    (errors.len() == before).then(|| ClusterConfig {
        etcd: c
            .etcd
            .into_inner()
            .into_iter()
            .map(Spanned::into_inner)
            .collect(),
        host: c.host.into_inner(),
        underlay: underlay.unwrap_or(std::net::IpAddr::from([0, 0, 0, 0])),
        vpcs,
        key_prefix,
        lease_ttl,
        vxlan_port,
        underlay_mtu,
        tls,
    })
}

fn daemon(d: RawDaemon, src: &Source, errors: &mut Vec<Diagnostic>) -> DaemonConfig {
    let def = DaemonConfig::default();
    if let Some(p) = &d.netns_prefix {
        let ok = p.get_ref().len() <= 16
            && p.get_ref()
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !ok {
            err(
                errors,
                src.of(p),
                format!(
                    "netns_prefix {:?} must be at most 16 characters of a-z, 0-9 and -",
                    p.get_ref()
                ),
            );
        }
    }
    let datapath = match &d.datapath {
        None => DatapathMode::Tc,
        Some(s) => match s.get_ref().as_str() {
            "tc" => DatapathMode::Tc,
            "xdp" => DatapathMode::Xdp,
            other => {
                err(
                    errors,
                    src.of(s),
                    format!("datapath {other:?} is not one of \"tc\", \"xdp\""),
                );
                DatapathMode::Tc
            }
        },
    };
    let metrics = d
        .metrics
        .as_ref()
        .and_then(|m| match m.get_ref().parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                err(
                    errors,
                    src.of(m),
                    format!(
                        "metrics {:?} is not an address:port such as 127.0.0.1:9469",
                        m.get_ref()
                    ),
                );
                None
            }
        });
    let pending_expiry = match &d.pending_expiry {
        None => def.pending_expiry,
        Some(s) => match parse_duration(s.get_ref()) {
            Some(v) if v <= MAX_EXPIRY => v,
            _ => {
                err(
                    errors,
                    src.of(s),
                    format!(
                        "pending_expiry {:?} is not a duration of at most 3650d, such as \"168h\", \"30m\", \"90s\", \"1d12h\"",
                        s.get_ref()
                    ),
                );
                def.pending_expiry
            }
        },
    };
    let flow_log_interval = match &d.flow_log_interval {
        None => def.flow_log_interval,
        Some(s) => match parse_duration(s.get_ref()) {
            Some(v) if v >= Duration::from_secs(1) && v <= MAX_FLOW_LOG_INTERVAL => v,
            _ => {
                err(
                    errors,
                    src.of(s),
                    format!(
                        "flow_log_interval {:?} is not a duration from 1s to 1d, such as \"60s\"",
                        s.get_ref()
                    ),
                );
                def.flow_log_interval
            }
        },
    };
    let state_dir = d
        .state_dir
        .as_ref()
        .and_then(|s| abs_path(s, "state_dir", src, errors))
        .unwrap_or(def.state_dir);
    let pin_dir = match &d.pin_dir {
        None => def.pin_dir,
        Some(s) => match abs_path(s, "pin_dir", src, errors) {
            Some(p) if p == Path::new(BPFFS_ROOT) => {
                err(
                    errors,
                    src.of(s),
                    format!(
                        "pin_dir {:?} is the bpffs root: use a directory of peerd's own below it, such as \"/sys/fs/bpf/peerd\"",
                        s.get_ref()
                    ),
                );
                def.pin_dir
            }
            Some(p) => p,
            None => def.pin_dir,
        },
    };
    let socket = match &d.socket {
        None => def.socket,
        Some(s) => match abs_path(s, "socket", src, errors) {
            Some(p) if p.as_os_str().len() > MAX_SOCKET_PATH => {
                err(
                    errors,
                    src.of(s),
                    format!(
                        "socket {:?} is {} bytes long: a Unix socket path must be shorter than 108 bytes",
                        s.get_ref(),
                        p.as_os_str().len()
                    ),
                );
                def.socket
            }
            Some(p) => p,
            None => def.socket,
        },
    };
    let socket_group = d.socket_group.as_ref().and_then(|g| {
        if valid_group_name(g.get_ref()) {
            Some(g.get_ref().clone())
        } else {
            err(
                errors,
                src.of(g),
                format!(
                    "socket_group {:?} is not a group name (letters, digits, _ . -, at most 32 characters)",
                    g.get_ref()
                ),
            );
            None
        }
    });
    let max_prefixes_per_vpc = match &d.max_prefixes_per_vpc {
        None => def.max_prefixes_per_vpc,
        Some(v) if *v.get_ref() == 0 => {
            err(
                errors,
                src.of(v),
                "max_prefixes_per_vpc must be at least 1 (a VPC has at least one CIDR)".into(),
            );
            def.max_prefixes_per_vpc
        }
        Some(v) => *v.get_ref(),
    };
    DaemonConfig {
        netns_prefix: d
            .netns_prefix
            .map(Spanned::into_inner)
            .unwrap_or(def.netns_prefix),
        datapath,
        state_dir,
        pin_dir,
        socket,
        socket_group,
        metrics,
        flow_log: d.flow_log,
        flow_log_interval,
        flow_log_max_bytes: d
            .flow_log_max_bytes
            .unwrap_or(def.flow_log_max_bytes)
            .max(1024),
        flow_log_keep: d.flow_log_keep.unwrap_or(def.flow_log_keep),
        pending_expiry,
        max_active_peerings_per_vpc: d
            .max_active_peerings_per_vpc
            .unwrap_or(def.max_active_peerings_per_vpc),
        max_pending_peerings_per_vpc: d
            .max_pending_peerings_per_vpc
            .unwrap_or(def.max_pending_peerings_per_vpc),
        max_prefixes_per_vpc,
        max_routes_per_vpc: d.max_routes_per_vpc.unwrap_or(def.max_routes_per_vpc),
        max_route_tables_per_vpc: d
            .max_route_tables_per_vpc
            .unwrap_or(def.max_route_tables_per_vpc),
        max_peerings_per_vpc: d.max_peerings_per_vpc.unwrap_or(def.max_peerings_per_vpc),
        cluster: None,
    }
}

/// Address ranges no VPC may use, and why (SPEC §2: the gateway is link-local; the rest can
/// never be a workload's unicast address, or is the host's own).
const SPECIAL_RANGES: &[(&str, &str)] = &[
    (
        "0.0.0.0/8",
        "\"this network\", which includes the default route 0.0.0.0/0",
    ),
    ("127.0.0.0/8", "loopback"),
    (
        "169.254.0.0/16",
        "link-local: peerd's gateway 169.254.1.1 lives there",
    ),
    ("224.0.0.0/4", "multicast"),
    (
        "240.0.0.0/4",
        "reserved, with the broadcast address 255.255.255.255",
    ),
    (
        "::/128",
        "the unspecified address, which includes the default route ::/0",
    ),
    ("::1/128", "loopback"),
    ("::ffff:0:0/96", "IPv4-mapped addresses"),
    (
        "fe80::/10",
        "link-local: peerd's gateway fe80::1 lives there",
    ),
    ("ff00::/8", "multicast"),
];

pub(crate) fn special_ranges() -> impl Iterator<Item = (IpNet, &'static str)> {
    SPECIAL_RANGES
        .iter()
        .filter_map(|(n, why)| Some((n.parse().ok()?, *why)))
}

/// The special range `net` overlaps, if any.
fn special_overlap(net: &IpNet) -> Option<(IpNet, &'static str)> {
    special_ranges().find(|(r, _)| overlaps(r, net))
}

fn parse_cidr(
    s: &Spanned<String>,
    src: &Source,
    what: &str,
    errors: &mut Vec<Diagnostic>,
) -> Option<IpNet> {
    let loc = src.of(s);
    match s.get_ref().parse::<IpNet>() {
        Ok(net) if net.trunc() != net => {
            err(
                errors,
                loc,
                format!(
                    "{what} {} has host bits set; did you mean {}?",
                    s.get_ref(),
                    net.trunc()
                ),
            );
            None
        }
        Ok(net) => Some(net),
        Err(_) => {
            err(
                errors,
                loc,
                format!(
                    "{what} {:?} is not a CIDR such as 10.0.0.0/16 or 2001:db8::/56",
                    s.get_ref()
                ),
            );
            None
        }
    }
}

pub(crate) fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// A user string as is when it prints plainly, else quoted with escapes (no control characters
/// reach a terminal through an error message).
fn show(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_graphic() && c != '"') {
        s.into()
    } else {
        format!("{s:?}").into()
    }
}

fn valid_vpc_name(n: &str) -> bool {
    (1..=32).contains(&n.len())
        && n.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn valid_table_name(n: &str) -> bool {
    (1..=64).contains(&n.len())
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn valid_peering_id(n: &str) -> bool {
    n.starts_with("pcx-")
        && n.len() > 4
        && n.len() <= 64
        && n.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// One VPC's own rules; `None` only when its name is unusable (it could not be referred to).
fn vpc(
    raw: RawVpc,
    loc: Location,
    src: &Source,
    daemon: &DaemonConfig,
    seen: &mut BTreeMap<String, Location>,
    errors: &mut Vec<Diagnostic>,
) -> Option<Vpc> {
    let name = raw.name.get_ref().clone();
    let name_location = src.of(&raw.name);
    if !valid_vpc_name(&name) {
        err(
            errors,
            name_location,
            format!("VPC name {name:?} must be 1 to 32 characters of a-z, 0-9 and -"),
        );
        return None;
    }
    if let Some(first) = seen.get(&name) {
        err(
            errors,
            name_location.clone(),
            format!("VPC \"{name}\" is already defined at {first}"),
        );
    } else {
        seen.insert(name.clone(), name_location.clone());
    }
    if raw.cidrs.get_ref().is_empty() {
        err(
            errors,
            src.of(&raw.cidrs),
            format!("VPC \"{name}\" needs at least one CIDR"),
        );
    }
    let mut cidrs: Vec<IpNet> = Vec::new();
    for c in raw.cidrs.get_ref() {
        let Some(net) = parse_cidr(c, src, "CIDR", errors) else {
            continue;
        };
        if let Some((r, why)) = special_overlap(&net) {
            err(
                errors,
                src.of(c),
                format!("CIDR {net} of VPC \"{name}\" overlaps {r} ({why})"),
            );
        }
        if let Some(o) = cidrs.iter().find(|o| overlaps(o, &net)) {
            err(
                errors,
                src.of(c),
                format!("CIDR {net} overlaps {o}, another CIDR of VPC \"{name}\""),
            );
        }
        cidrs.push(net);
    }
    let mtu = raw.mtu.as_ref().and_then(|m| {
        let v = *m.get_ref();
        let min = if cidrs.iter().any(|c| matches!(c, IpNet::V6(_))) {
            1280
        } else {
            68
        };
        match u32::try_from(v) {
            Ok(v) if (min..=65535).contains(&v) => Some(v),
            _ => {
                let why = if min == 1280 {
                    " (IPv6 needs at least 1280)"
                } else {
                    ""
                };
                err(
                    errors,
                    src.of(m),
                    format!("mtu {v} is outside {min}..=65535{why}"),
                );
                None
            }
        }
    });
    let mut peerings: Vec<PeeringEnd> = Vec::new();
    // Every id written, valid or not, so a route to a misspelt end is not a second error.
    let mut declared: Vec<&str> = Vec::new();
    for p in &raw.peering {
        let pr = p.get_ref();
        let id = pr.id.get_ref();
        declared.push(id);
        let mut ok = true;
        if !valid_peering_id(id) {
            ok = false;
            err(
                errors,
                src.of(&pr.id),
                format!(
                    "peering id {id:?} must start with \"pcx-\" and use a-z, 0-9 and - (at most 64 characters)"
                ),
            );
        }
        let peer = pr.peer.get_ref();
        if !valid_vpc_name(peer) {
            ok = false;
            err(
                errors,
                src.of(&pr.peer),
                format!("peer {peer:?} of peering {id:?} is not a VPC name (1 to 32 characters of a-z, 0-9 and -)"),
            );
        }
        if !ok {
            continue;
        }
        if peerings.iter().any(|q| &q.id == id) {
            err(
                errors,
                src.of(&pr.id),
                format!("peering {id} is declared twice in VPC \"{name}\""),
            );
            continue;
        }
        peerings.push(PeeringEnd {
            id: id.clone(),
            peer: peer.clone(),
            reject: pr.reject,
            location: src.of(p),
        });
    }
    let mut tables: Vec<RouteTable> = Vec::new();
    for t in &raw.route_table {
        let tr = t.get_ref();
        let tname = tr.name.get_ref();
        if !valid_table_name(tname) {
            err(
                errors,
                src.of(&tr.name),
                format!("route table name {tname:?} must be 1 to 64 characters of a-z, A-Z, 0-9, -, _ and ."),
            );
            continue;
        }
        if tables.iter().any(|x| &x.name == tname) {
            err(
                errors,
                src.of(&tr.name),
                format!("route table \"{tname}\" is declared twice in VPC \"{name}\""),
            );
            continue;
        }
        let mut routes: Vec<Route> = Vec::new();
        for r in &tr.routes {
            let rr = r.get_ref();
            let Some(dst) = parse_cidr(&rr.destination, src, "route destination", errors) else {
                continue;
            };
            if dst.prefix_len() == 0 {
                err(
                    errors,
                    src.of(&rr.destination),
                    format!("route destination {dst} is a default route: peerd routes only to peers' CIDRs, write those (or parts of them)"),
                );
                continue;
            }
            if let Some((r, why)) = special_ranges().find(|(r, _)| r.contains(&dst)) {
                err(
                    errors,
                    src.of(&rr.destination),
                    format!("route destination {dst} lies in {r} ({why}), which is never a peer's address"),
                );
                continue;
            }
            let pid = rr.peering.get_ref();
            if !declared.contains(&pid.as_str()) {
                err(
                    errors,
                    src.of(&rr.peering),
                    format!(
                        "route to {dst} names peering {}, which VPC \"{name}\" does not declare",
                        show(pid)
                    ),
                );
            }
            if routes.iter().any(|x| x.destination == dst) {
                err(
                    errors,
                    src.of(&rr.destination),
                    format!("route table \"{tname}\" has two routes for {dst}"),
                );
                continue;
            }
            routes.push(Route {
                destination: dst,
                peering: pid.clone(),
                location: src.of(r),
            });
        }
        tables.push(RouteTable {
            name: tname.clone(),
            routes,
            location: src.of(t),
        });
    }
    let mut subnets: Vec<Subnet> = Vec::new();
    for s in &raw.subnet {
        let sr = s.get_ref();
        let Some(net) = parse_cidr(&sr.cidr, src, "subnet", errors) else {
            continue;
        };
        let sloc = src.of(&sr.cidr);
        if !cidrs.iter().any(|c| c.contains(&net)) {
            err(
                errors,
                sloc.clone(),
                format!("subnet {net} is not inside any CIDR of VPC \"{name}\""),
            );
        }
        if let Some((r, why)) = special_overlap(&net) {
            err(
                errors,
                sloc.clone(),
                format!("subnet {net} of VPC \"{name}\" overlaps {r} ({why})"),
            );
        }
        if let Some(o) = subnets.iter().find(|o| overlaps(&o.cidr, &net)) {
            err(
                errors,
                sloc.clone(),
                format!("subnet {net} overlaps subnet {} of VPC \"{name}\"", o.cidr),
            );
        }
        let table = sr.route_table.get_ref();
        if !tables.iter().any(|t| &t.name == table) {
            err(
                errors,
                src.of(&sr.route_table),
                format!("subnet {net} names route table {table:?}, which VPC \"{name}\" does not declare"),
            );
        }
        subnets.push(Subnet {
            cidr: net,
            route_table: table.clone(),
            location: src.of(s),
        });
    }
    let v = Vpc {
        name,
        name_location,
        cidrs,
        mtu,
        peerings,
        subnets,
        route_tables: tables,
        location: loc,
    };
    quotas(&raw, &v, daemon, errors);
    Some(v)
}

/// The per-VPC quotas of `[daemon]`, counted on what was written (valid or not), at the VPC's
/// location.
fn quotas(raw: &RawVpc, v: &Vpc, d: &DaemonConfig, errors: &mut Vec<Diagnostic>) {
    let routes: usize = raw
        .route_table
        .iter()
        .map(|t| t.get_ref().routes.len())
        .sum();
    for (n, max, what, key) in [
        (
            raw.cidrs.get_ref().len() + raw.subnet.len(),
            d.max_prefixes_per_vpc,
            "source prefixes (CIDRs and subnets)",
            "max_prefixes_per_vpc",
        ),
        (routes, d.max_routes_per_vpc, "routes", "max_routes_per_vpc"),
        (
            raw.route_table.len(),
            d.max_route_tables_per_vpc,
            "route tables",
            "max_route_tables_per_vpc",
        ),
        (
            raw.peering.len(),
            d.max_peerings_per_vpc,
            "peerings",
            "max_peerings_per_vpc",
        ),
    ] {
        if n > max as usize {
            err(
                errors,
                v.location.clone(),
                format!("VPC \"{}\" has {n} {what}, more than {key} = {max}", v.name),
            );
        }
    }
}
