//! The map reconciler against the real (pinned) maps, without namespaces: a full map never
//! blocks another tenant's disconnect, and entries are applied one by one.
mod common;

use ipnet::{IpNet, Ipv4Net};
use peerd::{
    datapath::Datapath,
    reconcile::maps::{self, Contents},
    tables::Tables,
};
use peerd_common::{PeeringInfo, RouteTarget, MAX_PREFIXES, PEERING_ACTIVE};

fn routes(table: u32, n: u32, base: u32) -> impl Iterator<Item = ((u32, IpNet), RouteTarget)> {
    (0..n).map(move |i| {
        let net = Ipv4Net::new(std::net::Ipv4Addr::from(base + (i << 8)), 24).unwrap();
        (
            (table, IpNet::V4(net)),
            RouteTarget {
                peering: 1,
                dst_vpc: 2,
                flags: 0,
                _pad: 0,
            },
        )
    })
}

#[test]
#[ignore = "needs root"]
fn a_full_route_trie_never_blocks_a_disconnect() {
    common::can_run();
    let pins = common::PinDir::new();
    let mut dp = Datapath::load(&pins.0).expect("load");
    // One tenant fills the IPv4 route trie to the last entry.
    let mut t = Tables::default();
    t.routes.extend(routes(1, MAX_PREFIXES, 0x0a00_0000));
    let active = PeeringInfo {
        state: PEERING_ACTIVE,
        vpc_a: 1,
        vpc_b: 2,
        _pad: 0,
    };
    t.peerings.insert(7, active);
    dp.sync(&t).expect("filling the trie");
    // Next: the tenant adds routes (no room for them) while another tenant's peering 7 is
    // disconnected.
    let mut next = t.clone();
    next.routes.extend(routes(1, 16, 0x4000_0000));
    next.peerings.insert(7, PeeringInfo { state: 0, ..active });
    let have = Contents::read(&dp).expect("read back");
    let done = maps::apply(&mut dp, maps::diff(&have, &Contents::of(&next)));
    assert_eq!(done.failed.len(), 16, "the new routes have no room");
    assert!(done.failed.iter().all(|(_, e)| !e.is_empty()));
    let now = Contents::read(&dp).expect("read back");
    assert_eq!(
        now.t.peerings.get(&7).map(|p| p.state),
        Some(0),
        "the disconnect went through"
    );
    assert_eq!(now.t.routes.len(), MAX_PREFIXES as usize);
    // Once the tenant's old routes go, the retried writes fit.
    let mut shrink = next.clone();
    shrink.routes = routes(1, 16, 0x4000_0000).collect();
    let done = maps::apply(&mut dp, maps::diff(&now, &Contents::of(&shrink)));
    assert!(done.failed.is_empty(), "{:?}", done.failed.first());
    assert_eq!(Contents::read(&dp).unwrap().t.routes.len(), 16);
}
