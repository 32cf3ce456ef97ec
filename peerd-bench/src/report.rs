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
    pub notes: Vec<String>,
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
    let cell = |s: Option<&Stat>, digits: usize| match s {
        Some(s) => format!(
            "{:.*} ({:.*}–{:.*})",
            digits, s.median, digits, s.min, digits, s.max
        ),
        None => "n/a".into(),
    };
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
