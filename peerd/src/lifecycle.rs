//! Peering lifecycle with memory (SPEC §4): the states decidable from the configuration alone
//! (`config::evaluate_peerings`), plus what needs history: a peering that was active and lost
//! an end is `disconnected`; one pending longer than `pending_expiry` is `expired` and stays so.
//! Pure: the clock is an argument, and the records are returned, not changed in place.
use std::{collections::BTreeMap, time::SystemTime};

use crate::{
    config::{self, Config, Peering, PeeringState},
    state::{self, PeeringRecord},
};

/// The peerings' states at `now` (Unix seconds) and their updated records. `records` holds a
/// record (with `first_seen`) for every id the configuration declares.
pub fn evaluate(
    cfg: &Config,
    records: &BTreeMap<String, PeeringRecord>,
    now: u64,
) -> (Vec<Peering>, BTreeMap<String, PeeringRecord>) {
    let first_seen = |id: &str| records.get(id).map(|r| state::from_unix(r.first_seen));
    evaluate_ordered(cfg, records, &first_seen, now)
}

/// [`evaluate`], with "seen later" (which of two peerings of one pair fails, which exceeds a
/// quota) decided by `seen` instead of the records' `first_seen`: cluster mode orders by etcd's
/// creation revision of the record keys, so every host decides the same.
pub fn evaluate_ordered(
    cfg: &Config,
    records: &BTreeMap<String, PeeringRecord>,
    seen: &dyn Fn(&str) -> Option<SystemTime>,
    now: u64,
) -> (Vec<Peering>, BTreeMap<String, PeeringRecord>) {
    let mut peerings = config::evaluate_peerings(cfg, seen);
    let mut out = records.clone();
    for p in peerings.iter_mut() {
        let rec = out.entry(p.id.clone()).or_insert_with(|| PeeringRecord {
            first_seen: now,
            ..Default::default()
        });
        let mut prev = rec.state;
        // A request whose time ran out while nobody evaluated it (a daemon down, or in
        // cluster mode records that only `peerd apply` writes) is expired, not accepted late.
        if prev == Some(PeeringState::PendingAcceptance)
            && now.saturating_sub(rec.first_seen) >= cfg.daemon.pending_expiry.as_secs()
        {
            prev = Some(PeeringState::Expired);
            rec.ended_at
                .get_or_insert(rec.first_seen + cfg.daemon.pending_expiry.as_secs());
        }
        // Deleting a VPC removes its end of every peering: an active one is disconnected
        // for the peer that still declares it, not failed for naming an unknown VPC.
        if p.state == PeeringState::Failed
            && cfg.vpc(&p.vpcs[1]).is_none()
            && matches!(
                prev,
                Some(PeeringState::Active | PeeringState::Disconnected)
            )
        {
            p.state = PeeringState::Disconnected;
            p.reason = Some(format!("peer VPC \"{}\" was deleted", p.vpcs[1]));
            if prev == Some(PeeringState::Active) {
                rec.ended_at = Some(now);
            }
        }
        match p.state {
            // An expired request stays expired, even if the other end accepts it now: the
            // requester asks again with a new id (as in AWS).
            PeeringState::PendingAcceptance | PeeringState::Active
                if prev == Some(PeeringState::Expired) =>
            {
                p.state = PeeringState::Expired;
                p.reason = Some("nobody accepted the request in time".into());
            }
            PeeringState::PendingAcceptance
                if matches!(
                    prev,
                    Some(PeeringState::Active | PeeringState::Disconnected)
                ) =>
            {
                p.state = PeeringState::Disconnected;
                p.reason = Some("one end removed its declaration".into());
                if prev == Some(PeeringState::Active) {
                    rec.ended_at = Some(now);
                }
            }
            PeeringState::PendingAcceptance => {
                let age = now.saturating_sub(rec.first_seen);
                if age >= cfg.daemon.pending_expiry.as_secs() {
                    p.state = PeeringState::Expired;
                    p.reason = Some("nobody accepted the request in time".into());
                    rec.ended_at = Some(now);
                }
            }
            PeeringState::Active if prev != Some(PeeringState::Active) => {
                rec.activated_at = Some(now);
                rec.ended_at = None;
            }
            PeeringState::Active if rec.activated_at.is_none() => {
                rec.activated_at = Some(now);
            }
            _ => {}
        }
        rec.state = Some(p.state);
    }
    (peerings, out)
}

/// Seconds until the earliest pending peering expires, if any.
pub fn next_expiry(
    cfg: &Config,
    peerings: &[Peering],
    records: &BTreeMap<String, PeeringRecord>,
    now: u64,
) -> Option<u64> {
    let expiry = cfg.daemon.pending_expiry.as_secs();
    peerings
        .iter()
        .filter(|p| p.state == PeeringState::PendingAcceptance)
        .filter_map(|p| records.get(&p.id))
        .map(|r| (r.first_seen + expiry).saturating_sub(now))
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn cfg(a_ends: &str, b_ends: &str) -> Config {
        let text = format!(
            "[daemon]\npending_expiry = \"100s\"\n[[vpc]]\nname = \"a\"\ncidrs = [\"10.0.0.0/16\"]\n{a_ends}\n[[vpc]]\nname = \"b\"\ncidrs = [\"10.1.0.0/16\"]\n{b_ends}\n"
        );
        Config::from_str(&text, Path::new("t.toml")).unwrap()
    }
    const A: &str = "[[vpc.peering]]\nid = \"pcx-ab\"\npeer = \"b\"\n";
    const B: &str = "[[vpc.peering]]\nid = \"pcx-ab\"\npeer = \"a\"\n";

    #[test]
    fn pending_active_disconnected_expired_with_timestamps() {
        let (p, r) = evaluate(&cfg(A, ""), &BTreeMap::new(), 1000);
        assert_eq!(p[0].state, PeeringState::PendingAcceptance);
        assert_eq!(r["pcx-ab"].first_seen, 1000);
        let (p, r) = evaluate(&cfg(A, B), &r, 1010);
        assert_eq!(p[0].state, PeeringState::Active);
        assert_eq!(r["pcx-ab"].activated_at, Some(1010));
        let (p, r) = evaluate(&cfg(A, ""), &r, 1020);
        assert_eq!(p[0].state, PeeringState::Disconnected);
        assert_eq!(r["pcx-ab"].ended_at, Some(1020));
        // Pure: the same inputs give the same outputs.
        assert_eq!(evaluate(&cfg(A, ""), &r, 1020).1, r);

        let (_, r) = evaluate(&cfg(A, ""), &BTreeMap::new(), 0);
        let (p, r) = evaluate(&cfg(A, ""), &r, 100);
        assert_eq!(p[0].state, PeeringState::Expired);
        let (p, _) = evaluate(&cfg(A, B), &r, 200);
        assert_eq!(p[0].state, PeeringState::Expired, "expired stays expired");
    }

    #[test]
    fn a_request_accepted_after_its_time_ran_out_is_expired() {
        let (_, r) = evaluate(&cfg(A, ""), &BTreeMap::new(), 0);
        assert_eq!(r["pcx-ab"].state, Some(PeeringState::PendingAcceptance));
        // Nobody evaluated at t = 100; the accept comes at t = 150.
        let (p, r) = evaluate(&cfg(A, B), &r, 150);
        assert_eq!(p[0].state, PeeringState::Expired);
        assert_eq!(r["pcx-ab"].ended_at, Some(100));
        assert_eq!(r["pcx-ab"].activated_at, None);
    }

    #[test]
    fn deleting_a_peered_vpc_disconnects_the_peering() {
        let (_, r) = evaluate(&cfg(A, B), &BTreeMap::new(), 10);
        let only_a = Config::from_str(
            &format!("[[vpc]]\nname = \"a\"\ncidrs = [\"10.0.0.0/16\"]\n{A}"),
            Path::new("t.toml"),
        )
        .unwrap();
        let (p, r) = evaluate(&only_a, &r, 20);
        assert_eq!(p[0].state, PeeringState::Disconnected, "{p:?}");
        assert!(p[0]
            .reason
            .as_deref()
            .unwrap()
            .contains("\"b\" was deleted"));
        assert_eq!(r["pcx-ab"].ended_at, Some(20));
        let (p, r2) = evaluate(&only_a, &r, 30);
        assert_eq!(p[0].state, PeeringState::Disconnected);
        assert_eq!(r2, r, "stays disconnected, same record");
        // A peering that was never active fails as before.
        let (p, _) = evaluate(&only_a, &BTreeMap::new(), 40);
        assert_eq!(p[0].state, PeeringState::Failed);
    }
}
