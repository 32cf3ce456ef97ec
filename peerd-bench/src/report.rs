//! Results: what the run measured, written as results.json, REPORT.md and chart.svg.
use std::{collections::BTreeMap, fs, path::Path};

use serde::Serialize;

use crate::Res;

#[derive(Serialize, Default)]
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub samples: Vec<f64>,
}

pub fn stat(mut v: Vec<f64>) -> Stat {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let median = if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    };
    Stat {
        median,
        min: *v.first().unwrap_or(&f64::NAN),
        max: *v.last().unwrap_or(&f64::NAN),
        samples: v,
    }
}

#[derive(Serialize)]
pub struct ScaleRow {
    pub tables: String,
    pub cost_over_baseline_ns: Stat,
    pub pps_64b: Stat,
    pub sync_s: f64,
}

/// The cluster section (cluster mode: hosts are network namespaces, one etcd).
#[derive(Serialize, Default)]
pub struct ClusterResults {
    /// scenario (`xhost-ceiling`, `xhost-kernel`, `xhost-peerd`) -> metric -> stat
    pub forwarding: BTreeMap<String, BTreeMap<String, Stat>>,
    /// An endpoint added or removed on one host until every other host's status shows it.
    pub endpoint_change_ms: Option<Stat>,
    /// The same change until its key is written (removed) in etcd (`etcdctl watch`).
    pub endpoint_published_ms: Option<Stat>,
    /// `peerd apply` of one peering until traffic passes on every pair, both ways.
    pub apply_to_forwarding_ms: Option<Stat>,
    /// What peerd keeps in etcd: keys and bytes (keys and values).
    pub etcd: BTreeMap<String, f64>,
}

#[derive(Serialize, Default)]
pub struct Results {
    pub machine: BTreeMap<String, String>,
    pub rounds: usize,
    /// scenario -> metric -> stat
    pub forwarding: BTreeMap<String, BTreeMap<String, Stat>>,
    /// name -> ns per packet (average over the repeats), and minus the empty program's cost.
    pub program_cost_ns: BTreeMap<String, f64>,
    pub program_cost_over_empty_ns: BTreeMap<String, f64>,
    /// "routes/VPC=R VPCs=V" -> IPv4 forward of the hot pair: program cost over the baseline,
    /// 64-byte rate of a real pair, time to write the tables.
    pub scale: Vec<ScaleRow>,
    pub map_bytes_per_route: Option<f64>,
    pub control_plane: BTreeMap<String, f64>,
    pub cluster: ClusterResults,
    pub notes: Vec<String>,
}

/// "median (min–max)" with `digits` decimals.
fn cell(s: Option<&Stat>, digits: usize) -> String {
    match s {
        Some(s) => format!(
            "{:.*} ({:.*}–{:.*})",
            digits, s.median, digits, s.min, digits, s.max
        ),
        None => "n/a".into(),
    }
}

fn ratio(res: &Results, a: &str, b: &str, m: &str) -> Option<f64> {
    let x = res.forwarding.get(a)?.get(m)?.median;
    let y = res.forwarding.get(b)?.get(m)?.median;
    Some(x / y)
}

pub fn write_results(out: &Path, res: &Results) -> Res<()> {
    let json = serde_json::to_string_pretty(res).map_err(|e| e.to_string())?;
    fs::write(out.join("results.json"), json).map_err(|e| e.to_string())?;
    let mut md = String::from("# peerd benchmark report\n\n");
    md += &format!(
        "Machine: {} CPUs ({}), kernel {}. {} interleaved rounds; median (min–max).\n\n",
        res.machine.get("cpus").cloned().unwrap_or_default(),
        res.machine.get("cpu").cloned().unwrap_or_default(),
        res.machine.get("kernel").cloned().unwrap_or_default(),
        res.rounds
    );
    md += "![forwarding](chart.svg)\n\n## Forwarding\n\n64 B pps: 64-byte frames injected by BPF_PROG_TEST_RUN in live-frames mode (headers restored on every repetition) on CPU 0, counted by a TC sink program on the destination VPC's link, which drops them. UDP sink: the same frames received by a UDP socket in the destination namespace (CPU 1), so the destination's stack is included. Socket sender: sendmmsg from the source namespace instead of the generator (the sender is then the bottleneck).\n\n| scenario | 64 B pps | 64 B pps (UDP sink) | 64 B pps (socket sender) | TCP 1 stream Gbit/s | TCP 4 streams Gbit/s | latency p50 µs | latency p99 µs |\n| --- | --- | --- | --- | --- | --- | --- | --- |\n";
    for (name, m) in &res.forwarding {
        md += &format!(
            "| {name} | {} | {} | {} | {} | {} | {} | {} |\n",
            cell(m.get("pps_64B"), 0),
            cell(m.get("pps_64B_udp_sink"), 0),
            cell(m.get("pps_64B_socket_sender"), 0),
            cell(m.get("tcp_1_stream_gbps"), 2),
            cell(m.get("tcp_4_streams_gbps"), 2),
            cell(m.get("latency_p50_us"), 1),
            cell(m.get("latency_p99_us"), 1)
        );
    }
    md += "\n## Targets (same run)\n\n";
    let targets = [
        (
            "peerd-tc / ceiling-tc, 64 B pps (target ≥ 0.90)",
            ratio(res, "peerd-tc", "ceiling-tc", "pps_64B"),
        ),
        (
            "peerd-tc / kernel-fwd+nft, 64 B pps (target ≥ 1.5)",
            ratio(res, "peerd-tc", "kernel-fwd+nft", "pps_64B"),
        ),
        (
            "peerd-xdp / ceiling-xdp, 64 B pps",
            ratio(res, "peerd-xdp", "ceiling-xdp", "pps_64B"),
        ),
        (
            "peerd-tc / kernel-fwd+nft, TCP 1 stream (target ≥ 1)",
            ratio(res, "peerd-tc", "kernel-fwd+nft", "tcp_1_stream_gbps"),
        ),
        (
            "peerd-tc / kernel-fwd+nft, latency p50 (target ≤ 1)",
            ratio(res, "peerd-tc", "kernel-fwd+nft", "latency_p50_us"),
        ),
        (
            "peerd-tc / kernel-fwd+nft, latency p99 (target ≤ 1)",
            ratio(res, "peerd-tc", "kernel-fwd+nft", "latency_p99_us"),
        ),
        (
            "peerd-xdp / peerd-tc, TCP 1 stream",
            ratio(res, "peerd-xdp", "peerd-tc", "tcp_1_stream_gbps"),
        ),
    ];
    for (k, v) in targets {
        md += &format!(
            "- {k}: {}\n",
            v.map(|v| format!("{v:.2}")).unwrap_or_else(|| "n/a".into())
        );
    }
    let scale_cost = |vpcs: u32, routes: u32| {
        res.scale
            .iter()
            .find(|r| {
                r.tables
                    .starts_with(&format!("routes/VPC={routes} VPCs={vpcs} "))
            })
            .map(|r| r.cost_over_baseline_ns.median)
    };
    let cp = |k: &str| res.control_plane.get(k).copied();
    let more: [(&str, Option<f64>); 5] = [
        (
            "program cost over baseline, 100 routes per VPC, ns (target ≤ 60)",
            scale_cost(2, 100),
        ),
        (
            "program cost over baseline, 100k routes in all, ns (target ≤ 150)",
            scale_cost(1000, 100),
        ),
        (
            "1,000 VPCs from config to forwarding, s (target ≤ 10)",
            cp("vpcs=1000: config to forwarding (s)"),
        ),
        (
            "one added peering at 1,000 VPCs, ms (target ≤ 50)",
            cp("vpcs=1000: one added peering applied (ms)"),
        ),
        (
            "map memory per route, bytes (target ≤ 200)",
            res.map_bytes_per_route,
        ),
    ];
    for (k, v) in more {
        md += &format!(
            "- {k}: {}\n",
            v.map(|v| format!("{v:.1}")).unwrap_or_else(|| "n/a".into())
        );
    }
    md += "\n## Program cost (BPF_PROG_TEST_RUN, ns per packet)\n\nEach run repeats the program on one buffer; peerd rewrites headers (TTL, MACs), so the peerd cases run a wrapper (in the benchmark's own object) that first restores the headers from a template and then tail-calls the entry point of peerd's object, and their baseline is the same wrapper tail-calling the empty program (restore-tc / restore-xdp). The ceiling (its target set, so it rewrites the MACs and redirects) and the empty programs run on their own; the ceiling's baseline is the empty program.\n\n| program | ns | over baseline |\n| --- | --- | --- |\n";
    for (k, v) in &res.program_cost_ns {
        md += &format!(
            "| {k} | {v:.1} | {} |\n",
            res.program_cost_over_empty_ns
                .get(k)
                .map(|o| format!("{o:.1}"))
                .unwrap_or_else(|| "—".into())
        );
    }
    md += "\n### At scale\n\npeerd-tc, IPv4 forward of one hot pair (routes inside the peer) while the tables hold more VPCs and routes (filler routes are /32s in every VPC's main table): program cost over the restore baseline, and the 64-byte rate of a real pair of namespaces running this datapath with the same tables (generator and sink as above).\n\n| tables | ns over baseline | 64 B pps | tables written in (s) |\n| --- | --- | --- | --- |\n";
    for r in &res.scale {
        md += &format!(
            "| {} | {} | {} | {:.2} |\n",
            r.tables,
            cell(Some(&r.cost_over_baseline_ns), 1),
            cell(Some(&r.pps_64b), 0),
            r.sync_s
        );
    }
    if let Some(b) = res.map_bytes_per_route {
        md += &format!(
            "\nRoute trie memory (kernel accounting, memlock / entries): {b:.0} bytes per route.\n"
        );
    }
    md += "\n## Control plane\n\n| measurement | value |\n| --- | --- |\n";
    for (k, v) in &res.control_plane {
        md += &format!("| {k} | {v:.3} |\n");
    }
    md += &cluster_report(&res.cluster);
    if !res.notes.is_empty() {
        md += "\n## Notes\n\n";
        for n in &res.notes {
            md += &format!("- {n}\n");
        }
    }
    fs::write(out.join("REPORT.md"), md).map_err(|e| e.to_string())?;
    fs::write(out.join("chart.svg"), chart(res)).map_err(|e| e.to_string())?;
    eprintln!("wrote {}/results.json, REPORT.md, chart.svg", out.display());
    Ok(())
}

/// The `q` quantile of a sorted sample (nearest rank).
fn quantile(s: &Stat, q: f64) -> f64 {
    let n = s.samples.len();
    if n == 0 {
        return f64::NAN;
    }
    s.samples[((n as f64 * q).ceil() as usize).clamp(1, n) - 1]
}

fn cluster_report(c: &ClusterResults) -> String {
    if c.forwarding.is_empty() && c.endpoint_change_ms.is_none() && c.etcd.is_empty() {
        return String::new();
    }
    let mut md = String::from("\n## Cluster mode\n\nHosts are network namespaces on one underlay bridge (IPv4), which also runs etcd; each peerd host runs the release `peerd run` with a host file of its own, the fleet written with `peerd apply`.\n\n### Cross-host forwarding\n\nSource VPC a on host 1, destination VPC b on host 2; 64 B pps: the generator on a's host-side link on host 1, the counting sink on b's link on host 2 (as in Forwarding). `xhost-ceiling`: only the tunnel key and a redirect to an `external` VXLAN device on the sending host, only the MACs, the packet type and `bpf_redirect_peer` on the receiving host's VXLAN device. `xhost-kernel`: IP forwarding, a VXLAN device with a static remote as the route to the other VPC, nftables forward rules accepting exactly the peered pairs (conntrack), on both hosts. The VPC side's MTU is 1450 in every scenario.\n\n| scenario | 64 B pps | TCP 1 stream Gbit/s |\n| --- | --- | --- |\n");
    for (name, m) in &c.forwarding {
        md += &format!(
            "| {name} | {} | {} |\n",
            cell(m.get("pps_64B"), 0),
            cell(m.get("tcp_1_stream_gbps"), 2)
        );
    }
    let ratio = |a: &str, b: &str, m: &str| -> String {
        let x = c.forwarding.get(a).and_then(|s| s.get(m)).map(|s| s.median);
        let y = c.forwarding.get(b).and_then(|s| s.get(m)).map(|s| s.median);
        match (x, y) {
            (Some(x), Some(y)) => format!("{:.2}", x / y),
            _ => "n/a".into(),
        }
    };
    md += &format!(
        "\n- xhost-peerd / xhost-ceiling, 64 B pps (target ≥ 0.90): {}\n- xhost-peerd / xhost-kernel, 64 B pps (target ≥ 1.5): {}\n- xhost-peerd / xhost-kernel, TCP 1 stream (target ≥ 1): {}\n",
        ratio("xhost-peerd", "xhost-ceiling", "pps_64B"),
        ratio("xhost-peerd", "xhost-kernel", "pps_64B"),
        ratio("xhost-peerd", "xhost-kernel", "tcp_1_stream_gbps"),
    );
    md += "\n### Convergence\n\n| measurement | samples | median ms | p99 ms | max ms | target |\n| --- | --- | --- | --- | --- | --- |\n";
    for (name, s, target) in [
        (
            "an endpoint added or removed on host 1, until every other host's status counts it",
            &c.endpoint_change_ms,
            "p99 ≤ 200",
        ),
        (
            "the same change, until its key is written or removed in etcd (`etcdctl watch`)",
            &c.endpoint_published_ms,
            "",
        ),
        (
            "`peerd apply` of one peering, until UDP probes pass both ways between a on host 1 and b on every other host",
            &c.apply_to_forwarding_ms,
            "≤ 500",
        ),
    ] {
        if let Some(s) = s {
            md += &format!(
                "| {name} | {} | {:.1} | {:.1} | {:.1} | {target} |\n",
                s.samples.len(),
                s.median,
                quantile(s, 0.99),
                s.max
            );
        }
    }
    md += "\nThe endpoint time starts before `ip addr` runs (its process start included) and ends when the last host's status (control socket, polled every 5 ms per host) shows the change. The apply time includes `peerd apply` itself (a process, validation against etcd, one transaction).\n";
    if !c.etcd.is_empty() {
        md += "\n### etcd usage\n\n`etcdctl get --prefix /peerd/`: keys, and bytes of keys and values. A declared VPC (one CIDR, no peering) is its `vpcs/` key (its TOML) and its `vnis/` key; an endpoint is one `endpoints/<vpc>/<addr>/<host>` key (docs/cluster.md).\n\n| measurement | value |\n| --- | --- |\n";
        for (k, v) in &c.etcd {
            md += &format!("| {k} | {v:.1} |\n");
        }
    }
    md
}

/// A bar chart of the 64-byte pps medians (min–max whiskers).
fn chart(res: &Results) -> String {
    let rows: Vec<(&String, &Stat)> = res
        .forwarding
        .iter()
        .filter_map(|(k, m)| m.get("pps_64B").map(|s| (k, s)))
        .collect();
    let max = rows.iter().map(|(_, s)| s.max).fold(1.0, f64::max);
    let (w, bar_h, left) = (760.0, 28.0, 190.0);
    let h = 50.0 + rows.len() as f64 * (bar_h + 12.0);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"13\">\n<text x=\"10\" y=\"22\" font-size=\"15\">64-byte UDP packets per second (median, min–max)</text>\n"
    );
    for (i, (name, s)) in rows.iter().enumerate() {
        let y = 40.0 + i as f64 * (bar_h + 12.0);
        let scale = |v: f64| (w - left - 90.0) * v / max;
        let colour = if name.starts_with("peerd") {
            "#2b7bb9"
        } else if name.starts_with("ceiling") {
            "#999"
        } else {
            "#d98b2b"
        };
        svg += &format!(
            "<text x=\"10\" y=\"{}\">{name}</text><rect x=\"{left}\" y=\"{y}\" width=\"{:.1}\" height=\"{bar_h}\" fill=\"{colour}\"/><line x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"black\"/><text x=\"{:.1}\" y=\"{}\">{:.0}k</text>\n",
            y + 19.0,
            scale(s.median),
            left + scale(s.min),
            left + scale(s.max),
            y + bar_h / 2.0,
            y + bar_h / 2.0,
            left + scale(s.max) + 6.0,
            y + 19.0,
            s.median / 1000.0
        );
    }
    svg + "</svg>\n"
}
