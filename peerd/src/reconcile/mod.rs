//! The reconcilers, one per kind of resource, and the order they run in.
//!
//! Each kind has the same shape: `observe` what exists, a pure `diff(have, want) -> Vec<Change>`
//! against the desired state ([`crate::desired`]), then `apply` the changes, one object at a
//! time: a failing object is reported (its VPC not ready, with the reason) and retried by the
//! next run, and never stops the others.
//!
//! | file | resource |
//! | --- | --- |
//! | [`links`] | VPC namespaces and veth pairs (up only with the program attached) |
//! | [`routes`] | gateway neighbours and routes inside each namespace |
//! | [`maps`] | the datapath's map entries (leaves first, roots last) |
//! | [`programs`] | the program's pinned TCX/XDP link on each host-side veth |
//! | [`attach`] | attached workloads' links and routes (`peerd attach`, the CNI plugin) |
//! | [`backstop`] | the nftables table that drops VPC traffic reaching the host stack |
//! | [`vxlan`] | cluster mode: the host's VXLAN device (up only with its receive program) |
//!
//! [`Reconciler::run`] is one pass over all of them; [`Reconciler::plan`] computes the same
//! diffs and applies nothing (`peerd plan`).
pub mod attach;
pub mod backstop;
pub mod links;
pub mod maps;
pub mod programs;
pub mod routes;
pub mod vxlan;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use futures::StreamExt as _;
use netlink_packet_route::link::LinkMessage;
use tracing::warn;

use crate::{
    config::{Config, DatapathMode, Peering},
    datapath::Datapath,
    desired::{self, Desired, Facts, Inputs, VpcWant, VxlanFacts},
    netlink::{self, Netlink},
    state::State,
};

/// What an apply did: one line per change made, one error per object that failed.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub actions: Vec<String>,
    /// Object (VPC name, link name, "datapath", "backstop") -> why it failed.
    pub errors: BTreeMap<String, String>,
}

impl Report {
    fn merge(&mut self, other: Report) {
        self.actions.extend(other.actions);
        for (k, v) in other.errors {
            self.error(k, v);
        }
    }

    /// Records an error of `obj`, after those it already has.
    fn error(&mut self, obj: String, msg: String) {
        self.errors
            .entry(obj)
            .and_modify(|e| {
                e.push_str("; ");
                e.push_str(&msg)
            })
            .or_insert(msg);
    }

    /// Records the outcome of change `line` on `obj`: an action done, or an error. Returns
    /// whether it succeeded.
    fn outcome<E: std::fmt::Display>(&mut self, obj: &str, line: String, r: Result<(), E>) -> bool {
        match r {
            Ok(()) => {
                self.actions.push(line);
                true
            }
            Err(e) => {
                self.error(obj.to_owned(), format!("{line}: {e}"));
                false
            }
        }
    }
}

/// How much of the host a run looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every VPC is observed (start, periodic resync, drift).
    Full,
    /// Only VPCs whose desired state changed since the last run, or that failed, are observed;
    /// the others are trusted to be as last applied (fast reloads on big hosts).
    Changed,
}

/// One run's result.
#[derive(Debug, Default)]
pub struct Outcome {
    pub actions: Vec<String>,
    /// VPC -> why it is not ready.
    pub vpc_errors: BTreeMap<String, String>,
    /// Problems not tied to one VPC (maps, backstop).
    pub errors: Vec<String>,
    /// The maps now hold exactly the desired tables (retired slots can be released).
    pub maps_clean: bool,
    /// Namespaces this run created.
    pub created_netns: Vec<String>,
    /// VPCs removed for good (their namespace and link are gone).
    pub removed: Vec<String>,
    /// Link names found taken by links peerd did not create.
    pub taken_links: BTreeSet<String>,
    /// Backstop counter (packets, bytes), if it could be read.
    pub backstop: Option<(u64, u64)>,
    /// The desired state this run converged to.
    pub desired: Desired,
    /// Attachment key ("VPC/link"), or "VPC/what" -> why it failed.
    pub attach_errors: BTreeMap<String, String>,
}

/// The reconcilers' handles and what the last run learned.
pub struct Reconciler {
    pub nl: Netlink,
    pub dp: Datapath,
    pub facts: Facts,
    /// Per VPC, the link want applied last time without error (for `Scope::Changed`).
    applied_links: BTreeMap<String, VpcWant>,
    applied_routes: BTreeMap<String, routes::Want>,
    /// What the last clean map sync wrote.
    shadow: Option<maps::Contents>,
    backstop_table: String,
    /// The VXLAN device's ifindex when the receive program was last seen attached to it.
    vxlan_rx: Option<u32>,
    /// VPCs the attach reconciler has to look at on a `Scope::Changed` run.
    attach_vpcs: BTreeSet<String>,
}

/// What the pipeline needs to know beyond the configuration.
pub struct RunInputs<'a> {
    pub config: &'a Config,
    pub peerings: &'a [Peering],
    pub state: &'a State,
    /// VPCs to remove.
    pub gone: &'a [links::Gone],
    /// VPC and peering slots given out anew since the last run: their counters start at zero.
    pub new_vpc_slots: &'a [u32],
    pub new_peering_slots: &'a [u32],
    /// Cluster mode: the fleet as last known.
    pub fleet: Option<desired::Fleet<'a>>,
    /// Cluster mode: the VXLAN device's UDP port and MTU (the underlay's, less the
    /// encapsulation). Known from the configuration, so that the device stays while the fleet
    /// is not (etcd down at start).
    pub vxlan: Option<(u16, u32)>,
}

impl Reconciler {
    pub fn new(nl: Netlink, dp: Datapath, netns_prefix: &str) -> Self {
        Reconciler {
            nl,
            dp,
            facts: Facts::default(),
            applied_links: BTreeMap::new(),
            applied_routes: BTreeMap::new(),
            shadow: None,
            backstop_table: backstop::table_name(netns_prefix),
            vxlan_rx: None,
            attach_vpcs: BTreeSet::new(),
        }
    }

    fn desired(&self, inp: &RunInputs<'_>) -> Desired {
        desired::desired(&Inputs {
            config: inp.config,
            peerings: inp.peerings,
            slots: inp.state,
            facts: &self.facts,
            fleet: inp.fleet,
        })
    }

    fn refresh_program_facts(&mut self, mode: DatapathMode) {
        let a = programs::attached(&mut self.dp, mode);
        self.set_program_facts(a);
    }

    fn set_program_facts(&mut self, a: programs::Attached) {
        self.facts.attached = a.attached;
        self.facts.xdp_links = a.xdp_links;
        self.vxlan_rx = a.vxlan_rx;
        if let Some(v) = &mut self.facts.vxlan {
            v.rx_attached = a.vxlan_rx == Some(v.ifindex);
        }
    }

    /// The VXLAN device's wanted state (`None`: not in cluster mode).
    fn vxlan_want(&self, inp: &RunInputs<'_>) -> Option<vxlan::Want> {
        inp.vxlan.map(|(port, mtu)| vxlan::Want {
            port,
            mtu,
            up: self.facts.vxlan.is_some_and(|v| v.rx_attached),
        })
    }

    /// One pass of the VXLAN device's reconciler; learns its ifindex.
    async fn vxlan_pass(&mut self, inp: &RunInputs<'_>, pass: links::Pass, report: &mut Report) {
        let want = self.vxlan_want(inp);
        let port = want.as_ref().map_or(0, |w| w.port);
        let mut seen = vxlan::observe(&self.nl, port).await;
        match &seen {
            Ok(have) => {
                let changes = vxlan::diff(have, want.as_ref(), pass);
                if !changes.is_empty() {
                    report.merge(vxlan::apply(&self.nl, changes).await);
                    // Its ifindex, if it was (re)created.
                    seen = vxlan::observe(&self.nl, port).await;
                }
            }
            Err(e) => {
                report.errors.insert(vxlan::NAME.into(), e.to_string());
            }
        }
        self.facts.vxlan = match (&want, seen) {
            (Some(_), Ok(h)) if h.ours => h.ifindex.map(|ifindex| VxlanFacts {
                ifindex,
                rx_attached: self.vxlan_rx == Some(ifindex),
            }),
            // Not observable: keep the last known device, so its entries and program stay.
            (Some(_), Err(_)) => self.facts.vxlan,
            _ => None,
        };
    }

    /// One pass of every reconciler, in dependency order.
    pub async fn run(&mut self, inp: &RunInputs<'_>, scope: Scope) -> Outcome {
        let mode = inp.config.daemon.datapath;
        let mut out = Outcome::default();
        let mut report = Report::default();
        self.refresh_program_facts(mode);

        // 1. Namespaces and links (built down), VPCs removed.
        let want = self.desired(inp);
        let host_links = match netlink::dump_links(&self.nl.host(), "host namespace").await {
            Ok(l) => l,
            Err(e) => {
                out.errors.push(e.to_string());
                HashMap::new()
            }
        };
        let check_offloads = mode == DatapathMode::Xdp || !self.facts.xdp_links.is_empty();
        let todo: Vec<VpcWant> = want
            .vpcs
            .values()
            .filter(|w| scope == Scope::Full || !self.trusted(w))
            .cloned()
            .collect();
        let nl = &self.nl;
        let host_links = &host_links;
        let built: Vec<(VpcWant, Report, Option<links::Have>)> =
            futures::stream::iter(todo.into_iter().map(|w| async move {
                let (r, have) = build_vpc(nl, host_links, &w, check_offloads).await;
                (w, r, have)
            }))
            .buffer_unordered(16)
            .collect()
            .await;
        let mut haves: BTreeMap<String, links::Have> = BTreeMap::new();
        for (w, r, have) in built {
            for a in &r.actions {
                if a.starts_with("+ VPC") && a.contains("create namespace") {
                    out.created_netns.push(w.netns.clone());
                }
            }
            if let Some(h) = &have {
                if h.foreign {
                    out.taken_links.insert(w.host_if.clone());
                }
                match h.facts() {
                    Some(f) => {
                        self.facts.links.insert(w.name.clone(), f);
                    }
                    // The pair could not be built: keep the last good facts while the old link
                    // still exists, so its datapath entries and program stay.
                    None if !host_links.contains_key(&w.host_if) => {}
                    None => {}
                }
                haves.insert(w.name.clone(), h.clone());
            }
            report.merge(r);
        }
        for g in inp.gone {
            let r = links::apply(&self.nl, links::diff_gone(std::slice::from_ref(g))).await;
            if r.errors.is_empty() {
                out.removed.push(g.vpc.clone());
            }
            self.facts.links.remove(&g.vpc);
            self.applied_links.remove(&g.vpc);
            self.applied_routes.remove(&g.vpc);
            report.merge(r);
        }
        let configured: BTreeSet<&str> = inp.config.vpcs.iter().map(|v| v.name.as_str()).collect();
        self.facts
            .links
            .retain(|v, _| configured.contains(v.as_str()));

        // 1b. Cluster mode: the VXLAN device (built down until its receive program is on).
        self.vxlan_pass(inp, links::Pass::Build, &mut report).await;

        // 2. Routes and neighbours inside each namespace.
        let want = self.desired(inp);
        for w in want.vpcs.values() {
            let Some(link) = self.facts.links.get(&w.name) else {
                continue;
            };
            let rw = routes::Want::of(w, link);
            let failed_before = report.errors.contains_key(&w.name);
            if scope == Scope::Changed
                && self.applied_routes.get(&w.name) == Some(&rw)
                && !failed_before
            {
                continue;
            }
            match routes::observe(&self.nl, &rw).await {
                Ok(have) => {
                    let r = routes::apply(&self.nl, routes::diff(&have, &rw)).await;
                    if r.errors.is_empty() {
                        self.applied_routes.insert(w.name.clone(), rw);
                    } else {
                        self.applied_routes.remove(&w.name);
                    }
                    report.merge(r);
                }
                Err(e) => {
                    self.applied_routes.remove(&w.name);
                    report.errors.insert(w.name.clone(), e.to_string());
                }
            }
        }

        // 2b. Attached workloads: VPCs that have some or had some (a detach), every VPC on a
        // full run (what a lost state left behind goes).
        let mut aw = attach::Want::of(&inp.state.attachments, &want.vpcs);
        for w in want.vpcs.values() {
            if scope == Scope::Full || self.attach_vpcs.contains(&w.name) {
                aw.entry(w.name.clone())
                    .or_insert_with(|| attach::Want::empty(w));
            }
        }
        aw.retain(|v, _| self.facts.links.contains_key(v));
        let r = attach::run(&self.nl, host_links, &aw).await;
        self.attach_vpcs = aw
            .iter()
            .filter(|(v, w)| {
                !w.links.is_empty() || r.errors.keys().any(|k| k.starts_with(&format!("{v}/")))
            })
            .map(|(v, _)| v.clone())
            .collect();
        out.attach_errors = r.errors.clone();
        report.merge(r);

        // 3. Map entries: counters of reused slots zeroed first, then the entries.
        for s in inp.new_vpc_slots {
            if let Err(e) = self.dp.counters_mut().reset_vpc(*s) {
                out.errors.push(e.to_string());
            }
        }
        for s in inp.new_peering_slots {
            if let Err(e) = self.dp.counters_mut().reset_peering(*s) {
                out.errors.push(e.to_string());
            }
        }
        let wanted = maps::Contents::of(&want.tables);
        let have = match (scope, self.shadow.take()) {
            (Scope::Changed, Some(s)) => Ok(s),
            _ => maps::Contents::read(&self.dp),
        };
        match have {
            Ok(have) => {
                let done = maps::apply(&mut self.dp, maps::diff(&have, &wanted));
                if done.written > 0 {
                    report
                        .actions
                        .push(format!("wrote {} datapath map entries", done.written));
                }
                if done.removed > 0 {
                    report
                        .actions
                        .push(format!("removed {} datapath map entries", done.removed));
                }
                out.maps_clean = done.failed.is_empty();
                for (c, e) in &done.failed {
                    out.errors.push(format!("datapath map: {c}: {e}"));
                    if let Some(v) = owner(&want, c) {
                        report
                            .errors
                            .entry(v)
                            .or_insert_with(|| format!("datapath map: {c}: {e}"));
                    }
                }
                if out.maps_clean {
                    self.shadow = Some(wanted);
                }
            }
            Err(e) => out.errors.push(format!("reading the datapath maps: {e}")),
        }

        // 4. Program links.
        let have = programs::observe(&mut self.dp);
        let wanted = programs::wanted(&want.programs, mode, self.facts.vxlan.map(|v| v.ifindex));
        let changes = programs::diff(&have, &wanted);
        let unchanged = changes.is_empty();
        let r = programs::apply(&mut self.dp, changes);
        let by_link: BTreeMap<&str, &str> = want
            .vpcs
            .values()
            .map(|w| (w.host_if.as_str(), w.name.as_str()))
            .collect();
        for (link, e) in &r.errors {
            let vpc = by_link.get(link.as_str()).copied().unwrap_or(link);
            report.errors.insert(vpc.to_owned(), e.clone());
        }
        report.actions.extend(r.actions);
        // Nothing applied: the pins are as just read (reading 1,000 of them takes ~27 ms).
        if unchanged {
            self.set_program_facts(programs::attached_of(have, mode));
        } else {
            self.refresh_program_facts(mode);
        }

        // 5. Host ends up where the program is attached (down where it is not); offloads. The
        // VXLAN device likewise.
        self.vxlan_pass(inp, links::Pass::Finish, &mut report).await;
        let want = self.desired(inp);
        for w in want.vpcs.values() {
            let have = match haves.get(&w.name) {
                Some(h) => h.clone(),
                None => match (
                    self.applied_links.get(&w.name),
                    self.facts.links.get(&w.name),
                ) {
                    (Some(a), Some(f)) => assumed(a, f),
                    _ => continue,
                },
            };
            let changes = links::diff(&have, w, links::Pass::Finish);
            if changes.is_empty() {
                continue;
            }
            report.merge(links::apply(&self.nl, changes).await);
        }
        for w in want.vpcs.values() {
            if report.errors.contains_key(&w.name) || !self.facts.links.contains_key(&w.name) {
                self.applied_links.remove(&w.name);
            } else {
                self.applied_links.insert(w.name.clone(), w.clone());
            }
        }
        self.applied_links
            .retain(|v, _| configured.contains(v.as_str()));
        self.applied_routes
            .retain(|v, _| configured.contains(v.as_str()));

        // 6. The backstop, over every configured VPC's link.
        let links: BTreeSet<String> = inp.state.links.values().cloned().collect();
        match backstop::observe(&self.backstop_table) {
            Ok(have) => {
                out.backstop = Some((have.packets, have.bytes));
                let r = backstop::apply(backstop::diff(&have, &self.backstop_table, &links));
                for e in r.errors.values() {
                    out.errors.push(e.clone());
                }
                report.actions.extend(r.actions);
            }
            Err(e) => out.errors.push(format!("backstop: {e}")),
        }

        for (obj, e) in report.errors {
            if configured.contains(obj.as_str()) {
                out.vpc_errors.insert(obj, e);
            } else {
                out.errors.push(format!("{obj}: {e}"));
            }
        }
        for e in &out.errors {
            warn!(error = %e, "reconcile");
        }
        out.actions = report.actions;
        out.desired = want;
        out
    }

    /// A VPC applied last time exactly as wanted now, with facts: not observed in a
    /// `Scope::Changed` run.
    fn trusted(&self, w: &VpcWant) -> bool {
        let same = self.applied_links.get(&w.name).is_some_and(|a| {
            let mut a = a.clone();
            a.up = w.up;
            a == *w
        });
        same && self.facts.links.contains_key(&w.name)
    }

    /// What `run` would change, changing nothing. `gone` VPCs are listed for deletion.
    pub async fn plan(&mut self, inp: &RunInputs<'_>) -> Vec<String> {
        let mut lines = Vec::new();
        let want = self.desired(inp);
        let host_links = netlink::dump_links(&self.nl.host(), "host namespace")
            .await
            .unwrap_or_default();
        let check_offloads = inp.config.daemon.datapath == DatapathMode::Xdp;
        for w in want.vpcs.values() {
            let have = links::observe(&self.nl, &host_links, w, check_offloads)
                .await
                .unwrap_or_default();
            for c in links::diff(&have, w, links::Pass::Build) {
                lines.push(c.to_string());
            }
            let link = have
                .facts()
                .or_else(|| self.facts.links.get(&w.name).copied());
            let rw = routes::Want::of(w, &link.unwrap_or_default());
            let rhave = match link {
                Some(_) => routes::observe(&self.nl, &rw).await.unwrap_or_default(),
                None => routes::Have::default(),
            };
            for c in routes::diff(&rhave, &rw) {
                if !matches!(c, routes::Change::SetNeighbour { .. }) || link.is_some() {
                    lines.push(c.to_string());
                }
            }
        }
        for c in links::diff_gone(inp.gone) {
            lines.push(c.to_string());
        }
        for w in attach::Want::of(&inp.state.attachments, &want.vpcs).values() {
            if let Ok(have) = attach::observe(&self.nl, &host_links, w).await {
                lines.extend(attach::diff(&have, w).iter().map(|c| c.to_string()));
            }
        }
        let have = self
            .shadow
            .clone()
            .map(Ok)
            .unwrap_or_else(|| maps::Contents::read(&self.dp));
        if let Ok(have) = have {
            let changes = maps::diff(&have, &maps::Contents::of(&want.tables));
            let writes = changes
                .iter()
                .filter(|c| matches!(c, maps::Change::Write(_)))
                .count();
            let removes = changes.len() - writes;
            if !changes.is_empty() {
                lines.push(format!(
                    "datapath: {writes} map entries to write, {removes} to remove"
                ));
            }
        }
        let vx_want = self.vxlan_want(inp);
        let port = vx_want.as_ref().map_or(0, |w| w.port);
        if let Ok(have) = vxlan::observe(&self.nl, port).await {
            for c in vxlan::diff(&have, vx_want.as_ref(), links::Pass::Build) {
                lines.push(c.to_string());
            }
        }
        let pins = programs::observe(&mut self.dp);
        let wanted = programs::wanted(
            &want.programs,
            inp.config.daemon.datapath,
            self.facts.vxlan.map(|v| v.ifindex),
        );
        for c in programs::diff(&pins, &wanted) {
            lines.push(format!("program: {c}"));
        }
        lines
    }
}

/// One VPC's build pass: observe, diff, apply, observe again for its facts.
async fn build_vpc(
    nl: &Netlink,
    host_links: &HashMap<String, LinkMessage>,
    w: &VpcWant,
    check_offloads: bool,
) -> (Report, Option<links::Have>) {
    let mut report = Report::default();
    let have = match links::observe(nl, host_links, w, check_offloads).await {
        Ok(h) => h,
        Err(e) => {
            report.errors.insert(w.name.clone(), e.to_string());
            return (report, None);
        }
    };
    let changes = links::diff(&have, w, links::Pass::Build);
    if changes.is_empty() {
        return (report, Some(have));
    }
    report.merge(links::apply(nl, changes).await);
    // Observe again: the new link's ifindex and MACs are facts for the next steps.
    let links_now = match netlink::get_link(&nl.host(), &w.host_if).await {
        Ok(Some(l)) => [(w.host_if.clone(), l)].into_iter().collect(),
        _ => HashMap::new(),
    };
    match links::observe(nl, &links_now, w, check_offloads).await {
        Ok(h) => (report, Some(h)),
        Err(e) => {
            report.errors.entry(w.name.clone()).or_insert(e.to_string());
            (report, None)
        }
    }
}

/// The `Have` of a VPC trusted to be as last applied.
fn assumed(applied: &VpcWant, f: &desired::LinkFacts) -> links::Have {
    let end = |ifindex, mac, up| links::End {
        ifindex,
        mac,
        mtu: applied.mtu,
        up,
    };
    links::Have {
        netns: true,
        host: Some(end(f.host_ifindex, f.host_mac, applied.up)),
        ns_end: Some(end(f.ns_ifindex, f.ns_mac, true)),
        intact: true,
        host_ipv6_off: true,
        lo_up: true,
        offloads: applied.xdp.map(|x| (x, !x, !x)),
        ..links::Have::default()
    }
}

/// The VPC a map change belongs to, when it belongs to one.
fn owner(want: &Desired, c: &maps::Change) -> Option<String> {
    use maps::{Change, Entry, Key};
    let slot = match c {
        Change::Write(Entry::Vpc(s, _) | Entry::Src((s, _), _))
        | Change::Remove(Key::Vpc(s) | Key::Src(s, _)) => Some(*s),
        Change::Write(Entry::Iface(_, i)) => Some(i.vpc),
        Change::Write(Entry::Route((t, _), _)) | Change::Remove(Key::Route(t, _)) => {
            return want.names.tables.get(t).map(|(v, _)| v.clone())
        }
        _ => None,
    }?;
    want.names.vpcs.get(&slot).cloned()
}
