//! Cluster mode's fleet store against a real etcd (SPEC §7): `peerd apply` / `plan`, the fleet
//! view and its watch, host membership under a lease.
//!
//! Every test starts its own etcd (tests/common/etcd.rs) and needs the `etcd` and `etcdctl`
//! binaries (`cargo xtask setup` installs them): they are `#[ignore = "needs etcd"]`. No root
//! needed.
mod common;

use std::{
    collections::BTreeSet,
    fs,
    net::IpAddr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use common::{etcd::Etcd, unique};
use peerd::{
    cluster::{self, ApplyError, EtcdConfig, FleetEvent, FleetHost, FleetView, Membership, Store},
    config::{ClusterConfig, DaemonConfig, PeeringState},
};
use tokio::sync::mpsc;

const A: &str = "# tenant a\n[[vpc]]\nname = \"a\"\ncidrs = [\"10.1.0.0/16\"]\n\n  [[vpc.peering]]\n  id = \"pcx-ab\"\n  peer = \"b\"\n";
const B: &str = "[[vpc]]\nname = \"b\"\ncidrs = [\"10.2.0.0/16\"]\n\n  [[vpc.peering]]\n  id = \"pcx-ab\"\n  peer = \"a\"\n";
/// Unpeered, overlapping a: allowed.
const C: &str = "[[vpc]]\nname = \"c\"\ncidrs = [\"10.1.0.0/16\"]\n";

/// A directory of files to apply, removed on drop.
struct Files(PathBuf);

impl Files {
    fn new() -> Self {
        let d = std::env::temp_dir().join(unique("apply"));
        fs::create_dir_all(&d).unwrap();
        Self(d)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn cfg(e: &Etcd) -> EtcdConfig {
    EtcdConfig::new(vec![e.url.clone()], "/peerd/")
}

fn now() -> u64 {
    peerd::state::unix(std::time::SystemTime::now())
}

async fn apply(
    e: &Etcd,
    files: &[PathBuf],
    delete: &[&str],
) -> Result<cluster::ApplyReport, ApplyError> {
    let delete: Vec<String> = delete.iter().map(|s| s.to_string()).collect();
    cluster::apply(&cfg(e), files, &delete, &DaemonConfig::default(), now()).await
}

async fn snapshot(e: &Etcd) -> FleetView {
    Store::connect(&cfg(e))
        .await
        .unwrap()
        .snapshot()
        .await
        .unwrap()
}

fn state_of(v: &FleetView, id: &str) -> Option<PeeringState> {
    v.peerings[id].record.state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd"]
async fn apply_writes_vpcs_vnis_and_records_and_the_snapshot_reads_them_back() {
    let e = Etcd::start();
    let f = Files::new();
    let (a, b, c) = (
        f.write("a.toml", A),
        f.write("b.toml", B),
        f.write("c.toml", C),
    );
    let t0 = now();
    let r = apply(&e, &[a.clone(), b, c], &[]).await.unwrap();
    assert!(r.written);
    assert!(
        r.lines.iter().any(|l| l.starts_with("VPC a: added (VNI ")),
        "{:?}",
        r.lines
    );
    assert!(
        r.lines
            .iter()
            .any(|l| l.contains("peering pcx-ab (a <-> b): new, active")),
        "{:?}",
        r.lines
    );

    let v = snapshot(&e).await;
    assert!(v.revision >= r.revision);
    assert_eq!(v.vpcs.keys().collect::<Vec<_>>(), ["a", "b", "c"]);
    let vnis: BTreeSet<u32> = v.vpcs.values().map(|x| x.vni).collect();
    assert_eq!(vnis.len(), 3, "distinct VNIs: {vnis:?}");
    assert!(vnis.iter().all(|&n| (1..1 << 24).contains(&n)));
    assert_eq!(
        v.vpcs["a"].toml, A,
        "the VPC's key holds its declaration as written"
    );
    assert_eq!(v.vpcs["a"].key, "/peerd/v1/vpcs/a");
    let p = &v.peerings["pcx-ab"];
    assert_eq!(p.record.state, Some(PeeringState::Active));
    assert!(p.record.first_seen >= t0 && p.record.activated_at == Some(p.record.first_seen));
    assert!(p.create_revision > 0 && p.create_revision <= v.revision);
    // Every host parses the same declarations with the configuration's parser.
    let (vpcs, errors) = v.config(&DaemonConfig::default());
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(
        vpcs.iter().map(|x| x.name.as_str()).collect::<Vec<_>>(),
        ["a", "b", "c"]
    );
    let (peerings, _) = v.evaluate(vpcs, &DaemonConfig::default(), now());
    assert_eq!(peerings[0].state, PeeringState::Active);
    // The layout under the versioned prefix.
    let keys = e.keys("/peerd/");
    for k in ["serial", "vni-next", "vpcs/a", "vnis/a", "peerings/pcx-ab"] {
        assert!(
            keys.contains(&format!("/peerd/v1/{k}")),
            "{k} missing from {keys:?}"
        );
    }

    // The same files again: nothing to write; an edited one rewrites only its VPC.
    let rev = snapshot(&e).await.revision;
    let r = apply(&e, std::slice::from_ref(&a), &[]).await.unwrap();
    assert!(!r.written && r.lines.is_empty(), "{r:?}");
    assert_eq!(snapshot(&e).await.revision, rev);
    fs::write(&a, A.replace("# tenant a", "# tenant a, edited")).unwrap();
    let r = apply(&e, &[a], &[]).await.unwrap();
    assert_eq!(
        r.lines,
        [format!(
            "VPC a: changed (VNI {}) from {}",
            v.vpcs["a"].vni,
            f.0.join("a.toml").display()
        )]
    );
    let v2 = snapshot(&e).await;
    assert_eq!(v2.vpcs["a"].vni, v.vpcs["a"].vni, "a VPC keeps its VNI");
    assert_eq!(
        v2.vpcs["b"].mod_revision, v.vpcs["b"].mod_revision,
        "b untouched"
    );
    assert_eq!(v2.peerings["pcx-ab"].record, v.peerings["pcx-ab"].record);

    // plan says the same as apply would, and writes nothing.
    let d = f.write(
        "d.toml",
        "[[vpc]]\nname = \"d\"\ncidrs = [\"10.4.0.0/16\"]\n",
    );
    let lines = cluster::plan(&cfg(&e), &[d], &[], &DaemonConfig::default(), now())
        .await
        .unwrap();
    assert_eq!(lines.len(), 1);
    assert!(lines[0].starts_with("VPC d: added (VNI "), "{lines:?}");
    assert_eq!(snapshot(&e).await.revision, v2.revision);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd"]
async fn apply_rejects_what_conflicts_with_etcd_naming_file_line_col_and_the_key() {
    let e = Etcd::start();
    let f = Files::new();
    apply(&e, &[f.write("a.toml", A)], &[]).await.unwrap();
    let before = snapshot(&e).await;

    // b's end of pcx-ab names another peer: the two ends disagree.
    let b = f.write("b.toml", &B.replace("peer = \"a\"", "peer = \"zz\""));
    let err = apply(&e, std::slice::from_ref(&b), &[])
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("disagree"), "{err}");
    assert!(
        err.contains("etcd:/peerd/v1/vpcs/a:6:3"),
        "the stored end, by its key: {err}"
    );
    assert!(
        err.contains(&format!("{}:5:3", b.display())),
        "the file's end: {err}"
    );

    // Two CIDRs overlapping inside one declaration, and a subnet outside its VPC.
    let bad = f.write(
        "bad.toml",
        "[[vpc]]\nname = \"x\"\ncidrs = [\"10.9.0.0/16\", \"10.9.1.0/24\"]\n[[vpc.subnet]]\ncidr = \"10.8.0.0/24\"\nroute_table = \"t\"\n",
    );
    let err = apply(&e, std::slice::from_ref(&bad), &[])
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains(&format!("{}:3:", bad.display())), "{err}");
    assert!(err.contains(&format!("{}:5:", bad.display())), "{err}");
    // A VPC name already defined by another file of the same apply.
    let dup = f.write("dup.toml", &A.replace("pcx-ab", "pcx-other"));
    let err = apply(&e, &[f.0.join("a.toml"), dup.clone()], &[])
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("{}:3:", dup.display())) && err.contains("already defined"),
        "{err}"
    );
    // Only [[vpc]] tables in a file to apply.
    let host = f.write("host.toml", "[daemon]\nstate_dir = \"/tmp/x\"\n");
    let err = apply(&e, std::slice::from_ref(&host), &[])
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("{}:1:", host.display())) && err.contains("only [[vpc]] tables"),
        "{err}"
    );
    // A stored VPC that no longer validates (written by hand) fails the apply with its key.
    e.ctl(&[
        "put",
        "/peerd/v1/vpcs/h",
        "[[vpc]]\nname = \"h\"\ncidrs = [\"10.77.0.0/33\"]\n",
    ]);
    let err = apply(&e, &[f.write("c.toml", C)], &[])
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("etcd:/peerd/v1/vpcs/h:3:"), "{err}");
    e.ctl(&["del", "/peerd/v1/vpcs/h"]);

    // Nothing was written by any of them.
    let after = snapshot(&e).await;
    assert_eq!(after.vpcs, before.vpcs);
    assert_eq!(after.peerings, before.peerings);
    assert_eq!(after.serial, before.serial);

    // Unpeered VPCs may overlap.
    apply(&e, &[f.0.join("c.toml")], &[]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd"]
async fn a_concurrent_apply_fails_cleanly_and_writes_nothing() {
    let e = Etcd::start();
    let f = Files::new();
    let (a, b) = (f.write("a.toml", A), f.write("b.toml", B));
    let q = DaemonConfig::default();
    // Both read the same serial; the first to commit wins.
    let first = cluster::prepare(&cfg(&e), std::slice::from_ref(&a), &[], &q, now())
        .await
        .unwrap();
    let second = cluster::prepare(&cfg(&e), std::slice::from_ref(&b), &[], &q, now())
        .await
        .unwrap();
    assert_eq!(first.revision(), second.revision());
    first.commit().await.unwrap();
    let err = second.commit().await.unwrap_err();
    assert!(matches!(err, ApplyError::Conflict { .. }), "{err}");
    assert!(err.to_string().contains("retry"), "{err}");
    let v = snapshot(&e).await;
    assert_eq!(
        v.vpcs.keys().collect::<Vec<_>>(),
        ["a"],
        "only the winner's VPC"
    );
    assert_eq!(e.keys("/peerd/v1/vnis/"), ["/peerd/v1/vnis/a"]);
    assert_eq!(v.serial, 1);

    // A real race: each apply either commits whole or fails whole with a conflict.
    let files: Vec<PathBuf> = (0..6)
        .map(|i| {
            f.write(
                &format!("r{i}.toml"),
                &format!(
                    "[[vpc]]\nname = \"r{i}\"\ncidrs = [\"10.{}.0.0/16\"]\n",
                    100 + i
                ),
            )
        })
        .collect();
    let runs = files.iter().map(|p| {
        let c = cfg(&e);
        let p = p.clone();
        tokio::spawn(async move {
            (
                p.clone(),
                cluster::apply(&c, &[p], &[], &DaemonConfig::default(), now()).await,
            )
        })
    });
    let mut won = BTreeSet::new();
    for r in futures::future::join_all(runs).await {
        let (p, r) = r.unwrap();
        match r {
            Ok(_) => {
                won.insert(p.file_stem().unwrap().to_string_lossy().into_owned());
            }
            Err(ApplyError::Conflict { .. }) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert!(!won.is_empty());
    let v = snapshot(&e).await;
    let stored: BTreeSet<String> = v
        .vpcs
        .keys()
        .filter(|k| k.starts_with('r'))
        .cloned()
        .collect();
    assert_eq!(stored, won, "etcd holds exactly the winners' VPCs");
    for n in &won {
        assert!(v.vpcs[n].vni > 0, "{n} has its VNI");
    }
    assert_eq!(v.serial, 1 + won.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd"]
async fn delete_removes_the_vpc_and_its_peers_see_the_peering_disconnected() {
    let e = Etcd::start();
    let f = Files::new();
    apply(&e, &[f.write("a.toml", A), f.write("b.toml", B)], &[])
        .await
        .unwrap();
    let v = snapshot(&e).await;
    assert_eq!(state_of(&v, "pcx-ab"), Some(PeeringState::Active));

    let err = apply(&e, &[], &["nope"]).await.unwrap_err().to_string();
    assert!(err.contains("nope"), "{err}");
    let r = apply(&e, &[], &["b"]).await.unwrap();
    assert!(
        r.lines
            .contains(&format!("VPC b: removed (VNI {})", v.vpcs["b"].vni)),
        "{:?}",
        r.lines
    );
    assert!(
        r.lines
            .iter()
            .any(|l| l.contains("pcx-ab") && l.contains("active -> disconnected")),
        "{:?}",
        r.lines
    );
    let v2 = snapshot(&e).await;
    assert!(!v2.vpcs.contains_key("b"));
    assert!(e.get("/peerd/v1/vnis/b").is_none());
    let rec = &v2.peerings["pcx-ab"].record;
    assert_eq!(rec.state, Some(PeeringState::Disconnected));
    assert!(rec.ended_at.is_some());
    // What a host computes from the fleet agrees.
    let (vpcs, errors) = v2.config(&DaemonConfig::default());
    assert!(errors.is_empty(), "{errors:?}");
    let (p, _) = v2.evaluate(vpcs, &DaemonConfig::default(), now());
    assert_eq!(p[0].state, PeeringState::Disconnected);
    assert!(
        p[0].reason.as_deref().unwrap_or("").contains("\"b\""),
        "{p:?}"
    );
}

/// The next event, within `limit`.
async fn next(rx: &mut mpsc::Receiver<FleetEvent>, limit: Duration) -> FleetEvent {
    tokio::time::timeout(limit, rx.recv())
        .await
        .unwrap_or_else(|_| panic!("no fleet event within {limit:?}"))
        .expect("the watch task ended")
}

/// Views until one satisfies `f` (bounded).
async fn view_where(
    rx: &mut mpsc::Receiver<FleetEvent>,
    what: &str,
    f: impl Fn(&FleetView) -> bool,
) -> FleetView {
    let start = Instant::now();
    loop {
        let left = Duration::from_secs(20).saturating_sub(start.elapsed());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some(FleetEvent::View(v))) if f(&v) => return (*v).clone(),
            Ok(Some(_)) => {}
            Ok(None) => panic!("the watch task ended"),
            Err(_) => panic!("no view with {what} within 20 s"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd"]
async fn watch_sends_a_view_after_each_change_and_resyncs_after_a_compaction() {
    let e = Etcd::start();
    let f = Files::new();
    let (tx, mut rx) = mpsc::channel(16);
    let task = cluster::watch(cfg(&e), tx);
    let FleetEvent::View(v0) = next(&mut rx, Duration::from_secs(10)).await else {
        panic!("first event is not a view")
    };
    assert!(v0.vpcs.is_empty());
    apply(&e, &[f.write("a.toml", A)], &[]).await.unwrap();
    let v1 = view_where(&mut rx, "VPC a", |v| v.vpcs.contains_key("a")).await;
    assert!(
        v1.vpcs["a"].vni > 0 && v1.peerings.contains_key("pcx-ab"),
        "one apply is one view: {v1:?}"
    );
    assert!(v1.revision > v0.revision);
    // A key written by hand under the root, then deleted.
    e.ctl(&[
        "put",
        "/peerd/v1/hosts/hv9",
        "{\"underlay\":\"192.0.2.9\",\"vxlan_port\":4789}",
    ]);
    view_where(&mut rx, "host hv9", |v| v.hosts.contains_key("hv9")).await;
    e.ctl(&["del", "/peerd/v1/hosts/hv9"]);
    view_where(&mut rx, "hv9 gone", |v| !v.hosts.contains_key("hv9")).await;
    // Keys outside the prefix are not the fleet's.
    e.ctl(&["put", "/other/v1/vpcs/zz", "x"]);
    task.abort();

    // A watcher that meets a compacted revision starts again from a fresh snapshot: views keep
    // coming, and it is never reported as disconnected.
    let rev = snapshot(&e).await.revision;
    Store::connect(&cfg(&e))
        .await
        .unwrap()
        .compact(rev)
        .await
        .unwrap();
    let (tx, mut rx) = mpsc::channel(16);
    let task = cluster::watch_behind(cfg(&e), tx, rev);
    let mut views = 0;
    let start = Instant::now();
    while views < 2 {
        match next(&mut rx, Duration::from_secs(10)).await {
            FleetEvent::View(v) => {
                assert!(v.vpcs.contains_key("a"));
                views += 1;
            }
            FleetEvent::Disconnected(why) => panic!("a compaction is not an outage: {why}"),
        }
        assert!(start.elapsed() < Duration::from_secs(20));
    }
    apply(&e, &[f.write("c.toml", C)], &[]).await.unwrap();
    view_where(&mut rx, "VPC c after the resync", |v| {
        v.vpcs.contains_key("c")
    })
    .await;
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd"]
async fn etcd_down_is_reported_and_a_restart_resyncs() {
    let mut e = Etcd::start();
    let f = Files::new();
    apply(&e, &[f.write("a.toml", A)], &[]).await.unwrap();
    let (tx, mut rx) = mpsc::channel(16);
    let task = cluster::watch(cfg(&e), tx);
    view_where(&mut rx, "VPC a", |v| v.vpcs.contains_key("a")).await;

    e.stop();
    match next(&mut rx, Duration::from_secs(15)).await {
        FleetEvent::Disconnected(why) => {
            assert!(why.contains(&e.url), "the message names etcd: {why}")
        }
        other => panic!("expected Disconnected, got {other:?}"),
    }
    // Calls fail within their timeout instead of hanging.
    let t = Instant::now();
    let err = apply(&e, &[f.write("c.toml", C)], &[]).await.unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
    assert!(
        matches!(err, ApplyError::Store(ref s) if s.is_unavailable()),
        "{err}"
    );

    e.restart();
    let v = view_where(&mut rx, "VPC a after the restart", |v| {
        v.vpcs.contains_key("a")
    })
    .await;
    assert!(v.vpcs["a"].vni > 0);
    apply(&e, &[f.0.join("c.toml")], &[]).await.unwrap();
    view_where(&mut rx, "VPC c", |v| v.vpcs.contains_key("c")).await;
    task.abort();
}

fn cluster_config(e: &Etcd, host: &str, ttl: u64) -> ClusterConfig {
    ClusterConfig {
        etcd: vec![e.url.clone()],
        host: host.into(),
        underlay: "192.0.2.11".parse().unwrap(),
        vpcs: vec!["a".into(), "b".into()],
        key_prefix: "/peerd/".into(),
        lease_ttl: Duration::from_secs(ttl),
        vxlan_port: 4789,
        underlay_mtu: None,
        tls: None,
    }
}

fn fleet_host(c: &ClusterConfig) -> FleetHost {
    FleetHost {
        name: c.host.clone(),
        underlay: c.underlay,
        vxlan_port: c.vxlan_port,
        vpcs: c.vpcs.clone(),
        version: env!("CARGO_PKG_VERSION").into(),
    }
}

fn addrs(list: &[&str]) -> BTreeSet<IpAddr> {
    list.iter().map(|a| a.parse().unwrap()).collect()
}

/// Polls `f` every 100 ms until it holds, for at most `limit`.
async fn eventually(limit: Duration, what: &str, f: impl Fn() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The lease (hex) etcd reports for `key`, via `etcdctl -w json`.
fn lease_of(e: &Etcd, key: &str) -> Option<i64> {
    let out = e.ctl(&["get", key, "-w", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["kvs"][0]["lease"].as_i64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd"]
async fn membership_puts_host_and_endpoints_under_its_lease_exactly() {
    let e = Etcd::start();
    let state = Files::new();
    let c1 = cluster_config(&e, "hv1", 15);
    let m1 = Membership::join(&c1, &state.0.join("hv1"), fleet_host(&c1))
        .await
        .unwrap();
    assert!(m1.connected());
    let lease = m1.lease();
    assert_ne!(lease, 0);
    assert_eq!(lease_of(&e, "/peerd/v1/hosts/hv1"), Some(lease));
    let saved = fs::read_to_string(state.0.join("hv1/lease")).unwrap();
    assert_eq!(saved.trim(), lease.to_string());
    let v = snapshot(&e).await;
    assert_eq!(v.hosts["hv1"], fleet_host(&c1));

    m1.set_endpoints("a", &addrs(&["10.1.0.5", "10.1.0.6", "2001:db8::5"]))
        .await
        .unwrap();
    assert_eq!(
        e.keys("/peerd/v1/endpoints/"),
        [
            "/peerd/v1/endpoints/a/10.1.0.5/hv1",
            "/peerd/v1/endpoints/a/10.1.0.6/hv1",
            "/peerd/v1/endpoints/a/2001:db8::5/hv1"
        ]
    );
    assert_eq!(
        lease_of(&e, "/peerd/v1/endpoints/a/10.1.0.5/hv1"),
        Some(lease)
    );

    // A second host publishes 10.1.0.6 too (a workload moving): one key per host, and the
    // most recent wins for readers.
    let c2 = cluster_config(&e, "hv2", 15);
    let m2 = Membership::join(&c2, &state.0.join("hv2"), fleet_host(&c2))
        .await
        .unwrap();
    m2.set_endpoints("a", &addrs(&["10.1.0.6"])).await.unwrap();
    let v = snapshot(&e).await;
    assert_eq!(v.locate("a", "10.1.0.6".parse().unwrap()), Some("hv2"));
    assert_eq!(v.locate("a", "10.1.0.5".parse().unwrap()), Some("hv1"));

    // Exactly the set: 10.1.0.5 and the IPv6 one go, 10.1.0.7 comes; hv2's key stays.
    m1.set_endpoints("a", &addrs(&["10.1.0.6", "10.1.0.7"]))
        .await
        .unwrap();
    assert_eq!(
        e.keys("/peerd/v1/endpoints/"),
        [
            "/peerd/v1/endpoints/a/10.1.0.6/hv1",
            "/peerd/v1/endpoints/a/10.1.0.6/hv2",
            "/peerd/v1/endpoints/a/10.1.0.7/hv1"
        ]
    );
    let v = snapshot(&e).await;
    assert_eq!(
        v.locate("a", "10.1.0.6".parse().unwrap()),
        Some("hv2"),
        "an unchanged key is not rewritten"
    );
    assert_eq!(v.locate("a", "10.1.0.7".parse().unwrap()), Some("hv1"));
    m1.set_endpoints("a", &BTreeSet::new()).await.unwrap();
    assert_eq!(
        e.keys("/peerd/v1/endpoints/"),
        ["/peerd/v1/endpoints/a/10.1.0.6/hv2"]
    );

    // Leaving revokes the lease: the host's keys go at once.
    m1.set_endpoints("b", &addrs(&["10.2.0.9"])).await.unwrap();
    m1.leave().await.unwrap();
    assert!(e.get("/peerd/v1/hosts/hv1").is_none());
    assert_eq!(
        e.keys("/peerd/v1/endpoints/"),
        ["/peerd/v1/endpoints/a/10.1.0.6/hv2"]
    );
    assert!(!state.0.join("hv1/lease").exists());
    drop(m2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd"]
async fn a_rejoin_within_the_ttl_keeps_the_lease_and_an_expired_one_takes_the_keys() {
    let e = Etcd::start();
    let state = Files::new();
    let c = cluster_config(&e, "hv1", 2);
    let m = Membership::join(&c, &state.0, fleet_host(&c))
        .await
        .unwrap();
    let lease = m.lease();
    m.set_endpoints("a", &addrs(&["10.1.0.5"])).await.unwrap();
    // Keep-alive: the keys outlive several TTLs while the member runs.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(e.get("/peerd/v1/hosts/hv1").is_some() && m.connected());

    // A restart (drop, join again) within the TTL reuses the lease: the keys never went.
    drop(m);
    let m = Membership::join(&c, &state.0, fleet_host(&c))
        .await
        .unwrap();
    assert_eq!(m.lease(), lease, "the lease kept in state_dir is reused");
    assert_eq!(
        e.keys("/peerd/v1/endpoints/"),
        ["/peerd/v1/endpoints/a/10.1.0.5/hv1"]
    );

    // Gone longer than the TTL: etcd expires the lease and its keys.
    drop(m);
    let t = Instant::now();
    eventually(Duration::from_secs(15), "the host's keys to expire", || {
        e.get("/peerd/v1/hosts/hv1").is_none() && e.keys("/peerd/v1/endpoints/").is_empty()
    })
    .await;
    assert!(
        t.elapsed() >= Duration::from_secs(1),
        "not before the TTL: {:?}",
        t.elapsed()
    );
    let m = Membership::join(&c, &state.0, fleet_host(&c))
        .await
        .unwrap();
    assert_ne!(m.lease(), lease, "a new lease after expiry");
    assert!(e.get("/peerd/v1/hosts/hv1").is_some());

    // A lease lost under a running member (revoked here) is granted again, and the host and
    // its endpoints are put again.
    m.set_endpoints("a", &addrs(&["10.1.0.8"])).await.unwrap();
    let old = m.lease();
    e.ctl(&["lease", "revoke", &format!("{old:x}")]);
    eventually(
        Duration::from_secs(15),
        "host and endpoints back under a new lease",
        || {
            m.lease() != old
                && m.connected()
                && e.get("/peerd/v1/hosts/hv1").is_some()
                && e.keys("/peerd/v1/endpoints/") == ["/peerd/v1/endpoints/a/10.1.0.8/hv1"]
        },
    )
    .await;
    assert_eq!(
        lease_of(&e, "/peerd/v1/endpoints/a/10.1.0.8/hv1"),
        Some(m.lease())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd"]
async fn membership_rides_out_an_etcd_restart() {
    let mut e = Etcd::start();
    let state = Files::new();
    let c = cluster_config(&e, "hv1", 15);
    let m = Membership::join(&c, &state.0, fleet_host(&c))
        .await
        .unwrap();
    m.set_endpoints("a", &addrs(&["10.1.0.5"])).await.unwrap();
    e.stop();
    eventually(Duration::from_secs(20), "the member to notice", || {
        !m.connected()
    })
    .await;
    // Changes while etcd is down are kept and written when it is back.
    assert!(m
        .set_endpoints("a", &addrs(&["10.1.0.5", "10.1.0.9"]))
        .await
        .is_err());
    e.restart();
    eventually(
        Duration::from_secs(30),
        "the member to reconnect and publish",
        || {
            m.connected()
                && e.keys("/peerd/v1/endpoints/")
                    == [
                        "/peerd/v1/endpoints/a/10.1.0.5/hv1",
                        "/peerd/v1/endpoints/a/10.1.0.9/hv1",
                    ]
        },
    )
    .await;
}

fn peerd(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(common::env::PEERD)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
#[ignore = "needs etcd"]
fn peerd_apply_and_plan_on_the_command_line() {
    let e = Etcd::start();
    let f = Files::new();
    let (a, b) = (f.write("a.toml", A), f.write("b.toml", B));

    let (code, out, err) = peerd(&["plan", "--etcd", &e.url, s(&a)]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("VPC a: added (VNI 1)"), "{out}");
    assert!(e.keys("/peerd/").is_empty(), "plan writes nothing");

    let (code, out, err) = peerd(&["apply", "--etcd", &e.url, s(&a), s(&b)]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("VPC a: added (VNI 1)") && out.contains("VPC b: added (VNI 2)"),
        "{out}"
    );
    assert!(
        out.contains("peering pcx-ab (a <-> b): new, active"),
        "{out}"
    );
    assert!(out.contains("applied at etcd revision"), "{out}");

    let bad = f.write(
        "bad.toml",
        "[[vpc]]\nname = \"x\"\ncidrs = [\"10.9.0.0/33\"]\n",
    );
    let (code, out, err) = peerd(&["apply", "--etcd", &e.url, s(&bad)]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains(&format!("{}:3:", bad.display())), "{err}");

    // Through a host file's [cluster], with its key prefix.
    let host = f.write(
        "hv1.toml",
        &format!(
            "[cluster]\netcd = [\"{}\"]\nhost = \"hv1\"\nunderlay = \"192.0.2.11\"\nkey_prefix = \"/fleet2/\"\n",
            e.url
        ),
    );
    let (code, out, err) = peerd(&["apply", "--config", s(&host), s(&a)]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        e.keys("/fleet2/v1/vpcs/") == ["/fleet2/v1/vpcs/a"],
        "{:?}",
        e.keys("/fleet2/")
    );
    let (code, out, err) = peerd(&["apply", "--config", s(&host), "--delete", "a"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("VPC a: removed"), "{out}");
    assert!(e.keys("/fleet2/v1/vpcs/").is_empty());
    assert_eq!(
        e.keys("/peerd/v1/vpcs/"),
        ["/peerd/v1/vpcs/a", "/peerd/v1/vpcs/b"],
        "the other fleet is untouched"
    );

    // etcd unreachable: a clear error within the timeouts, exit 1.
    let (code, _, err) = peerd(&["apply", "--etcd", "http://127.0.0.1:1", s(&a)]);
    assert_eq!(code, 1);
    assert!(err.contains("http://127.0.0.1:1"), "{err}");
}

#[test]
#[ignore = "needs root and etcd"]
fn the_harness_runs_etcd_inside_a_network_namespace_and_restarts_it() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "this test creates a network namespace: run it as root"
    );
    let ns = common::etcd::Netns::new("etcd");
    let mut e = Etcd::start_in(Some(&ns.0), "127.0.0.1".parse().unwrap());
    assert!(e.running());
    let f = Files::new();
    let a = f.write("a.toml", A);
    // peerd's client, from a thread inside the namespace.
    let c = cfg(&e);
    let apply_in_ns = move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            cluster::apply(&c, &[a], &[], &DaemonConfig::default(), now())
                .await
                .map_err(|e| e.to_string())?;
            Store::connect(&c)
                .await
                .unwrap()
                .snapshot()
                .await
                .map_err(|e| e.to_string())
        })
    };
    let v = common::env::in_ns(&ns.0, apply_in_ns).unwrap();
    assert!(v.vpcs.contains_key("a"));
    e.restart();
    assert!(
        e.get("/peerd/v1/vpcs/a").is_some(),
        "the same data after a restart"
    );
    e.stop();
    assert!(!e.running() && !e.answers());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd"]
async fn an_apply_beyond_etcds_transaction_limit_says_so_and_writes_nothing() {
    let e = Etcd::start();
    let f = Files::new();
    apply(&e, &[f.write("a.toml", A)], &[]).await.unwrap();
    let before = snapshot(&e).await;
    // 100 VPCs are 200 puts (declaration and VNI each): beyond etcd's default 128.
    let many: String = (0..100)
        .map(|i| {
            format!(
                "[[vpc]]\nname = \"m{i}\"\ncidrs = [\"10.{}.{}.0/24\"]\n",
                100 + i / 100,
                i % 100
            )
        })
        .collect();
    let err = apply(&e, &[f.write("many.toml", &many)], &[])
        .await
        .unwrap_err();
    assert!(
        matches!(err, ApplyError::TooLarge { ops } if ops > 128),
        "{err}"
    );
    assert!(err.to_string().contains("smaller groups"), "{err}");
    assert_eq!(
        snapshot(&e).await.revision,
        before.revision,
        "nothing written"
    );
    // In groups it goes in.
    let half = |r: std::ops::Range<usize>| -> String {
        r.map(|i| {
            format!(
                "[[vpc]]\nname = \"m{i}\"\ncidrs = [\"10.{}.{}.0/24\"]\n",
                100 + i / 100,
                i % 100
            )
        })
        .collect()
    };
    apply(&e, &[f.write("m1.toml", &half(0..50))], &[])
        .await
        .unwrap();
    apply(&e, &[f.write("m2.toml", &half(50..100))], &[])
        .await
        .unwrap();
    assert_eq!(snapshot(&e).await.vpcs.len(), 101);
}
