//! The command line (SPEC §6): the clap definitions, shared by `peerd` (main.rs dispatches)
//! and the tools that generate man pages and completions from it; exit codes; and the
//! machine-readable forms of `check --json` and `plan --json`.
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand, ValueEnum};
use serde::Serialize;

use crate::config::{ConfigError, Diagnostic};

pub const DEFAULT_CONFIG: &str = "/etc/peerd/peerd.toml";
pub const DEFAULT_SOCKET: &str = "/run/peerd/peerd.sock";

/// `peerd --version`: the crate version and the git commit it was built from (build.rs;
/// "unknown" outside a git checkout).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("PEERD_GIT_COMMIT"),
    ")"
);

/// What each exit code means; `peerd --help` and the README print the same.
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// The configuration is invalid, or the command failed.
    pub const FAILED: u8 = 1;
    /// Usage error: unknown subcommand or flag, missing or malformed argument (clap's code).
    pub const USAGE: u8 = 2;
    /// The daemon is not running: nothing answers on the control socket.
    pub const NOT_RUNNING: u8 = 3;
}

/// The exit-code table (a macro so that it joins the `--help` text at compile time).
macro_rules! exit_codes_text {
    () => {
        "Exit codes:
  0  success
  1  the configuration is invalid, or the command failed
  2  usage error (unknown subcommand or flag, missing or malformed argument)
  3  peerd is not running: status, reload, explain and plan got no answer on the control socket"
    };
}

const TOP_HELP: &str = concat!(
    "\
Examples:
  peerd check --config /etc/peerd/peerd.toml      validate a configuration
  peerd run                                       the daemon (systemd: contrib/peerd.service)
  peerd status                                    VPCs, peerings, drops by reason
  peerd explain --from web --src 10.10.0.5 --dst 10.20.0.7
  peerd plan --config /etc/peerd/peerd.toml.new   what a reload with that file would change
  peerd reload                                    same as systemctl reload peerd

",
    exit_codes_text!(),
    "

Logs: PEERD_LOG sets the level (error, warn, info, debug, trace; or a tracing filter such as
peerd=debug); --log-format json for one JSON object per line. Under systemd peerd logs to the
journal with structured fields (journalctl -u peerd VPC=web).

Troubleshooting: docs/troubleshooting.md (symptom, command, what to look for)."
);

/// VPC peering for Linux hypervisor hosts.
///
/// peerd reads a TOML file of VPCs and peering connections and makes it so on this host: a
/// network namespace and a veth pair per VPC, and an eBPF datapath that forwards between
/// peered CIDRs and drops everything else, counted by reason.
#[derive(Parser, Debug)]
#[command(name = "peerd", version = VERSION, after_help = TOP_HELP)]
pub struct Cli {
    /// Configuration file (the daemon's; client commands read its [daemon] socket).
    ///
    /// Example: --config /etc/peerd/peerd.toml
    #[arg(long, global = true, value_name = "PATH", default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Log line format on stderr: human-readable text, or one JSON object per line. Under
    /// systemd (JOURNAL_STREAM names stderr) peerd logs to the journal instead.
    ///
    /// Example: --log-format json
    #[arg(long, global = true, value_enum, value_name = "FORMAT", default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// `--log-format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per event (timestamp, level, target, fields, span).
    Json,
}

/// `--socket`, in every client command.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct SocketArg {
    /// Control socket of the running daemon (default: [daemon] socket of --config, read
    /// leniently so it works with a broken configuration, else /run/peerd/peerd.sock).
    ///
    /// Example: --socket /run/peerd/peerd.sock
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Run the daemon in the foreground.
    ///
    /// Creates the VPC namespaces, links, routes and the eBPF datapath of --config, then
    /// keeps them as configured: reloads on SIGHUP, `peerd reload` or a changed config file.
    /// SIGTERM stops the daemon and leaves the datapath forwarding.
    #[command(after_help = "\
Examples:
  peerd run --config /etc/peerd/peerd.toml
  PEERD_LOG=debug peerd run --log-format json

Under systemd (Type=notify-reload) peerd sends READY=1 after its first reconcile, STATUS= lines,
RELOADING=1 / READY=1 around reloads and WATCHDOG=1 pings.")]
    Run,
    /// Validate the configuration; exit 1 with file:line:col messages.
    ///
    /// Reads --config and its includes, parses and validates them (quotas, overlaps, peerings)
    /// and prints the VPCs and the peering states they would have. Needs no daemon.
    #[command(after_help = "\
Examples:
  peerd check --config /etc/peerd/peerd.toml
  peerd check --config peerd.toml.new --json | jq '.errors[] | \"\\(.line):\\(.column) \\(.message)\"'")]
    Check {
        /// Print the result as JSON: {"ok", "file", "errors": [{"file", "line", "column",
        /// "message"}], "vpcs", "peerings"}.
        ///
        /// Example: --json
        #[arg(long)]
        json: bool,
    },
    /// Ask the running daemon for its state.
    ///
    /// VPCs (namespace, host link, ready, drops by reason), peerings (state, age, forwarded
    /// packets and bytes per direction), the rejected reload if any, the flow log.
    #[command(after_help = "\
Examples:
  peerd status
  peerd status --json | jq '.peerings[] | select(.state != \"active\")'
  peerd status --dot | dot -Tsvg > peerd.svg")]
    Status {
        /// Print the daemon's full status as JSON (the contract of SPEC §6).
        ///
        /// Example: --json
        #[arg(long)]
        json: bool,
        /// Print a Graphviz graph of VPCs and peerings, coloured by state.
        ///
        /// Example: --dot | dot -Tsvg > peerd.svg
        #[arg(long, conflicts_with = "json")]
        dot: bool,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// What applying --config would change, changing nothing.
    ///
    /// Compares --config (which may be a staged file) with what the daemon has in force:
    /// namespaces, links, routes, map entries, programs, peering states. With FILEs,
    /// --delete or --etcd (cluster mode): what `peerd apply` would change fleet-wide.
    #[command(after_help = "\
Examples:
  peerd plan --config /etc/peerd/peerd.toml.new
  peerd plan --json | jq '.changes[] | select(.resource == \"peering\")'
  peerd plan --config host.toml vpcs/web.toml      (cluster mode)
  peerd plan --etcd http://10.0.0.1:2379 --delete old-vpc")]
    Plan {
        /// Print the plan as JSON: {"changes": [{"action", "resource", "name", "detail",
        /// "line"}]}; an invalid configuration as check --json does.
        ///
        /// Example: --json
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        socket: SocketArg,
        #[command(flatten)]
        fleet: FleetArgs,
    },
    /// Cluster mode: write [[vpc]] files to the fleet in etcd.
    ///
    /// Validates the files against the VPCs in etcd and writes them in one transaction
    /// (etcd from --config's [cluster], or --etcd).
    #[command(after_help = "\
Examples:
  peerd apply --config /etc/peerd/peerd.toml vpcs/web.toml vpcs/db.toml
  peerd apply --etcd http://10.0.0.1:2379 --delete old-vpc")]
    Apply {
        #[command(flatten)]
        fleet: FleetArgs,
    },
    /// Make the running daemon re-read its configuration (same as SIGHUP).
    ///
    /// Exit 1 when the new configuration is rejected (the last good one stays in force).
    #[command(after_help = "\
Examples:
  peerd reload
  peerd reload --socket /run/peerd/peerd.sock")]
    Reload {
        #[command(flatten)]
        socket: SocketArg,
    },
    /// What the datapath does with a packet from VPC --from, and why.
    ///
    /// Prints the route table that applies, the matching route and its peering (and state),
    /// and the verdict: delivered into which VPC, or dropped with which reason. Ask both
    /// directions when a reply does not come back.
    #[command(after_help = "\
Examples:
  peerd explain --from web --src 10.10.0.5 --dst 10.20.0.7
  peerd explain --from db --src 10.20.0.7 --dst 10.10.0.5     (the reply direction)
  peerd explain --from web --src 2001:db8:10::5 --dst 2001:db8:20::7 --json")]
    Explain {
        /// The VPC the packet leaves (it arrives on that VPC's host-side link).
        ///
        /// Example: --from web
        #[arg(long, value_name = "VPC")]
        from: String,
        /// The packet's source address.
        ///
        /// Example: --src 10.10.0.5
        #[arg(long, value_name = "ADDR")]
        src: std::net::IpAddr,
        /// The packet's destination address.
        ///
        /// Example: --dst 10.20.0.7
        #[arg(long, value_name = "ADDR")]
        dst: std::net::IpAddr,
        /// Print the explanation as JSON.
        ///
        /// Example: --json
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Attach a workload to a VPC: a container's network namespace (--netns, gets a veth
    /// --ifname) or a VM's tap (--tap, moved into the VPC's namespace), with its addresses.
    ///
    /// Running it again with other addresses updates them; the same request twice changes
    /// nothing. Addresses outside the VPC's CIDRs are refused. Kept across daemon restarts;
    /// removed with the VPC.
    #[command(after_help = "\
Examples:
  peerd attach --vpc web --netns c1 --address 10.1.0.5/24
  peerd attach --vpc web --netns /proc/4242/ns/net --ifname eth1 --address 10.1.0.6/24
  peerd attach --vpc web --tap vm7-tap0 --address 10.1.0.7/24 --address fd00:1::7/64")]
    Attach(crate::attach::AttachArgs),
    /// Detach a workload from a VPC: its veth goes, a tap goes back to the host namespace.
    #[command(after_help = "\
Examples:
  peerd detach --vpc web --netns c1
  peerd detach --vpc web --tap vm7-tap0")]
    Detach(crate::attach::AttachArgs),
    /// Remove everything peerd created: namespaces, links, pins, state.
    ///
    /// Refuses while the daemon runs (stop it first). Needs a readable --config to know the
    /// prefix, pin and state directories.
    #[command(after_help = "\
Examples:
  systemctl stop peerd && peerd teardown --config /etc/peerd/peerd.toml")]
    Teardown {
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Print a shell completion script (bash, zsh or fish) to stdout.
    ///
    /// The package installs all three; this is for a source install or a user's own shell.
    #[command(after_help = crate::gen::COMPLETIONS_HELP)]
    Completions {
        /// The shell to write the script for.
        ///
        /// Example: bash
        shell: crate::gen::Shell,
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
#[derive(clap::Args, Debug, Clone, Default)]
pub struct FleetArgs {
    /// Files of [[vpc]] tables (cluster mode).
    ///
    /// Example: vpcs/web.toml vpcs/db.toml
    #[arg(value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Remove this VPC from the fleet (its peers' peerings become disconnected). Repeatable.
    ///
    /// Example: --delete old-vpc
    #[arg(long, value_name = "VPC")]
    pub delete: Vec<String>,
    /// etcd endpoint(s), comma-separated, instead of the [cluster] of --config.
    ///
    /// Example: --etcd http://10.0.0.1:2379,http://10.0.0.2:2379
    #[arg(long, value_name = "URL", value_delimiter = ',')]
    pub etcd: Vec<String>,
    /// Key prefix in etcd (default: [cluster] key_prefix, or "/peerd/" with --etcd).
    ///
    /// Example: --key-prefix /peerd/
    #[arg(long, value_name = "PREFIX")]
    pub key_prefix: Option<String>,
}

impl FleetArgs {
    /// No fleet argument: `plan` asks the local daemon.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty() && self.delete.is_empty() && self.etcd.is_empty()
    }
}

/// The exit-code table, as `--help` prints it.
pub fn exit_codes() -> &'static str {
    exit_codes_text!()
}

/// Logs to the journal when systemd connected stderr to it (`JOURNAL_STREAM` names stderr's
/// device and inode), with the event's fields as journal fields; else to stderr, as text or
/// JSON lines (`--log-format`). `PEERD_LOG` filters either way.
pub fn init_logging(format: LogFormat) {
    use std::io::IsTerminal as _;
    use tracing_subscriber::{layer::SubscriberExt as _, util::SubscriberInitExt as _};
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_env("PEERD_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
    };
    let journal = stderr_is_journal();
    if journal {
        if let Ok(layer) = tracing_journald::layer() {
            tracing_subscriber::registry()
                .with(filter())
                // Fields as they are named (`VPC=web`, not `F_VPC=web`): `journalctl VPC=web`.
                .with(
                    layer
                        .with_syslog_identifier("peerd".into())
                        .with_field_prefix(None),
                )
                .init();
            return;
        }
    }
    // The journal adds timestamps (when its socket refused us but stderr still goes there).
    let ansi = !journal && std::io::stderr().is_terminal();
    log_subscriber(format, filter(), journal, ansi, std::io::stderr).init();
}

/// The stderr subscriber: `format` on `writer`, without timestamps when the journal adds them.
pub fn log_subscriber<W>(
    format: LogFormat,
    filter: tracing_subscriber::EnvFilter,
    to_journal: bool,
    ansi: bool,
    writer: W,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi);
    match (format, to_journal) {
        (LogFormat::Json, _) => Box::new(b.json().finish()),
        (LogFormat::Text, true) => Box::new(b.without_time().finish()),
        (LogFormat::Text, false) => Box::new(b.finish()),
    }
}

/// `JOURNAL_STREAM=DEV:INODE` and stderr is that stream (not redirected since).
fn stderr_is_journal() -> bool {
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    nix::sys::stat::fstat(std::io::stderr())
        .is_ok_and(|st| journal_stream_is(&v.to_string_lossy(), st.st_dev, st.st_ino))
}

/// `JOURNAL_STREAM`'s value (`DEV:INODE`, sd_journal_stream_fd(3)) names this device and inode.
pub fn journal_stream_is(value: &str, dev: u64, ino: u64) -> bool {
    value.split_once(':').is_some_and(|(d, i)| {
        d.parse::<u64>().ok() == Some(dev) && i.parse::<u64>().ok() == Some(ino)
    })
}

/// One configuration problem in `check --json` / `plan --json`.
#[derive(Serialize, Debug, PartialEq, Eq)]
pub struct JsonDiagnostic {
    pub file: Option<PathBuf>,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

impl From<&Diagnostic> for JsonDiagnostic {
    fn from(d: &Diagnostic) -> Self {
        Self {
            file: d.location.as_ref().map(|l| l.file.clone()),
            line: d.location.as_ref().map(|l| l.line),
            column: d.location.as_ref().map(|l| l.column),
            message: d.message.clone(),
        }
    }
}

/// `check --json` (and `plan --json` of an invalid configuration) when it fails.
pub fn invalid_json(file: &Path, e: &ConfigError) -> serde_json::Value {
    let errors: Vec<JsonDiagnostic> = e.errors.iter().map(JsonDiagnostic::from).collect();
    serde_json::json!({"ok": false, "file": file, "errors": errors})
}

/// One line of a plan, classified for `plan --json`.
#[derive(Serialize, Debug, PartialEq, Eq)]
pub struct PlanChange {
    /// create (+), update (~), delete (-), blocked (!).
    pub action: &'static str,
    /// What the line names, lower case: vpc, peering, route, gateway neighbour, vxlan device,
    /// datapath, ...
    pub resource: String,
    /// The resource's name (VPC, peering id, prefix, address), when the line gives one.
    pub name: Option<String>,
    pub detail: String,
    /// The line as `peerd plan` prints it.
    pub line: String,
}

/// Resource kinds of plan lines that take two words.
const TWO_WORD_KINDS: [&str; 2] = ["VXLAN device", "gateway neighbour"];

/// Classifies a plan line: `+ VPC a: create namespace vpc-a`, `~ peering pcx-1: pending ->
/// active`, `+ route 10.2.0.0/16 via gateway in vpc-a`, `+ create VXLAN device peerd-vx (...)`,
/// `datapath: 3 map entries ...` (no sign: an update).
pub fn plan_change(line: &str) -> PlanChange {
    let (action, rest) = match line.split_once(' ') {
        Some(("+", r)) => ("create", r),
        Some(("-", r)) => ("delete", r),
        Some(("~", r)) => ("update", r),
        Some(("!", r)) => ("blocked", r),
        _ => ("update", line),
    };
    // The verb some lines repeat after the sign ("+ create VXLAN device ...").
    let subject = ["create ", "recreate "]
        .iter()
        .find_map(|v| rest.strip_prefix(v))
        .unwrap_or(rest);
    let (head, detail) = match subject.split_once(": ") {
        Some((head, detail)) => (head, detail),
        None => (subject, rest),
    };
    let (kind, after) = TWO_WORD_KINDS
        .iter()
        .find_map(|k| Some((*k, head.strip_prefix(k)?.strip_prefix(' ')?)))
        .or_else(|| head.split_once(' '))
        .unwrap_or((head, ""));
    let name = after.split_whitespace().next().map(str::to_owned);
    // Cluster plans have no sign: "VPC web: added (VNI 7) from ...", "peering p: removed ...".
    let action = match (action, detail.split([' ', ',']).next()) {
        ("update", Some("added" | "new")) if rest == line => "create",
        ("update", Some("removed")) if rest == line => "delete",
        _ => action,
    };
    PlanChange {
        action,
        resource: kind.to_lowercase(),
        name,
        detail: detail.to_owned(),
        line: line.to_owned(),
    }
}
/// `plan --json` of a valid configuration.
pub fn plan_json(lines: &[String]) -> serde_json::Value {
    let changes: Vec<PlanChange> = lines.iter().map(|l| plan_change(l)).collect();
    serde_json::json!({"ok": true, "changes": changes})
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn the_command_line_is_consistent_and_every_argument_has_help() {
        let cmd = Cli::command();
        cmd.clone().debug_assert();
        let mut missing = Vec::new();
        for sub in cmd.get_subcommands() {
            if sub.get_about().is_none() || sub.get_after_help().is_none() {
                missing.push(format!("{} (about or example)", sub.get_name()));
            }
            for a in sub.get_arguments() {
                let long = a.get_long_help().map(|h| h.to_string()).unwrap_or_default();
                if a.get_id() != "help" && !long.contains("Example") {
                    missing.push(format!("{} {}", sub.get_name(), a.get_id()));
                }
            }
        }
        assert!(missing.is_empty(), "without help or example: {missing:?}");
        let help = cmd.clone().render_long_help().to_string();
        assert!(help.contains(exit_codes()), "{help}");
    }

    /// A writer into a shared buffer, for a subscriber under test.
    #[derive(Clone, Default)]
    struct Buffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// What `format` writes for one event (debug level, filtered at info or debug).
    fn one_event(format: LogFormat, filter: &str) -> String {
        let buf = Buffer::default();
        let w = buf.clone();
        let sub = log_subscriber(
            format,
            tracing_subscriber::EnvFilter::new(filter),
            false,
            false,
            move || w.clone(),
        );
        tracing::subscriber::with_default(sub, || {
            tracing::warn!(vpc = "web", error = "link taken", "VPC not ready");
            tracing::debug!("hidden at info");
        });
        let out = buf.0.lock().unwrap().clone();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn log_format_json_writes_one_object_per_event_with_its_fields() {
        let out = one_event(LogFormat::Json, "info");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 1, "{out}");
        let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(v["level"], "WARN", "{v}");
        assert_eq!(v["fields"]["message"], "VPC not ready", "{v}");
        assert_eq!(v["fields"]["vpc"], "web", "{v}");
        assert_eq!(v["fields"]["error"], "link taken", "{v}");
        assert!(v["timestamp"].is_string(), "{v}");
        assert_eq!(one_event(LogFormat::Json, "debug").lines().count(), 2);
        let text = one_event(LogFormat::Text, "info");
        assert!(
            text.contains("VPC not ready vpc=\"web\" error=\"link taken\""),
            "{text}"
        );
        assert!(serde_json::from_str::<serde_json::Value>(text.trim()).is_err());
    }

    #[test]
    fn journal_stream_names_a_device_and_inode() {
        assert!(journal_stream_is("8:1234", 8, 1234));
        assert!(!journal_stream_is("8:1234", 8, 1235));
        assert!(!journal_stream_is("9:1234", 8, 1234));
        assert!(!journal_stream_is("garbage", 8, 1234));
        assert!(!journal_stream_is("", 0, 0));
    }

    #[test]
    fn plan_lines_are_classified_per_resource() {
        let cases = [
            (
                "+ VPC a: create namespace vpc-a",
                "create",
                "vpc",
                Some("a"),
                "create namespace vpc-a",
            ),
            (
                "~ peering pcx-ab: pending-acceptance -> active",
                "update",
                "peering",
                Some("pcx-ab"),
                "pending-acceptance -> active",
            ),
            (
                "+ peering pcx-ab (a <-> b): active",
                "create",
                "peering",
                Some("pcx-ab"),
                "active",
            ),
            (
                "- peering pcx-ab (a <-> b)",
                "delete",
                "peering",
                Some("pcx-ab"),
                "peering pcx-ab (a <-> b)",
            ),
            (
                "+ route 10.2.0.0/16 via gateway in vpc-a",
                "create",
                "route",
                Some("10.2.0.0/16"),
                "route 10.2.0.0/16 via gateway in vpc-a",
            ),
            (
                "+ gateway neighbour 169.254.1.1 in vpc-a",
                "create",
                "gateway neighbour",
                Some("169.254.1.1"),
                "gateway neighbour 169.254.1.1 in vpc-a",
            ),
            (
                "+ create VXLAN device peerd-vx (external, UDP port 4789)",
                "create",
                "vxlan device",
                Some("peerd-vx"),
                "create VXLAN device peerd-vx (external, UDP port 4789)",
            ),
            (
                "~ VXLAN device peerd-vx: mtu 1500 -> 1450",
                "update",
                "vxlan device",
                Some("peerd-vx"),
                "mtu 1500 -> 1450",
            ),
            (
                "! VPC a: IPv6 disabled inside",
                "blocked",
                "vpc",
                Some("a"),
                "IPv6 disabled inside",
            ),
            (
                "datapath: 3 map entries to write, 0 to remove",
                "update",
                "datapath",
                None,
                "3 map entries to write, 0 to remove",
            ),
            (
                "VPC web: added (VNI 7) from vpcs/web.toml",
                "create",
                "vpc",
                Some("web"),
                "added (VNI 7) from vpcs/web.toml",
            ),
            (
                "peering p (a <-> b): new, active",
                "create",
                "peering",
                Some("p"),
                "new, active",
            ),
            (
                "peering p: removed (no VPC declares it any more)",
                "delete",
                "peering",
                Some("p"),
                "removed (no VPC declares it any more)",
            ),
        ];
        for (line, action, resource, name, detail) in cases {
            let c = plan_change(line);
            assert_eq!(
                (c.action, &*c.resource, c.name.as_deref(), &*c.detail),
                (action, resource, name, detail),
                "{line}"
            );
        }
        let v = plan_json(&["- route 10.9.0.0/16 in vpc-a".into()]);
        assert_eq!(v["changes"][0]["line"], "- route 10.9.0.0/16 in vpc-a");
        assert_eq!(v["changes"][0]["resource"], "route");
    }
}
