//! `peerd`: the daemon and its command line (SPEC §6).
use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
};

use clap::{CommandFactory as _, Parser as _};
use peerd::{
    api::Api,
    cli::{exit, init_logging, Cli, Cmd, FleetArgs, DEFAULT_SOCKET},
    config::{self, Config},
    control::{self, Request},
    daemon::{Daemon, Msg},
    state::{self, State},
    status::Explanation,
    watch,
};
use tokio::sync::mpsc;
use tracing::{info, warn};

/// Why a command failed, and so its exit code (`peerd::cli::exit`).
enum Failure {
    /// Exit 1, with this message on stderr (empty: already printed, e.g. as JSON).
    Failed(String),
    /// Exit 3: nothing answers on this control socket.
    NotRunning(PathBuf),
}

impl From<String> for Failure {
    fn from(e: String) -> Self {
        Failure::Failed(e)
    }
}

/// A request to the daemon; no answer on the socket is [`Failure::NotRunning`].
fn ask(socket: &Path, req: &Request) -> Result<serde_json::Value, Failure> {
    control::request(socket, req).map_err(|e| match e {
        control::Error::Connect { path, source }
            if source.kind() != std::io::ErrorKind::PermissionDenied =>
        {
            Failure::NotRunning(path)
        }
        e => Failure::Failed(e.to_string()),
    })
}

fn fleet_run(fleet: &FleetArgs, config: &Path, plan: bool) -> Result<(), String> {
    let t = peerd::cluster::cli::target(config, &fleet.etcd, fleet.key_prefix.as_deref())?;
    if plan {
        peerd::cluster::cli::plan_command(&t, &fleet.files, &fleet.delete)
    } else {
        peerd::cluster::cli::apply_command(&t, &fleet.files, &fleet.delete)
    }
}

/// The socket for client commands: `--socket`, else the config's, else a lenient read of the
/// config's `[daemon] socket`, else the default. Clients must reach the daemon even when the
/// configuration is broken.
fn socket_for(cfg_path: &Path, explicit: Option<PathBuf>) -> PathBuf {
    if let Some(s) = explicit {
        return s;
    }
    if let Ok(cfg) = Config::load(cfg_path) {
        return cfg.daemon.socket;
    }
    std::fs::read_to_string(cfg_path)
        .ok()
        .and_then(|t| t.parse::<toml::Table>().ok())
        .and_then(|t| t.get("daemon")?.get("socket")?.as_str().map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let sock = |s: peerd::cli::SocketArg| socket_for(&cli.config, s.socket);
    let result = match cli.cmd {
        Cmd::Run => run(&cli.config).map_err(Failure::from),
        Cmd::Check { json } => check(&cli.config, json),
        Cmd::Status { json, dot, socket } => status(&sock(socket), json, dot),
        Cmd::Plan {
            json,
            socket,
            fleet,
        } if fleet.is_empty() => plan(&sock(socket), &cli.config, json),
        Cmd::Plan { json, fleet, .. } => fleet_plan(&fleet, &cli.config, json),
        Cmd::Apply { fleet } => fleet_run(&fleet, &cli.config, false).map_err(Failure::from),
        Cmd::Reload { socket } => {
            ask(&sock(socket), &Request::Reload).map(|_| println!("reloaded"))
        }
        Cmd::Explain {
            from,
            src,
            dst,
            json,
            socket,
        } => explain(&sock(socket), Request::Explain { from, src, dst }, json),
        Cmd::Teardown { socket } => teardown(&cli.config, socket.socket).map_err(Failure::from),
        Cmd::Attach(a) => {
            let socket = socket_for(&cli.config, a.socket.clone());
            peerd::attach::command(&socket, a, false).map_err(Failure::from)
        }
        Cmd::Detach(a) => {
            let socket = socket_for(&cli.config, a.socket.clone());
            peerd::attach::command(&socket, a, true).map_err(Failure::from)
        }
        Cmd::Completions { shell } => {
            peerd::gen::completions(shell, Cli::command()).map_err(Failure::from)
        }
        Cmd::GenerateMan { dir } => peerd::gen::man_pages(Cli::command(), &dir)
            .map(|_| ())
            .map_err(Failure::from),
    };
    match result {
        Ok(()) => ExitCode::from(exit::OK),
        Err(Failure::Failed(e)) => {
            if !e.is_empty() {
                eprintln!("{e}");
            }
            ExitCode::from(exit::FAILED)
        }
        Err(Failure::NotRunning(socket)) => {
            eprintln!("peerd is not running (no answer on {})", socket.display());
            ExitCode::from(exit::NOT_RUNNING)
        }
    }
}

fn print_json(v: &serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(v).expect("json"));
}

/// Loads `path` strictly; invalid: the errors (as JSON with `json`), exit 1.
fn load_checked(path: &Path, json: bool) -> Result<Config, Failure> {
    Config::load(path).map_err(|e| {
        if json {
            print_json(&peerd::cli::invalid_json(path, &e));
            Failure::Failed(String::new())
        } else {
            Failure::Failed(e.to_string())
        }
    })
}

fn check(path: &Path, json: bool) -> Result<(), Failure> {
    let cfg = load_checked(path, json)?;
    let peerings = config::evaluate_peerings(&cfg, &|_| None);
    if json {
        let vpcs: Vec<&str> = cfg.vpcs.iter().map(|v| v.name.as_str()).collect();
        let peerings: Vec<serde_json::Value> = peerings
            .iter()
            .map(|p| {
                serde_json::json!({
                    "id": p.id.to_string(),
                    "vpcs": [p.vpcs[0].to_string(), p.vpcs[1].to_string()],
                    "state": p.state.to_string(),
                    "reason": p.reason.as_ref().map(|r| r.to_string()),
                })
            })
            .collect();
        print_json(&serde_json::json!({
            "ok": true, "file": path, "errors": [], "vpcs": vpcs, "peerings": peerings,
        }));
        return Ok(());
    }
    println!(
        "{}: ok, {} VPCs, {} peerings",
        path.display(),
        cfg.vpcs.len(),
        peerings.len()
    );
    for p in peerings {
        let reason = p.reason.map(|r| format!(" ({r})")).unwrap_or_default();
        println!(
            "  {} {} <-> {}: {}{reason}",
            p.id, p.vpcs[0], p.vpcs[1], p.state
        );
    }
    Ok(())
}

/// Cluster-mode `plan`: what `apply` would change fleet-wide.
fn fleet_plan(fleet: &FleetArgs, config: &Path, json: bool) -> Result<(), Failure> {
    if !json {
        return fleet_run(fleet, config, true).map_err(Failure::from);
    }
    let t = peerd::cluster::cli::target(config, &fleet.etcd, fleet.key_prefix.as_deref())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting runtime: {e}"))?;
    let now = state::unix(std::time::SystemTime::now());
    let lines = rt
        .block_on(peerd::cluster::plan(
            &t.etcd,
            &fleet.files,
            &fleet.delete,
            &t.quotas,
            now,
        ))
        .map_err(|e| e.to_string())?;
    print_json(&peerd::cli::plan_json(&lines));
    Ok(())
}

fn human_bytes(b: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

fn age(since: Option<u64>) -> String {
    let Some(t) = since else { return "-".into() };
    let s = state::unix(std::time::SystemTime::now()).saturating_sub(t);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{}h", s / 86400, s % 86400 / 3600),
    }
}

fn status(socket: &Path, json: bool, dot: bool) -> Result<(), Failure> {
    let s = ask(socket, &Request::Status)?;
    if json {
        print_json(&s);
        return Ok(());
    }
    let vpcs = s["vpcs"].as_array().cloned().unwrap_or_default();
    let peerings = s["peerings"].as_array().cloned().unwrap_or_default();
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("").to_owned();
    if dot {
        println!("graph peerd {{\n  node [shape=box, style=rounded];");
        for v in &vpcs {
            let colour = if v["ready"] == true { "black" } else { "red" };
            println!(
                "  \"{}\" [color={colour}, label=\"{}\\n{}\"];",
                text(&v["name"]),
                text(&v["name"]),
                text(&v["netns"])
            );
        }
        for p in &peerings {
            let (colour, style) = match p["state"].as_str().unwrap_or("") {
                "active" => ("darkgreen", "bold"),
                "pending-acceptance" => ("orange", "dashed"),
                "failed" => ("red", "dotted"),
                "rejected" | "expired" | "disconnected" => ("gray", "dotted"),
                _ => ("black", "solid"),
            };
            println!(
                "  \"{}\" -- \"{}\" [label=\"{}\\n{}\", color={colour}, fontcolor={colour}, style={style}];",
                text(&p["vpcs"][0]),
                text(&p["vpcs"][1]),
                text(&p["id"]),
                text(&p["state"])
            );
        }
        println!("}}");
        return Ok(());
    }
    println!(
        "generation {}, datapath {}",
        s["generation"],
        text(&s["datapath"])
    );
    if let Some(e) = s["config_error"].as_str() {
        println!("\nCONFIG REJECTED (the last good configuration stays in force):\n{e}");
    }
    println!(
        "\n{:<16} {:<22} {:<11} {:<6} DROPS (packets by reason)",
        "VPC", "NAMESPACE", "LINK", "READY"
    );
    for v in &vpcs {
        let drops: Vec<String> = v["drops"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, c)| format!("{k}={}", c["packets"]))
            .collect();
        println!(
            "{:<16} {:<22} {:<11} {:<6} {}",
            text(&v["name"]),
            text(&v["netns"]),
            text(&v["host_if"]),
            if v["ready"] == true { "yes" } else { "NO" },
            if drops.is_empty() {
                "-".to_owned()
            } else {
                drops.join(" ")
            }
        );
        if let Some(e) = v["error"].as_str() {
            println!("{:<16} error: {e}", "");
        }
    }
    println!(
        "\n{:<16} {:<22} {:<19} {:>6} {:>9} {:>10} {:>9} {:>10}  REASON",
        "PEERING",
        "VPCS (A <-> B)",
        "STATE",
        "AGE",
        "PKTS A>B",
        "BYTES A>B",
        "PKTS B>A",
        "BYTES B>A"
    );
    for p in &peerings {
        let since = p["activated_at"].as_u64().or(p["first_seen"].as_u64());
        let f = |d: usize, k: &str| p["forwarded"][d][k].as_u64().unwrap_or(0);
        println!(
            "{:<16} {:<22} {:<19} {:>6} {:>9} {:>10} {:>9} {:>10}  {}",
            text(&p["id"]),
            format!("{} <-> {}", text(&p["vpcs"][0]), text(&p["vpcs"][1])),
            text(&p["state"]),
            age(since),
            f(0, "packets"),
            human_bytes(f(0, "bytes")),
            f(1, "packets"),
            human_bytes(f(1, "bytes")),
            p["reason"].as_str().unwrap_or("")
        );
    }
    if let Some(fl) = s["flow_log"].as_object() {
        println!(
            "\nflow log {}: {} records, {} rotations, {} packets lost (flow map full)",
            fl["path"].as_str().unwrap_or(""),
            fl["records_written"],
            fl["rotations"],
            fl["lost_packets"]
        );
    }
    Ok(())
}

/// Plans `config` (which may be a staged copy, e.g. peerd.toml.new) against what is in force.
/// An invalid `config` is reported as `check` does, before asking the daemon.
fn plan(socket: &Path, config: &Path, json: bool) -> Result<(), Failure> {
    load_checked(config, json)?;
    let path = config
        .canonicalize()
        .map_err(|e| format!("{}: {e}", config.display()))?;
    let v = ask(socket, &Request::Plan { config: Some(path) })?;
    let lines: Vec<String> = serde_json::from_value(v).map_err(|e| e.to_string())?;
    if json {
        print_json(&peerd::cli::plan_json(&lines));
        return Ok(());
    }
    if lines.is_empty() {
        println!("no changes");
    }
    for l in lines {
        println!("{l}");
    }
    Ok(())
}

fn explain(socket: &Path, req: Request, json: bool) -> Result<(), Failure> {
    let v = ask(socket, &req)?;
    if json {
        print_json(&v);
        return Ok(());
    }
    let e: Explanation = serde_json::from_value(v).map_err(|e| e.to_string())?;
    println!("packet {} -> {} from VPC {}", e.src, e.dst, e.from);
    match &e.table {
        Some(t) => println!("  route table: {t}"),
        None => println!("  route table: none applies to this source"),
    }
    match (&e.route, &e.peering) {
        (Some(r), Some(p)) => println!(
            "  route:       {r} -> {p} ({})",
            e.peering_state
                .map(|s| s.to_string())
                .unwrap_or_else(|| "unknown".into())
        ),
        _ => println!("  route:       none matches"),
    }
    match (e.verdict.as_str(), &e.to, &e.reason) {
        ("deliver", Some(to), _) => match &e.host {
            Some(h) => {
                println!("  verdict:     DELIVER into VPC {to} on host {h} (through the tunnel)")
            }
            None => println!("  verdict:     DELIVER into VPC {to}"),
        },
        (_, _, Some(r)) => println!("  verdict:     DROP ({r})"),
        _ => println!("  verdict:     {}", e.verdict),
    }
    Ok(())
}

fn teardown(path: &Path, socket: Option<PathBuf>) -> Result<(), String> {
    let cfg = Config::load(path).map_err(|e| {
        format!(
            "{e}\nteardown needs a readable configuration to know what peerd created; fix it first"
        )
    })?;
    let socket = socket.unwrap_or_else(|| cfg.daemon.socket.clone());
    if control::daemon_alive(&socket) {
        return Err(format!(
            "peerd is running (socket {}); stop it before teardown",
            socket.display()
        ));
    }
    let _lock = state::Lock::take(&cfg.daemon.state_dir).map_err(|e| e.to_string())?;
    let (st, warning) = State::load(&cfg.daemon.state_dir);
    if let Some(w) = warning {
        warn!("{w}");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting runtime: {e}"))?;
    for line in rt
        .block_on(peerd::teardown::teardown(&cfg, &st))
        .map_err(|e| e.to_string())?
    {
        info!("{line}");
    }
    println!("peerd torn down");
    Ok(())
}

fn run(path: &Path) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("starting runtime: {e}"))?;
    rt.block_on(run_async(path))
}

async fn run_async(path: &Path) -> Result<(), String> {
    use tokio::signal::unix::{signal, SignalKind};
    // Refuse to start a second daemon on the same socket before touching anything. A broken
    // configuration file falls back to its last good version (the daemon reports it).
    let pre = config::load_resilient_at_start(path)
        .0
        .map_err(|e| e.to_string())?
        .config;
    let socket = pre.daemon.socket.clone();
    if control::daemon_alive(&socket) {
        return Err(format!(
            "another peerd is already running on {}",
            socket.display()
        ));
    }
    let mut hup = signal(SignalKind::hangup()).map_err(|e| e.to_string())?;
    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;

    // The owner task runs on a thread of its own with its own runtime: a reconcile (blocking
    // map syscalls, namespace creation) never holds up the threads that answer clients.
    let (snap_tx, snap_rx) = tokio::sync::watch::channel(Arc::default());
    let (msg_tx, msg_rx) = mpsc::channel::<Msg>(64);
    let (ev_tx, ev_rx) = mpsc::unbounded_channel();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<Result<(), String>>();
    let watcher =
        watch::ConfigWatcher::start(ev_tx.clone()).map_err(|e| format!("inotify: {e}"))?;
    watch::watch_netns(ev_tx.clone());
    watch::watch_links(ev_tx);
    // Cluster mode: the fleet agent runs here, on the client runtime (see peerd::agent).
    let link = pre.daemon.cluster.as_ref().map(|c| {
        let (from_tx, from_rx) = mpsc::unbounded_channel();
        let to_agent = peerd::agent::start(c.clone(), pre.daemon.state_dir.clone(), from_tx);
        peerd::daemon::ClusterLink {
            to_agent,
            from_agent: from_rx,
        }
    });
    let p = path.to_owned();
    let owner = std::thread::Builder::new()
        .name("peerd-owner".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("starting runtime: {e}")));
                    return;
                }
            };
            rt.block_on(async move {
                match Daemon::start(&p, snap_tx, link).await {
                    Ok(d) => {
                        let _ = ready_tx.send(Ok(()));
                        d.run(msg_rx, ev_rx, Some(watcher)).await;
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                    }
                }
            })
        })
        .map_err(|e| format!("starting the owner thread: {e}"))?;
    ready_rx
        .await
        .map_err(|_| "the daemon stopped while starting".to_owned())??;

    let counters = peerd::datapath::Counters::open(&pre.daemon.pin_dir)
        .map_err(|e| warn!(error = %e, "counters unavailable to status"))
        .ok()
        .map(Arc::new);
    let api = Api {
        snapshot: snap_rx,
        counters,
        daemon: msg_tx.clone(),
    };
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    let group = match &pre.daemon.socket_group {
        Some(g) => Some(control::group_id(g).map_err(|e| e.to_string())?),
        None => None,
    };
    let listener = control::bind(&socket, group).map_err(|e| e.to_string())?;
    let policy = control::Policy {
        group,
        ..control::Policy::default()
    };
    tokio::spawn(control::serve(
        listener,
        policy,
        Arc::new(api.clone()),
        Arc::default(),
    ));
    if let Some(addr) = pre.daemon.metrics {
        let api = api.clone();
        let render: peerd::metrics::Render = Arc::new(move || {
            let api = api.clone();
            Box::pin(async move { api.metrics().await })
        });
        match peerd::metrics::bind(addr) {
            Ok(l) => {
                info!(%addr, "metrics endpoint listening");
                tokio::spawn(peerd::metrics::serve(
                    l,
                    peerd::metrics::Limits::default(),
                    render,
                    Arc::default(),
                ));
            }
            Err(e) => warn!(%addr, error = %e, "metrics endpoint not available"),
        }
    }

    peerd::notify::ready();
    info!(socket = %socket.display(), "peerd ready");
    loop {
        tokio::select! {
            _ = hup.recv() => {
                info!("SIGHUP: reloading");
                let _ = msg_tx.send(Msg::Reload(None)).await;
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    peerd::notify::stopping();
    let _ = msg_tx.send(Msg::Stop).await;
    let _ = tokio::task::spawn_blocking(move || owner.join()).await;
    let _ = std::fs::remove_file(&socket);
    info!("stopping; the datapath keeps forwarding as last configured (peerd teardown removes it)");
    Ok(())
}
