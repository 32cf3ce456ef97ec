//! Everything the benchmark takes from peerd's library, in one place: the daemon's API
//! (`Daemon`, `Datapath`, the host setup) is being reshaped, and this module is the only one
//! that should have to follow. The rest of the benchmark sees the small wrappers below.
//!
//! peerd items used here, and nowhere else in the benchmark:
//! - `peerd::daemon::Daemon::{start, reload}` and `peerd::status` (only for
//!   `PEERD_BENCH_DEBUG`); `peerd::control::request` (the cluster section's daemons run as
//!   processes: their status through the control socket);
//! - `peerd::datapath::{ensure_bpffs, Datapath::{load, sync, tc_program, xdp_program}}`;
//! - `peerd::reconcile::links` (build a VPC's namespace and pair, remove it),
//!   `peerd::reconcile::routes`, `peerd::netlink::Netlink`, `peerd::desired::{VpcWant,
//!   LinkFacts}`, `peerd::state::link_name`;
//! - `peerd::tables::Tables` (its public maps: `ifaces`, `vpcs`, `peerings`, `src`, `routes`);
//! - from `peerd-common`: `VpcInfo`, `PeeringInfo`, `RouteTarget`, `VPC_PRESENT`,
//!   `PEERING_ACTIVE`, `ROUTE_INSIDE_DST`, `maps::ROUTES_V4`.
use std::{fmt::Write as _, net::Ipv4Addr, path::Path};

use aya::programs::{SchedClassifier, Xdp};
use peerd_common::{
    PeeringInfo, RouteTarget, VpcInfo, PEERING_ACTIVE, ROUTE_INSIDE_DST, VPC_PRESENT,
};

use crate::Res;

/// The two ends of a VPC's veth as peerd sets them up: ifindexes and MACs.
pub use peerd::desired::LinkFacts as VpcLink;

/// A runtime for peerd's async host setup (netlink).
fn runtime() -> Res<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
}

/// Name of peerd's IPv4 route trie (the map-memory measurement finds it by name).
pub const ROUTES_V4_MAP: &str = peerd_common::maps::ROUTES_V4;

/// Mounts bpffs at /sys/fs/bpf if it is not.
pub fn ensure_bpffs() -> Res<()> {
    peerd::datapath::ensure_bpffs().map_err(|e| e.to_string())
}

/// The host-side veth name peerd gives the VPC in namespace `netns`.
pub fn host_ifname(netns: &str) -> String {
    peerd::state::link_name(netns)
}

/// Removes namespace `netns` and its host-side link (cleanup: errors are ignored, the
/// namespace may never have been made).
pub fn remove_vpc(netns: &str) {
    use peerd::reconcile::links;
    let Ok(rt) = runtime() else { return };
    let gone = links::Gone {
        vpc: netns.to_owned(),
        netns: netns.to_owned(),
        host_if: host_ifname(netns),
        created: true,
    };
    let _ = rt.block_on(async {
        let nl = peerd::netlink::Netlink::new().map_err(|e| e.to_string())?;
        let r = links::apply(&nl, links::diff_gone(&[gone])).await;
        Ok::<_, String>(r)
    });
}

/// A VPC-like namespace made by peerd's own host setup: veth pair, gateway, and a route to
/// `route` through the gateway; `xdp` prepares the VPC side for XDP redirects.
pub fn vpc_link(netns: &str, route: &str, xdp: bool) -> Res<VpcLink> {
    use peerd::reconcile::{links, routes};
    let want = peerd::desired::VpcWant {
        name: netns.to_owned(),
        slot: 0,
        netns: netns.to_owned(),
        host_if: host_ifname(netns),
        mtu: 1500,
        routes: vec![route.parse().map_err(|e| format!("{route}: {e}"))?],
        xdp: Some(xdp),
        // The benchmark attaches its own programs: the link comes up without peerd's.
        up: true,
    };
    runtime()?.block_on(async {
        let nl = peerd::netlink::Netlink::new().map_err(|e| e.to_string())?;
        let host = peerd::netlink::dump_links(&nl.host(), "host")
            .await
            .map_err(|e| e.to_string())?;
        let have = links::observe(&nl, &host, &want, xdp)
            .await
            .map_err(|e| e.to_string())?;
        let mut changes = links::diff(&have, &want, links::Pass::Build);
        changes.push(links::Change::SetHostUp {
            vpc: want.name.clone(),
            host_if: want.host_if.clone(),
            up: true,
        });
        let r = links::apply(&nl, changes).await;
        if let Some(e) = r.errors.values().next() {
            return Err(e.clone());
        }
        let host = peerd::netlink::dump_links(&nl.host(), "host")
            .await
            .map_err(|e| e.to_string())?;
        let facts = links::observe(&nl, &host, &want, false)
            .await
            .map_err(|e| e.to_string())?
            .facts()
            .ok_or_else(|| format!("the pair of {netns} is not complete"))?;
        let rw = routes::Want::of(&want, &facts);
        let have = routes::observe(&nl, &rw).await.map_err(|e| e.to_string())?;
        let r = routes::apply(&nl, routes::diff(&have, &rw)).await;
        if let Some(e) = r.errors.values().next() {
            return Err(e.clone());
        }
        Ok(facts)
    })
}

/// The status (`peerd status --json`) of the daemon answering on control socket `socket`.
pub fn status(socket: &Path) -> Res<serde_json::Value> {
    peerd::control::request(socket, &peerd::control::Request::Status).map_err(|e| e.to_string())
}

/// A daemon run in-process by peerd's own code (`Daemon::start` on a config file), on a
/// runtime of its own.
pub struct Daemon {
    rt: tokio::runtime::Runtime,
    d: peerd::daemon::Daemon,
    snapshot: tokio::sync::watch::Receiver<std::sync::Arc<peerd::status::Snapshot>>,
}

impl Daemon {
    pub fn start(config: &Path) -> Res<Self> {
        let rt = runtime()?;
        let (tx, snapshot) = tokio::sync::watch::channel(Default::default());
        let d = rt
            .block_on(peerd::daemon::Daemon::start(config, tx, None))
            .map_err(|e| e.to_string())?;
        Ok(Daemon { rt, d, snapshot })
    }

    /// Re-reads the config file and applies it.
    pub fn reload(&mut self) -> Res<()> {
        self.rt.block_on(self.d.reload()).map_err(|e| e.to_string())
    }

    /// VPC readiness and errors, one line (for `PEERD_BENCH_DEBUG`).
    pub fn counters(&self) -> String {
        let st = peerd::status::status(&self.snapshot.borrow(), None);
        let mut s = String::from("vpcs");
        for v in &st.vpcs {
            let _ = write!(s, " {}: ready {} {:?}", v.name, v.ready, v.error);
        }
        s
    }
}

/// peerd's datapath object loaded on its own (no daemon): the program-cost rows and the
/// scale rows' hot pair run its entry points over tables the benchmark writes.
pub struct Datapath(peerd::datapath::Datapath);

impl Datapath {
    /// Loads the object, its maps pinned under `pins`.
    pub fn load(pins: &Path) -> Res<Self> {
        peerd::datapath::Datapath::load(pins)
            .map(Datapath)
            .map_err(|e| e.to_string())
    }

    /// Makes the maps hold exactly `t`.
    pub fn sync(&mut self, t: &Tables) -> Res<()> {
        self.0.sync(&t.0).map(|_| ()).map_err(|e| e.to_string())
    }

    /// The TC entry point (loaded).
    pub fn tc(&mut self) -> &mut SchedClassifier {
        self.0.tc_program()
    }

    /// The XDP entry point (loaded).
    pub fn xdp(&mut self) -> &mut Xdp {
        self.0.xdp_program()
    }
}

/// Datapath tables built by the benchmark (not from a config).
pub struct Tables(peerd::tables::Tables);

impl Tables {
    /// `vpcs` VPCs, each with `routes` routes in its main table; VPC 1 and 2 are the hot pair
    /// (10.1/16 and 10.2/16, fd00:1::/48 and fd00:2::/48), and ifindex 1 (lo, where
    /// BPF_PROG_TEST_RUN's packets arrive) belongs to VPC 1. Other VPCs get 11.x.y.0/24
    /// blocks; filler routes are /32s inside 12.0.0.0/8.
    pub fn scale(vpcs: u32, routes: u32) -> Self {
        let mut t = peerd::tables::Tables::default();
        let cidr4 = |v: u32| -> ipnet::IpNet {
            if v <= 2 {
                format!("10.{v}.0.0/16").parse().unwrap()
            } else {
                format!("11.{}.{}.0/24", v / 256, v % 256).parse().unwrap()
            }
        };
        for v in 1..=vpcs.max(2) {
            t.ifaces.insert(1, 1);
            t.vpcs.insert(
                v,
                VpcInfo {
                    host_ifindex: 1000 + v,
                    flags: VPC_PRESENT,
                    ns_mac: [2, 1, 0, 0, 0, v as u8],
                    gw_mac: [2, 2, 0, 0, 0, v as u8],
                    vni: 0,
                },
            );
            t.src.insert((v, cidr4(v)), v);
            t.src
                .insert((v, format!("fd00:{v:x}::/48").parse().unwrap()), v);
            let other = if v == 1 { 2 } else { 1 };
            t.peerings.insert(
                v,
                PeeringInfo {
                    state: PEERING_ACTIVE,
                    vpc_a: v.min(other),
                    vpc_b: v.max(other),
                    _pad: 0,
                },
            );
            // The route to the peer, then filler routes.
            for dst in [
                cidr4(other),
                format!("fd00:{other:x}::/48").parse().unwrap(),
            ] {
                t.routes.insert(
                    (v, dst),
                    RouteTarget {
                        peering: 1,
                        dst_vpc: other,
                        flags: ROUTE_INSIDE_DST,
                        _pad: 0,
                    },
                );
            }
            for r in 2..routes {
                let a = Ipv4Addr::from(0x0c00_0000u32 + r);
                t.routes.insert(
                    (v, ipnet::IpNet::new(a.into(), 32).unwrap()),
                    RouteTarget {
                        peering: 1,
                        dst_vpc: other,
                        ..Default::default()
                    },
                );
            }
        }
        t.peerings.insert(
            1,
            PeeringInfo {
                state: PEERING_ACTIVE,
                vpc_a: 1,
                vpc_b: 2,
                _pad: 0,
            },
        );
        Tables(t)
    }

    /// Points VPC slots 1 and 2 (the hot pair) at real links.
    pub fn hot_pair(&mut self, links: &[VpcLink; 2]) {
        for (slot, h) in [(1u32, &links[0]), (2, &links[1])] {
            self.0.ifaces.insert(h.host_ifindex, slot);
            self.0.vpcs.insert(
                slot,
                VpcInfo {
                    host_ifindex: h.host_ifindex,
                    flags: VPC_PRESENT,
                    ns_mac: h.ns_mac,
                    gw_mac: h.host_mac,
                    vni: 0,
                },
            );
        }
    }

    /// Routes in all tables.
    pub fn route_count(&self) -> usize {
        self.0.routes.len()
    }
}
