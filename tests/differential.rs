//! Differential test: the eBPF datapath (run with BPF_PROG_TEST_RUN) against the plain-Rust
//! model of the decision (`peerd::tables::decide`), over random topologies built from random
//! configurations (overlapping and identical peer CIDRs, one- and two-ended peerings, rejects,
//! subnets with their own tables, more source prefixes than fit inline, multi-CIDR VPCs, both
//! families, partial, covering and unrelated routes, /32 and /128 routes, blackholes) and many
//! random and edge-case packets.
//!
//! Topologies and packets come from proptest strategies, run by a `TestRunner` with a fixed
//! seed (`PEERD_DIFF_SEED=n` runs another one). A disagreement fails the case; proptest then
//! shrinks the topology, and the report shows the first failing configuration and packets as
//! well as the smallest one found.
mod common;

use std::{
    cell::RefCell,
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
};

use aya::programs::{TestRun, TestRunOptions};
use ipnet::IpNet;
use peerd::{
    config::Config,
    datapath::Datapath,
    desired, lifecycle,
    state::State,
    tables::{decide, Decision, Tables},
};
use peerd_common::IFACE_SRC_TRIE;
use proptest::{
    collection::vec,
    option,
    prelude::*,
    sample::{select, Index},
    strategy::ValueTree,
    test_runner::{
        Config as RunConfig, RngAlgorithm, RngSeed, TestCaseError, TestError, TestRng, TestRunner,
    },
};

/// Topologies per run: proptest cases that must pass.
const TOPOLOGIES: u32 = 40;
const PACKETS_PER_TOPOLOGY: usize = 2600; // 104,000 packets per run
/// The run's seed when `PEERD_DIFF_SEED` is not set.
const DEFAULT_SEED: u64 = 0;
/// Bounds on shrinking a failing topology (each step replays its 2,600 packets, ~0.2 s), unless
/// PROPTEST_MAX_SHRINK_ITERS / PROPTEST_MAX_SHRINK_TIME say otherwise.
const SHRINK_ITERS: u32 = 1000;
const SHRINK_MS: u32 = 60_000;
/// Disagreeing packets listed per failing topology.
const SHOWN: usize = 5;
const MAX_VPCS: usize = 8;
/// One entry per unordered pair of VPC positions `a < b < MAX_VPCS`, in the order (0, 1), (0, 2) … (1, 2) ….
const PAIRS: usize = MAX_VPCS * (MAX_VPCS - 1) / 2;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

// ---------------------------------------------------------------------------------------------
// Addresses and prefixes.
//
// Choices that depend on what was generated elsewhere (which peering a route uses, which of the
// peer's CIDRs it aims at, which prefix a packet's source is in) are `Index` values resolved
// when the configuration is written. The strategies stay independent of one another (no
// `prop_flat_map`), so every part shrinks on its own and an `Index` shrinks to the first choice.
// ---------------------------------------------------------------------------------------------

/// A few /16 (and /48) blocks, reused across VPCs so that peers overlap or are identical.
/// Blocks 0..6 are VPC CIDRs; 6 and 7 only appear in unrelated routes and random packets.
fn pool(v6: bool, block: u8) -> IpNet {
    if v6 {
        format!("fd00:{block:x}::/48").parse().unwrap()
    } else {
        format!("10.{block}.0.0/16").parse().unwrap()
    }
}

/// Where an address lies in a prefix: its edges are as likely as any two other addresses.
#[derive(Clone, Copy, Debug)]
enum At {
    First,
    Last,
    Bits(u128),
}

fn at() -> impl Strategy<Value = At> {
    prop_oneof![
        1 => Just(At::First),
        1 => Just(At::Last),
        4 => any::<u128>().prop_map(At::Bits),
    ]
}

/// The address `at` in `net`.
fn addr_in(net: &IpNet, at: At) -> IpAddr {
    match (at, net) {
        (At::First, _) => net.network(),
        (At::Last, _) => net.broadcast(),
        (At::Bits(r), IpNet::V4(n)) => IpAddr::V4(Ipv4Addr::from(
            u32::from(n.network()) | (r as u32 & u32::from(n.hostmask())),
        )),
        (At::Bits(r), IpNet::V6(n)) => IpAddr::V6(Ipv6Addr::from(
            u128::from(n.network()) | (r & u128::from(n.hostmask())),
        )),
    }
}

/// A prefix inside some prefix: its length picked from a range, its position by `at`.
#[derive(Clone, Copy, Debug)]
struct Within {
    len: Index,
    at: At,
}

fn within() -> impl Strategy<Value = Within> {
    (any::<Index>(), at()).prop_map(|(len, at)| Within { len, at })
}

impl Within {
    /// The prefix inside `net` whose length is in `lo..=hi`, both clamped to what `net` allows.
    fn of(&self, net: &IpNet, lo: u8, hi: u8) -> IpNet {
        let hi = hi.min(net.max_prefix_len()).max(net.prefix_len());
        let lo = lo.max(net.prefix_len()).min(hi);
        let len = lo + self.len.index(usize::from(hi - lo) + 1) as u8;
        IpNet::new(addr_in(net, self.at), len).unwrap().trunc()
    }
}

// ---------------------------------------------------------------------------------------------
// Topologies: a structured description, written out as configuration text.
// ---------------------------------------------------------------------------------------------

/// One VPC: 1 to 3 CIDRs, each a pool block of either family (a repeated block is left out).
#[derive(Clone, Debug)]
struct VpcSpec {
    cidrs: Vec<(u8, bool)>,
}

fn vpc() -> impl Strategy<Value = VpcSpec> {
    vec((0..6u8, prop::bool::weighted(0.4)), 1..=3).prop_map(|cidrs| VpcSpec { cidrs })
}

/// A peering between two VPCs: declared by the first only (pending) or by both, and then
/// sometimes rejected by the second.
#[derive(Clone, Copy, Debug)]
struct PairSpec {
    both_ends: bool,
    reject: bool,
}

fn pair() -> impl Strategy<Value = PairSpec> {
    (prop::bool::weighted(0.8), prop::bool::weighted(0.08))
        .prop_map(|(both_ends, reject)| PairSpec { both_ends, reject })
}

/// What a route's destination is, relative to a CIDR of the peer it is routed to.
#[derive(Clone, Copy, Debug)]
enum Dest {
    /// The peer's whole CIDR.
    Whole,
    /// A prefix inside it, 1 to 14 bits longer.
    Sub(Within),
    /// One address in it (/32 or /128).
    Host(At),
    /// A prefix inside a pool block of either family, maybe another VPC's, maybe nobody's.
    Unrelated { v6: bool, block: u8, within: Within },
    /// A shorter prefix that contains the CIDR (down to a default route).
    Covering(Index),
}

fn dest() -> impl Strategy<Value = Dest> {
    prop_oneof![
        1 => Just(Dest::Whole),
        2 => within().prop_map(Dest::Sub),
        1 => at().prop_map(Dest::Host),
        1 => (prop::bool::weighted(0.3), 0..8u8, within())
            .prop_map(|(v6, block, within)| Dest::Unrelated { v6, block, within }),
        1 => any::<Index>().prop_map(Dest::Covering),
    ]
}

/// A route: through one of the VPC's declared peerings, towards one CIDR of that peering's
/// other VPC.
#[derive(Clone, Copy, Debug)]
struct RouteSpec {
    peering: Index,
    target: Index,
    dest: Dest,
}

fn route() -> impl Strategy<Value = RouteSpec> {
    (any::<Index>(), any::<Index>(), dest()).prop_map(|(peering, target, dest)| RouteSpec {
        peering,
        target,
        dest,
    })
}

/// The subnets that use table t1: five disjoint ones (more source prefixes than the datapath
/// keeps inline in its interface entry, so the source tries are used), or one.
#[derive(Clone, Copy, Debug)]
enum Subnets {
    Five,
    One(Within),
}

/// Explicit routing: usually a main table, always a table t1 for subnets of one CIDR.
#[derive(Clone, Debug)]
struct Explicit {
    main: Option<Vec<RouteSpec>>,
    t1: Vec<RouteSpec>,
    subnets_in: Index,
    subnets: Subnets,
}

fn explicit() -> impl Strategy<Value = Explicit> {
    (
        option::weighted(0.85, vec(route(), 1..=6)),
        vec(route(), 1..=6),
        any::<Index>(),
        prop_oneof![7 => within().prop_map(Subnets::One), 3 => Just(Subnets::Five)],
    )
        .prop_map(|(main, t1, subnets_in, subnets)| Explicit {
            main,
            t1,
            subnets_in,
            subnets,
        })
}

/// A whole topology. `pairs` and `routing` have an entry for every possible VPC position;
/// those beyond the number of VPCs are unused (so removing a VPC while shrinking leaves the
/// other entries valid).
#[derive(Clone, Debug)]
struct Spec {
    vpcs: Vec<VpcSpec>,
    pairs: Vec<Option<PairSpec>>,
    /// Per VPC: explicit routing, or `None` for automatic (also when it declares no peering).
    routing: Vec<Option<Explicit>>,
}

prop_compose! {
    fn spec()(
        vpcs in vec(vpc(), 3..=MAX_VPCS),
        pairs in vec(option::weighted(0.45, pair()), PAIRS),
        routing in vec(option::weighted(0.5, explicit()), MAX_VPCS),
    ) -> Spec {
        Spec { vpcs, pairs, routing }
    }
}

/// A peering as written: id, first VPC, second VPC, declared by both, rejected by the second.
struct Peering {
    id: String,
    a: usize,
    b: usize,
    both_ends: bool,
    reject: bool,
}

impl Spec {
    /// The configuration text.
    fn render(&self) -> String {
        let vpcs: Vec<Vec<IpNet>> = self
            .vpcs
            .iter()
            .map(|v| {
                let mut blocks = Vec::new();
                v.cidrs
                    .iter()
                    .filter(|(block, _)| {
                        let new = !blocks.contains(block);
                        blocks.push(*block);
                        new
                    })
                    .map(|&(block, v6)| pool(v6, block))
                    .collect()
            })
            .collect();
        let n = vpcs.len();
        let positions = (0..MAX_VPCS).flat_map(|a| (a + 1..MAX_VPCS).map(move |b| (a, b)));
        let peerings: Vec<Peering> = positions
            .zip(&self.pairs)
            .filter(|((_, b), _)| *b < n)
            .filter_map(|((a, b), p)| {
                p.map(|p| Peering {
                    id: format!("pcx-{a}x{b}"),
                    a,
                    b,
                    both_ends: p.both_ends,
                    reject: p.reject,
                })
            })
            .collect();
        let mut text = String::from("[daemon]\nmax_active_peerings_per_vpc = 4\n");
        for (i, cidrs) in vpcs.iter().enumerate() {
            let list: Vec<String> = cidrs.iter().map(|c| format!("\"{c}\"")).collect();
            text += &format!("[[vpc]]\nname = \"v{i}\"\ncidrs = [{}]\n", list.join(", "));
            let mine: Vec<&Peering> = peerings
                .iter()
                .filter(|p| p.a == i || (p.b == i && p.both_ends))
                .collect();
            for p in &mine {
                let peer = if p.a == i { p.b } else { p.a };
                let rej = if p.b == i && p.reject {
                    "reject = true\n"
                } else {
                    ""
                };
                text += &format!(
                    "[[vpc.peering]]\nid = \"{}\"\npeer = \"v{peer}\"\n{rej}",
                    p.id
                );
            }
            let Some(e) = self.routing[i].as_ref().filter(|_| !mine.is_empty()) else {
                continue; // automatic routing
            };
            let route = |r: &RouteSpec| -> (IpNet, &str) {
                let p = r.peering.get(&mine);
                let target = *r.target.get(&vpcs[if p.a == i { p.b } else { p.a }]);
                let dst = match r.dest {
                    Dest::Whole => target,
                    Dest::Sub(w) => {
                        let len = target.prefix_len();
                        w.of(&target, len + 1, len.saturating_add(14))
                    }
                    Dest::Host(at) => {
                        IpNet::new(addr_in(&target, at), target.max_prefix_len()).unwrap()
                    }
                    Dest::Unrelated { v6, block, within } => within.of(&pool(v6, block), 0, 128),
                    Dest::Covering(len) => {
                        let len = len.index(usize::from(target.prefix_len())) as u8;
                        IpNet::new(target.network(), len).unwrap().trunc()
                    }
                };
                (dst, &p.id)
            };
            let mut tables: Vec<(&str, &[RouteSpec])> = Vec::new();
            if let Some(main) = &e.main {
                tables.push(("main", main));
            }
            tables.push(("t1", &e.t1));
            let c = *e.subnets_in.get(cidrs);
            match e.subnets {
                Subnets::Five if c.prefix_len() + 3 <= c.max_prefix_len() => {
                    for s in c.subnets(c.prefix_len() + 3).unwrap().take(5) {
                        text += &format!("[[vpc.subnet]]\ncidr = \"{s}\"\nroute_table = \"t1\"\n");
                    }
                }
                Subnets::Five => unreachable!("pool blocks are /16 and /48"),
                Subnets::One(w) => {
                    let s = w.of(&c, c.prefix_len() + 1, c.prefix_len() + 12);
                    text += &format!("[[vpc.subnet]]\ncidr = \"{s}\"\nroute_table = \"t1\"\n");
                }
            }
            for (t, specs) in tables {
                let mut routes: Vec<(IpNet, &str)> = Vec::new();
                for r in specs {
                    let (dst, id) = route(r);
                    // Two routes for one destination are a configuration error: keep the first.
                    if !routes.iter().any(|(d, _)| *d == dst) {
                        routes.push((dst, id));
                    }
                }
                let r: Vec<String> = routes
                    .iter()
                    .map(|(d, p)| format!("{{ destination = \"{d}\", peering = \"{p}\" }}"))
                    .collect();
                text += &format!(
                    "[[vpc.route_table]]\nname = \"{t}\"\nroutes = [{}]\n",
                    r.join(", ")
                );
            }
        }
        text
    }
}

/// A topology's configuration text (shown as is in failure reports).
#[derive(Clone)]
struct Topology(String);

impl std::fmt::Debug for Topology {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "\n{}", self.0)
    }
}

fn parse(text: &str) -> Result<Config, peerd::config::ConfigError> {
    Config::from_str(text, Path::new("random.toml"))
}

/// Topologies whose configuration validates. The writer avoids every error it can make (it
/// drops a second route to the same destination), so the filter is a guard: should it reject
/// too many, the runner aborts the test (`max_local_rejects`) rather than run fewer cases.
fn topology() -> impl Strategy<Value = Topology> {
    spec().prop_filter_map("the configuration must validate", |s| {
        let text = s.render();
        parse(&text).is_ok().then_some(Topology(text))
    })
}

// ---------------------------------------------------------------------------------------------
// Packets.
// ---------------------------------------------------------------------------------------------

/// The source of a packet: usually in the sending VPC's own CIDRs, sometimes spoofed (any
/// prefix the datapath knows, or a pool block).
#[derive(Clone, Copy, Debug)]
enum Src {
    Own(Index, At),
    Known(Index, At),
    Pool(u8, At),
}

/// The destination: mostly in a CIDR of a VPC the sender declares a peering with, or in a
/// prefix the datapath knows (a VPC CIDR, a subnet, a route); sometimes not unicast,
/// link-local, in a pool block or anywhere.
#[derive(Clone, Copy, Debug)]
enum Dst {
    Multicast(At),
    /// 255.255.255.255, or ff02::1 for IPv6.
    Broadcast,
    LinkLocal(At),
    Peer(Index, At),
    Known(Index, At),
    Pool(u8, At),
    Anywhere(u128),
}

#[derive(Clone, Copy, Debug)]
struct PacketSpec {
    from: Index,
    /// Chooses the family (0..100): IPv6 5% of the time from an IPv4-only VPC, half the time
    /// from a dual-stack one.
    family: u8,
    src: Src,
    dst: Dst,
    ttl: u8,
}

fn packet() -> impl Strategy<Value = PacketSpec> {
    let src = prop_oneof![
        17 => (any::<Index>(), at()).prop_map(|(i, a)| Src::Own(i, a)),
        2 => (any::<Index>(), at()).prop_map(|(i, a)| Src::Known(i, a)),
        1 => (0..8u8, at()).prop_map(|(b, a)| Src::Pool(b, a)),
    ];
    let dst = prop_oneof![
        1 => at().prop_map(Dst::Multicast),
        1 => Just(Dst::Broadcast),
        1 => at().prop_map(Dst::LinkLocal),
        10 => (any::<Index>(), at()).prop_map(|(i, a)| Dst::Peer(i, a)),
        20 => (any::<Index>(), at()).prop_map(|(i, a)| Dst::Known(i, a)),
        2 => (0..8u8, at()).prop_map(|(b, a)| Dst::Pool(b, a)),
        1 => any::<u128>().prop_map(Dst::Anywhere),
    ];
    // TTL edges: expired, about to expire, last hop, the maximum.
    let ttl = select(vec![64u8, 64, 64, 64, 64, 64, 2, 1, 0, 255]);
    (any::<Index>(), 0..100u8, src, dst, ttl).prop_map(|(from, family, src, dst, ttl)| PacketSpec {
        from,
        family,
        src,
        dst,
        ttl,
    })
}

/// A VPC as packets see it.
struct Sender {
    name: String,
    slot: u32,
    cidrs: Vec<IpNet>,
    /// The CIDRs of the VPCs it names in its peerings (whatever their state).
    peers: Vec<IpNet>,
}

/// A concrete packet.
#[derive(Clone, Copy, Debug)]
struct Packet {
    slot: u32,
    src: IpAddr,
    dst: IpAddr,
    ttl: u8,
}

impl PacketSpec {
    /// The packet, from one of `senders`; `known` are the prefixes in the datapath's maps.
    fn resolve(&self, senders: &[Sender], known: &[IpNet]) -> (usize, Packet) {
        let from = self.from.index(senders.len());
        let cidrs = &senders[from].cidrs;
        let v6 = if cidrs.iter().all(|c| matches!(c, IpNet::V6(_))) {
            true
        } else if cidrs.iter().all(|c| matches!(c, IpNet::V4(_))) {
            self.family < 5
        } else {
            self.family < 50
        };
        let fam = |p: &&IpNet| matches!(p, IpNet::V6(_)) == v6;
        let own: Vec<IpNet> = cidrs.iter().filter(fam).copied().collect();
        let any: Vec<IpNet> = known.iter().filter(fam).copied().collect();
        let peers: Vec<IpNet> = senders[from].peers.iter().filter(fam).copied().collect();
        let net = |s: &str| s.parse::<IpNet>().unwrap();
        // A known prefix, else a pool block.
        let known_or = |i: Index, block: u8| {
            if any.is_empty() {
                pool(v6, block)
            } else {
                *i.get(&any)
            }
        };
        let src = match self.src {
            Src::Own(i, at) if !own.is_empty() => addr_in(i.get(&own), at),
            Src::Own(i, at) | Src::Known(i, at) => addr_in(&known_or(i, 7), at),
            Src::Pool(block, at) => addr_in(&pool(v6, block), at),
        };
        let dst = match self.dst {
            Dst::Multicast(at) => addr_in(&net(if v6 { "ff00::/8" } else { "224.0.0.0/4" }), at),
            Dst::Broadcast if v6 => "ff02::1".parse().unwrap(),
            Dst::Broadcast => Ipv4Addr::BROADCAST.into(),
            Dst::LinkLocal(at) => {
                addr_in(&net(if v6 { "fe80::/10" } else { "169.254.0.0/16" }), at)
            }
            Dst::Peer(i, at) if !peers.is_empty() => addr_in(i.get(&peers), at),
            Dst::Peer(i, at) | Dst::Known(i, at) => addr_in(&known_or(i, 6), at),
            Dst::Pool(block, at) => addr_in(&pool(v6, block), at),
            Dst::Anywhere(bits) if v6 => Ipv6Addr::from(bits).into(),
            Dst::Anywhere(bits) => Ipv4Addr::from(bits as u32).into(),
        };
        let packet = Packet {
            slot: senders[from].slot,
            src,
            dst,
            ttl: self.ttl,
        };
        (from, packet)
    }
}

/// The packets of one topology. They are drawn from `packet()` with a `TestRng` seeded by the
/// case (part of the case's value) rather than being a `Vec<PacketSpec>` the runner shrinks:
/// every packet is decided on its own, so a failure's smallest packet list is a disagreeing
/// packet, which the report names directly; shrinking a 2,600-element vector would instead
/// replay the topology once per element removed (minutes). The topology still shrinks.
/// XorShift rather than ChaCha: in the unoptimised test profile ChaCha took ~0.5 s per
/// topology to draw the packets, more than running them.
fn packets(seed: &[u8; 16]) -> Vec<PacketSpec> {
    let mut runner = TestRunner::new_with_rng(
        RunConfig::default(),
        TestRng::from_seed(RngAlgorithm::XorShift, seed),
    );
    let packet = packet();
    (0..PACKETS_PER_TOPOLOGY)
        .map(|_| {
            packet
                .new_tree(&mut runner)
                .expect("packets are never rejected")
                .current()
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The run.
// ---------------------------------------------------------------------------------------------

fn mac(kind: u8, slot: u32) -> [u8; 6] {
    [0x02, kind, 0, 0, (slot >> 8) as u8, slot as u8]
}

fn tables_for(cfg: &Config) -> Tables {
    let none = std::collections::BTreeSet::new();
    let mut st = State::default()
        .assign(&desired::wanted(cfg, &none), 0)
        .expect("slots");
    let (peerings, records) = lifecycle::evaluate(cfg, &st.peerings, 0);
    st.peerings = records;
    // Every VPC's link exists: ifindex 1000 + slot, MACs derived from the slot.
    let mut facts = desired::Facts::default();
    for (name, slot) in &st.vpcs {
        facts.links.insert(
            name.clone(),
            desired::LinkFacts {
                host_ifindex: 1000 + slot,
                host_mac: mac(0xbb, *slot),
                ns_ifindex: 2,
                ns_mac: mac(0xaa, *slot),
            },
        );
    }
    desired::desired(&desired::Inputs {
        config: cfg,
        peerings: &peerings,
        slots: &st,
        facts: &facts,
        fleet: None,
    })
    .tables
}

fn all_prefixes(t: &Tables) -> Vec<IpNet> {
    t.src
        .keys()
        .map(|(_, n)| *n)
        .chain(t.routes.keys().map(|(_, n)| *n))
        .collect()
}

/// What the passing topologies exercised.
#[derive(Default)]
struct Coverage {
    /// Topologies where some VPC has more source prefixes than its interface entry holds.
    tries: usize,
    total: usize,
    delivered: usize,
    by_reason: BTreeMap<&'static str, usize>,
}

/// Runs every packet of one topology through the model and the datapath.
fn check(
    dp: &mut Datapath,
    coverage: &mut Coverage,
    topology: &Topology,
    seed: &[u8; 16],
) -> Result<(), TestCaseError> {
    let cfg = parse(&topology.0).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let t = tables_for(&cfg);
    dp.sync(&t)
        .map_err(|e| TestCaseError::fail(format!("sync: {e}")))?;
    let senders: Vec<Sender> = cfg
        .vpcs
        .iter()
        .map(|v| Sender {
            name: v.name.clone(),
            slot: t
                .src
                .keys()
                .find(|(_, n)| v.cidrs.contains(n))
                .map(|(s, _)| *s)
                .expect("every VPC has source prefixes"),
            cidrs: v.cidrs.clone(),
            peers: v
                .peerings
                .iter()
                .filter_map(|p| cfg.vpcs.iter().find(|w| w.name == p.peer))
                .flat_map(|w| w.cidrs.iter().copied())
                .collect(),
        })
        .collect();
    let known = all_prefixes(&t);
    let mut seen = Coverage {
        tries: usize::from(
            t.iface_infos()
                .values()
                .any(|i| i.n_src4 == IFACE_SRC_TRIE || i.n_src6 == IFACE_SRC_TRIE),
        ),
        ..Coverage::default()
    };
    let mut disagreements = Vec::new();
    for spec in packets(seed) {
        let (from, p) = spec.resolve(&senders, &known);
        let expect = decide(&t, p.slot, p.src, p.dst, p.ttl);
        let frame = common::packet::frame(p.src, p.dst, p.ttl);
        let mut ctx = [0u8; 192];
        ctx[36..40].copy_from_slice(&(1000 + p.slot).to_ne_bytes());
        let mut out = vec![0u8; frame.len() + 64];
        let before = match expect {
            Decision::Drop(r) => dp.drop_count(p.slot, r),
            Decision::Deliver { .. } | Decision::Tunnel { .. } => 0,
        };
        let res = dp
            .tc_program()
            .test_run(TestRunOptions {
                data_in: Some(&frame),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx),
                ..Default::default()
            })
            .map_err(|e| TestCaseError::fail(format!("test_run: {e}")))?;
        seen.total += 1;
        let agree = match (expect, res.return_value) {
            (Decision::Deliver { dst_vpc, .. }, TC_ACT_REDIRECT) => {
                seen.delivered += 1;
                out[0..6] == mac(0xaa, dst_vpc) && out[6..12] == mac(0xbb, dst_vpc)
            }
            (Decision::Drop(r), TC_ACT_SHOT) => {
                *seen.by_reason.entry(r.name()).or_default() += 1;
                dp.drop_count(p.slot, r) == before + 1
            }
            _ => false,
        };
        if !agree {
            disagreements.push(format!(
                "from {} (slot {}) {} -> {} ttl {}: model {expect:?}, datapath verdict {} out {:02x?}",
                senders[from].name,
                p.slot,
                p.src,
                p.dst,
                p.ttl,
                res.return_value,
                &out[..12],
            ));
        }
    }
    if !disagreements.is_empty() {
        return Err(TestCaseError::fail(format!(
            "{} of {} packets disagree (packet seed {seed:02x?}), first ones:\n  {}\nconfiguration:\n{}",
            disagreements.len(),
            seen.total,
            disagreements[..disagreements.len().min(SHOWN)].join("\n  "),
            topology.0,
        )));
    }
    coverage.tries += seen.tries;
    coverage.total += seen.total;
    coverage.delivered += seen.delivered;
    for (r, n) in seen.by_reason {
        *coverage.by_reason.entry(r).or_default() += n;
    }
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn datapath_agrees_with_the_model() {
    assert!(common::can_run());
    let seed = match std::env::var("PEERD_DIFF_SEED") {
        Ok(s) => s
            .parse::<u64>()
            .unwrap_or_else(|_| panic!("PEERD_DIFF_SEED={s:?} is not a u64")),
        Err(std::env::VarError::NotPresent) => DEFAULT_SEED,
        Err(e) => panic!("PEERD_DIFF_SEED: {e}"),
    };
    eprintln!("differential: seed {seed} (replay with PEERD_DIFF_SEED={seed})");
    let pins = common::PinDir::new();
    let dp = RefCell::new(Datapath::load(&pins.0).expect("load"));
    let coverage = RefCell::new(Coverage::default());
    let first_failure = RefCell::new(None::<String>);
    let defaults = RunConfig::default(); // reads the PROPTEST_* variables
    let set = |var| std::env::var_os(var).is_some();
    let mut runner = TestRunner::new(RunConfig {
        cases: TOPOLOGIES,
        rng_algorithm: RngAlgorithm::ChaCha,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        max_shrink_iters: if set("PROPTEST_MAX_SHRINK_ITERS") {
            defaults.max_shrink_iters
        } else {
            SHRINK_ITERS
        },
        max_shrink_time: if set("PROPTEST_MAX_SHRINK_TIME") {
            defaults.max_shrink_time
        } else {
            SHRINK_MS
        },
        ..defaults
    });
    let result = runner.run(
        &(topology(), any::<[u8; 16]>()),
        |(topology, packet_seed)| {
            let r = check(
                &mut dp.borrow_mut(),
                &mut coverage.borrow_mut(),
                &topology,
                &packet_seed,
            );
            if let Err(TestCaseError::Fail(why)) = &r {
                first_failure
                    .borrow_mut()
                    .get_or_insert_with(|| why.message().to_owned());
            }
            r
        },
    );
    match result {
        Ok(()) => {}
        Err(TestError::Fail(reason, _)) => panic!(
            "seed {seed}: the datapath and the model disagree.\n\n\
             First failing topology:\n{}\n\n\
             Smallest failing topology found by shrinking:\n{reason}",
            first_failure.borrow().as_deref().unwrap_or("?"),
        ),
        Err(TestError::Abort(why)) => panic!("seed {seed}: the run stopped: {why}"),
    }
    let c = coverage.into_inner();
    eprintln!(
        "{} packets over {TOPOLOGIES} topologies ({} using the source tries): {} delivered, drops {:?}",
        c.total, c.tries, c.delivered, c.by_reason
    );
    assert!(c.total >= 100_000);
    assert!(
        c.delivered > c.total / 20,
        "too few deliveries ({}) to be a meaningful test",
        c.delivered
    );
    assert!(c.tries > 0, "no topology used the source tries");
    assert!(
        c.by_reason.len() >= 5,
        "too few drop reasons exercised: {:?}",
        c.by_reason
    );
}
