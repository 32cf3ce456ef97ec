//! What peerd remembers between runs (in `state_dir/state.json`): the slots it gave VPCs,
//! route tables and peerings (so a restarted daemon keeps the pinned maps' numbering and
//! counters), the host link name of each VPC, which namespaces it created (and may delete),
//! and each peering's lifecycle timestamps.
//!
//! Written atomically (temp file, fsync, rename). A missing file is a first start; a corrupt
//! or inconsistent one (two VPCs on one slot, a slot out of range, ...) is reported and rebuilt,
//! never trusted.
//!
//! Slot assignment is pure ([`State::assign`]): it returns the next state and never reuses, in
//! the same assignment, a slot or link name it frees. Freed slots stay *retired* until a map
//! sync has removed every entry that pointed at them ([`State::release_retired`]), so a deleted
//! VPC's slot never briefly points at a new VPC.
use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::{self, Write as _},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use peerd_common::{MAX_PEERINGS, MAX_TABLES, MAX_VPCS};
use serde::{Deserialize, Serialize};

use crate::config::PeeringState;

pub const FILE: &str = "state.json";
const LOCK: &str = "lock";

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
    #[error("another peerd holds {0} (two daemons cannot share a state_dir)")]
    Locked(PathBuf),
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

/// Slots and names freed by an assignment, not reused until the datapath no longer refers to
/// them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retired {
    #[serde(default)]
    pub vpcs: BTreeSet<u32>,
    #[serde(default)]
    pub tables: BTreeSet<u32>,
    #[serde(default)]
    pub peerings: BTreeSet<u32>,
    #[serde(default)]
    pub links: BTreeSet<String>,
}

impl Retired {
    pub fn is_empty(&self) -> bool {
        self.vpcs.is_empty()
            && self.tables.is_empty()
            && self.peerings.is_empty()
            && self.links.is_empty()
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// VPC name -> slot.
    pub vpcs: BTreeMap<String, u32>,
    /// "vpc/table" -> table id.
    pub tables: BTreeMap<String, u32>,
    /// Peering id -> record (slot and lifecycle).
    pub peerings: BTreeMap<String, PeeringRecord>,
    /// VPC name -> its host-side link name (chosen once; a collision picks another).
    #[serde(default)]
    pub links: BTreeMap<String, String>,
    /// Namespaces peerd created: the only ones it ever deletes. `None` in a state written by
    /// an older peerd, which created every VPC namespace it recorded.
    #[serde(default)]
    pub created_netns: Option<BTreeSet<String>>,
    #[serde(default)]
    pub retired: Retired,
    /// VPCs that left the configuration and whose namespace or link is not removed yet.
    #[serde(default)]
    pub removing: BTreeMap<String, Removal>,
    /// Other hosts of the fleet (cluster mode) -> slot.
    #[serde(default)]
    pub hosts: BTreeMap<String, u32>,
    /// Attached workloads (`peerd attach`), by "VPC/link"; they go with their VPC.
    #[serde(default)]
    pub attachments: BTreeMap<String, crate::attach::Attachment>,
}

/// Host slots (cluster mode). Slot 0 is this host.
pub const MAX_HOSTS: u32 = 1024;

/// A VPC to remove from the host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removal {
    pub vpc: String,
    pub netns: String,
    pub host_if: String,
    /// peerd created the namespace: delete it; otherwise only peerd's pair goes.
    pub created: bool,
}

/// What an assignment must place.
pub struct Wanted<'a> {
    /// VPC name -> its namespace name (the link name is derived from it).
    pub vpcs: BTreeMap<&'a str, String>,
    /// (VPC, route table) pairs.
    pub tables: BTreeSet<(&'a str, &'a str)>,
    pub peerings: BTreeSet<&'a str>,
    /// Link names in the host namespace that belong to something else: never chosen.
    pub taken_links: &'a BTreeSet<String>,
    /// The namespace prefix (to name the namespace of a VPC being removed).
    pub netns_prefix: &'a str,
    /// VPCs with a namespace (and a link) on this host: every VPC on a single host; in
    /// cluster mode those `[cluster] vpcs` lists (the others only have slots, as destinations).
    pub placed: BTreeSet<&'a str>,
    /// Other hosts of the fleet (cluster mode): each gets a slot.
    pub hosts: BTreeSet<&'a str>,
}

/// "pd" + 8 hex digits of FNV-1a-32 of `seed`: stable and at most 15 characters.
pub fn link_name(seed: &str) -> String {
    let mut h: u32 = 0x811c9dc5;
    for b in seed.bytes() {
        h ^= b as u32;
        h = h.wrapping_mul(0x01000193);
    }
    format!("pd{h:08x}")
}

/// The lowest of `first..limit` that is not in `used`.
fn lowest_free(used: &BTreeSet<u32>, first: u32, limit: u32) -> Option<u32> {
    (first..limit).find(|s| !used.contains(s))
}

impl State {
    /// Loads the state. A missing file is an empty state; a corrupt or inconsistent one gives an
    /// empty state and a warning to report.
    pub fn load(dir: &Path) -> (State, Option<String>) {
        let path = dir.join(FILE);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return (State::default(), None),
            Err(e) => {
                return (
                    State::default(),
                    Some(format!(
                        "state file {} unreadable ({e}); rebuilding it",
                        path.display()
                    )),
                )
            }
        };
        match Self::parse(&bytes) {
            Ok(s) => (s, None),
            Err(why) => (
                State::default(),
                Some(format!(
                    "state file {} is {why}; rebuilding it",
                    path.display()
                )),
            ),
        }
    }

    /// Parses and checks a state file's bytes.
    pub fn parse(bytes: &[u8]) -> Result<State, String> {
        let s: State = serde_json::from_slice(bytes).map_err(|e| format!("corrupt ({e})"))?;
        s.check().map_err(|e| format!("inconsistent ({e})"))?;
        Ok(s)
    }

    /// Every slot unique and in range, link names unique and valid, nothing both retired and in
    /// use.
    pub fn check(&self) -> Result<(), String> {
        fn unique<'a>(
            what: &str,
            slots: impl Iterator<Item = (&'a String, u32)>,
            limit: u32,
            retired: &BTreeSet<u32>,
        ) -> Result<(), String> {
            let mut seen: BTreeMap<u32, &String> = BTreeMap::new();
            for (name, s) in slots {
                if s == 0 || s >= limit {
                    return Err(format!("{what} {name} has slot {s}, outside 1..{limit}"));
                }
                if let Some(other) = seen.insert(s, name) {
                    return Err(format!("{what}s {other} and {name} share slot {s}"));
                }
                if retired.contains(&s) {
                    return Err(format!("{what} {name} uses retired slot {s}"));
                }
            }
            Ok(())
        }
        unique(
            "VPC",
            self.vpcs.iter().map(|(k, v)| (k, *v)),
            MAX_VPCS,
            &self.retired.vpcs,
        )?;
        unique(
            "route table",
            self.tables.iter().map(|(k, v)| (k, *v)),
            MAX_TABLES,
            &self.retired.tables,
        )?;
        unique(
            "peering",
            self.peerings.iter().map(|(k, r)| (k, r.slot)),
            MAX_PEERINGS,
            &self.retired.peerings,
        )?;
        let mut names = BTreeSet::new();
        for (vpc, l) in &self.links {
            let valid = l.len() <= 15
                && l.starts_with("pd")
                && l.bytes().all(|b| b.is_ascii_alphanumeric());
            if !valid {
                return Err(format!("VPC {vpc} has an invalid link name {l:?}"));
            }
            if !names.insert(l) {
                return Err(format!("link name {l} is given to two VPCs"));
            }
        }
        if let Some(bad) = self.tables.keys().find(|k| !k.contains('/')) {
            return Err(format!("route table key {bad:?} is not \"vpc/table\""));
        }
        Ok(())
    }

    /// Writes the state atomically: temp file, fsync, rename, fsync of the directory.
    pub fn save(&self, dir: &Path) -> Result<(), Error> {
        let json = serde_json::to_vec_pretty(self).expect("state serializes");
        write_atomic(dir, FILE, &json)
    }

    /// The next state: every wanted VPC, table and peering has a slot and every VPC a link
    /// name; what is no longer wanted is forgotten and its slots retired. Pure: `self` is not
    /// changed. Peering records of new ids start with `first_seen = now`.
    pub fn assign(&self, want: &Wanted<'_>, now: u64) -> Result<State, Error> {
        let mut next = State {
            created_netns: self.created_netns.clone(),
            retired: self.retired.clone(),
            removing: self.removing.clone(),
            ..State::default()
        };
        // A VPC that comes back before its removal finished is kept, not removed.
        next.removing
            .retain(|v, _| !want.vpcs.contains_key(v.as_str()));
        // Keep what stays.
        for (name, slot) in &self.vpcs {
            if want.vpcs.contains_key(name.as_str()) {
                next.vpcs.insert(name.clone(), *slot);
            } else {
                next.retired.vpcs.insert(*slot);
            }
        }
        for (key, id) in &self.tables {
            let wanted = key
                .split_once('/')
                .is_some_and(|(v, t)| want.tables.contains(&(v, t)));
            if wanted {
                next.tables.insert(key.clone(), *id);
            } else {
                next.retired.tables.insert(*id);
            }
        }
        for (id, rec) in &self.peerings {
            if want.peerings.contains(id.as_str()) {
                next.peerings.insert(id.clone(), rec.clone());
            } else {
                next.retired.peerings.insert(rec.slot);
            }
        }
        for (vpc, l) in &self.links {
            if want.placed.contains(vpc.as_str()) && !want.taken_links.contains(l) {
                next.links.insert(vpc.clone(), l.clone());
            } else {
                next.retired.links.insert(l.clone());
            }
        }
        // VPCs no longer placed here lose their namespace and link (a state from an older peerd
        // has no link names: its VPCs are known by their slots).
        let had_presence = self
            .links
            .keys()
            .chain(self.vpcs.keys().filter(|v| !self.links.contains_key(*v)));
        for vpc in had_presence.filter(|v| !want.placed.contains(v.as_str())) {
            let netns = format!("{}{vpc}", want.netns_prefix);
            // A state from an older peerd has no record: it created every VPC it knew.
            let created = self
                .created_netns
                .as_ref()
                .is_none_or(|c| c.contains(&netns));
            let host_if = self
                .links
                .get(vpc)
                .cloned()
                .unwrap_or_else(|| link_name(&netns));
            next.removing.insert(
                vpc.clone(),
                Removal {
                    vpc: vpc.clone(),
                    netns,
                    host_if,
                    created,
                },
            );
        }
        next.attachments = self
            .attachments
            .iter()
            .filter(|(_, a)| want.placed.contains(a.vpc.as_str()))
            .map(|(k, a)| (k.clone(), a.clone()))
            .collect();
        for (name, slot) in &self.hosts {
            if want.hosts.contains(name.as_str()) {
                next.hosts.insert(name.clone(), *slot);
            }
        }
        let mut used: BTreeSet<u32> = next.hosts.values().copied().collect();
        for name in &want.hosts {
            if !next.hosts.contains_key(*name) {
                let s = lowest_free(&used, 1, MAX_HOSTS).ok_or(Error::Full("host"))?;
                used.insert(s);
                next.hosts.insert((*name).to_owned(), s);
            }
        }
        // Place what is new, never on a slot or name in use or retired.
        let mut used: BTreeSet<u32> = next.vpcs.values().copied().collect();
        used.extend(&next.retired.vpcs);
        for name in want.vpcs.keys() {
            if !next.vpcs.contains_key(*name) {
                let s = lowest_free(&used, 1, MAX_VPCS).ok_or(Error::Full("VPC"))?;
                used.insert(s);
                next.vpcs.insert((*name).to_owned(), s);
            }
        }
        let mut used: BTreeSet<u32> = next.tables.values().copied().collect();
        used.extend(&next.retired.tables);
        for (vpc, table) in &want.tables {
            let key = format!("{vpc}/{table}");
            if let std::collections::btree_map::Entry::Vacant(e) = next.tables.entry(key) {
                let s = lowest_free(&used, 1, MAX_TABLES).ok_or(Error::Full("route table"))?;
                used.insert(s);
                e.insert(s);
            }
        }
        let mut used: BTreeSet<u32> = next.peerings.values().map(|r| r.slot).collect();
        used.extend(&next.retired.peerings);
        for id in &want.peerings {
            if !next.peerings.contains_key(*id) {
                let s = lowest_free(&used, 1, MAX_PEERINGS).ok_or(Error::Full("peering"))?;
                used.insert(s);
                next.peerings.insert(
                    (*id).to_owned(),
                    PeeringRecord {
                        slot: s,
                        first_seen: now,
                        ..Default::default()
                    },
                );
            }
        }
        let mut names: BTreeSet<String> = next.links.values().cloned().collect();
        names.extend(next.retired.links.iter().cloned());
        names.extend(want.taken_links.iter().cloned());
        for (vpc, netns) in &want.vpcs {
            if next.links.contains_key(*vpc) || !want.placed.contains(vpc) {
                continue;
            }
            // The first candidate is the hash of the namespace name; a collision (with another
            // VPC's link, a retired one or a foreign link) moves on to salted candidates.
            let name = (0..)
                .map(|i| {
                    if i == 0 {
                        link_name(netns)
                    } else {
                        link_name(&format!("{netns}#{i}"))
                    }
                })
                .find(|n| !names.contains(n))
                .expect("an unbounded candidate sequence finds a free name");
            names.insert(name.clone());
            next.links.insert((*vpc).to_owned(), name);
        }
        Ok(next)
    }

    /// After a map sync that removed every entry of retired slots: they may be reused.
    pub fn release_retired(&mut self) {
        self.retired = Retired::default();
    }

    pub fn vpc_slot(&self, name: &str) -> Option<u32> {
        self.vpcs.get(name).copied()
    }

    pub fn table_id(&self, vpc: &str, table: &str) -> Option<u32> {
        self.tables.get(&format!("{vpc}/{table}")).copied()
    }

    pub fn peering_slot(&self, id: &str) -> Option<u32> {
        self.peerings.get(id).map(|r| r.slot)
    }
}

/// Writes `dir/name` atomically: temp file, fsync, rename, fsync of the directory.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), Error> {
    let io = |op, path: &Path| {
        let path = path.to_owned();
        move |source| Error::Io { op, path, source }
    };
    fs::create_dir_all(dir).map_err(io("creating", dir))?;
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = fs::File::create(&tmp).map_err(io("creating", &tmp))?;
    f.write_all(bytes).map_err(io("writing", &tmp))?;
    f.sync_all().map_err(io("syncing", &tmp))?;
    fs::rename(&tmp, &path).map_err(io("renaming", &path))?;
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// An exclusive lock on a state directory, held for the life of the daemon (and briefly by
/// `teardown`): two daemons on one state_dir would fight over every slot and link.
pub struct Lock {
    _file: fs::File,
}

impl Lock {
    /// Takes the lock without waiting; `Err(Locked)` when another process holds it.
    pub fn take(dir: &Path) -> Result<Lock, Error> {
        fs::create_dir_all(dir).map_err(|source| Error::Io {
            op: "creating",
            path: dir.into(),
            source,
        })?;
        let path = dir.join(LOCK);
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| Error::Io {
                op: "opening",
                path: path.clone(),
                source,
            })?;
        // SAFETY: flock on a valid descriptor we own.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            return Err(if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                Error::Locked(path)
            } else {
                Error::Io {
                    op: "locking",
                    path,
                    source: e,
                }
            });
        }
        Ok(Lock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wanted<'a>(
        vpcs: &[&'a str],
        peerings: &[&'a str],
        taken: &'a BTreeSet<String>,
    ) -> Wanted<'a> {
        Wanted {
            vpcs: vpcs.iter().map(|v| (*v, format!("vpc-{v}"))).collect(),
            tables: vpcs.iter().map(|v| (*v, "main")).collect(),
            peerings: peerings.iter().copied().collect(),
            taken_links: taken,
            netns_prefix: "vpc-",
            placed: vpcs.iter().copied().collect(),
            hosts: BTreeSet::new(),
        }
    }

    #[test]
    fn slots_are_stable_and_freed_ones_are_not_reused_until_released() {
        let none = BTreeSet::new();
        let s = State::default()
            .assign(&wanted(&["a", "b"], &["pcx-1"], &none), 10)
            .unwrap();
        assert_eq!((s.vpcs["a"], s.vpcs["b"]), (1, 2));
        assert_eq!(s.peerings["pcx-1"].first_seen, 10);
        // "a" goes and "c" comes in the same assignment: c must not get a's slot.
        let mut s2 = s
            .assign(&wanted(&["b", "c"], &["pcx-2"], &none), 20)
            .unwrap();
        assert_eq!(s2.vpcs["b"], 2);
        assert_eq!(s2.vpcs["c"], 3);
        assert_eq!(s2.peerings["pcx-2"].slot, 2, "pcx-1's slot is retired");
        assert!(s2.retired.vpcs.contains(&1));
        assert_ne!(s2.links["c"], s.links["a"]);
        s2.check().unwrap();
        // Once the datapath no longer refers to them, retired slots are free again.
        s2.release_retired();
        let s3 = s2
            .assign(&wanted(&["b", "c", "d"], &["pcx-2"], &none), 30)
            .unwrap();
        assert_eq!(s3.vpcs["d"], 1);
    }

    #[test]
    fn link_name_collisions_pick_another_name() {
        let none = BTreeSet::new();
        let s = State::default()
            .assign(&wanted(&["a"], &[], &none), 0)
            .unwrap();
        let a_link = s.links["a"].clone();
        assert_eq!(a_link, link_name("vpc-a"));
        // A foreign link already has the name a new VPC would get.
        let taken: BTreeSet<String> = [link_name("vpc-b")].into();
        let s = s.assign(&wanted(&["a", "b"], &[], &taken), 0).unwrap();
        assert_eq!(s.links["a"], a_link);
        assert_ne!(s.links["b"], link_name("vpc-b"));
        assert_eq!(s.links["b"], link_name("vpc-b#1"));
        // Two VPCs whose namespaces hash alike never share a link: simulate it by a state
        // where b's first candidate is a's name.
        let mut st = State::default();
        st.links.insert("a".into(), link_name("vpc-b"));
        st.vpcs.insert("a".into(), 1);
        let s = st.assign(&wanted(&["a", "b"], &[], &none), 0).unwrap();
        assert_eq!(s.links["a"], link_name("vpc-b"));
        assert_eq!(s.links["b"], link_name("vpc-b#1"));
    }

    #[test]
    fn inconsistent_or_corrupt_states_are_rejected() {
        let mut s = State::default();
        s.vpcs.insert("a".into(), 1);
        s.vpcs.insert("b".into(), 1);
        let bytes = serde_json::to_vec(&s).unwrap();
        assert!(State::parse(&bytes).unwrap_err().contains("share slot 1"));
        let mut s = State::default();
        s.vpcs.insert("a".into(), MAX_VPCS);
        assert!(State::parse(&serde_json::to_vec(&s).unwrap()).is_err());
        let mut s = State::default();
        s.links.insert("a".into(), "eth0; rm -rf".into());
        assert!(State::parse(&serde_json::to_vec(&s).unwrap()).is_err());
        assert!(State::parse(b"{ not json").unwrap_err().contains("corrupt"));
        // A state written by the previous version (no links, no created_netns) loads.
        let old = br#"{"vpcs":{"a":1},"tables":{"a/main":1},"peerings":{"pcx-1":{"slot":1,"first_seen":5,"activated_at":null,"ended_at":null,"state":"active"}}}"#;
        let s = State::parse(old).unwrap();
        assert_eq!(s.created_netns, None);
        assert_eq!(s.peerings["pcx-1"].first_seen, 5);
    }

    #[test]
    fn save_load_roundtrip_and_corrupt_file_rebuilds() {
        let dir = tempfile::tempdir().unwrap();
        let none = BTreeSet::new();
        let s = State::default()
            .assign(&wanted(&["a"], &["pcx-1"], &none), 1)
            .unwrap();
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

    #[test]
    fn a_second_lock_on_the_same_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let first = Lock::take(dir.path()).unwrap();
        // flock locks belong to the open file description: a second open is refused.
        assert!(matches!(Lock::take(dir.path()), Err(Error::Locked(_))));
        drop(first);
        Lock::take(dir.path()).unwrap();
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        /// No input makes the state loader panic; whatever it accepts is consistent.
        #[test]
        fn the_state_loader_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            if let Ok(s) = State::parse(&bytes) {
                proptest::prop_assert!(s.check().is_ok());
            }
        }

        #[test]
        fn json_shaped_states_never_panic(
            slots in proptest::collection::vec((0u32..5000, "[a-c]{1,2}"), 0..8),
            links in proptest::collection::vec(("[a-c]", "pd[0-9a-f]{0,10}"), 0..4),
        ) {
            let mut s = State::default();
            for (slot, name) in &slots {
                s.vpcs.insert(name.clone(), *slot);
                s.peerings.insert(format!("pcx-{name}"), PeeringRecord { slot: *slot, ..Default::default() });
            }
            for (v, l) in &links {
                s.links.insert(v.clone(), l.clone());
            }
            let bytes = serde_json::to_vec(&s).unwrap();
            if let Ok(back) = State::parse(&bytes) {
                let none = BTreeSet::new();
                let names: Vec<String> = back.vpcs.keys().cloned().collect();
                let refs: Vec<&str> = names.iter().map(String::as_str).collect();
                let next = back.assign(&wanted(&refs, &[], &none), 0);
                if let Ok(n) = next {
                    proptest::prop_assert!(n.check().is_ok());
                }
            }
        }
    }
}
