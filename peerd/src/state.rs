//! What peerd remembers between runs (in `state_dir/state.json`): the slots it gave VPCs,
//! route tables and peerings (so a restarted daemon keeps the pinned maps' numbering and
//! counters), which VPCs it created, and each peering's lifecycle timestamps.
//!
//! Written atomically (temp file, fsync, rename). A missing file is a first start; a corrupt
//! one is reported and rebuilt, never a crash.
use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::{self, Write as _},
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use peerd_common::{MAX_PEERINGS, MAX_TABLES, MAX_VPCS};
use serde::{Deserialize, Serialize};

use crate::config::PeeringState;

pub const FILE: &str = "state.json";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("no free {0} slot (limit reached)")]
    Full(&'static str),
}

/// Seconds since the Unix epoch.
pub fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

pub fn from_unix(s: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(s)
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeeringRecord {
    pub slot: u32,
    /// When any end of this id was first seen in a configuration.
    pub first_seen: u64,
    /// When it last became active.
    pub activated_at: Option<u64>,
    /// When it left `active` (disconnected) or expired.
    pub ended_at: Option<u64>,
    /// The state as last decided.
    pub state: Option<PeeringState>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// VPC name -> slot. Also the list of VPCs peerd created (and may delete).
    pub vpcs: BTreeMap<String, u32>,
    /// "vpc/table" -> table id.
    pub tables: BTreeMap<String, u32>,
    /// Peering id -> record.
    pub peerings: BTreeMap<String, PeeringRecord>,
}

fn lowest_free(used: impl Iterator<Item = u32>, first: u32, limit: u32) -> Option<u32> {
    let used: BTreeSet<u32> = used.collect();
    (first..limit).find(|s| !used.contains(s))
}

impl State {
    /// Loads the state; a corrupt file gives an empty state and a warning to report.
    pub fn load(dir: &Path) -> (State, Option<String>) {
        let path = dir.join(FILE);
        match fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(s) => (s, None),
                Err(e) => (
                    State::default(),
                    Some(format!(
                        "state file {} is corrupt ({e}); rebuilding it",
                        path.display()
                    )),
                ),
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => (State::default(), None),
            Err(e) => (
                State::default(),
                Some(format!(
                    "state file {} unreadable ({e}); rebuilding it",
                    path.display()
                )),
            ),
        }
    }

    /// Writes the state atomically: temp file, fsync, rename, fsync of the directory.
    pub fn save(&self, dir: &Path) -> Result<(), Error> {
        let io = |op, path: &Path| {
            let path = path.to_owned();
            move |source| Error::Io { op, path, source }
        };
        fs::create_dir_all(dir).map_err(io("creating", dir))?;
        let path = dir.join(FILE);
        let tmp = dir.join(format!(".{FILE}.tmp"));
        let json = serde_json::to_vec_pretty(self).expect("state serializes");
        let mut f = fs::File::create(&tmp).map_err(io("creating", &tmp))?;
        f.write_all(&json).map_err(io("writing", &tmp))?;
        f.sync_all().map_err(io("syncing", &tmp))?;
        fs::rename(&tmp, &path).map_err(io("renaming", &path))?;
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    pub fn vpc_slot(&mut self, name: &str) -> Result<u32, Error> {
        if let Some(s) = self.vpcs.get(name) {
            return Ok(*s);
        }
        let s = lowest_free(self.vpcs.values().copied(), 1, MAX_VPCS).ok_or(Error::Full("VPC"))?;
        self.vpcs.insert(name.to_owned(), s);
        Ok(s)
    }

    pub fn table_id(&mut self, vpc: &str, table: &str) -> Result<u32, Error> {
        let key = format!("{vpc}/{table}");
        if let Some(s) = self.tables.get(&key) {
            return Ok(*s);
        }
        let s = lowest_free(self.tables.values().copied(), 1, MAX_TABLES)
            .ok_or(Error::Full("route table"))?;
        self.tables.insert(key, s);
        Ok(s)
    }

    /// The record of a peering id, created (with a slot and `first_seen = now`) if new.
    pub fn peering(&mut self, id: &str, now: SystemTime) -> Result<&mut PeeringRecord, Error> {
        if !self.peerings.contains_key(id) {
            let slot = lowest_free(self.peerings.values().map(|r| r.slot), 1, MAX_PEERINGS)
                .ok_or(Error::Full("peering"))?;
            self.peerings.insert(
                id.to_owned(),
                PeeringRecord {
                    slot,
                    first_seen: unix(now),
                    ..Default::default()
                },
            );
        }
        Ok(self.peerings.get_mut(id).expect("inserted above"))
    }

    /// Forgets VPCs, tables and peerings that are no longer configured.
    pub fn retain(&mut self, vpcs: &BTreeSet<String>, peerings: &BTreeSet<String>) {
        self.vpcs.retain(|k, _| vpcs.contains(k));
        self.tables
            .retain(|k, _| k.split_once('/').is_some_and(|(v, _)| vpcs.contains(v)));
        self.peerings.retain(|k, _| peerings.contains(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_stable_and_reused_lowest_first() {
        let mut s = State::default();
        assert_eq!(s.vpc_slot("a").unwrap(), 1);
        assert_eq!(s.vpc_slot("b").unwrap(), 2);
        assert_eq!(s.vpc_slot("a").unwrap(), 1);
        s.retain(&["b".to_owned()].into(), &BTreeSet::new());
        assert_eq!(s.vpc_slot("c").unwrap(), 1);
        assert_eq!(s.vpc_slot("b").unwrap(), 2);
    }

    #[test]
    fn save_load_roundtrip_and_corrupt_file_rebuilds() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = State::default();
        s.vpc_slot("a").unwrap();
        s.table_id("a", "main").unwrap();
        s.peering("pcx-1", SystemTime::now()).unwrap().state = Some(PeeringState::Active);
        s.save(dir.path()).unwrap();
        let (back, warn) = State::load(dir.path());
        assert_eq!(back, s);
        assert!(warn.is_none());

        fs::write(dir.path().join(FILE), b"{ not json").unwrap();
        let (back, warn) = State::load(dir.path());
        assert_eq!(back, State::default());
        assert!(warn.unwrap().contains("corrupt"));

        let (back, warn) = State::load(&dir.path().join("missing"));
        assert_eq!(back, State::default());
        assert!(warn.is_none());
    }
}
