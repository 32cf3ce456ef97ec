//! The daemon: holds the last good configuration, reconciles host and datapath to it, and
//! answers the control socket.
use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use serde::Serialize;
use tracing::{error, info, warn};

use crate::{
    compile::{self, Plan},
    config::{self, Config, PeeringState},
    datapath::{self, Datapath},
    netns,
    state::{self, State},
    tables::Tables,
};
use peerd_common::{VpcInfo, VPC_PRESENT};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Datapath(#[from] datapath::Error),
    #[error(transparent)]
    State(#[from] state::Error),
    #[error("another peerd is already running on {0}")]
    AlreadyRunning(PathBuf),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct CounterJson {
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct VpcStatus {
    pub name: String,
    pub netns: String,
    pub ready: bool,
    pub host_if: String,
    pub error: Option<String>,
    /// Drops of traffic from this VPC, by reason (only reasons that happened).
    pub drops: BTreeMap<&'static str, CounterJson>,
}

#[derive(Clone, Debug, Serialize)]
pub struct PeeringStatus {
    pub id: String,
    pub vpcs: [String; 2],
    pub state: PeeringState,
    pub reason: Option<String>,
    pub first_seen: Option<u64>,
    pub activated_at: Option<u64>,
    /// Forwarded from vpcs[0] to vpcs[1], and back.
    pub forwarded: [CounterJson; 2],
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ReconcileReport {
    /// Host changes (namespaces, links, neighbours, routes) and datapath changes (map entries,
    /// links), one line each. Empty: the host already was as configured.
    pub actions: Vec<String>,
    pub duration_ms: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub generation: u64,
    pub config_error: Option<String>,
    pub datapath: &'static str,
    pub vpcs: Vec<VpcStatus>,
    pub peerings: Vec<PeeringStatus>,
    pub last_reconcile: ReconcileReport,
    pub flow_log: Option<FlowLogStatus>,
}

pub struct Daemon {
    pub config_path: PathBuf,
    pub cfg: Config,
    pub state: State,
    pub datapath: Datapath,
    pub plan: Plan,
    pub generation: u64,
    pub config_error: Option<String>,
    pub vpc_errors: BTreeMap<String, String>,
    pub last_reconcile: ReconcileReport,
    /// Reconciles run, and their durations (metrics).
    pub reconciles: u64,
    pub reconcile_seconds: prometheus_client::metrics::histogram::Histogram,
    /// When the configuration was last loaded, successfully or not (Unix seconds).
    pub last_reload_unix: u64,
    /// The flow log, when `[daemon] flow_log` is set.
    pub flow_log: Option<crate::flowlog::Writer>,
    pub flow_log_error: Option<String>,
    /// Host spec and state of each VPC as last ensured.
    pub applied: BTreeMap<String, (netns::VpcHostSpec, netns::VpcHostState)>,
}

pub type Shared = Arc<Mutex<Daemon>>;

impl Daemon {
    /// Loads config, state and datapath and converges once.
    pub fn start(config_path: &Path) -> Result<Daemon, Error> {
        let cfg = Config::load(config_path)?;
        let (st, warning) = State::load(&cfg.daemon.state_dir);
        if let Some(w) = warning {
            warn!("{w}");
        }
        let dp = Datapath::load(&cfg.daemon.pin_dir)?;
        let mut d = Daemon {
            config_path: config_path.to_owned(),
            cfg,
            state: st,
            datapath: dp,
            plan: Plan::default(),
            generation: 0,
            config_error: None,
            vpc_errors: BTreeMap::new(),
            last_reconcile: ReconcileReport::default(),
            reconciles: 0,
            reconcile_seconds: crate::metrics::reconcile_histogram(),
            last_reload_unix: state::unix(SystemTime::now()),
            flow_log: None,
            flow_log_error: None,
            applied: BTreeMap::new(),
        };
        d.reconcile()?;
        Ok(d)
    }

    /// Re-reads the configuration. A bad one is reported and changes nothing.
    pub fn reload(&mut self) -> Result<(), Error> {
        self.last_reload_unix = state::unix(SystemTime::now());
        match Config::load(&self.config_path) {
            Ok(cfg) => {
                if cfg.daemon.pin_dir != self.cfg.daemon.pin_dir
                    || cfg.daemon.netns_prefix != self.cfg.daemon.netns_prefix
                    || cfg.daemon.state_dir != self.cfg.daemon.state_dir
                {
                    warn!("pin_dir, netns_prefix and state_dir changes apply at the next restart");
                }
                if cfg.daemon.metrics != self.cfg.daemon.metrics
                    || cfg.daemon.socket != self.cfg.daemon.socket
                {
                    warn!("metrics and socket changes apply at the next restart");
                }
                self.config_error = None;
                // Settings that only apply at a restart keep their running values.
                let mut cfg = cfg;
                let running = &self.cfg.daemon;
                cfg.daemon.pin_dir = running.pin_dir.clone();
                cfg.daemon.netns_prefix = running.netns_prefix.clone();
                cfg.daemon.state_dir = running.state_dir.clone();
                cfg.daemon.metrics = running.metrics;
                cfg.daemon.socket = running.socket.clone();
                if cfg == self.cfg {
                    info!("configuration unchanged");
                    return Ok(());
                }
                self.cfg = cfg;
                // A reload touches only the VPCs whose host spec changed; repairs of the others
                // are the job of drift events and the periodic full resync.
                self.reconcile_with(false)
            }
            Err(e) => {
                error!(error = %e, "configuration rejected; the last good one stays in force");
                self.config_error = Some(e.to_string());
                Err(e.into())
            }
        }
    }

    /// Makes host and datapath match the last good configuration; changes only the difference.
    /// Every VPC's host state is checked against the system.
    pub fn reconcile(&mut self) -> Result<(), Error> {
        self.reconcile_with(true)
    }

    /// `full = false` trusts VPCs whose host spec is unchanged since they were last ensured
    /// (fast reloads on big hosts).
    pub fn reconcile_with(&mut self, full: bool) -> Result<(), Error> {
        let started = Instant::now();
        let now = SystemTime::now();
        let mut actions = Vec::new();
        let st = &mut self.state;
        let first_seen = |id: &str| st.peerings.get(id).map(|r| state::from_unix(r.first_seen));
        let mut peerings = config::evaluate_peerings(&self.cfg, &first_seen);
        compile::apply_lifecycle(&self.cfg, &mut peerings, &mut self.state, now)?;
        for p in &peerings {
            let prev = self
                .plan
                .peerings
                .iter()
                .find(|q| q.id == p.id)
                .map(|q| q.state);
            if prev != Some(p.state) {
                info!(peering = %p.id, vpcs = ?p.vpcs, state = %p.state, reason = ?p.reason, "peering state");
            }
        }
        let old_vpcs: BTreeSet<String> = self.state.vpcs.keys().cloned().collect();
        let old_slots = (self.state.vpcs.clone(), self.state.peerings.clone());
        let mut plan = compile::compile(&self.cfg, peerings, &mut self.state)?;
        // A slot given to a new VPC or peering starts with zeroed counters.
        for (name, slot) in &self.state.vpcs {
            if old_slots.0.get(name) != Some(slot) {
                self.datapath.reset_vpc_counters(*slot)?;
            }
        }
        for (id, rec) in &self.state.peerings {
            if old_slots.1.get(id).map(|r| r.slot) != Some(rec.slot) {
                self.datapath.reset_peering_counters(rec.slot)?;
            }
        }

        // Host: namespaces, links, neighbours, routes.
        let mut tables = std::mem::take(&mut plan.tables);
        if full {
            self.vpc_errors.clear();
        }
        let mut attach = Vec::new();
        let mut keep = BTreeSet::new();
        let mut restore_features = Vec::new();
        let mut specs = Vec::with_capacity(plan.vpcs.len());
        let xdp_links = match self.cfg.daemon.datapath {
            config::DatapathMode::Tc => self.datapath.xdp_link_ifnames(),
            config::DatapathMode::Xdp => BTreeSet::new(),
        };
        for v in &plan.vpcs {
            let spec = netns::VpcHostSpec {
                netns: v.netns.clone(),
                host_if: v.host_if.clone(),
                mtu: v.mtu,
                routes: v.ns_routes.clone(),
                // Switching XDP -> TC: keep the XDP-friendly features until the XDP links are
                // gone (below), or redirects into this VPC would be dropped meanwhile.
                xdp: match self.cfg.daemon.datapath {
                    config::DatapathMode::Xdp => Some(true),
                    config::DatapathMode::Tc if xdp_links.contains(&v.host_if) => None,
                    config::DatapathMode::Tc => Some(false),
                },
            };
            if spec.xdp.is_none() {
                restore_features.push(v.netns.clone());
            }
            let known = self
                .applied
                .get(&v.name)
                .filter(|(s, _)| !full && *s == spec)
                .map(|(_, h)| *h);
            specs.push((spec, known));
        }
        // The VPCs whose host state must be checked or built, side by side.
        let todo: Vec<netns::VpcHostSpec> = specs
            .iter()
            .filter(|(_, k)| k.is_none())
            .map(|(s, _)| s.clone())
            .collect();
        let mut ensured_all = netns::ensure_vpcs(&todo).into_iter();
        for (v, (spec, known)) in plan.vpcs.iter().zip(specs) {
            let ensured = match known {
                Some(h) => Ok((h, netns::Changes::default())),
                None => ensured_all
                    .next()
                    .unwrap_or_else(|| Err(netns::Error::Thread(spec.netns.clone()))),
            };
            if known.is_none() {
                self.vpc_errors.remove(&v.name);
            }
            match ensured {
                Ok((host, changes)) => {
                    if known.is_none() {
                        self.applied.insert(v.name.clone(), (spec.clone(), host));
                    }
                    actions.extend(changes.actions);
                    tables.ifaces.insert(host.host_ifindex, v.slot);
                    tables.vpcs.insert(
                        v.slot,
                        VpcInfo {
                            host_ifindex: host.host_ifindex,
                            flags: VPC_PRESENT,
                            ns_mac: host.ns_mac,
                            gw_mac: host.host_mac,
                        },
                    );
                    if known.is_none() {
                        attach.push((v.name.clone(), v.host_if.clone(), host.host_ifindex));
                    }
                    keep.insert((v.host_if.clone(), host.host_ifindex));
                }
                Err(e) => {
                    self.applied.remove(&v.name);
                    error!(vpc = %v.name, error = %e, "VPC host state not ready");
                    self.vpc_errors.insert(v.name.clone(), e.to_string());
                }
            }
        }

        // Flow log on or off, as configured.
        let d = &self.cfg.daemon;
        match (&d.flow_log, &self.flow_log) {
            (Some(p), Some(w)) if w.path() == p => {}
            (Some(p), _) => {
                self.flow_log = Some(crate::flowlog::Writer::new(
                    p,
                    d.flow_log_max_bytes,
                    d.flow_log_keep,
                ))
            }
            (None, _) => self.flow_log = None,
        }
        self.datapath.set_flow_log(self.flow_log.is_some())?;

        // Datapath: new entries first, then removals; then attach to new links.
        let st = if full {
            self.datapath.sync(&tables)?
        } else {
            self.datapath.sync_incremental(&tables)?
        };
        if st.written > 0 {
            actions.push(format!("wrote {} datapath map entries", st.written));
        }
        if st.removed > 0 {
            actions.push(format!("removed {} datapath map entries", st.removed));
        }
        for (vpc, ifname, ifindex) in &attach {
            match self
                .datapath
                .attach(self.cfg.daemon.datapath, ifname, *ifindex)
            {
                Ok(datapath::Attach::Created) => {
                    actions.push(format!("attached datapath to {ifname}"))
                }
                Ok(datapath::Attach::Repaired) => actions.push(format!(
                    "re-attached datapath to {ifname} (it had been detached)"
                )),
                Ok(datapath::Attach::Replaced) => {
                    actions.push(format!("replaced datapath program on {ifname}"))
                }
                Ok(datapath::Attach::Unchanged) => {}
                Err(e) => {
                    error!(vpc = %vpc, error = %e, "attaching datapath");
                    self.applied.remove(vpc);
                    self.vpc_errors.insert(vpc.clone(), e.to_string());
                }
            }
        }

        // VPCs peerd created that are no longer configured.
        let new_vpcs: BTreeSet<String> = plan.vpcs.iter().map(|v| v.name.clone()).collect();
        self.applied.retain(|name, _| new_vpcs.contains(name));
        for gone in old_vpcs.difference(&new_vpcs) {
            let ns = format!("{}{}", self.cfg.daemon.netns_prefix, gone);
            match netns::remove_vpc(&ns, &netns::host_ifname(&ns)) {
                Ok(changes) => actions.extend(changes.actions),
                Err(e) => error!(vpc = %gone, error = %e, "removing VPC"),
            }
        }
        // Links of removed VPCs, and of the other datapath mode after a switch (the new mode's
        // links are already attached above).
        let pruned = self.datapath.prune_links(self.cfg.daemon.datapath, &keep)?;
        if pruned > 0 {
            actions.push(format!("removed {pruned} stale datapath links"));
        }
        for ns in restore_features {
            match netns::set_vpc_features(&ns, false) {
                Ok(c) => actions.extend(c.actions),
                Err(e) => error!(netns = %ns, error = %e, "restoring TC features"),
            }
        }

        self.state.save(&self.cfg.daemon.state_dir)?;
        plan.tables = tables;
        self.plan = plan;
        self.generation += 1;
        let duration_ms = started.elapsed().as_millis() as u64;
        if actions.is_empty() {
            info!(
                generation = self.generation,
                duration_ms, "reconciled: nothing to change"
            );
        } else {
            for a in &actions {
                info!(generation = self.generation, "{a}");
            }
            info!(
                generation = self.generation,
                duration_ms,
                changes = actions.len(),
                "reconciled"
            );
        }
        self.last_reconcile = ReconcileReport {
            actions,
            duration_ms,
        };
        Ok(())
    }

    pub fn tables(&self) -> &Tables {
        &self.plan.tables
    }

    pub fn status(&self) -> Status {
        let vpcs = self
            .plan
            .vpcs
            .iter()
            .map(|v| {
                let error = self.vpc_errors.get(&v.name).cloned();
                let drops = self
                    .datapath
                    .drops(v.slot)
                    .into_iter()
                    .filter(|(_, c)| c.packets > 0)
                    .map(|(r, c)| {
                        (
                            r.name(),
                            CounterJson {
                                packets: c.packets,
                                bytes: c.bytes,
                            },
                        )
                    })
                    .collect();
                VpcStatus {
                    name: v.name.clone(),
                    netns: v.netns.clone(),
                    ready: error.is_none() && self.plan.tables.vpcs.contains_key(&v.slot),
                    host_if: v.host_if.clone(),
                    error,
                    drops,
                }
            })
            .collect();
        let peerings = self
            .plan
            .peerings
            .iter()
            .map(|p| {
                let rec = self.state.peerings.get(&p.id);
                let slot = self.plan.peering_slots.get(&p.id).copied().unwrap_or(0);
                let fwd = |dir| {
                    let c = self.datapath.forwarded(slot, dir);
                    CounterJson {
                        packets: c.packets,
                        bytes: c.bytes,
                    }
                };
                PeeringStatus {
                    id: p.id.clone(),
                    vpcs: p.vpcs.clone(),
                    state: p.state,
                    reason: p.reason.clone(),
                    first_seen: rec.map(|r| r.first_seen),
                    activated_at: rec.and_then(|r| r.activated_at),
                    forwarded: [fwd(0), fwd(1)],
                }
            })
            .collect();
        Status {
            generation: self.generation,
            config_error: self.config_error.clone(),
            datapath: match self.cfg.daemon.datapath {
                config::DatapathMode::Tc => "tc",
                config::DatapathMode::Xdp => "xdp",
            },
            vpcs,
            peerings,
            last_reconcile: self.last_reconcile.clone(),
            flow_log: self.flow_log_status(),
        }
    }
}

/// How often the daemon re-checks the host against the configuration even when no event woke
/// it (a flushed route, a detached program).
pub const RESYNC: Duration = Duration::from_secs(10);

/// `peerd explain`: what the datapath does with one packet, and why.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Explanation {
    pub from: String,
    pub src: std::net::IpAddr,
    pub dst: std::net::IpAddr,
    /// "deliver" or "drop".
    pub verdict: String,
    pub reason: Option<String>,
    pub table: Option<String>,
    pub route: Option<String>,
    pub peering: Option<String>,
    pub peering_state: Option<PeeringState>,
    pub to: Option<String>,
}

impl Daemon {
    pub fn explain(
        &self,
        from: &str,
        src: std::net::IpAddr,
        dst: std::net::IpAddr,
    ) -> Result<Explanation, String> {
        use crate::tables::{trace, Decision};
        let v = self
            .plan
            .vpcs
            .iter()
            .find(|v| v.name == from)
            .ok_or_else(|| format!("no VPC named \"{from}\" in the configuration in force"))?;
        let name_of_vpc = |slot: u32| {
            self.plan
                .vpcs
                .iter()
                .find(|v| v.slot == slot)
                .map(|v| v.name.clone())
        };
        let peering_of = |slot: u32| {
            self.plan
                .peering_slots
                .iter()
                .find(|(_, s)| **s == slot)
                .map(|(id, _)| id.clone())
        };
        let tr = trace(&self.plan.tables, v.slot, src, dst, 64);
        let peering = tr.route.and_then(|(_, t)| peering_of(t.peering));
        let peering_state = peering
            .as_ref()
            .and_then(|id| self.plan.peerings.iter().find(|p| &p.id == id))
            .map(|p| p.state);
        let (verdict, reason, to) = match tr.decision {
            Decision::Deliver { dst_vpc, .. } => ("deliver", None, name_of_vpc(dst_vpc)),
            Decision::Drop(r) => ("drop", Some(r.name().to_owned()), None),
        };
        Ok(Explanation {
            from: from.to_owned(),
            src,
            dst,
            verdict: verdict.into(),
            reason,
            table: tr
                .table
                .and_then(|t| self.plan.table_names.get(&t))
                .map(|(_, n)| n.clone()),
            route: tr.route.map(|(r, _)| r.to_string()),
            peering,
            peering_state,
            to,
        })
    }
}

impl Daemon {
    /// Time until the earliest pending peering expires, if any.
    pub fn next_expiry(&self) -> Option<Duration> {
        let now = state::unix(SystemTime::now());
        let expiry = self.cfg.daemon.pending_expiry.as_secs();
        self.plan
            .peerings
            .iter()
            .filter(|p| p.state == PeeringState::PendingAcceptance)
            .filter_map(|p| self.state.peerings.get(&p.id))
            .map(|r| Duration::from_secs((r.first_seen + expiry).saturating_sub(now)))
            .min()
    }

    /// What applying the configuration at `path` (default: the daemon's own) would change,
    /// changing nothing.
    pub fn plan_reload(&self, path: Option<&Path>) -> Result<Vec<String>, Error> {
        let cfg = Config::load(path.unwrap_or(&self.config_path))?;
        let mut st = self.state.clone();
        let first_seen = |id: &str| {
            self.state
                .peerings
                .get(id)
                .map(|r| state::from_unix(r.first_seen))
        };
        let mut peerings = config::evaluate_peerings(&cfg, &first_seen);
        compile::apply_lifecycle(&cfg, &mut peerings, &mut st, SystemTime::now())?;
        let new = compile::compile(&cfg, peerings, &mut st)?;
        Ok(diff_plans(&self.plan, &new))
    }
}

impl Daemon {
    /// Moves the datapath's flow aggregates into the flow log (one window).
    pub fn drain_flow_log(&mut self) -> Result<(), Error> {
        if self.flow_log.is_none() {
            return Ok(());
        }
        let flows = self.datapath.drain_flows();
        let plan = &self.plan;
        let vpc_name = |slot: u32| {
            plan.vpcs
                .iter()
                .find(|v| v.slot == slot)
                .map(|v| v.name.clone())
        };
        let peering_id = |slot: u32| {
            plan.peering_slots
                .iter()
                .find(|(_, s)| **s == slot)
                .map(|(id, _)| id.clone())
        };
        let records = crate::flowlog::records(&flows, &vpc_name, &peering_id);
        let w = self.flow_log.as_mut().expect("checked above");
        match w.write(&records) {
            Ok(()) => self.flow_log_error = None,
            Err(e) => {
                error!(path = %w.path().display(), error = %e, "writing the flow log");
                self.flow_log_error = Some(e.to_string());
            }
        }
        Ok(())
    }

    pub fn flow_log_status(&self) -> Option<FlowLogStatus> {
        let w = self.flow_log.as_ref()?;
        let lost = self.datapath.flow_lost();
        Some(FlowLogStatus {
            path: w.path().to_owned(),
            records_written: w.records_written,
            rotations: w.rotations,
            lost_packets: lost.packets,
            error: self.flow_log_error.clone(),
        })
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct FlowLogStatus {
    pub path: PathBuf,
    pub records_written: u64,
    pub rotations: u64,
    /// Packets whose flow could not be aggregated (flow map full): lost to the log, not hidden.
    pub lost_packets: u64,
    pub error: Option<String>,
}

/// Human-readable differences between the plan in force and a new one.
pub fn diff_plans(old: &Plan, new: &Plan) -> Vec<String> {
    let mut out = Vec::new();
    for v in &new.vpcs {
        match old.vpcs.iter().find(|o| o.name == v.name) {
            None => {
                out.push(format!(
                    "+ VPC {}: create namespace {}, veth {} <-> {}/peerd0",
                    v.name, v.netns, v.host_if, v.netns
                ));
                for r in &v.ns_routes {
                    out.push(format!("+ route {r} via gateway in {}", v.netns));
                }
            }
            Some(o) => {
                if o.mtu != v.mtu {
                    out.push(format!("~ VPC {}: mtu {} -> {}", v.name, o.mtu, v.mtu));
                }
                for r in v.ns_routes.iter().filter(|r| !o.ns_routes.contains(r)) {
                    out.push(format!("+ route {r} via gateway in {}", v.netns));
                }
                for r in o.ns_routes.iter().filter(|r| !v.ns_routes.contains(r)) {
                    out.push(format!("- route {r} in {}", v.netns));
                }
            }
        }
    }
    for o in old
        .vpcs
        .iter()
        .filter(|o| !new.vpcs.iter().any(|v| v.name == o.name))
    {
        out.push(format!(
            "- VPC {}: delete namespace {} and veth {}",
            o.name, o.netns, o.host_if
        ));
    }
    for p in &new.peerings {
        match old.peerings.iter().find(|q| q.id == p.id) {
            None => out.push(format!(
                "+ peering {} ({} <-> {}): {}",
                p.id, p.vpcs[0], p.vpcs[1], p.state
            )),
            Some(q) if q.state != p.state || q.reason != p.reason => out.push(format!(
                "~ peering {}: {} -> {}{}",
                p.id,
                q.state,
                p.state,
                p.reason
                    .as_ref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            )),
            Some(_) => {}
        }
    }
    for q in old
        .peerings
        .iter()
        .filter(|q| !new.peerings.iter().any(|p| p.id == q.id))
    {
        out.push(format!(
            "- peering {} ({} <-> {})",
            q.id, q.vpcs[0], q.vpcs[1]
        ));
    }
    let (o, n) = (&old.tables, &new.tables);
    let added = n
        .routes
        .keys()
        .filter(|k| !o.routes.contains_key(k))
        .count()
        + n.src.keys().filter(|k| !o.src.contains_key(k)).count();
    let removed = o
        .routes
        .keys()
        .filter(|k| !n.routes.contains_key(k))
        .count()
        + o.src.keys().filter(|k| !n.src.contains_key(k)).count();
    let changed = n
        .routes
        .iter()
        .filter(|(k, v)| o.routes.get(k).is_some_and(|ov| ov != *v))
        .count()
        + n.src
            .iter()
            .filter(|(k, v)| o.src.get(k).is_some_and(|ov| ov != *v))
            .count()
        + n.peerings
            .iter()
            .filter(|(k, v)| o.peerings.get(k) != Some(v))
            .count();
    if added + removed + changed > 0 {
        out.push(format!(
            "datapath: {added} prefix entries to add, {removed} to remove, {changed} to change"
        ));
    }
    out
}
