//! `peerd`: the daemon and its command line (SPEC §6).
use std::{
    io::IsTerminal as _,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
};

use clap::{CommandFactory as _, Parser, Subcommand};
use peerd::{
    api::Api,
    config::{self, Config},
    control::{self, Request},
    daemon::{Daemon, Msg},
    state::{self, State},
    status::Explanation,
    watch,
};
use tokio::sync::mpsc;
use tracing::{info, warn};

const DEFAULT_CONFIG: &str = "/etc/peerd/peerd.toml";
const DEFAULT_SOCKET: &str = "/run/peerd/peerd.sock";

#[derive(Parser)]
#[command(
    name = "peerd",
    version,
    about = "VPC peering for Linux hypervisor hosts"
)]
struct Cli {
    /// Configuration file.
    #[arg(long, global = true, default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the daemon in the foreground.
    Run,
    /// Validate the configuration; exit 1 with file:line:col messages.
    Check,
    /// Ask the running daemon for its state.
    Status {
        #[arg(long)]
        json: bool,
        /// Graphviz of VPCs and peerings, coloured by state.
        #[arg(long, conflicts_with = "json")]
        dot: bool,
        /// Control socket (default: from the configuration).
        #[arg(long)]
        socket: Option<PathBuf>,
    },
    /// What applying --config would change (namespaces, links, routes, peering states) compared
    /// with what the daemon has in force, changing nothing. --config may be a staged file.
    /// With FILEs, --delete or --etcd (cluster mode): what `peerd apply` would change fleet-wide.
    Plan {
        #[arg(long)]
        socket: Option<PathBuf>,
        #[command(flatten)]
        fleet: FleetArgs,
    },
    /// Cluster mode: validate [[vpc]] files against the VPCs in etcd and write them in one
    /// transaction (etcd from --config's [cluster], or --etcd).
    Apply {
        #[command(flatten)]
        fleet: FleetArgs,
    },
    /// Make the running daemon re-read its configuration (same as SIGHUP).
    Reload {
        #[arg(long)]
        socket: Option<PathBuf>,
    },
    /// What the datapath does with a packet from VPC --from, and why.
    Explain {
        #[arg(long)]
        from: String,
        #[arg(long)]
        src: std::net::IpAddr,
        #[arg(long)]
        dst: std::net::IpAddr,
        #[arg(long)]
        json: bool,
        #[arg(long)]
        socket: Option<PathBuf>,
    },
    /// Remove everything peerd created: namespaces, links, pins, state.
    Teardown {
        #[arg(long)]
        socket: Option<PathBuf>,
    },
    /// Print a shell completion script (bash, zsh or fish) to stdout.
    ///
    /// The package installs all three; this is for a source install or a user's own shell.
    #[command(after_help = peerd::gen::COMPLETIONS_HELP)]
    Completions {
        /// The shell to write the script for.
        ///
        /// Example: bash
        shell: peerd::gen::Shell,
    },
    /// Write the man pages, one per command, into DIR (used to build the package).
    #[command(
        hide = true,
        after_help = "Example:\n  peerd generate-man target/package-assets/man"
    )]
    GenerateMan {
        /// Directory for peerd.8, peerd-run.8, ... (created if missing).
        ///
        /// Example: target/package-assets/man
        dir: PathBuf,
    },
}

/// What `apply` and cluster-mode `plan` take.
#[derive(clap::Args)]
struct FleetArgs {
    /// Files of [[vpc]] tables.
    files: Vec<PathBuf>,
    /// Remove this VPC from the fleet (its peers' peerings become disconnected).
    #[arg(long, value_name = "VPC")]
    delete: Vec<String>,
    /// etcd endpoint(s), instead of the [cluster] of --config.
    #[arg(long, value_name = "URL", value_delimiter = ',')]
    etcd: Vec<String>,
    /// Key prefix in etcd (default: [cluster] key_prefix, or "/peerd/" with --etcd).
    #[arg(long)]
    key_prefix: Option<String>,
}

impl FleetArgs {
    fn is_empty(&self) -> bool {
        self.files.is_empty() && self.delete.is_empty() && self.etcd.is_empty()
    }

    fn run(&self, config: &Path, plan: bool) -> Result<(), String> {
        let t = peerd::cluster::cli::target(config, &self.etcd, self.key_prefix.as_deref())?;
        if plan {
            peerd::cluster::cli::plan_command(&t, &self.files, &self.delete)
        } else {
            peerd::cluster::cli::apply_command(&t, &self.files, &self.delete)
        }
    }
}

fn init_logging() {
    use tracing_subscriber::{fmt, EnvFilter};
    let filter = EnvFilter::try_from_env("PEERD_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // Under systemd (JOURNAL_STREAM set) journald adds timestamps; skip ours and colours.
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let b = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(!journald && std::io::stderr().is_terminal());
    if journald {
        b.without_time().init();
    } else {
        b.init();
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
    init_logging();
    let result = match cli.cmd {
        Cmd::Run => run(&cli.config),
        Cmd::Check => check(&cli.config),
        Cmd::Status { json, dot, socket } => status(&socket_for(&cli.config, socket), json, dot),
        Cmd::Plan { socket, fleet } if fleet.is_empty() => {
            plan(&socket_for(&cli.config, socket), &cli.config)
        }
        Cmd::Plan { fleet, .. } => fleet.run(&cli.config, true),
        Cmd::Apply { fleet } => fleet.run(&cli.config, false),
        Cmd::Reload { socket } => {
            control::request(&socket_for(&cli.config, socket), &Request::Reload)
                .map(|_| println!("reloaded"))
                .map_err(|e| e.to_string())
        }
        Cmd::Explain {
            from,
            src,
            dst,
            json,
            socket,
        } => explain(
            &socket_for(&cli.config, socket),
            Request::Explain { from, src, dst },
            json,
        ),
        Cmd::Teardown { socket } => teardown(&cli.config, socket),
        Cmd::Completions { shell } => peerd::gen::completions(shell, Cli::command()),
        Cmd::GenerateMan { dir } => peerd::gen::man_pages(Cli::command(), &dir).map(|_| ()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn check(path: &Path) -> Result<(), String> {
    let cfg = Config::load(path).map_err(|e| e.to_string())?;
    let peerings = config::evaluate_peerings(&cfg, &|_| None);
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

fn status(socket: &Path, json: bool, dot: bool) -> Result<(), String> {
    let s = control::request(socket, &Request::Status).map_err(|e| e.to_string())?;
    if json {
        println!("{}", serde_json::to_string_pretty(&s).expect("json"));
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
fn plan(socket: &Path, config: &Path) -> Result<(), String> {
    let path = config
        .canonicalize()
        .map_err(|e| format!("{}: {e}", config.display()))?;
    let v = control::request(socket, &Request::Plan { config: Some(path) })
        .map_err(|e| e.to_string())?;
    let lines: Vec<String> = serde_json::from_value(v).map_err(|e| e.to_string())?;
    if lines.is_empty() {
        println!("no changes");
    }
    for l in lines {
        println!("{l}");
    }
    Ok(())
}

fn explain(socket: &Path, req: Request, json: bool) -> Result<(), String> {
    let v = control::request(socket, &req).map_err(|e| e.to_string())?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v).expect("json"));
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

    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
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
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    let _ = msg_tx.send(Msg::Stop).await;
    let _ = tokio::task::spawn_blocking(move || owner.join()).await;
    let _ = std::fs::remove_file(&socket);
    info!("stopping; the datapath keeps forwarding as last configured (peerd teardown removes it)");
    Ok(())
}
