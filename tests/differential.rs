//! Differential test: the eBPF datapath (run with BPF_PROG_TEST_RUN) against the plain-Rust
//! model of the decision (`peerd::tables::decide`), over random topologies built from random
//! configurations (overlapping and identical peer CIDRs, subnets with their own tables,
//! multi-CIDR VPCs, both families, partial routes, /32 and /128 routes, blackholes) and many
//! random and edge-case packets. Every disagreement is reported with the packet.
mod common;

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
};

use aya::programs::{TestRun, TestRunOptions};
use ipnet::IpNet;
use peerd::{
    config::Config,
    desired, lifecycle,
    datapath::Datapath,
    state::State,
    tables::{decide, Decision, Tables},
};

const TOPOLOGIES: u64 = 40;
const PACKETS_PER_TOPOLOGY: usize = 2600; // 104,000 packets per run
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len() as u64) as usize]
    }
}

/// A few /16 (and /48) blocks, reused across VPCs so that peers overlap or are identical.
fn pool4(i: u64) -> IpNet {
    format!("10.{}.0.0/16", i).parse().unwrap()
}
fn pool6(i: u64) -> IpNet {
    format!("fd00:{i:x}::/48").parse().unwrap()
}

/// A random sub-prefix of `net` with length in `min..=max`.
fn sub(rng: &mut Rng, net: &IpNet, min: u8, max: u8) -> IpNet {
    let len = (min + rng.below((max - min + 1) as u64) as u8).max(net.prefix_len());
    let addr = host(rng, net);
    IpNet::new(addr, len).unwrap().trunc()
}

/// A random address in `net`, often an edge one.
fn host(rng: &mut Rng, net: &IpNet) -> IpAddr {
    match rng.below(6) {
        0 => net.network(),
        1 => net.broadcast(),
        _ => match net {
            IpNet::V4(n) => {
                let span = (1u64 << (32 - n.prefix_len())) - 1;
                IpAddr::V4(Ipv4Addr::from(
                    u32::from(n.network()) + (rng.next() & span) as u32,
                ))
            }
            IpNet::V6(n) => {
                let bits = 128 - n.prefix_len() as u32;
                let r = ((rng.next() as u128) << 64 | rng.next() as u128)
                    & (if bits == 128 {
                        u128::MAX
                    } else {
                        (1u128 << bits) - 1
                    });
                IpAddr::V6(Ipv6Addr::from(u128::from(n.network()) | r))
            }
        },
    }
}

/// A random configuration text; None if it came out invalid (tried again).
fn random_config(rng: &mut Rng) -> String {
    let n = 3 + rng.below(6);
    let mut vpcs: Vec<(String, Vec<IpNet>)> = Vec::new();
    for i in 0..n {
        let mut cidrs = Vec::new();
        let mut used = Vec::new();
        for _ in 0..1 + rng.below(3) {
            let k = rng.below(6);
            if used.contains(&k) {
                continue;
            }
            used.push(k);
            cidrs.push(if rng.chance(60) { pool4(k) } else { pool6(k) });
        }
        vpcs.push((format!("v{i}"), cidrs));
    }
    // Peerings: (id, a, b, both ends?, reject?)
    let mut peerings = Vec::new();
    for a in 0..n {
        for b in a + 1..n {
            if rng.chance(45) {
                peerings.push((
                    format!("pcx-{a}x{b}"),
                    a as usize,
                    b as usize,
                    rng.chance(80),
                    rng.chance(8),
                ));
            }
        }
    }
    let mut text = String::from("[daemon]\nmax_active_peerings_per_vpc = 4\n");
    for (i, (name, cidrs)) in vpcs.iter().enumerate() {
        let list: Vec<String> = cidrs.iter().map(|c| format!("\"{c}\"")).collect();
        text += &format!(
            "[[vpc]]\nname = \"{name}\"\ncidrs = [{}]\n",
            list.join(", ")
        );
        let mine: Vec<&(String, usize, usize, bool, bool)> = peerings
            .iter()
            .filter(|p| p.1 == i || (p.2 == i && p.3))
            .collect();
        for (id, a, b, _, reject) in &mine {
            let peer = if *a == i { *b } else { *a };
            let rej = if *b == i && *reject {
                "reject = true\n"
            } else {
                ""
            };
            text += &format!("[[vpc.peering]]\nid = \"{id}\"\npeer = \"v{peer}\"\n{rej}");
        }
        if mine.is_empty() || rng.chance(50) {
            continue; // automatic routing
        }
        // Explicit routing: main (usually) and t1 for a subnet.
        let mut tables: BTreeMap<&str, Vec<(IpNet, String)>> = BTreeMap::new();
        for t in ["main", "t1"] {
            if t == "main" && rng.chance(15) {
                continue;
            }
            let mut routes: Vec<(IpNet, String)> = Vec::new();
            for _ in 0..1 + rng.below(6) {
                let (id, a, b, _, _) = rng.pick(&mine);
                let peer = if *a == i { *b } else { *a };
                let target = rng.pick(&vpcs[peer].1).to_owned();
                let dst = match rng.below(5) {
                    0 => target,
                    1 => sub(rng, &target, 17, 24),
                    2 => IpNet::new(host(rng, &target), target.max_prefix_len()).unwrap(),
                    3 => {
                        let p = pool4(rng.below(8));
                        sub(rng, &p, 8, 32)
                    }
                    _ => sub(rng, &target, 1, 30),
                };
                if !routes.iter().any(|(d, _)| *d == dst) {
                    routes.push((dst, id.clone()));
                }
            }
            tables.insert(t, routes);
        }
        if tables.contains_key("t1") {
            let c = rng.pick(cidrs).to_owned();
            if rng.chance(30) && c.prefix_len() + 3 <= c.max_prefix_len() {
                // Five disjoint subnets: more source prefixes than the datapath keeps inline
                // in its interface entry, so the source tries are used.
                for s in c.subnets(c.prefix_len() + 3).unwrap().take(5) {
                    text += &format!("[[vpc.subnet]]\ncidr = \"{s}\"\nroute_table = \"t1\"\n");
                }
            } else {
                let s = sub(
                    rng,
                    &c,
                    c.prefix_len() + 1,
                    c.max_prefix_len().min(c.prefix_len() + 12),
                );
                text += &format!("[[vpc.subnet]]\ncidr = \"{s}\"\nroute_table = \"t1\"\n");
            }
        }
        for (t, routes) in tables {
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

#[test]
#[ignore = "needs root"]
fn datapath_agrees_with_the_model() {
    if !common::can_run() {
        return;
    }
    let pins = common::PinDir::new();
    let mut dp = Datapath::load(&pins.0).expect("load");
    let mut rng = Rng(0x5eed_0000_0000_0001
        ^ std::env::var("PEERD_DIFF_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0));
    let (mut total, mut delivered, mut disagreements) = (0usize, 0usize, Vec::new());
    let mut by_reason: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut topo = 0;
    while topo < TOPOLOGIES {
        let text = random_config(&mut rng);
        let cfg = match Config::from_str(&text, Path::new("random.toml")) {
            Ok(c) => c,
            Err(_) => continue, // e.g. two routes that normalise to the same destination
        };
        topo += 1;
        let t = tables_for(&cfg);
        dp.sync(&t).expect("sync");
        let vpcs: Vec<(u32, Vec<IpNet>)> = cfg
            .vpcs
            .iter()
            .map(|v| {
                (
                    t.src
                        .keys()
                        .find(|(_, n)| v.cidrs.contains(n))
                        .map(|(s, _)| *s)
                        .unwrap(),
                    v.cidrs.clone(),
                )
            })
            .collect();
        let prefixes = all_prefixes(&t);
        for _ in 0..PACKETS_PER_TOPOLOGY {
            let (slot, cidrs) = rng.pick(&vpcs).clone();
            let v6 = if cidrs.iter().all(|c| matches!(c, IpNet::V6(_))) {
                true
            } else if cidrs.iter().all(|c| matches!(c, IpNet::V4(_))) {
                rng.chance(5)
            } else {
                rng.chance(50)
            };
            let fam = |p: &&IpNet| matches!(p, IpNet::V6(_)) == v6;
            let own: Vec<IpNet> = cidrs.iter().filter(fam).copied().collect();
            let any: Vec<IpNet> = prefixes.iter().filter(fam).copied().collect();
            let fallback = if v6 {
                pool6(rng.below(8))
            } else {
                pool4(rng.below(8))
            };
            let src = if !own.is_empty() && rng.chance(85) {
                let p = *rng.pick(&own);
                host(&mut rng, &p)
            } else if !any.is_empty() {
                let p = *rng.pick(&any);
                host(&mut rng, &p)
            } else {
                host(&mut rng, &fallback)
            };
            let dst = match rng.below(20) {
                0 if v6 => "ff02::1".parse().unwrap(),
                0 => "224.0.0.9".parse().unwrap(),
                1 if v6 => "fe80::1".parse().unwrap(),
                _ if !any.is_empty() && rng.chance(90) => {
                    let p = *rng.pick(&any);
                    host(&mut rng, &p)
                }
                _ => host(&mut rng, &fallback),
            };
            let ttl = *rng.pick(&[64u8, 64, 64, 64, 64, 64, 2, 1, 0, 255]);
            let expect = decide(&t, slot, src, dst, ttl);
            let frame = common::packet::frame(src, dst, ttl);
            let mut ctx = [0u8; 192];
            ctx[36..40].copy_from_slice(&(1000 + slot).to_ne_bytes());
            let mut out = vec![0u8; frame.len() + 64];
            let before = match expect {
                Decision::Drop(r) => dp.drop_count(slot, r),
                Decision::Deliver { .. } => 0,
            };
            let res = dp
                .tc_program()
                .test_run(TestRunOptions {
                    data_in: Some(&frame),
                    data_out: Some(&mut out),
                    ctx_in: Some(&ctx),
                    ..Default::default()
                })
                .expect("test_run");
            total += 1;
            let agree = match (expect, res.return_value) {
                (Decision::Deliver { dst_vpc, .. }, TC_ACT_REDIRECT) => {
                    delivered += 1;
                    out[0..6] == mac(0xaa, dst_vpc) && out[6..12] == mac(0xbb, dst_vpc)
                }
                (Decision::Drop(r), TC_ACT_SHOT) => {
                    *by_reason.entry(r.name()).or_default() += 1;
                    dp.drop_count(slot, r) == before + 1
                }
                _ => false,
            };
            if !agree && disagreements.len() < 20 {
                disagreements.push(format!(
                    "topology {topo}: from slot {slot} {src} -> {dst} ttl {ttl}: model {expect:?}, datapath verdict {} out {:02x?}\n{text}",
                    res.return_value,
                    &out[..12]
                ));
            }
        }
    }
    eprintln!("{total} packets over {topo} topologies: {delivered} delivered, drops {by_reason:?}");
    assert!(total >= 100_000);
    assert!(
        delivered > total / 20,
        "too few deliveries ({delivered}) to be a meaningful test"
    );
    assert!(
        by_reason.len() >= 5,
        "too few drop reasons exercised: {by_reason:?}"
    );
    assert!(
        disagreements.is_empty(),
        "{} disagreements, first ones:\n{}",
        disagreements.len(),
        disagreements.join("\n")
    );
}
