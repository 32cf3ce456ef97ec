//! The daemon: one task owns all mutable state (configuration in force, slots and history,
//! the reconcilers' handles) and is the only one that changes the host. Everyone else — the
//! control socket, metrics, signal handlers, watchers — sends it a [`Msg`] or reads the
//! [`Snapshot`] it publishes after every change; nothing waits for a reconcile to read status.
use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use tokio::sync::{mpsc, oneshot, watch};
use tracing::{error, info, warn};

use crate::{
    config::{self, Config, Peering},
    datapath::{self, Datapath},
    desired, lifecycle,
    netlink::{self, Netlink},
    reconcile::{Reconciler, RunInputs, Scope},
    state::{self, State},
    status::{FlowLogStatus, PeeringView, ReconcileReport, Snapshot, VpcView},
    watch as watcher,
};

mod fleet;

pub use fleet::Link as ClusterLink;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Datapath(#[from] datapath::Error),
    #[error(transparent)]
    State(#[from] state::Error),
    #[error(transparent)]
    Netlink(#[from] netlink::Error),
    /// Some files were rejected (their last good version stays in force).
    #[error("{0}")]
    Rejected(String),
    #[error("cluster mode needs the fleet agent (start peerd with `peerd run`)")]
    NoAgent,
}

/// How often the daemon re-checks the whole host even when no event woke it (a flushed route,
/// a detached program).
pub const RESYNC: Duration = Duration::from_secs(10);
/// First retry of a VPC that could not be made ready; doubles up to `RESYNC`.
const RETRY_FIRST: Duration = Duration::from_millis(500);

/// What the owner task is asked to do.
#[derive(Debug)]
pub enum Msg {
    /// Re-read the configuration (SIGHUP, `peerd reload`, a changed file).
    Reload(Option<oneshot::Sender<Result<(), String>>>),
    /// What applying the configuration at this path (default: the daemon's) would change.
    Plan(
        Option<PathBuf>,
        oneshot::Sender<Result<Vec<String>, String>>,
    ),
    /// Attach, check or detach a workload (`peerd attach`/`detach`, the CNI plugin); the
    /// answer says what changed.
    Attach(
        crate::attach::Op,
        oneshot::Sender<Result<serde_json::Value, String>>,
    ),
    /// Something peerd made may have been changed by someone else: look at everything.
    Drift,
    /// Stop (the datapath keeps forwarding).
    Stop,
}

pub struct Daemon {
    config_path: PathBuf,
    cfg: Config,
    /// The last good text of every configuration file (persisted in `state_dir`).
    last_good: config::LastGood,
    state: State,
    rec: Reconciler,
    peerings: Vec<Peering>,
    generation: u64,
    config_error: Option<String>,
    vpc_errors: BTreeMap<String, String>,
    errors: Vec<String>,
    taken_links: BTreeSet<String>,
    last_reconcile: ReconcileReport,
    backstop: Option<(u64, u64)>,
    reconciles: u64,
    reconcile_seconds: prometheus_client::metrics::histogram::Histogram,
    last_reload_unix: u64,
    /// Why the last load of the configuration (start or reload) failed, for `STATUS=`.
    reload_error: Option<String>,
    status_line: crate::notify::StatusLine,
    flow_log: Option<crate::flowlog::Writer>,
    flow_log_error: Option<String>,
    snapshot: watch::Sender<Arc<Snapshot>>,
    watcher: Option<watcher::ConfigWatcher>,
    retry: Option<Duration>,
    /// The desired state the last reconcile converged to (tables and names for readers).
    desired: desired::Desired,
    /// Cluster mode.
    cluster: Option<fleet::Cluster>,
    /// Attached workloads that the last reconcile could not finish (attachment key -> why).
    attach_errors: BTreeMap<String, String>,
    _lock: state::Lock,
}

impl Daemon {
    /// Takes the state directory's lock, loads state and datapath, and converges once. Must
    /// run inside the tokio runtime that will run [`Daemon::run`].
    pub async fn start(
        config_path: &Path,
        snapshot: watch::Sender<Arc<Snapshot>>,
        link: Option<ClusterLink>,
    ) -> Result<Daemon, Error> {
        let (loaded, warnings) = config::load_resilient_at_start(config_path);
        for w in warnings {
            warn!("{w}");
        }
        let loaded = loaded?;
        let cfg = loaded.config.clone();
        let lock = state::Lock::take(&cfg.daemon.state_dir)?;
        let (st, warning) = State::load(&cfg.daemon.state_dir);
        if let Some(w) = warning {
            warn!("{w}");
        }
        let dp = Datapath::load(&cfg.daemon.pin_dir)?;
        let nl = Netlink::new()?;
        let rec = Reconciler::new(nl, dp, &cfg.daemon.netns_prefix);
        let mut d = Daemon {
            config_path: config_path.to_owned(),
            cfg,
            last_good: config::LastGood::default(),
            state: st,
            rec,
            peerings: Vec::new(),
            generation: 0,
            config_error: None,
            vpc_errors: BTreeMap::new(),
            errors: Vec::new(),
            taken_links: BTreeSet::new(),
            last_reconcile: ReconcileReport::default(),
            backstop: None,
            reconciles: 0,
            reconcile_seconds: crate::metrics::reconcile_histogram(),
            last_reload_unix: state::unix(SystemTime::now()),
            reload_error: None,
            status_line: crate::notify::StatusLine::default(),
            flow_log: None,
            flow_log_error: None,
            snapshot,
            watcher: None,
            retry: None,
            desired: desired::Desired::default(),
            cluster: None,
            attach_errors: BTreeMap::new(),
            _lock: lock,
        };
        if let Some(c) = &d.cfg.daemon.cluster {
            let mut cl = fleet::Cluster::new(c.clone(), link.ok_or(Error::NoAgent)?);
            cl.find_underlay_mtu(&d.rec.nl).await;
            d.cluster = Some(cl);
        }
        d.accept(loaded);
        d.reload_error = d.config_error.clone();
        // In cluster mode nothing is reconciled before the fleet is known (the datapath keeps
        // what it holds meanwhile).
        d.reconcile(Scope::Full).await?;
        Ok(d)
    }

    /// Takes a loaded configuration's bookkeeping: its broken files (reported, their last good
    /// version in force) and the new last good set (persisted, so a restart starts from it).
    fn accept(&mut self, loaded: config::Loaded) {
        self.config_error = loaded.error_report();
        if let Some(e) = &self.config_error {
            error!(error = %e, "configuration files rejected; their last good version stays in force");
        }
        if let Err(e) = loaded.last_good.save(&self.cfg.daemon.state_dir) {
            error!(error = %e, "saving the last good configuration");
        }
        self.last_good = loaded.last_good;
    }

    /// Re-reads the configuration. A broken file keeps its last good version in force (the
    /// other files' changes apply); a configuration with no usable main file changes nothing.
    /// systemd hears `RELOADING=1` before and `READY=1` after, with the outcome in `STATUS=`.
    pub async fn reload(&mut self) -> Result<(), Error> {
        crate::notify::reloading();
        let r = self.load_and_apply().await;
        self.reload_error = r.as_ref().err().map(|e| e.to_string());
        self.publish();
        crate::notify::ready();
        r
    }

    async fn load_and_apply(&mut self) -> Result<(), Error> {
        self.last_reload_unix = state::unix(SystemTime::now());
        let loaded = match config::load_resilient(&self.config_path, &self.last_good) {
            Ok(l) => l,
            Err(e) => {
                error!(error = %e, "configuration rejected; the last good one stays in force");
                self.config_error = Some(e.to_string());
                self.publish();
                return Err(e.into());
            }
        };
        let mut cfg = self.keep_restart_settings(loaded.config.clone());
        self.with_fleet_vpcs(&mut cfg);
        let broken = loaded.error_report();
        self.accept(loaded);
        if cfg == self.cfg {
            info!("configuration unchanged");
            self.publish();
        } else {
            self.cfg = cfg;
            self.reconcile(Scope::Changed).await?;
        }
        // The good files' changes are applied; the broken ones are reported to whoever asked.
        match broken {
            Some(e) => Err(Error::Rejected(e)),
            None => Ok(()),
        }
    }

    /// In cluster mode the VPCs come from the fleet (the host file has none).
    fn with_fleet_vpcs(&mut self, cfg: &mut Config) {
        let Some(cl) = &mut self.cluster else { return };
        let Some(view) = &cl.view else { return };
        let (vpcs, errors) = view.config(&cfg.daemon);
        for e in &errors {
            warn!(error = %e, "a fleet VPC cannot be used");
        }
        cl.errors = errors;
        cfg.vpcs = vpcs;
    }

    /// Settings that only apply at a restart keep their running values (with a warning).
    fn keep_restart_settings(&self, mut cfg: Config) -> Config {
        let running = &self.cfg.daemon;
        if cfg.daemon.pin_dir != running.pin_dir
            || cfg.daemon.netns_prefix != running.netns_prefix
            || cfg.daemon.state_dir != running.state_dir
            || cfg.daemon.metrics != running.metrics
            || cfg.daemon.socket != running.socket
        {
            warn!("pin_dir, netns_prefix, state_dir, metrics and socket changes apply at the next restart");
        }
        cfg.daemon.pin_dir = running.pin_dir.clone();
        cfg.daemon.netns_prefix = running.netns_prefix.clone();
        cfg.daemon.state_dir = running.state_dir.clone();
        cfg.daemon.metrics = running.metrics;
        cfg.daemon.socket = running.socket.clone();
        // The fleet link (etcd, host name, underlay) is set up at start; only the placement
        // (`vpcs`) changes live.
        if let (Some(new), Some(old)) = (&mut cfg.daemon.cluster, &running.cluster) {
            let vpcs = std::mem::take(&mut new.vpcs);
            if *new
                != (crate::config::ClusterConfig {
                    vpcs: Vec::new(),
                    ..old.clone()
                })
            {
                warn!("[cluster] changes other than vpcs apply at the next restart");
            }
            *new = crate::config::ClusterConfig {
                vpcs,
                ..old.clone()
            };
        } else if cfg.daemon.cluster.is_some() != running.cluster.is_some() {
            warn!("adding or removing [cluster] applies at the next restart");
            cfg.daemon.cluster = running.cluster.clone();
        }
        cfg
    }

    /// Makes host and datapath match the configuration in force; changes only the difference.
    pub async fn reconcile(&mut self, scope: Scope) -> Result<(), Error> {
        let started = Instant::now();
        if self.cluster.as_ref().is_some_and(|c| c.view.is_none()) {
            // The fleet is not known yet: what the datapath holds stays.
            self.publish();
            return Ok(());
        }
        let now = state::unix(SystemTime::now());
        let prev = self.state.clone();
        let hosts: BTreeSet<String> = match &self.cluster {
            Some(cl) => cl
                .view
                .iter()
                .flat_map(|v| v.hosts.keys())
                .filter(|h| **h != cl.cfg.host)
                .cloned()
                .collect(),
            None => BTreeSet::new(),
        };
        let mut wanted = desired::wanted(&self.cfg, &self.taken_links);
        wanted.hosts = hosts.iter().map(String::as_str).collect();
        let mut next = prev.assign(&wanted, now)?;
        crate::attach::prune(&mut next.attachments);
        let (peerings, records) = match self.cluster.as_ref().and_then(|c| c.view.clone()) {
            // Fleet-wide states: from the records in etcd, as every host computes them.
            Some(view) => view.evaluate(self.cfg.vpcs.clone(), &self.cfg.daemon, now),
            None => lifecycle::evaluate(&self.cfg, &next.peerings, now),
        };
        for (id, r) in records {
            let slot = next.peerings.get(&id).map(|p| p.slot).unwrap_or(0);
            next.peerings.insert(id, state::PeeringRecord { slot, ..r });
        }
        next.peerings.retain(|_, r| r.slot != 0);
        if next.created_netns.is_none() {
            // A state from an older peerd, which created every VPC namespace it recorded.
            next.created_netns = Some(
                prev.vpcs
                    .keys()
                    .map(|v| format!("{}{v}", self.cfg.daemon.netns_prefix))
                    .collect(),
            );
        }
        for p in &peerings {
            let before = self.peerings.iter().find(|q| q.id == p.id).map(|q| q.state);
            if before != Some(p.state) {
                info!(peering = %p.id, vpcs = ?p.vpcs, state = %p.state, reason = ?p.reason, "peering state");
            }
        }
        let new_vpc_slots: Vec<u32> = next
            .vpcs
            .iter()
            .filter(|(n, s)| prev.vpcs.get(*n) != Some(s))
            .map(|(_, s)| *s)
            .collect();
        let new_peering_slots: Vec<u32> = next
            .peerings
            .iter()
            .filter(|(id, r)| prev.peerings.get(*id).map(|p| p.slot) != Some(r.slot))
            .map(|(_, r)| r.slot)
            .collect();
        // The slots are on disk before any map entry refers to them.
        next.save(&self.cfg.daemon.state_dir)?;
        self.state = next;
        self.set_flow_log();
        if let Some(cl) = &mut self.cluster {
            let placed: BTreeMap<String, (String, Vec<ipnet::IpNet>)> = self
                .cfg
                .vpcs
                .iter()
                .filter(|v| desired::placed(&self.cfg, &v.name))
                .map(|v| {
                    (
                        v.name.clone(),
                        (
                            format!("{}{}", self.cfg.daemon.netns_prefix, v.name),
                            v.cidrs.clone(),
                        ),
                    )
                })
                .collect();
            cl.refresh_endpoints(&self.rec.nl, &placed).await;
        }
        let gone: Vec<state::Removal> = self.state.removing.values().cloned().collect();
        let out = self
            .rec
            .run(
                &RunInputs {
                    config: &self.cfg,
                    peerings: &peerings,
                    state: &self.state,
                    gone: &gone,
                    new_vpc_slots: &new_vpc_slots,
                    new_peering_slots: &new_peering_slots,
                    fleet: self.cluster.as_ref().and_then(|c| c.fleet()),
                    vxlan: self.cluster.as_ref().map(|c| c.vxlan()),
                },
                scope,
            )
            .await;
        let created = self.state.created_netns.get_or_insert_with(BTreeSet::new);
        created.extend(out.created_netns.iter().cloned());
        for v in &out.removed {
            if let Some(r) = self.state.removing.remove(v) {
                created.remove(&r.netns);
            }
        }
        if out.maps_clean {
            self.state.release_retired();
        }
        self.state.save(&self.cfg.daemon.state_dir)?;
        self.taken_links = out.taken_links;
        self.attach_errors = out.attach_errors;
        self.peerings = peerings;
        self.vpc_errors = out.vpc_errors;
        for (v, e) in &self.vpc_errors {
            error!(vpc = %v, error = %e, "VPC not ready");
        }
        self.errors = out.errors;
        self.backstop = out.backstop;
        self.retry = if self.vpc_errors.is_empty() && self.errors.is_empty() && out.maps_clean {
            None
        } else {
            Some(
                self.retry
                    .map(|r| (r * 2).min(RESYNC))
                    .unwrap_or(RETRY_FIRST),
            )
        };
        self.generation += 1;
        self.reconciles += 1;
        let elapsed = started.elapsed();
        self.reconcile_seconds.observe(elapsed.as_secs_f64());
        let duration_ms = elapsed.as_millis() as u64;
        if out.actions.is_empty() {
            info!(
                generation = self.generation,
                duration_ms, "reconciled: nothing to change"
            );
        } else {
            for a in &out.actions {
                info!(generation = self.generation, "{a}");
            }
            info!(
                generation = self.generation,
                duration_ms,
                changes = out.actions.len(),
                "reconciled"
            );
        }
        self.last_reconcile = ReconcileReport {
            actions: out.actions,
            duration_ms,
        };
        if let Some(cl) = &mut self.cluster {
            cl.want = out.desired.cluster.clone();
        }
        self.desired = out.desired;
        self.publish();
        Ok(())
    }
}

impl Daemon {
    /// Turns the flow log on or off as configured.
    fn set_flow_log(&mut self) {
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
        if let Err(e) = self.rec.dp.set_flow_log(self.flow_log.is_some()) {
            error!(error = %e, "switching the flow log");
        }
    }

    /// Moves the datapath's flow aggregates into the flow log (one window).
    pub fn drain_flow_log(&mut self) {
        let Some(w) = self.flow_log.as_mut() else {
            return;
        };
        let flows = self.rec.dp.drain_flows();
        let names = &self.desired.names;
        let vpc_name = |slot: u32| names.vpcs.get(&slot).cloned();
        let peering_id = |slot: u32| names.peerings.get(&slot).cloned();
        let records = crate::flowlog::records(&flows, &vpc_name, &peering_id);
        match w.write(&records) {
            Ok(()) => self.flow_log_error = None,
            Err(e) => {
                error!(path = %w.path().display(), error = %e, "writing the flow log");
                self.flow_log_error = Some(e.to_string());
            }
        }
        self.publish();
    }

    /// Publishes what readers see.
    fn publish(&self) {
        let created = |v: &str| {
            self.desired
                .vpcs
                .get(v)
                .map(|w| (w.netns.clone(), w.host_if.clone(), w.slot))
        };
        let vpcs = self
            .cfg
            .vpcs
            .iter()
            .filter_map(|v| {
                let (netns, host_if, slot) = created(&v.name)?;
                let error = self.vpc_errors.get(&v.name).cloned();
                let attached = self.rec.facts.links.get(&v.name).is_some_and(|f| {
                    self.rec
                        .facts
                        .attached
                        .contains(&(host_if.clone(), f.host_ifindex))
                });
                let hosts = self
                    .cluster
                    .as_ref()
                    .and_then(|c| c.want.as_ref())
                    .and_then(|w| w.vpc_hosts.get(&v.name).cloned())
                    .unwrap_or_default();
                Some(VpcView {
                    name: v.name.clone(),
                    netns,
                    host_if,
                    slot,
                    ready: error.is_none() && attached,
                    error,
                    hosts,
                    workloads: crate::attach::views(
                        &v.name,
                        &self.state.attachments,
                        &self.attach_errors,
                    ),
                })
            })
            .collect();
        let peerings = self
            .peerings
            .iter()
            .map(|p| {
                let rec = self.state.peerings.get(&p.id);
                PeeringView {
                    id: p.id.clone(),
                    vpcs: p.vpcs.clone(),
                    state: p.state,
                    reason: p.reason.clone(),
                    slot: rec.map(|r| r.slot).unwrap_or(0),
                    first_seen: rec.map(|r| r.first_seen),
                    activated_at: rec.and_then(|r| r.activated_at),
                }
            })
            .collect();
        let flow_log = self.flow_log.as_ref().map(|w| FlowLogStatus {
            path: w.path().to_owned(),
            records_written: w.records_written,
            rotations: w.rotations,
            lost_packets: self.rec.dp.flow_lost().packets,
            error: self.flow_log_error.clone(),
        });
        let snap = Snapshot {
            generation: self.generation,
            config_error: self.config_error.clone(),
            datapath: self.cfg.daemon.datapath,
            vpcs,
            peerings,
            last_reconcile: self.last_reconcile.clone(),
            errors: self.errors.clone(),
            flow_log,
            backstop: self.backstop,
            reconciles: self.reconciles,
            reconcile_seconds: Some(self.reconcile_seconds.clone()),
            last_reload_unix: self.last_reload_unix,
            tables: self.desired.tables.clone(),
            names: self.desired.names.clone(),
            cluster: self.cluster.as_ref().map(|c| self.cluster_status(c)),
            maps: crate::metrics::map_usage(&self.desired.tables),
        };
        self.status_line.send(&snap, self.reload_error.as_deref());
        self.snapshot.send_replace(Arc::new(snap));
    }

    fn cluster_status(&self, c: &fleet::Cluster) -> crate::status::ClusterStatus {
        let want = c.want.as_ref();
        let slot_of = |name: &str| self.state.hosts.get(name).copied().unwrap_or(0);
        let hosts = c
            .view
            .iter()
            .flat_map(|v| v.hosts.values())
            .map(|h| crate::status::HostView {
                name: h.name.clone(),
                underlay: h.underlay,
                vpcs: h.vpcs.clone(),
                slot: slot_of(&h.name),
                tunnel: None,
            })
            .collect();
        let mut notes = c.errors.clone();
        notes.extend(want.iter().flat_map(|w| w.notes.iter().cloned()));
        crate::status::ClusterStatus {
            host: c.cfg.host.clone(),
            connected: c.store_connected,
            registered: c.registered,
            revision: c.view.as_ref().map(|v| v.revision).unwrap_or(0),
            error: c.store_error.clone().or_else(|| c.register_error.clone()),
            hosts,
            remote_endpoints: want
                .map(|w| w.endpoints.values().filter(|h| **h != 0).count())
                .unwrap_or(0),
            local_endpoints: c.local_endpoints.values().map(|s| s.len()).sum(),
            notes,
        }
    }

    /// What applying the configuration at `path` (default: the daemon's own) would change,
    /// changing nothing.
    pub async fn plan(&mut self, path: Option<&Path>) -> Result<Vec<String>, String> {
        let cfg = Config::load(path.unwrap_or(&self.config_path)).map_err(|e| e.to_string())?;
        let cfg = self.keep_restart_settings(cfg);
        let now = state::unix(SystemTime::now());
        let next = self
            .state
            .assign(&desired::wanted(&cfg, &self.taken_links), now)
            .map_err(|e| e.to_string())?;
        let (peerings, _) = lifecycle::evaluate(&cfg, &next.peerings, now);
        let gone: Vec<state::Removal> = next.removing.values().cloned().collect();
        let mut lines = self
            .rec
            .plan(&RunInputs {
                config: &cfg,
                peerings: &peerings,
                state: &next,
                gone: &gone,
                new_vpc_slots: &[],
                new_peering_slots: &[],
                fleet: None,
                vxlan: self.cluster.as_ref().map(|c| c.vxlan()),
            })
            .await;
        for p in &peerings {
            match self.peerings.iter().find(|q| q.id == p.id) {
                None => lines.push(format!(
                    "+ peering {} ({} <-> {}): {}",
                    p.id, p.vpcs[0], p.vpcs[1], p.state
                )),
                Some(q) if q.state != p.state || q.reason != p.reason => lines.push(format!(
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
        for q in self
            .peerings
            .iter()
            .filter(|q| !peerings.iter().any(|p| p.id == q.id))
        {
            lines.push(format!(
                "- peering {} ({} <-> {})",
                q.id, q.vpcs[0], q.vpcs[1]
            ));
        }
        Ok(lines)
    }

    /// When the daemon must wake by itself: the earliest of a retry, an expiring request and
    /// the periodic resync.
    fn next_wake(&self, resync_at: tokio::time::Instant) -> (tokio::time::Instant, Scope) {
        let now = tokio::time::Instant::now();
        let mut at = resync_at;
        let mut scope = Scope::Full;
        if let Some(r) = self.retry {
            if now + r < at {
                at = now + r;
                scope = Scope::Changed;
            }
        }
        let unix_now = state::unix(SystemTime::now());
        if let Some(s) =
            lifecycle::next_expiry(&self.cfg, &self.peerings, &self.state.peerings, unix_now)
        {
            let e = now + Duration::from_secs(s) + Duration::from_millis(50);
            if e < at {
                at = e;
                scope = Scope::Changed;
            }
        }
        (at, scope)
    }

    /// The owner task's loop: messages, watcher events, timers. Returns on `Msg::Stop`.
    pub async fn run(
        mut self,
        mut msgs: mpsc::Receiver<Msg>,
        mut events: mpsc::UnboundedReceiver<watcher::Event>,
        watcher: Option<watcher::ConfigWatcher>,
    ) {
        self.watcher = watcher;
        self.update_watch();
        // Cluster mode: the fleet agent and the VPC namespaces' address events.
        let mut from_agent = self.cluster.as_mut().and_then(|c| c.from_agent.take());
        let mut ns_events = self.cluster.as_mut().and_then(|c| c.events_rx.take());
        let mut resync_at = tokio::time::Instant::now() + RESYNC;
        let mut flow_tick = tokio::time::interval(self.cfg.daemon.flow_log_interval);
        flow_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // systemd's watchdog: pinged from this loop, so a stuck owner task is noticed.
        let watchdog = crate::notify::watchdog_interval();
        let mut dog = tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600)));
        loop {
            let (wake, scope) = self.next_wake(resync_at);
            tokio::select! {
                m = msgs.recv() => match m {
                    None | Some(Msg::Stop) => break,
                    Some(Msg::Reload(reply)) => {
                        let r = self.reload().await.map_err(|e| e.to_string());
                        if let Some(reply) = reply {
                            let _ = reply.send(r);
                        }
                    }
                    Some(Msg::Plan(path, reply)) => {
                        let _ = reply.send(self.plan(path.as_deref()).await);
                    }
                    Some(Msg::Drift) => self.resync().await,
                    Some(Msg::Attach(op, reply)) => {
                        let _ = reply.send(self.attach(op).await);
                    }
                },
                Some(ev) = events.recv() => {
                    // Debounce: editors write several events per save.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let mut reload = ev == watcher::Event::Config;
                    while let Ok(more) = events.try_recv() {
                        reload |= more == watcher::Event::Config;
                    }
                    if reload {
                        info!("configuration changed on disk: reloading");
                        let _ = self.reload().await;
                    } else {
                        self.resync().await;
                    }
                }
                _ = tokio::time::sleep_until(wake) => {
                    if scope == Scope::Full {
                        resync_at = tokio::time::Instant::now() + RESYNC;
                    }
                    if let Err(e) = self.reconcile(scope).await {
                        warn!(error = %e, "reconcile failed");
                    }
                }
                Some(m) = recv(&mut from_agent) => self.on_agent(m).await,
                Some(_) = recv(&mut ns_events) => {
                    // Coalesce a burst (an address and its route arrive together).
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    if let Some(rx) = ns_events.as_mut() {
                        while rx.try_recv().is_ok() {}
                    }
                    if let Err(e) = self.reconcile(Scope::Changed).await {
                        warn!(error = %e, "reconcile after a workload change failed");
                    }
                }
                _ = flow_tick.tick() => self.drain_flow_log(),
                _ = dog.tick(), if watchdog.is_some() => crate::notify::watchdog(),
            }
            self.update_watch();
        }
        // The last window's flows, so a stop loses no records.
        self.drain_flow_log();
    }

    /// A message of the fleet agent.
    async fn on_agent(&mut self, m: crate::agent::FromAgent) {
        use crate::agent::FromAgent;
        let Some(cl) = &mut self.cluster else { return };
        match m {
            FromAgent::View(v) => {
                let first = cl.view.is_none();
                cl.store_connected = true;
                cl.store_error = None;
                cl.view = Some(v);
                let mut cfg = self.cfg.clone();
                self.with_fleet_vpcs(&mut cfg);
                self.cfg = cfg;
                let scope = if first { Scope::Full } else { Scope::Changed };
                if let Err(e) = self.reconcile(scope).await {
                    warn!(error = %e, "reconcile after a fleet change failed");
                }
            }
            FromAgent::Disconnected(why) => {
                cl.store_connected = false;
                cl.store_error = Some(why);
                self.publish();
            }
            FromAgent::Membership { connected, error } => {
                cl.registered = connected;
                cl.register_error = error;
                self.publish();
            }
        }
    }

    /// Attaches, checks or detaches a workload and reconciles; a refused or failed attach
    /// leaves the state as it was.
    async fn attach(&mut self, op: crate::attach::Op) -> Result<serde_json::Value, String> {
        use crate::attach::Op;
        // A gone workload's addresses are free for the next one.
        crate::attach::prune(&mut self.state.attachments);
        let (vpc, key) = op.key(&self.state.attachments);
        let before = self.state.attachments.get(&key).cloned();
        let next = match &op {
            Op::Attach(a) | Op::Check(a) => {
                let placed = self.state.links.contains_key(&vpc);
                let a = crate::attach::check(&self.cfg, placed, &self.state.attachments, a)?;
                if before.is_none() {
                    crate::attach::check_tap(&self.rec.nl, &a.workload).await?;
                }
                Some(a)
            }
            Op::Detach { .. } => None,
        };
        let failed = |d: &Daemon| {
            [
                key.clone(),
                format!("{vpc}/forwarding"),
                format!("{vpc}/workloads"),
            ]
            .iter()
            .find_map(|k| d.attach_errors.get(k))
            .cloned()
        };
        let link = key.split_once('/').map_or("", |(_, l)| l).to_owned();
        let reply =
            |changed: bool| serde_json::json!({ "changed": changed, "link": link, "key": key });
        if let Op::Check(_) = op {
            return match (before, failed(self)) {
                (None, _) => Err(format!("{key} is not attached")),
                (Some(b), _) if Some(&b) != next.as_ref() => Err(format!(
                    "{key} is attached with other addresses ({})",
                    crate::attach::list(&b.addresses)
                )),
                (Some(_), Some(e)) => Err(e),
                (Some(_), None) => Ok(reply(false)),
            };
        }
        if next == before {
            return Ok(reply(false));
        }
        match &next {
            Some(n) => self.state.attachments.insert(key.clone(), n.clone()),
            None => self.state.attachments.remove(&key),
        };
        let err = match self.reconcile(Scope::Changed).await {
            Err(e) => Some(e.to_string()),
            Ok(()) => failed(self),
        };
        let Some(err) = err else {
            return Ok(reply(true));
        };
        if next.is_some() {
            // Undo what was made of it.
            match before {
                Some(b) => self.state.attachments.insert(key.clone(), b),
                None => self.state.attachments.remove(&key),
            };
            let _ = self.reconcile(Scope::Changed).await;
        }
        Err(err)
    }

    async fn resync(&mut self) {
        if let Err(e) = self.reconcile(Scope::Full).await {
            warn!(error = %e, "repair after a host change failed");
        }
    }

    fn update_watch(&self) {
        if let Some(w) = &self.watcher {
            w.set(&self.cfg.watch_dirs, &self.cfg.files);
        }
    }
}

/// The next item of an optional channel; pending forever without one.
async fn recv<T>(rx: &mut Option<mpsc::UnboundedReceiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}
