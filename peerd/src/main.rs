//! `peerd`: the daemon and its command line (SPEC §6).
use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    sync::{Arc, Mutex},
};

use clap::{Parser, Subcommand};
use futures::future::BoxFuture;
use peerd::{
    config::{self, Config},
    control::{self, Request},
    daemon::{self, Daemon},
    metrics, netns,
    state::{self, State},
    watch,
};
use tokio::sync::{mpsc, oneshot};
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
    Plan {
        #[arg(long)]
        socket: Option<PathBuf>,
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
}

fn init_logging() {
    use tracing_subscriber::{fmt, EnvFilter};
    let filter = EnvFilter::try_from_env("PEERD_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // Under systemd (JOURNAL_STREAM set) journald adds timestamps; skip ours and colours.
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let b = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(!journald && atty_stderr());
    if journald {
        b.without_time().init();
    } else {
        b.init();
    }
}

fn atty_stderr() -> bool {
    // SAFETY: isatty on a valid fd number.
    unsafe { libc::isatty(2) == 1 }
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
        Cmd::Plan { socket } => plan(&socket_for(&cli.config, socket), &cli.config),
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
    let e: daemon::Explanation = serde_json::from_value(v).map_err(|e| e.to_string())?;
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
        ("deliver", Some(to), _) => println!("  verdict:     DELIVER into VPC {to}"),
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
    let (st, _) = State::load(&cfg.daemon.state_dir);
    let mut names: std::collections::BTreeSet<String> = st.vpcs.keys().cloned().collect();
    names.extend(cfg.vpcs.iter().map(|v| v.name.clone()));
    for name in names {
        let ns = format!("{}{}", cfg.daemon.netns_prefix, name);
        let changes =
            netns::remove_vpc(&ns, &netns::host_ifname(&ns)).map_err(|e| e.to_string())?;
        for a in changes.actions {
            info!("{a}");
        }
    }
    if cfg.daemon.pin_dir.exists() {
        std::fs::remove_dir_all(&cfg.daemon.pin_dir)
            .map_err(|e| format!("removing {}: {e}", cfg.daemon.pin_dir.display()))?;
        info!(
            "removed pins under {} (datapath detached)",
            cfg.daemon.pin_dir.display()
        );
    }
    let state_file = cfg.daemon.state_dir.join(state::FILE);
    if state_file.exists() {
        std::fs::remove_file(&state_file)
            .map_err(|e| format!("removing {}: {e}", state_file.display()))?;
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
    // Refuse to start a second daemon on the same socket before touching anything.
    let pre = Config::load(path).map_err(|e| e.to_string())?;
    let socket = pre.daemon.socket.clone();
    if control::daemon_alive(&socket) {
        return Err(daemon::Error::AlreadyRunning(socket).to_string());
    }
    let p = path.to_owned();
    let d = tokio::task::spawn_blocking(move || Daemon::start(&p))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let shared = Arc::new(Mutex::new(d));

    // TODO(adapter): `Policy.group` comes from `[daemon] socket_group` once that key exists
    // (resolve it with `control::group_id`).
    let policy = control::Policy::default();
    let listener = control::bind(&socket, policy.group).map_err(|e| e.to_string())?;
    let (tx, mut rx) = mpsc::channel::<Command>(8);
    let handler = Arc::new(SharedHandler {
        daemon: shared.clone(),
        commands: tx,
    });
    tokio::spawn(control::serve(
        listener,
        policy,
        handler,
        Arc::new(control::Stats::default()),
    ));
    if let Some(addr) = pre.daemon.metrics {
        match metrics::bind(addr) {
            Ok(l) => {
                info!(%addr, "metrics endpoint listening");
                tokio::spawn(metrics::serve(
                    l,
                    metrics::Limits::default(),
                    shared_render(shared.clone()),
                    Arc::new(metrics::ServeStats::default()),
                ));
            }
            Err(e) => warn!(%addr, error = %e, "metrics endpoint not available"),
        }
    }

    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    info!(socket = %socket.display(), "peerd ready");

    let mut hup = signal(SignalKind::hangup()).map_err(|e| e.to_string())?;
    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;

    let (ev_tx, mut ev_rx) = tokio::sync::mpsc::unbounded_channel();
    let watcher =
        watch::ConfigWatcher::start(ev_tx.clone()).map_err(|e| format!("inotify: {e}"))?;
    let watch_set = |w: &watch::ConfigWatcher| {
        let d = shared.lock().expect("daemon lock");
        w.set(&d.cfg.watch_dirs, &d.cfg.files);
    };
    watch_set(&watcher);
    watch::watch_netns(ev_tx.clone());
    watch::watch_links(ev_tx);

    let blocking = |f: fn(&mut Daemon) -> Result<(), daemon::Error>| {
        let d = shared.clone();
        async move {
            tokio::task::spawn_blocking(move || f(&mut d.lock().expect("daemon lock")))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())
        }
    };
    let mut next_resync = tokio::time::Instant::now() + daemon::RESYNC;
    let flow_every = pre.daemon.flow_log_interval;
    let mut flow_tick = tokio::time::interval(flow_every);
    flow_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Wake for the periodic resync, or earlier when a pending peering expires.
        let expiry = shared.lock().expect("daemon lock").next_expiry();
        let wake = match expiry {
            Some(e) => next_resync
                .min(tokio::time::Instant::now() + e + std::time::Duration::from_millis(50)),
            None => next_resync,
        };
        tokio::select! {
            _ = hup.recv() => {
                info!("SIGHUP: reloading");
                let _ = blocking(Daemon::reload).await;
            }
            Some(cmd) = rx.recv() => match cmd {
                Command::Reload(reply) => {
                    info!("reload requested");
                    let _ = reply.send(blocking(Daemon::reload).await);
                }
            },
            Some(ev) = ev_rx.recv() => {
                // Debounce: editors write several events per save.
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                let mut reload = ev == watch::Event::Config;
                while let Ok(more) = ev_rx.try_recv() {
                    reload |= more == watch::Event::Config;
                }
                if reload {
                    info!("configuration changed on disk: reloading");
                    let _ = blocking(Daemon::reload).await;
                } else if let Err(e) = blocking(Daemon::reconcile).await {
                    warn!(error = %e, "repair after a host change failed");
                }
            }
            _ = tokio::time::sleep_until(wake) => {
                next_resync = tokio::time::Instant::now() + daemon::RESYNC;
                if let Err(e) = blocking(Daemon::reconcile).await {
                    warn!(error = %e, "periodic resync failed");
                }
            }
            _ = flow_tick.tick() => {
                if let Err(e) = blocking(Daemon::drain_flow_log).await {
                    warn!(error = %e, "flow log");
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
        let watch_set = |w: &watch::ConfigWatcher| {
            let d = shared.lock().expect("daemon lock");
            w.set(&d.cfg.watch_dirs, &d.cfg.files);
        };
        watch_set(&watcher);
    }
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    // The last window's flows, so a stop loses no records.
    let _ = blocking(Daemon::drain_flow_log).await;
    let _ = std::fs::remove_file(&socket);
    info!("stopping; the datapath keeps forwarding as last configured (peerd teardown removes it)");
    Ok(())
}

/// Requests the run loop must act on (they need the reconcile path).
#[derive(Debug)]
enum Command {
    Reload(oneshot::Sender<Result<(), String>>),
}

/// ADAPTER, to be replaced by the daemon actor: answers control requests from today's
/// `daemon::Shared` (reads under the lock on a blocking thread) and sends reloads to the run
/// loop. The control server itself knows nothing of the daemon.
struct SharedHandler {
    daemon: daemon::Shared,
    commands: mpsc::Sender<Command>,
}

impl SharedHandler {
    /// Runs `f` on the locked daemon on a blocking thread.
    fn read<T: serde::Serialize>(
        &self,
        f: impl FnOnce(&Daemon) -> Result<T, String> + Send + 'static,
    ) -> BoxFuture<'static, Result<serde_json::Value, String>> {
        let d = self.daemon.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                f(&d.lock().expect("daemon lock"))
                    .and_then(|v| serde_json::to_value(v).map_err(|e| e.to_string()))
            })
            .await
            .map_err(|e| e.to_string())?
        })
    }
}

impl control::Handler for SharedHandler {
    fn handle(&self, req: Request) -> BoxFuture<'static, Result<serde_json::Value, String>> {
        match req {
            Request::Status => self.read(|d| Ok(d.status())),
            Request::Plan { config } => {
                self.read(move |d| d.plan_reload(config.as_deref()).map_err(|e| e.to_string()))
            }
            Request::Explain { from, src, dst } => self.read(move |d| d.explain(&from, src, dst)),
            Request::Reload => {
                let commands = self.commands.clone();
                Box::pin(async move {
                    let (tx, rx) = oneshot::channel();
                    let stopping = || "daemon is stopping".to_owned();
                    commands
                        .send(Command::Reload(tx))
                        .await
                        .map_err(|_| stopping())?;
                    rx.await.map_err(|_| stopping())??;
                    Ok(serde_json::Value::Null)
                })
            }
        }
    }
}

/// ADAPTER, to be replaced by the daemon actor: one scrape renders under the daemon lock on a
/// blocking thread.
fn shared_render(daemon: daemon::Shared) -> metrics::Render {
    Arc::new(move || {
        let d = daemon.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || metrics::render(&d.lock().expect("daemon lock")))
                .await
                .unwrap_or_default()
        })
    })
}
