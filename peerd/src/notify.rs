//! systemd's notify protocol (sd_notify(3)), for `Type=notify-reload` (contrib/peerd.service):
//! `READY=1` once the first reconcile is done, `RELOADING=1` with `MONOTONIC_USEC=` when a
//! reload starts and `READY=1` when it ends, a `STATUS=` line after each reconcile,
//! `WATCHDOG=1` from the owner task's loop and `STOPPING=1` on the way out.
//!
//! Without `NOTIFY_SOCKET` (not under systemd) every call does nothing. A failed send is not an
//! error of peerd's: it is logged at debug level and otherwise ignored.
use std::{sync::Mutex, time::Duration};

use sd_notify::NotifyState;

use crate::{config::PeeringState, status::Snapshot};

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::debug!(error = %e, "sd_notify");
    }
}

/// Startup or a reload is complete.
pub fn ready() {
    send(&[NotifyState::Ready]);
}

/// A reload starts (systemd ≥ 253 wants the monotonic time with it, to match it to the
/// `systemctl reload` that sent SIGHUP).
pub fn reloading() {
    send(&[
        NotifyState::Reloading,
        NotifyState::monotonic_usec_now().unwrap_or(NotifyState::MonotonicUsec(0)),
    ]);
}

/// The daemon is stopping (the datapath stays).
pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

/// Keep-alive for `WatchdogSec=`.
pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

/// Half of systemd's `WatchdogSec`, when the service has one: `WATCHDOG_USEC` is set and
/// `WATCHDOG_PID`, when set, is this process (as sd_watchdog_enabled(3) decides).
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok() != Some(std::process::id()) {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// Sends `STATUS=` lines, each only when it differs from the last one sent (a reconcile every
/// resync interval need not repeat an unchanged line).
#[derive(Debug, Default)]
pub struct StatusLine {
    last: Mutex<String>,
}

impl StatusLine {
    pub fn send(&self, snap: &Snapshot, reload_error: Option<&str>) {
        let line = status_line(snap, reload_error);
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if *last != line {
            send(&[NotifyState::Status(&line)]);
            *last = line;
        }
    }
}

/// `N VPCs ready, M peerings active, last reload HH:MM:SS UTC ok|failed: FIRST LINE`, as
/// `systemctl status peerd` shows it. The start counts as the first load.
pub fn status_line(snap: &Snapshot, reload_error: Option<&str>) -> String {
    let ready = snap.vpcs.iter().filter(|v| v.ready).count();
    let active = snap
        .peerings
        .iter()
        .filter(|p| p.state == PeeringState::Active)
        .count();
    let t = snap.last_reload_unix % 86_400;
    let outcome = match reload_error {
        None => "ok".to_owned(),
        Some(e) => format!("failed: {}", e.lines().next().unwrap_or("")),
    };
    format!(
        "{ready} of {} VPCs ready, {active} of {} peerings active, last reload {:02}:{:02}:{:02} UTC {outcome}",
        snap.vpcs.len(),
        snap.peerings.len(),
        t / 3600,
        t % 3600 / 60,
        t % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::tests::{peering, vpc};

    #[test]
    fn the_status_line_counts_ready_vpcs_and_active_peerings_and_says_how_the_reload_went() {
        let snap = Snapshot {
            vpcs: vec![vpc("a", 1, true), vpc("b", 2, false), vpc("c", 3, true)],
            peerings: vec![
                peering("p1", 1, PeeringState::Active),
                peering("p2", 2, PeeringState::PendingAcceptance),
            ],
            // 2026-12-05 02:30:07 UTC
            last_reload_unix: 1_796_437_807,
            ..Snapshot::default()
        };
        assert_eq!(
            status_line(&snap, None),
            "2 of 3 VPCs ready, 1 of 2 peerings active, last reload 02:30:07 UTC ok"
        );
        assert_eq!(
            status_line(&snap, Some("peerd.toml:3:9: bad CIDR\nmore")),
            "2 of 3 VPCs ready, 1 of 2 peerings active, last reload 02:30:07 UTC failed: peerd.toml:3:9: bad CIDR"
        );
    }
}
