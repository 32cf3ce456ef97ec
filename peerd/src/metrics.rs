//! Prometheus endpoint (`[daemon] metrics`): a registry built from the daemon's status on each
//! scrape, encoded by `prometheus-client` (OpenMetrics text: `# HELP`, `# TYPE`, `# EOF`).
use std::net::SocketAddr;

use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram, info::Info},
    registry::Registry,
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpListener,
};
use tracing::{info, warn};

use crate::{datapath::Counters, status::Snapshot};

type Labels = Vec<(String, String)>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The text of one scrape.
pub fn render(snap: &Snapshot, counters: Option<&Counters>) -> String {
    let st = crate::status::status(snap, counters);
    let mut reg = Registry::default();

    reg.register(
        "peerd_build",
        "peerd build information",
        Info::new(labels(&[("version", env!("CARGO_PKG_VERSION"))])),
    );

    let fwd_pkts = Family::<Labels, Counter>::default();
    let fwd_bytes = Family::<Labels, Counter>::default();
    let state = Family::<Labels, Gauge>::default();
    for p in &st.peerings {
        let s = p.state.to_string();
        state
            .get_or_create(&labels(&[
                ("peering", &p.id),
                ("vpc_a", &p.vpcs[0]),
                ("vpc_b", &p.vpcs[1]),
                ("state", &s),
            ]))
            .set(1);
        for (dir, (from, to)) in [(&p.vpcs[0], &p.vpcs[1]), (&p.vpcs[1], &p.vpcs[0])]
            .into_iter()
            .enumerate()
        {
            let l = labels(&[("peering", &p.id), ("src_vpc", from), ("dst_vpc", to)]);
            fwd_pkts.get_or_create(&l).inc_by(p.forwarded[dir].packets);
            fwd_bytes.get_or_create(&l).inc_by(p.forwarded[dir].bytes);
        }
    }
    reg.register(
        "peerd_peering_state",
        "Peering state (1 for the current state of each peering)",
        state,
    );
    reg.register(
        "peerd_forwarded_packets",
        "Packets forwarded over a peering, by direction",
        fwd_pkts,
    );
    reg.register(
        "peerd_forwarded_bytes",
        "Bytes forwarded over a peering, by direction",
        fwd_bytes,
    );

    let drop_pkts = Family::<Labels, Counter>::default();
    let drop_bytes = Family::<Labels, Counter>::default();
    let ready = Family::<Labels, Gauge>::default();
    for v in &st.vpcs {
        ready
            .get_or_create(&labels(&[("vpc", &v.name)]))
            .set(v.ready as i64);
        for reason in peerd_common::DropReason::ALL {
            let c = v.drops.get(reason.name()).cloned().unwrap_or_default();
            let l = labels(&[("vpc", &v.name), ("reason", reason.name())]);
            drop_pkts.get_or_create(&l).inc_by(c.packets);
            drop_bytes.get_or_create(&l).inc_by(c.bytes);
        }
    }
    reg.register(
        "peerd_dropped_packets",
        "Packets from a VPC dropped by the datapath, by reason",
        drop_pkts,
    );
    reg.register(
        "peerd_dropped_bytes",
        "Bytes from a VPC dropped by the datapath, by reason",
        drop_bytes,
    );
    reg.register(
        "peerd_vpc_ready",
        "1 when the VPC's namespace, link and datapath are in place",
        ready,
    );

    let reconciles = Counter::<u64>::default();
    reconciles.inc_by(snap.reconciles);
    reg.register(
        "peerd_reconciles",
        "Reconciles run (startup, reloads, repairs, resyncs)",
        reconciles,
    );
    if let Some(h) = &snap.reconcile_seconds {
        reg.register(
            "peerd_reconcile_duration_seconds",
            "Duration of reconciles",
            h.clone(),
        );
    }
    let gen = Gauge::<i64>::default();
    gen.set(st.generation as i64);
    reg.register(
        "peerd_config_generation",
        "Generation of the configuration in force",
        gen,
    );
    let ok = Gauge::<i64>::default();
    ok.set(st.config_error.is_none() as i64);
    reg.register(
        "peerd_last_reload_success",
        "1 if the last configuration load succeeded",
        ok,
    );
    let when = Gauge::<i64>::default();
    when.set(snap.last_reload_unix as i64);
    reg.register(
        "peerd_last_reload_timestamp_seconds",
        "When the configuration was last loaded (Unix time)",
        when,
    );

    if let Some(b) = &st.backstop {
        let packets = Counter::<u64>::default();
        packets.inc_by(b.packets);
        reg.register(
            "peerd_backstop_dropped_packets",
            "VPC packets that reached the host stack and were dropped by the backstop (non-zero: a datapath program was missing)",
            packets,
        );
    }

    if let Some(f) = &st.flow_log {
        let lost = Counter::<u64>::default();
        lost.inc_by(f.lost_packets);
        reg.register(
            "peerd_flow_log_lost_packets",
            "Packets whose flow could not be logged (flow map full)",
            lost,
        );
        let written = Counter::<u64>::default();
        written.inc_by(f.records_written);
        reg.register(
            "peerd_flow_log_records",
            "Flow log records written",
            written,
        );
    }

    let mut out = String::new();
    encode(&mut out, &reg).expect("encoding to a String cannot fail");
    out
}

/// A new reconcile-duration histogram (0.5 ms .. ~16 s).
pub fn reconcile_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.0005, 2.0, 16,
    ))
}

/// Renders one scrape.
pub type Render = std::sync::Arc<dyn Fn() -> futures::future::BoxFuture<'static, String> + Send + Sync>;

/// Serves `GET /metrics` on `addr` until the process ends.
pub async fn serve(addr: SocketAddr, render: Render) {
    let listener = match TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            warn!(%addr, error = %e, "metrics endpoint not available");
            return;
        }
    };
    info!(%addr, "metrics endpoint listening");
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            continue;
        };
        let render = render.clone();
        tokio::spawn(async move {
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 8192 {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let line = String::from_utf8_lossy(&req)
                .lines()
                .next()
                .unwrap_or("")
                .to_owned();
            let resp = if line.starts_with("GET /metrics ") || line.starts_with("GET / ") {
                let body = render().await;
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
            } else {
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_owned()
            };
            let _ = s.write_all(resp.as_bytes()).await;
        });
    }
}
