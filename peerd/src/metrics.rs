//! Prometheus endpoint (`[daemon] metrics`): a registry built from the daemon's status on each
//! scrape, encoded by `prometheus-client` (OpenMetrics text: `# HELP`, `# TYPE`, `# EOF`), served
//! over HTTP/1.1 by hyper.
//!
//! The server is bounded like the control socket (see `control`): a connection must send its
//! headers within [`Limits::header_read_timeout`] (which also ends an idle keep-alive), serves at
//! most [`Limits::max_requests_per_connection`] requests and lives at most
//! [`Limits::max_connection_age`]; at most [`Limits::max_connections`] are held, and when all are
//! taken a new one evicts the connection idle the longest, so idle connections never keep a
//! scrape out. Request bodies are never read. Accept errors back off.
use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU32, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body_util::Full;
use hyper::{
    body::Incoming,
    header::{HeaderValue, ALLOW, CONNECTION, CONTENT_TYPE},
    server::conn::http1,
    service::service_fn,
    Method, Request, Response, StatusCode,
};
use hyper_util::rt::{TokioIo, TokioTimer};

use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram, info::Info},
    registry::Registry,
};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tracing::debug;

use ipnet::IpNet;

use crate::{
    config::PeeringState,
    control::{AcceptBackoff, Admit, Slot, Slots},
    datapath::Counters,
    status::{CounterJson, MapUsage, Snapshot, Status},
    tables::Tables,
};

type Labels = Vec<(String, String)>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The text of one scrape: one function per family group, each registering its own.
pub fn render(snap: &Snapshot, counters: Option<&Counters>) -> String {
    let st = crate::status::status(snap, counters);
    let mut reg = Registry::default();
    build(&mut reg);
    peerings(&mut reg, &st);
    vpcs(&mut reg, &st);
    config_and_reconciles(&mut reg, snap, &st);
    maps(&mut reg, &snap.maps);
    backstop_and_flow_log(&mut reg, &st);
    cluster(&mut reg, &st);
    let mut out = String::new();
    encode(&mut out, &reg).expect("encoding to a String cannot fail");
    out
}

/// Two counter families under the same labels: packets and bytes.
#[derive(Default)]
struct Traffic {
    packets: Family<Labels, Counter>,
    bytes: Family<Labels, Counter>,
}

impl Traffic {
    fn add(&self, l: &Labels, c: &CounterJson) {
        self.packets.get_or_create(l).inc_by(c.packets);
        self.bytes.get_or_create(l).inc_by(c.bytes);
    }

    /// Registers `{name}_packets` and `{name}_bytes`; `help` goes after "Packets"/"Bytes".
    fn register(self, reg: &mut Registry, name: &str, help: &str) {
        reg.register(
            format!("{name}_packets"),
            format!("Packets {help}"),
            self.packets,
        );
        reg.register(format!("{name}_bytes"), format!("Bytes {help}"), self.bytes);
    }
}

/// A counter family with no labels, set to `value`.
fn counter(reg: &mut Registry, name: &str, help: &str, value: u64) {
    let c = Counter::<u64>::default();
    c.inc_by(value);
    reg.register(name, help, c);
}

/// A gauge with no labels, set to `value`.
fn gauge(reg: &mut Registry, name: &str, help: &str, value: i64) {
    let g = Gauge::<i64>::default();
    g.set(value);
    reg.register(name, help, g);
}

fn build(reg: &mut Registry) {
    reg.register(
        "peerd_build",
        "peerd build information",
        Info::new(labels(&[
            ("version", env!("CARGO_PKG_VERSION")),
            ("commit", env!("PEERD_GIT_COMMIT")),
        ])),
    );
}

/// Peering state as a state set (every state of the lifecycle, 1 for the current one, so no
/// series vanishes while the peering exists) and forwarded traffic per direction.
fn peerings(reg: &mut Registry, st: &Status) {
    let fwd = Traffic::default();
    let state = Family::<Labels, Gauge>::default();
    for p in &st.peerings {
        for s in PeeringState::ALL {
            state
                .get_or_create(&labels(&[
                    ("peering", &p.id),
                    ("vpc_a", &p.vpcs[0]),
                    ("vpc_b", &p.vpcs[1]),
                    ("state", &s.to_string()),
                ]))
                .set((p.state == s) as i64);
        }
        for (dir, (from, to)) in [(&p.vpcs[0], &p.vpcs[1]), (&p.vpcs[1], &p.vpcs[0])]
            .into_iter()
            .enumerate()
        {
            let l = labels(&[("peering", &p.id), ("src_vpc", from), ("dst_vpc", to)]);
            fwd.add(&l, &p.forwarded[dir]);
        }
    }
    reg.register(
        "peerd_peering_state",
        "Peering state set: one series per peering and lifecycle state, 1 for its current state, 0 for the others",
        state,
    );
    fwd.register(
        reg,
        "peerd_forwarded",
        "forwarded over a peering, by direction",
    );
}

/// Readiness and drops by reason, per VPC (every reason, so rates work from the first drop).
fn vpcs(reg: &mut Registry, st: &Status) {
    let drops = Traffic::default();
    let ready = Family::<Labels, Gauge>::default();
    for v in &st.vpcs {
        ready
            .get_or_create(&labels(&[("vpc", &v.name)]))
            .set(v.ready as i64);
        for reason in peerd_common::DropReason::ALL {
            let c = v.drops.get(reason.name()).cloned().unwrap_or_default();
            let l = labels(&[("vpc", &v.name), ("reason", reason.name())]);
            drops.add(&l, &c);
        }
    }
    drops.register(
        reg,
        "peerd_dropped",
        "from a VPC dropped by the datapath, by reason",
    );
    reg.register(
        "peerd_vpc_ready",
        "1 when the VPC's namespace, link and datapath are in place",
        ready,
    );
}

fn config_and_reconciles(reg: &mut Registry, snap: &Snapshot, st: &Status) {
    counter(
        reg,
        "peerd_reconciles",
        "Reconciles run (startup, reloads, repairs, resyncs)",
        snap.reconciles,
    );
    if let Some(h) = &snap.reconcile_seconds {
        reg.register(
            "peerd_reconcile_duration_seconds",
            "Duration of reconciles",
            h.clone(),
        );
    }
    gauge(
        reg,
        "peerd_config_generation",
        "Generation of the configuration in force",
        st.generation as i64,
    );
    gauge(
        reg,
        "peerd_last_reload_success",
        "1 if the last configuration load succeeded",
        st.config_error.is_none() as i64,
    );
    gauge(
        reg,
        "peerd_last_reload_timestamp_seconds",
        "When the configuration was last loaded (Unix time)",
        snap.last_reload_unix as i64,
    );
}

/// Entries and capacity of every datapath map the daemon fills.
fn maps(reg: &mut Registry, maps: &[MapUsage]) {
    let entries = Family::<Labels, Gauge>::default();
    let capacity = Family::<Labels, Gauge>::default();
    for m in maps {
        let l = labels(&[("map", m.name)]);
        entries.get_or_create(&l).set(m.entries as i64);
        capacity.get_or_create(&l).set(m.capacity as i64);
    }
    reg.register(
        "peerd_map_entries",
        "Entries in a datapath map, as the last reconcile wrote them",
        entries,
    );
    reg.register(
        "peerd_map_capacity",
        "Entries a datapath map can hold (a full map refuses new VPCs, peerings or prefixes)",
        capacity,
    );
}

fn backstop_and_flow_log(reg: &mut Registry, st: &Status) {
    if let Some(b) = &st.backstop {
        counter(
            reg,
            "peerd_backstop_dropped_packets",
            "VPC packets that reached the host stack and were dropped by the backstop (non-zero: a datapath program was missing)",
            b.packets,
        );
    }
    if let Some(f) = &st.flow_log {
        counter(
            reg,
            "peerd_flow_log_lost_packets",
            "Packets whose flow could not be logged (flow map full)",
            f.lost_packets,
        );
        counter(
            reg,
            "peerd_flow_log_records",
            "Flow log records written",
            f.records_written,
        );
    }
}

/// Cluster mode: the etcd connection, the remote endpoints known, and the tunnel traffic per
/// host of the fleet. Nothing on a single host.
fn cluster(reg: &mut Registry, st: &Status) {
    let Some(c) = &st.cluster else {
        return;
    };
    gauge(
        reg,
        "peerd_cluster_connected",
        "1 when etcd answers (the fleet view is current); 0: forwarding goes on as last known",
        c.connected as i64,
    );
    gauge(
        reg,
        "peerd_cluster_registered",
        "1 when this host's lease is alive (its record and endpoints are in etcd)",
        c.registered as i64,
    );
    gauge(
        reg,
        "peerd_remote_endpoints",
        "Workload addresses on other hosts this host knows",
        c.remote_endpoints as i64,
    );
    gauge(
        reg,
        "peerd_local_endpoints",
        "Workload addresses found on this host and published",
        c.local_endpoints as i64,
    );
    let tunnel = Traffic::default();
    for h in &c.hosts {
        let Some(t) = &h.tunnel else { continue };
        for (dir, n) in [("tx", &t.tx), ("rx", &t.rx)] {
            let l = labels(&[("host", &h.name), ("direction", dir)]);
            tunnel.add(&l, n);
        }
    }
    tunnel.register(
        reg,
        "peerd_tunnel",
        "sent to (tx) and received from (rx) another host through the VXLAN tunnel",
    );
}

/// What the datapath maps hold for `t` (the desired tables the last reconcile wrote), with
/// their sizes (`peerd_common`). The counter maps are arrays indexed by slot: their use is
/// that of `PEERD_VPCS`, `PEERD_PEERINGS` and `PEERD_HOSTS`. The cluster maps are empty on a
/// single host.
pub fn map_usage(t: &Tables) -> Vec<MapUsage> {
    use peerd_common::{maps as m, MAX_ENDPOINTS, MAX_HOSTS, MAX_PEERINGS, MAX_PREFIXES, MAX_VPCS};
    /// (IPv4, IPv6) keys of a prefix table.
    fn by_family<V>(table: &std::collections::BTreeMap<(u32, IpNet), V>) -> (usize, usize) {
        let v4 = table.keys().filter(|(_, n)| n.addr().is_ipv4()).count();
        (v4, table.len() - v4)
    }
    let (src4, src6) = by_family(&t.src);
    let (routes4, routes6) = by_family(&t.routes);
    let (allowed4, allowed6) = by_family(&t.allowed);
    [
        (m::IFACES, t.ifaces.len(), MAX_VPCS),
        (m::VPCS, t.vpcs.len(), MAX_VPCS),
        (m::PEERINGS, t.peerings.len(), MAX_PEERINGS),
        (m::SRC_V4, src4, MAX_PREFIXES),
        (m::SRC_V6, src6, MAX_PREFIXES),
        (m::ROUTES_V4, routes4, MAX_PREFIXES),
        (m::ROUTES_V6, routes6, MAX_PREFIXES),
        (m::ENDPOINTS, t.endpoints.len(), MAX_ENDPOINTS),
        (m::HOSTS, t.hosts.len(), MAX_HOSTS),
        (m::UNDERLAY, t.hosts.len(), MAX_HOSTS),
        (m::VNIS, t.vnis.len(), MAX_VPCS),
        (m::ALLOWED_V4, allowed4, MAX_PREFIXES),
        (m::ALLOWED_V6, allowed6, MAX_PREFIXES),
    ]
    .into_iter()
    .map(|(name, entries, capacity)| MapUsage {
        name,
        entries: entries as u64,
        capacity: capacity.into(),
    })
    .collect()
}

/// A new reconcile-duration histogram (0.5 ms .. ~16 s).
pub fn reconcile_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.0005, 2.0, 16,
    ))
}

/// The OpenMetrics text format, as Prometheus asks for it.
pub const CONTENT_TYPE_OPENMETRICS: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Produces the text of one scrape.
pub type Render = Arc<dyn Fn() -> BoxFuture<'static, String> + Send + Sync>;

/// Bounds on the metrics server.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Connections held at once.
    pub max_connections: usize,
    /// A request's headers must arrive within this; a keep-alive connection with no next
    /// request closes after it too.
    pub header_read_timeout: Duration,
    /// The largest request head (request line and headers); larger gets 431.
    pub max_header_bytes: usize,
    /// Requests served on one connection; the last answer says `Connection: close`.
    pub max_requests_per_connection: u32,
    /// After this a connection is shut down (gracefully, then forcibly after
    /// `header_read_timeout`): bounds a client that never reads its answer.
    pub max_connection_age: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 64,
            header_read_timeout: Duration::from_secs(5),
            max_header_bytes: 16 << 10,
            max_requests_per_connection: 100,
            max_connection_age: Duration::from_secs(60),
        }
    }
}

/// What the metrics server turned away.
#[derive(Debug, Default)]
pub struct ServeStats {
    pub accepted: AtomicU64,
    /// Refused because every held connection was running a request.
    pub refused_busy: AtomicU64,
    /// Idle connections closed to make room for a new one.
    pub evicted_idle: AtomicU64,
    pub accept_errors: AtomicU64,
}

/// The accept queue of the metrics listener. The standard library's 128 overflows when a burst
/// of connections arrives while the acceptor waits for a CPU, and an overflowed SYN costs its
/// client a one-second retransmit.
const BACKLOG: u32 = 1024;

/// Binds the metrics listener (must run inside a Tokio runtime).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Serves `GET /metrics` (and `GET /`) on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, limits: Limits, render: Render, stats: Arc<ServeStats>) {
    let slots = Arc::new(Slots::new(limits.max_connections));
    let limits = Arc::new(limits);
    let mut backoff = AcceptBackoff::default();
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => {
                backoff.reset();
                s
            }
            Err(e) => {
                stats.accept_errors.fetch_add(1, Ordering::Relaxed);
                backoff.wait("metrics endpoint", &e).await;
                continue;
            }
        };
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        let slot = match slots.admit() {
            Admit::Free(s) => s,
            Admit::Evicted(s) => {
                stats.evicted_idle.fetch_add(1, Ordering::Relaxed);
                s
            }
            Admit::Full => {
                stats.refused_busy.fetch_add(1, Ordering::Relaxed);
                debug!("metrics endpoint: every connection is running a request; refused");
                let _ = stream.try_write(
                    b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(stream, slot, limits.clone(), render.clone()));
    }
}

async fn connection(stream: TcpStream, slot: Slot, limits: Arc<Limits>, render: Render) {
    let slot = Arc::new(slot);
    let served = Arc::new(AtomicU32::new(0));
    let service = {
        let slot = slot.clone();
        let limits = limits.clone();
        service_fn(move |req: Request<Incoming>| {
            let (slot, render) = (slot.clone(), render.clone());
            let last =
                served.fetch_add(1, Ordering::Relaxed) + 1 >= limits.max_requests_per_connection;
            async move {
                let mut resp = if slot.busy() {
                    let r = respond(&req, &render).await;
                    slot.idle();
                    r
                } else {
                    // Evicted while its request arrived.
                    plain(StatusCode::SERVICE_UNAVAILABLE, "busy\n")
                };
                if last {
                    resp.headers_mut()
                        .insert(CONNECTION, HeaderValue::from_static("close"));
                }
                Ok::<_, Infallible>(resp)
            }
        })
    };
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_header_size(limits.max_header_bytes)
        // The read buffer only ever holds a head: bounded by it, not by hyper's ~400 KiB default.
        .max_buf_size(limits.max_header_bytes.max(8192) + 4096)
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                debug!(error = %e, "metrics endpoint: connection");
            }
        }
        _ = slot.evicted() => debug!("metrics endpoint: idle connection evicted for a new one"),
        _ = tokio::time::sleep(limits.max_connection_age) => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(limits.header_read_timeout, conn).await;
        }
    }
}

fn plain(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// The answer to one request; its body is never read.
async fn respond(req: &Request<Incoming>, render: &Render) -> Response<Full<Bytes>> {
    if !matches!(req.uri().path(), "/metrics" | "/") {
        return plain(
            StatusCode::NOT_FOUND,
            "not found; metrics are at /metrics\n",
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let mut r = Response::new(Full::new(Bytes::from(render().await)));
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(CONTENT_TYPE_OPENMETRICS),
    );
    r
}

#[cfg(test)]
pub(crate) mod tests;
