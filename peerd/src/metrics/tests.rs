//! The metrics HTTP server against a fake `render`, and `render` of a snapshot: no daemon
//! involved.
use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    sync::atomic::AtomicUsize,
    time::Instant,
};

use tokio::{runtime::Runtime, sync::Semaphore};

use super::*;
use crate::status::{PeeringView, VpcView};
use crate::testing::{raise_fd_limit, wait_until};

const TEXT: &str = "# TYPE peerd_test counter\npeerd_test_total 7\n# EOF\n";

/// A metrics server on 127.0.0.1 (an ephemeral port), stopped with its runtime on drop.
struct Server {
    addr: SocketAddr,
    stats: Arc<ServeStats>,
    renders: Arc<AtomicUsize>,
    _rt: Runtime,
}

impl Server {
    fn start(limits: Limits) -> Server {
        Self::start_with(limits, None)
    }

    /// With `gate`, every render waits for a permit.
    fn start_with(limits: Limits, gate: Option<Arc<Semaphore>>) -> Server {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let listener = rt
            .block_on(async { bind("127.0.0.1:0".parse().unwrap()) })
            .expect("bind");
        let addr = listener.local_addr().unwrap();
        let renders = Arc::new(AtomicUsize::new(0));
        let render: Render = {
            let renders = renders.clone();
            Arc::new(move || {
                let (renders, gate) = (renders.clone(), gate.clone());
                Box::pin(async move {
                    renders.fetch_add(1, Ordering::SeqCst);
                    if let Some(g) = gate {
                        g.acquire().await.expect("open").forget();
                    }
                    TEXT.to_owned()
                })
            })
        };
        let stats = Arc::new(ServeStats::default());
        rt.spawn(serve(listener, limits, render, stats.clone()));
        Server {
            addr,
            stats,
            renders,
            _rt: rt,
        }
    }

    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    }

    /// Sends `raw` and returns everything up to the server's close.
    fn exchange(&self, raw: &str) -> String {
        let mut s = self.connect();
        s.write_all(raw.as_bytes()).unwrap();
        read_all(&mut s)
    }

    fn get(&self, path: &str) -> String {
        self.exchange(&format!(
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        ))
    }
}

fn read_all(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    match s.read_to_end(&mut out) {
        Ok(_) => {}
        // A close with unread request bytes is a reset; what came before it still counts.
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!(
            "reading the answer: {e} (after {:?})",
            String::from_utf8_lossy(&out)
        ),
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn header<'a>(resp: &'a str, name: &str) -> Option<&'a str> {
    let head = resp.split("\r\n\r\n").next()?;
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn body(resp: &str) -> &str {
    resp.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("")
}

#[test]
fn serves_the_rendered_text_at_metrics_and_root_and_404_elsewhere() {
    let srv = Server::start(Limits::default());
    for path in ["/metrics", "/", "/metrics?x=1"] {
        let r = srv.get(path);
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{path}: {r}");
        assert_eq!(
            header(&r, "content-type"),
            Some(CONTENT_TYPE_OPENMETRICS),
            "{r}"
        );
        assert_eq!(header(&r, "content-length"), Some(&*TEXT.len().to_string()));
        assert_eq!(body(&r), TEXT);
    }
    for path in ["/nope", "/metrics/x", "/metricsx"] {
        let r = srv.get(path);
        assert!(r.starts_with("HTTP/1.1 404 Not Found\r\n"), "{path}: {r}");
    }
    let r = srv.exchange(
        "POST /metrics HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    assert!(r.starts_with("HTTP/1.1 405"), "{r}");
    assert_eq!(header(&r, "allow"), Some("GET, HEAD"));
    assert_eq!(
        srv.renders.load(Ordering::SeqCst),
        3,
        "only the three scrapes rendered"
    );
}

#[test]
fn keep_alive_ends_after_the_request_limit() {
    let srv = Server::start(Limits {
        max_requests_per_connection: 2,
        header_read_timeout: Duration::from_secs(30),
        ..Limits::default()
    });
    let mut s = srv.connect();
    // Three pipelined requests on one connection: two answers, then the server closes.
    let one = "GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n";
    s.write_all(one.repeat(3).as_bytes()).unwrap();
    let start = Instant::now();
    let r = read_all(&mut s);
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "closed by the limit, not a timeout"
    );
    assert_eq!(r.matches("HTTP/1.1 200 OK").count(), 2, "{r}");
    assert_eq!(r.matches(TEXT).count(), 2);
    assert!(r.to_ascii_lowercase().contains("connection: close"), "{r}");
}

/// Sends `request` to a server with a 300 ms header timeout and reads until it closes: what
/// came back, the server (for its counts), and that the close came after the timeout (and well
/// before ten of them).
fn closed_after_the_header_timeout(request: &[u8]) -> (String, Server) {
    let timeout = Duration::from_millis(300);
    let srv = Server::start(Limits {
        header_read_timeout: timeout,
        ..Limits::default()
    });
    let mut s = srv.connect();
    s.write_all(request).unwrap();
    let start = Instant::now();
    let r = read_all(&mut s);
    let took = start.elapsed();
    assert!(
        took >= timeout && took < timeout * 10,
        "closed after {took:?}"
    );
    (r, srv)
}

#[test]
fn an_idle_keep_alive_connection_closes_after_the_header_timeout() {
    let (r, _) =
        closed_after_the_header_timeout(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert_eq!(r.matches("HTTP/1.1 200 OK").count(), 1, "{r}");
}

#[test]
fn slow_headers_are_cut_at_the_header_timeout() {
    let (r, srv) = closed_after_the_header_timeout(b"GET /metrics HTTP/1.1\r\nHost: loc");
    assert!(!r.contains("200 OK"), "{r}");
    assert_eq!(srv.renders.load(Ordering::SeqCst), 0);
}

#[test]
fn oversize_headers_get_431() {
    let srv = Server::start(Limits {
        max_header_bytes: 16 << 10,
        ..Limits::default()
    });
    let big = "a".repeat(32 << 10);
    let r = srv.exchange(&format!(
        "GET /metrics HTTP/1.1\r\nHost: localhost\r\nX-Big: {big}\r\nConnection: close\r\n\r\n"
    ));
    assert!(r.starts_with("HTTP/1.1 431"), "{:.200}", r);
    assert_eq!(srv.renders.load(Ordering::SeqCst), 0);
}

#[test]
fn a_request_body_is_never_waited_for() {
    let srv = Server::start(Limits::default());
    let mut s = srv.connect();
    // Announces 100 MiB and sends none of it: the answer must not wait for the body.
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nContent-Length: 104857600\r\n\r\n")
        .unwrap();
    let start = Instant::now();
    let r = read_all(&mut s);
    assert!(r.starts_with("HTTP/1.1 200 OK"), "{r}");
    assert_eq!(body(&r), TEXT);
    // ...and the connection, with an unread body, is not kept.
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "took {:?}",
        start.elapsed()
    );
}

#[test]
fn a_thousand_idle_connections_do_not_prevent_a_scrape() {
    raise_fd_limit(2300);
    let max = 64;
    let srv = Server::start(Limits {
        max_connections: max,
        // No idle connection times out during the test: eviction is what makes room.
        header_read_timeout: Duration::from_secs(120),
        ..Limits::default()
    });
    let idle: Vec<TcpStream> = (0..1000).map(|_| srv.connect()).collect();
    wait_until(
        "the server to take every idle connection",
        Duration::from_secs(20),
        || srv.stats.accepted.load(Ordering::SeqCst) == 1000,
    );

    let addr = srv.addr;
    let (tx, rx) = std::sync::mpsc::channel();
    let start = Instant::now();
    std::thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .unwrap();
        tx.send(read_all(&mut s))
    });
    let r = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("a scrape within 5 s");
    assert!(r.starts_with("HTTP/1.1 200 OK"), "{r}");
    assert_eq!(body(&r), TEXT);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "took {:?}",
        start.elapsed()
    );
    let evicted = srv.stats.evicted_idle.load(Ordering::SeqCst);
    assert!(evicted >= (1001 - max) as u64, "evicted {evicted}");
    assert_eq!(srv.stats.refused_busy.load(Ordering::SeqCst), 0);
    drop(idle);
}

#[test]
fn beyond_the_cap_a_connection_is_refused_at_once_when_all_are_scraping() {
    let max = 2;
    let gate = Arc::new(Semaphore::new(0));
    let srv = Server::start_with(
        Limits {
            max_connections: max,
            ..Limits::default()
        },
        Some(gate.clone()),
    );
    let held: Vec<_> = (0..max)
        .map(|_| {
            let addr = srv.addr;
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                s.write_all(
                    b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
                )
                .unwrap();
                read_all(&mut s)
            })
        })
        .collect();
    wait_until("every slot to be scraping", Duration::from_secs(10), || {
        srv.renders.load(Ordering::SeqCst) == max
    });

    let start = Instant::now();
    let r = srv.get("/metrics");
    assert!(
        r.is_empty() || r.starts_with("HTTP/1.1 503"),
        "expected a refusal, got {r}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "took {:?}",
        start.elapsed()
    );
    assert_eq!(srv.stats.refused_busy.load(Ordering::SeqCst), 1);
    assert_eq!(srv.stats.evicted_idle.load(Ordering::SeqCst), 0);

    gate.add_permits(max + 1);
    for h in held {
        let r = h.join().unwrap();
        assert!(r.starts_with("HTTP/1.1 200 OK"), "{r}");
    }
    assert!(
        srv.get("/metrics").starts_with("HTTP/1.1 200 OK"),
        "slots came back"
    );
}

// What `render` makes of a daemon's snapshot (no counters: the datapath is not involved).

pub(crate) fn vpc(name: &str, slot: u32, ready: bool) -> VpcView {
    VpcView {
        name: name.into(),
        netns: format!("vpc-{name}"),
        host_if: format!("pd-{name}"),
        slot,
        ready,
        error: None,
        hosts: Vec::new(),
    }
}

pub(crate) fn peering(id: &str, slot: u32, state: PeeringState) -> PeeringView {
    PeeringView {
        id: id.into(),
        vpcs: ["a".into(), "b".into()],
        state,
        reason: None,
        slot,
        first_seen: None,
        activated_at: None,
    }
}

/// The samples of `family` in `text`: (labels as written, value).
fn samples<'a>(text: &'a str, family: &str) -> Vec<(&'a str, &'a str)> {
    text.lines()
        .filter_map(|l| l.strip_prefix(family)?.strip_prefix('{'))
        .filter_map(|l| l.rsplit_once("} "))
        .collect()
}

/// `peering`'s state series: state -> value.
fn states(text: &str, id: &str) -> BTreeMap<String, String> {
    samples(text, "peerd_peering_state")
        .into_iter()
        .filter(|(l, _)| l.starts_with(&format!("peering=\"{id}\",")))
        .map(|(l, v)| {
            let s = l.split("state=\"").nth(1).unwrap().trim_end_matches('"');
            (s.to_owned(), v.to_owned())
        })
        .collect()
}

#[test]
fn every_peering_has_a_series_for_every_state_one_of_them_1() {
    let mut snap = Snapshot {
        vpcs: vec![vpc("a", 1, true), vpc("b", 2, true)],
        peerings: vec![
            peering("pcx-1", 1, PeeringState::Active),
            peering("pcx-2", 2, PeeringState::Failed),
        ],
        ..Snapshot::default()
    };
    let all: Vec<String> = PeeringState::ALL.iter().map(|s| s.to_string()).collect();
    let expect = |current: &str| -> BTreeMap<String, String> {
        all.iter()
            .map(|s| (s.clone(), if s == current { "1" } else { "0" }.to_owned()))
            .collect()
    };
    let text = render(&snap, None);
    assert_eq!(states(&text, "pcx-1"), expect("active"), "{text}");
    assert_eq!(states(&text, "pcx-2"), expect("failed"), "{text}");
    assert!(text.contains(
        "peerd_peering_state{peering=\"pcx-1\",vpc_a=\"a\",vpc_b=\"b\",state=\"disconnected\"} 0"
    ));
    // A state change moves the 1; the same series stay.
    snap.peerings[0].state = PeeringState::Disconnected;
    let text = render(&snap, None);
    assert_eq!(states(&text, "pcx-1"), expect("disconnected"), "{text}");
    assert_eq!(samples(&text, "peerd_peering_state").len(), 2 * all.len());
    // A removed peering's series go with it.
    snap.peerings.remove(1);
    let text = render(&snap, None);
    assert!(states(&text, "pcx-2").is_empty(), "{text}");
}

#[test]
fn map_gauges_count_the_desired_tables_and_give_every_map_its_size() {
    use peerd_common::{
        maps, RouteTarget, MAX_ENDPOINTS, MAX_HOSTS, MAX_PEERINGS, MAX_PREFIXES, MAX_VPCS,
    };
    let net = |s: &str| s.parse::<IpNet>().unwrap();
    let mut t = Tables::default();
    t.ifaces.extend([(10, 1), (11, 2)]);
    t.vpcs
        .extend([(1, Default::default()), (2, Default::default())]);
    t.peerings.insert(1, Default::default());
    t.src.extend([
        ((1, net("10.1.0.0/16")), 1),
        ((2, net("10.2.0.0/16")), 2),
        ((2, net("fd02::/48")), 2),
    ]);
    t.routes.extend([
        ((1, net("10.2.0.0/16")), RouteTarget::default()),
        ((2, net("10.1.0.0/16")), RouteTarget::default()),
        ((2, net("10.1.5.0/24")), RouteTarget::default()),
    ]);
    // Cluster mode: two workloads on another host (slot 1), VPC 1's VNI, one allowed prefix.
    let addr = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
    t.endpoints
        .extend([((2, addr("10.2.0.5")), 1), ((2, addr("fd02::5")), 1)]);
    t.hosts.insert(1, addr("192.0.2.2"));
    t.vnis.insert(7, 1);
    t.allowed.insert((1, net("fd02::/48")), 1);
    let snap = Snapshot {
        maps: map_usage(&t),
        ..Snapshot::default()
    };
    let text = render(&snap, None);
    let value = |family: &str, map: &str| -> u64 {
        samples(&text, family)
            .into_iter()
            .find(|(l, _)| *l == format!("map=\"{map}\""))
            .unwrap_or_else(|| panic!("no {family} for {map}: {text}"))
            .1
            .parse()
            .unwrap()
    };
    for (map, entries, capacity) in [
        (maps::IFACES, 2, MAX_VPCS),
        (maps::VPCS, 2, MAX_VPCS),
        (maps::PEERINGS, 1, MAX_PEERINGS),
        (maps::SRC_V4, 2, MAX_PREFIXES),
        (maps::SRC_V6, 1, MAX_PREFIXES),
        (maps::ROUTES_V4, 3, MAX_PREFIXES),
        (maps::ROUTES_V6, 0, MAX_PREFIXES),
        (maps::ENDPOINTS, 2, MAX_ENDPOINTS),
        (maps::HOSTS, 1, MAX_HOSTS),
        (maps::UNDERLAY, 1, MAX_HOSTS),
        (maps::VNIS, 1, MAX_VPCS),
        (maps::ALLOWED_V4, 0, MAX_PREFIXES),
        (maps::ALLOWED_V6, 1, MAX_PREFIXES),
    ] {
        assert_eq!(value("peerd_map_entries", map), entries, "{map}");
        assert_eq!(
            value("peerd_map_capacity", map),
            u64::from(capacity),
            "{map}"
        );
    }
    assert_eq!(samples(&text, "peerd_map_entries").len(), 13);
}

#[test]
fn the_grafana_dashboard_uses_only_metrics_peerd_exports() {
    let dashboard: serde_json::Value = serde_json::from_str(include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../contrib/grafana-peerd.json"
    )))
    .expect("the dashboard is JSON");
    // Every optional family declared: flow log, backstop, reconcile histogram, cluster mode.
    let snap = Snapshot {
        vpcs: vec![vpc("a", 1, true)],
        peerings: vec![peering("pcx-1", 1, PeeringState::Active)],
        backstop: Some((0, 0)),
        flow_log: Some(crate::status::FlowLogStatus {
            path: "/var/log/peerd/flows.jsonl".into(),
            records_written: 0,
            rotations: 0,
            lost_packets: 0,
            error: None,
        }),
        reconcile_seconds: Some(reconcile_histogram()),
        maps: map_usage(&Tables::default()),
        cluster: Some(crate::status::ClusterStatus {
            host: "hv1".into(),
            connected: true,
            registered: true,
            revision: 1,
            error: None,
            // A host with tunnel counters (slot 0: `status` leaves them as they are).
            hosts: vec![crate::status::HostView {
                name: "hv2".into(),
                underlay: "192.0.2.2".parse().unwrap(),
                vpcs: vec!["a".into()],
                slot: 0,
                tunnel: Some(Default::default()),
            }],
            remote_endpoints: 0,
            local_endpoints: 0,
            notes: Vec::new(),
        }),
        ..Snapshot::default()
    };
    let text = render(&snap, None);
    // The names a query can use, from each family's TYPE.
    let mut exported = std::collections::BTreeSet::new();
    for l in text.lines() {
        let Some((name, kind)) = l.strip_prefix("# TYPE ").and_then(|t| t.split_once(' ')) else {
            continue;
        };
        let suffixes: &[&str] = match kind {
            "counter" => &["_total"],
            "info" => &["_info"],
            "histogram" => &["_bucket", "_sum", "_count"],
            _ => &[""],
        };
        exported.extend(suffixes.iter().map(|s| format!("{name}{s}")));
    }
    // Every `peerd_...` name in a query, an annotation or a variable.
    let mut used = std::collections::BTreeSet::new();
    let all = dashboard.to_string();
    let mut rest = all.as_str();
    while let Some(i) = rest.find("peerd_") {
        let name: String = rest[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[i + name.len()..];
        used.insert(name);
    }
    assert!(used.len() >= 12, "{used:?}");
    let missing: Vec<&String> = used.iter().filter(|n| !exported.contains(*n)).collect();
    assert!(missing.is_empty(), "not exported: {missing:?}\n{text}");
    for family in [
        "peerd_peering_state",
        "peerd_map_entries",
        "peerd_map_capacity",
        "peerd_dropped_packets_total",
        "peerd_forwarded_packets_total",
        "peerd_last_reload_success",
        "peerd_vpc_ready",
        "peerd_cluster_connected",
        "peerd_tunnel_packets_total",
    ] {
        assert!(used.contains(family), "the dashboard lacks {family}");
    }
}

#[test]
fn cluster_mode_exports_connection_endpoints_and_tunnel_traffic_per_host() {
    use crate::status::{ClusterStatus, CounterJson, HostView, TunnelCounters};
    let snap = Snapshot {
        vpcs: vec![vpc("a", 1, true)],
        cluster: Some(ClusterStatus {
            host: "h1".into(),
            connected: false,
            registered: true,
            revision: 7,
            error: None,
            hosts: vec![HostView {
                name: "h2".into(),
                underlay: "192.0.2.2".parse().unwrap(),
                vpcs: vec!["a".into()],
                slot: 1,
                tunnel: None,
            }],
            remote_endpoints: 4,
            local_endpoints: 2,
            notes: Vec::new(),
        }),
        ..Snapshot::default()
    };
    // The counters come from the pinned maps when status is read: set them as it would.
    let mut st = crate::status::status(&snap, None);
    st.cluster.as_mut().unwrap().hosts[0].tunnel = Some(TunnelCounters {
        tx: CounterJson {
            packets: 5,
            bytes: 500,
        },
        rx: CounterJson {
            packets: 3,
            bytes: 300,
        },
    });
    let mut reg = Registry::default();
    cluster(&mut reg, &st);
    let mut text = String::new();
    encode(&mut text, &reg).unwrap();
    for line in [
        "peerd_cluster_connected 0",
        "peerd_cluster_registered 1",
        "peerd_remote_endpoints 4",
        "peerd_local_endpoints 2",
        "peerd_tunnel_packets_total{host=\"h2\",direction=\"tx\"} 5",
        "peerd_tunnel_packets_total{host=\"h2\",direction=\"rx\"} 3",
        "peerd_tunnel_bytes_total{host=\"h2\",direction=\"tx\"} 500",
        "peerd_tunnel_bytes_total{host=\"h2\",direction=\"rx\"} 300",
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line}:\n{text}");
    }
    // A single host exports none of them.
    let text = render(&Snapshot::default(), None);
    assert!(!text.contains("peerd_cluster_connected"), "{text}");
}
