//! Reading files (with includes), TOML into raw spanned structs, then validation into the model.
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

use super::model::*;

const MAX_INCLUDE_DEPTH: usize = 8;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    daemon: Option<Spanned<RawDaemon>>,
    include: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    vpc: Vec<Spanned<RawVpc>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    netns_prefix: Option<Spanned<String>>,
    datapath: Option<Spanned<String>>,
    state_dir: Option<PathBuf>,
    pin_dir: Option<PathBuf>,
    socket: Option<PathBuf>,
    metrics: Option<Spanned<String>>,
    flow_log: Option<PathBuf>,
    flow_log_interval: Option<Spanned<String>>,
    flow_log_max_bytes: Option<u64>,
    flow_log_keep: Option<u32>,
    pending_expiry: Option<Spanned<String>>,
    max_active_peerings_per_vpc: Option<u32>,
    max_pending_peerings_per_vpc: Option<u32>,
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
        let line = self.line_starts.partition_point(|&s| s <= offset).max(1);
        Location {
            file: self.file.clone(),
            line,
            column: offset - self.line_starts[line - 1] + 1,
        }
    }

    fn of<T>(&self, s: &Spanned<T>) -> Location {
        self.at(s.span().start)
    }
}

struct Loader {
    errors: Vec<Diagnostic>,
    files: Vec<PathBuf>,
    watch_dirs: Vec<PathBuf>,
    vpcs: Vec<(RawVpc, Location, std::rc::Rc<Source>)>,
    daemon: DaemonConfig,
}

impl Loader {
    fn err(&mut self, location: Option<Location>, message: impl Into<String>) {
        self.errors.push(Diagnostic {
            location,
            message: message.into(),
        });
    }

    fn file(
        &mut self,
        path: &Path,
        text: Option<&str>,
        depth: usize,
        stack: &mut Vec<PathBuf>,
        from: Option<Location>,
    ) {
        let owned;
        let text = match text {
            Some(t) => t,
            None => match std::fs::read(path) {
                Ok(bytes) => match String::from_utf8(bytes) {
                    Ok(t) => {
                        owned = t;
                        &owned
                    }
                    Err(_) => {
                        return self.err(
                            from.or(Some(Location {
                                file: path.into(),
                                line: 1,
                                column: 1,
                            })),
                            format!("{} is not a UTF-8 text file", path.display()),
                        )
                    }
                },
                Err(e) => return self.err(from, format!("cannot read {}: {e}", path.display())),
            },
        };
        let canonical = path.canonicalize().unwrap_or_else(|_| path.to_owned());
        if stack.contains(&canonical) {
            return self.err(
                from,
                format!("include cycle: {} includes itself", path.display()),
            );
        }
        self.files.push(path.to_owned());
        self.watch_dirs.push(
            path.parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .to_owned(),
        );
        let src = std::rc::Rc::new(Source::new(path, text));
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
                    msg +=
                        " (include is a top-level key: write it before the first [table] header)";
                }
                return self.err(Some(loc), msg);
            }
        };
        if let Some(d) = raw.daemon {
            if depth > 0 {
                self.err(
                    Some(src.of(&d)),
                    "[daemon] is only allowed in the main configuration file",
                );
            } else {
                self.daemon(d.into_inner(), &src);
            }
        }
        self.vpcs.extend(raw.vpc.into_iter().map(|v| {
            let loc = src.of(&v);
            (v.into_inner(), loc, src.clone())
        }));
        for pattern in raw.include.unwrap_or_default() {
            let loc = src.of(&pattern);
            if depth + 1 > MAX_INCLUDE_DEPTH {
                self.err(
                    Some(loc.clone()),
                    format!("includes nested deeper than {MAX_INCLUDE_DEPTH} levels"),
                );
                continue;
            }
            let base = path.parent().unwrap_or(Path::new("."));
            let full = base.join(pattern.get_ref());
            if let Some(dir) = full.parent() {
                if !dir.to_string_lossy().contains(['*', '?', '[']) {
                    self.watch_dirs.push(dir.to_owned());
                }
            }
            let is_glob = pattern.get_ref().contains(['*', '?', '[']);
            let mut matched: Vec<PathBuf> = match glob::glob(&full.to_string_lossy()) {
                Ok(paths) => paths
                    .filter_map(Result::ok)
                    .filter(|p| p.is_file())
                    .collect(),
                Err(e) => {
                    self.err(
                        Some(loc.clone()),
                        format!("include pattern \"{}\" is invalid: {e}", pattern.get_ref()),
                    );
                    continue;
                }
            };
            matched.sort();
            if matched.is_empty() && !is_glob {
                self.err(
                    Some(loc.clone()),
                    format!("include \"{}\" matches no file", pattern.get_ref()),
                );
            }
            stack.push(canonical.clone());
            for m in matched {
                self.file(&m, None, depth + 1, stack, Some(loc.clone()));
            }
            stack.pop();
        }
    }

    fn daemon(&mut self, d: RawDaemon, src: &Source) {
        let def = DaemonConfig::default();
        if let Some(p) = &d.netns_prefix {
            let ok = p.get_ref().len() <= 16
                && p.get_ref()
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
            if !ok {
                self.err(
                    Some(src.of(p)),
                    format!(
                        "netns_prefix \"{}\" must be at most 16 characters of a-z, 0-9 and -",
                        p.get_ref()
                    ),
                );
            }
        }
        let datapath = match d.datapath.as_ref().map(|s| s.get_ref().as_str()) {
            None | Some("tc") => DatapathMode::Tc,
            Some("xdp") => DatapathMode::Xdp,
            Some(other) => {
                self.err(
                    Some(src.of(d.datapath.as_ref().unwrap())),
                    format!("datapath \"{other}\" is not one of \"tc\", \"xdp\""),
                );
                DatapathMode::Tc
            }
        };
        let metrics = d
            .metrics
            .as_ref()
            .and_then(|m| match m.get_ref().parse::<SocketAddr>() {
                Ok(a) => Some(a),
                Err(_) => {
                    self.err(
                        Some(src.of(m)),
                        format!(
                            "metrics \"{}\" is not an address:port such as 127.0.0.1:9469",
                            m.get_ref()
                        ),
                    );
                    None
                }
            });
        let pending_expiry = match &d.pending_expiry {
            None => def.pending_expiry,
            Some(s) => parse_duration(s.get_ref()).unwrap_or_else(|| {
                self.err(Some(src.of(s)), format!("pending_expiry \"{}\" is not a duration such as \"168h\", \"30m\", \"90s\", \"1d12h\"", s.get_ref()));
                def.pending_expiry
            }),
        };
        let flow_log_interval = match &d.flow_log_interval {
            None => def.flow_log_interval,
            Some(s) => match parse_duration(s.get_ref()) {
                Some(v) if v.as_secs() >= 1 => v,
                _ => {
                    self.err(
                        Some(src.of(s)),
                        format!("flow_log_interval \"{}\" is not a duration of at least 1s, such as \"60s\"", s.get_ref()),
                    );
                    def.flow_log_interval
                }
            },
        };
        self.daemon = DaemonConfig {
            netns_prefix: d
                .netns_prefix
                .map(Spanned::into_inner)
                .unwrap_or(def.netns_prefix),
            datapath,
            state_dir: d.state_dir.unwrap_or(def.state_dir),
            pin_dir: d.pin_dir.unwrap_or(def.pin_dir),
            socket: d.socket.unwrap_or(def.socket),
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
        };
    }
}

/// "168h", "30m", "90s", "2h30m", "1d".
pub(crate) fn parse_duration(s: &str) -> Option<Duration> {
    let mut total = 0u64;
    let mut num = String::new();
    let mut any = false;
    for c in s.trim().chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: u64 = num.parse().ok()?;
        num.clear();
        total = total.checked_add(n.checked_mul(match c {
            'd' => 86400,
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return None,
        })?)?;
        any = true;
    }
    (num.is_empty() && any).then(|| Duration::from_secs(total))
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
            errors.push(Diagnostic {
                location: Some(loc),
                message: format!(
                    "{what} {} has host bits set; did you mean {}?",
                    s.get_ref(),
                    net.trunc()
                ),
            });
            None
        }
        Ok(net) => Some(net),
        Err(_) => {
            errors.push(Diagnostic {
                location: Some(loc),
                message: format!(
                    "{what} \"{}\" is not a CIDR such as 10.0.0.0/16 or 2001:db8::/56",
                    s.get_ref()
                ),
            });
            None
        }
    }
}

pub(crate) fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

fn valid_vpc_name(n: &str) -> bool {
    (1..=32).contains(&n.len())
        && n.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn valid_peering_id(n: &str) -> bool {
    n.starts_with("pcx-")
        && n.len() > 4
        && n.len() <= 64
        && n.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

pub(crate) fn load(path: &Path, text: Option<&str>) -> Result<Config, ConfigError> {
    let mut l = Loader {
        errors: Vec::new(),
        files: Vec::new(),
        watch_dirs: Vec::new(),
        vpcs: Vec::new(),
        daemon: DaemonConfig::default(),
    };
    l.file(path, text, 0, &mut Vec::new(), None);
    let mut errors = std::mem::take(&mut l.errors);
    let mut vpcs = Vec::new();
    let mut seen: BTreeMap<String, Location> = BTreeMap::new();
    for (raw, loc, src) in l.vpcs {
        let name = raw.name.get_ref().clone();
        macro_rules! e {
            ($s:expr, $m:expr) => {
                errors.push(Diagnostic {
                    location: Some(src.of($s)),
                    message: $m,
                })
            };
        }
        if !valid_vpc_name(&name) {
            e!(
                &raw.name,
                format!("VPC name \"{name}\" must be 1 to 32 characters of a-z, 0-9 and -")
            );
        } else if let Some(first) = seen.get(&name) {
            e!(
                &raw.name,
                format!("VPC \"{name}\" is already defined at {first}")
            );
        } else {
            seen.insert(name.clone(), src.of(&raw.name));
        }
        if raw.cidrs.get_ref().is_empty() {
            e!(
                &raw.cidrs,
                format!("VPC \"{name}\" needs at least one CIDR")
            );
        }
        let mut cidrs: Vec<IpNet> = Vec::new();
        for c in raw.cidrs.get_ref() {
            if let Some(net) = parse_cidr(c, &src, "CIDR", &mut errors) {
                if let Some(o) = cidrs.iter().find(|o| overlaps(o, &net)) {
                    errors.push(Diagnostic {
                        location: Some(src.of(c)),
                        message: format!("CIDR {net} overlaps {o}, another CIDR of VPC \"{name}\""),
                    });
                }
                cidrs.push(net);
            }
        }
        let mtu = raw.mtu.as_ref().and_then(|m| {
            let v = *m.get_ref();
            let min = if cidrs.iter().any(|c| matches!(c, IpNet::V6(_))) {
                1280
            } else {
                68
            };
            if v < min || v > 65535 {
                e!(
                    m,
                    format!(
                        "mtu {v} is outside {min}..=65535{}",
                        if min == 1280 {
                            " (IPv6 needs at least 1280)"
                        } else {
                            ""
                        }
                    )
                );
                None
            } else {
                Some(v as u32)
            }
        });
        let mut peerings: Vec<PeeringEnd> = Vec::new();
        for p in &raw.peering {
            let pr = p.get_ref();
            let id = pr.id.get_ref();
            if !valid_peering_id(id) {
                e!(&pr.id, format!("peering id \"{id}\" must start with \"pcx-\" and use a-z, 0-9 and - (at most 64 characters)"));
            }
            if peerings.iter().any(|q| &q.id == id) {
                e!(
                    &pr.id,
                    format!("peering {id} is declared twice in VPC \"{name}\"")
                );
                continue;
            }
            peerings.push(PeeringEnd {
                id: id.clone(),
                peer: pr.peer.get_ref().clone(),
                reject: pr.reject,
                location: src.of(p),
            });
        }
        let mut tables: Vec<RouteTable> = Vec::new();
        for t in &raw.route_table {
            let tr = t.get_ref();
            let tname = tr.name.get_ref();
            if tables.iter().any(|x| &x.name == tname) {
                errors.push(Diagnostic {
                    location: Some(src.of(&tr.name)),
                    message: format!("route table \"{tname}\" is declared twice in VPC \"{name}\""),
                });
                continue;
            }
            let mut routes: Vec<Route> = Vec::new();
            for r in &tr.routes {
                let rr = r.get_ref();
                let Some(dst) = parse_cidr(&rr.destination, &src, "route destination", &mut errors)
                else {
                    continue;
                };
                let pid = rr.peering.get_ref();
                if !peerings.iter().any(|p| &p.id == pid) {
                    errors.push(Diagnostic { location: Some(src.of(&rr.peering)), message: format!("route to {dst} names peering {pid}, which VPC \"{name}\" does not declare") });
                }
                if routes.iter().any(|x| x.destination == dst) {
                    errors.push(Diagnostic {
                        location: Some(src.of(&rr.destination)),
                        message: format!("route table \"{tname}\" has two routes for {dst}"),
                    });
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
            let Some(net) = parse_cidr(&sr.cidr, &src, "subnet", &mut errors) else {
                continue;
            };
            let loc = src.of(&sr.cidr);
            if !cidrs.iter().any(|c| c.contains(&net)) {
                errors.push(Diagnostic {
                    location: Some(loc.clone()),
                    message: format!("subnet {net} is not inside any CIDR of VPC \"{name}\""),
                });
            }
            if let Some(o) = subnets.iter().find(|o| overlaps(&o.cidr, &net)) {
                errors.push(Diagnostic {
                    location: Some(loc.clone()),
                    message: format!("subnet {net} overlaps subnet {} of VPC \"{name}\"", o.cidr),
                });
            }
            let table = sr.route_table.get_ref();
            if !tables.iter().any(|t| &t.name == table) {
                errors.push(Diagnostic { location: Some(src.of(&sr.route_table)), message: format!("subnet {net} names route table \"{table}\", which VPC \"{name}\" does not declare") });
            }
            subnets.push(Subnet {
                cidr: net,
                route_table: table.clone(),
                location: src.of(s),
            });
        }
        vpcs.push(Vpc {
            name,
            cidrs,
            mtu,
            peerings,
            subnets,
            route_tables: tables,
            location: loc,
        });
    }

    // Both ends of an id must agree on the pair; an id has at most two ends.
    let mut ends: BTreeMap<&str, Vec<(&Vpc, &PeeringEnd)>> = BTreeMap::new();
    for v in &vpcs {
        for p in &v.peerings {
            ends.entry(p.id.as_str()).or_default().push((v, p));
        }
    }
    for (id, es) in &ends {
        if es.len() > 2 {
            let names: Vec<&str> = es.iter().map(|(v, _)| v.name.as_str()).collect();
            errors.push(Diagnostic {
                location: Some(es[2].1.location.clone()),
                message: format!(
                    "peering {id} is declared by more than two VPCs ({})",
                    names.join(", ")
                ),
            });
        } else if let [(va, pa), (vb, pb)] = es.as_slice() {
            if pa.peer != vb.name || pb.peer != va.name {
                errors.push(Diagnostic {
                    location: Some(pb.location.clone()),
                    message: format!(
                        "the two ends of peering {id} disagree: VPC \"{}\" peers with \"{}\" (at {}), VPC \"{}\" peers with \"{}\"",
                        va.name, pa.peer, pa.location, vb.name, pb.peer
                    ),
                });
            }
        }
    }

    if !errors.is_empty() {
        return Err(ConfigError { errors });
    }
    let mut watch_dirs = l.watch_dirs;
    watch_dirs.sort();
    watch_dirs.dedup();
    Ok(Config {
        daemon: l.daemon,
        vpcs,
        files: l.files,
        watch_dirs,
    })
}
