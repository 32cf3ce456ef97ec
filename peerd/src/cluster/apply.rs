//! `peerd apply` and cluster-mode `peerd plan` (SPEC §7): VPC declarations into etcd.
//!
//! One pure step ([`compute`]) decides everything from what was read (one revision of etcd)
//! and the files: validation with the configuration's own checks (the files plus every VPC in
//! etcd that they do not replace, each labelled with its key), the VPC keys to write, VNIs to
//! allocate, and the peering lifecycle records. `apply` writes that in one transaction guarded
//! by the serial key it read; `plan` prints it. A dry run is the same diff, never a second one.
use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
};

use etcd_client::{Compare, CompareOp, Txn, TxnOp};

use super::{
    store::Store,
    view::{label, revision_order, FleetView, RecordValue, MAX_VNI},
    Error, EtcdConfig, Keys,
};
use crate::config::{self, ConfigError, DaemonConfig, Diagnostic};

/// Why an apply (or a plan) did not happen. Nothing was written in any case.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The combined set does not validate: `file:line:col: message` lines, stored VPCs named
    /// `etcd:<key>`.
    #[error("{0}")]
    Invalid(ConfigError),
    #[error("--delete {0}: etcd has no VPC of that name")]
    NoSuchVpc(String),
    #[error("VPC {name:?} is both declared in {} and deleted with --delete", file.display())]
    DeleteDeclared { name: String, file: PathBuf },
    #[error("nothing to apply: give files with [[vpc]] tables, or --delete VPC")]
    Nothing,
    #[error("no VNI left: the 24-bit space (1..={MAX_VNI}) is used up")]
    VniExhausted,
    #[error(
        "etcd changed since this apply read it at revision {revision} (another apply ran): \
         nothing was written; retry"
    )]
    Conflict { revision: i64 },
    #[error(
        "this apply is {ops} etcd operations, more than etcd takes in one transaction (its \
         --max-txn-ops, 128 unless raised): nothing was written; apply the files in smaller \
         groups (each VPC is 2 operations), or raise etcd's --max-txn-ops"
    )]
    TooLarge { ops: usize },
    #[error(transparent)]
    Store(#[from] Error),
}

/// What an apply wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApplyReport {
    /// The revision of the write (or the one read, when nothing changed).
    pub revision: i64,
    /// One line per change: VPCs added/changed/removed with their VNI, peering state changes.
    pub lines: Vec<String>,
    /// Whether anything was written.
    pub written: bool,
}

/// The decision of one apply.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Change {
    pub lines: Vec<String>,
    pub puts: Vec<(String, String)>,
    pub deletes: Vec<String>,
}

/// A file to apply, read.
pub(crate) struct Source {
    pub path: PathBuf,
    pub text: String,
}

fn read_files(files: &[PathBuf]) -> Result<Vec<Source>, ApplyError> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for f in files {
        match config::read_config_file(f, None) {
            Ok(text) => out.push(Source {
                path: f.clone(),
                text,
            }),
            Err(e) => errors.push(Diagnostic {
                location: None,
                message: e.to_string(),
            }),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(ApplyError::Invalid(ConfigError { errors }))
    }
}

/// Validates `files` (and `--delete`) against etcd and writes the result in one transaction.
/// `quotas` are the limits checked (the host file's `[daemon]`, or the defaults); `now` is the
/// time of the lifecycle records (Unix seconds).
pub async fn apply(
    c: &EtcdConfig,
    files: &[PathBuf],
    delete: &[String],
    quotas: &DaemonConfig,
    now: u64,
) -> Result<ApplyReport, ApplyError> {
    prepare(c, files, delete, quotas, now).await?.commit().await
}

/// What [`apply`] would change fleet-wide, writing nothing.
pub async fn plan(
    c: &EtcdConfig,
    files: &[PathBuf],
    delete: &[String],
    quotas: &DaemonConfig,
    now: u64,
) -> Result<Vec<String>, ApplyError> {
    Ok(prepare(c, files, delete, quotas, now)
        .await?
        .lines()
        .to_vec())
}

/// An apply decided from one read of etcd, not written yet: [`Prepared::commit`] writes it
/// if etcd's serial key is still the one read. `apply` is `prepare` then `commit`; `plan`
/// prints [`Prepared::lines`].
pub struct Prepared {
    store: Store,
    view: FleetView,
    change: Change,
}

/// Reads etcd once and decides the apply (see [`apply`]).
pub async fn prepare(
    c: &EtcdConfig,
    files: &[PathBuf],
    delete: &[String],
    quotas: &DaemonConfig,
    now: u64,
) -> Result<Prepared, ApplyError> {
    let sources = read_files(files)?;
    let store = Store::connect(c).await?;
    let view = store.snapshot().await?;
    let change = compute(&store.conn.keys, &view, &sources, delete, quotas, now)?;
    Ok(Prepared {
        store,
        view,
        change,
    })
}

impl Prepared {
    /// One line per change.
    pub fn lines(&self) -> &[String] {
        &self.change.lines
    }

    /// The revision read.
    pub fn revision(&self) -> i64 {
        self.view.revision
    }

    /// Writes the change in one transaction that also bumps the serial key, on condition that
    /// the serial key is as read: an apply that committed in between makes this one fail with
    /// [`ApplyError::Conflict`], having written nothing.
    pub async fn commit(self) -> Result<ApplyReport, ApplyError> {
        let Prepared {
            store,
            view,
            change,
        } = self;
        if change.puts.is_empty() && change.deletes.is_empty() {
            return Ok(ApplyReport {
                revision: view.revision,
                lines: change.lines,
                written: false,
            });
        }
        let conn = &store.conn;
        let serial = conn.keys.serial();
        let mut ops: Vec<TxnOp> = Vec::new();
        ops.push(TxnOp::put(
            serial.clone(),
            (view.serial + 1).to_string(),
            None,
        ));
        ops.extend(
            change
                .puts
                .iter()
                .map(|(k, v)| TxnOp::put(k.clone(), v.clone(), None)),
        );
        ops.extend(
            change
                .deletes
                .iter()
                .map(|k| TxnOp::delete(k.clone(), None)),
        );
        let n = ops.len();
        let txn = Txn::new()
            .when([Compare::mod_revision(
                serial.clone(),
                CompareOp::Equal,
                view.serial_revision,
            )])
            .and_then(ops);
        let mut kv = conn.client.kv_client();
        let resp = conn
            .call(
                || format!("apply transaction ({n} operations, guarded by {serial})"),
                kv.txn(txn),
            )
            .await
            .map_err(|e| {
                if e.to_string().contains("too many operations in txn request") {
                    ApplyError::TooLarge { ops: n }
                } else {
                    ApplyError::Store(e)
                }
            })?;
        if !resp.succeeded() {
            return Err(ApplyError::Conflict {
                revision: view.revision,
            });
        }
        Ok(ApplyReport {
            revision: resp.header().map(|h| h.revision()).unwrap_or_default(),
            lines: change.lines,
            written: true,
        })
    }
}

/// The names of the `[[vpc]]` tables of a file that parses (for knowing which stored VPCs a
/// file replaces before it is validated; a file that does not parse replaces nothing and its
/// error is reported by the validation).
fn declared_names(text: &str) -> Vec<String> {
    let Ok(t) = text.parse::<toml::Table>() else {
        return Vec::new();
    };
    vpc_tables(&t)
        .iter()
        .filter_map(|v| v.get("name")?.as_str().map(str::to_owned))
        .collect()
}

fn vpc_tables(t: &toml::Table) -> Vec<toml::Table> {
    t.get("vpc")
        .and_then(toml::Value::as_array)
        .map(|a| a.iter().filter_map(|v| v.as_table().cloned()).collect())
        .unwrap_or_default()
}

/// A `[[vpc]]` header line (`[[vpc]]`, spaces allowed, a comment after it).
fn is_vpc_header(line: &str) -> bool {
    let Some(rest) = line.trim().strip_prefix("[[") else {
        return false;
    };
    let Some((inner, after)) = rest.split_once("]]") else {
        return false;
    };
    let after = after.trim();
    inner.trim() == "vpc" && (after.is_empty() || after.starts_with('#'))
}

/// The `[[vpc]]` tables of a valid file, each as a TOML document of its own (what is stored
/// in the VPC's key). Each is the file's own text from its header (with the comment lines
/// right above it) to the next header, so comments and layout are kept; where the file is not
/// laid out that way (inline tables, a header inside a multi-line string), the table is
/// written out by the TOML serializer instead. Either way the text parses to exactly the
/// table the file declares.
pub(crate) fn vpc_texts(text: &str) -> Vec<(String, String)> {
    let Ok(whole) = text.parse::<toml::Table>() else {
        return Vec::new();
    };
    let tables = vpc_tables(&whole);
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let mut starts: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| is_vpc_header(l))
        .map(|(i, _)| i)
        .collect();
    let aligned = starts.len() == tables.len();
    // Move each start up over the comment lines right above its header.
    for s in starts.iter_mut() {
        while *s > 0 && lines[*s - 1].trim_start().starts_with('#') {
            *s -= 1;
        }
    }
    let mut out = Vec::new();
    for (i, table) in tables.iter().enumerate() {
        let name = table
            .get("name")
            .and_then(toml::Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let from_file = aligned
            .then(|| {
                let end = starts.get(i + 1).copied().unwrap_or(lines.len());
                let mut chunk: String = lines[starts[i]..end].concat();
                let trimmed = chunk.trim_end().len();
                chunk.truncate(trimmed);
                chunk.push('\n');
                chunk
            })
            .filter(|chunk| {
                chunk.parse::<toml::Table>().is_ok_and(|t| {
                    t.len() == 1 && vpc_tables(&t).len() == 1 && vpc_tables(&t)[0] == *table
                })
            });
        let text = from_file.unwrap_or_else(|| {
            let mut doc = toml::Table::new();
            doc.insert(
                "vpc".into(),
                toml::Value::Array(vec![toml::Value::Table(table.clone())]),
            );
            toml::to_string(&doc).unwrap_or_default()
        });
        out.push((name, text));
    }
    out
}

/// Messages of the shared validator that read oddly for a file to apply.
fn for_apply(mut e: ConfigError, files: &BTreeSet<PathBuf>) -> ConfigError {
    for d in &mut e.errors {
        let ours = d.location.as_ref().is_some_and(|l| files.contains(&l.file));
        if ours
            && d.message
                .contains("is only allowed in the main configuration file")
        {
            d.message = d.message.replace(
                "is only allowed in the main configuration file",
                "is not allowed in a file to apply (it holds only [[vpc]] tables)",
            );
        }
    }
    e
}

/// Decides an apply from what etcd holds (`view`) and the files.
pub(crate) fn compute(
    keys: &Keys,
    view: &FleetView,
    files: &[Source],
    delete: &[String],
    quotas: &DaemonConfig,
    now: u64,
) -> Result<Change, ApplyError> {
    if files.is_empty() && delete.is_empty() {
        return Err(ApplyError::Nothing);
    }
    let declared: BTreeMap<String, PathBuf> = files
        .iter()
        .flat_map(|f| {
            declared_names(&f.text)
                .into_iter()
                .map(|n| (n, f.path.clone()))
        })
        .collect();
    let deleted: BTreeSet<&str> = delete.iter().map(String::as_str).collect();
    for d in &deleted {
        if let Some(file) = declared.get(*d) {
            return Err(ApplyError::DeleteDeclared {
                name: d.to_string(),
                file: file.clone(),
            });
        }
        if !view.vpcs.contains_key(*d) {
            return Err(ApplyError::NoSuchVpc(d.to_string()));
        }
    }
    // The files, then every stored VPC they neither replace nor delete.
    let mut sources: Vec<(PathBuf, String)> = files
        .iter()
        .map(|f| (f.path.clone(), f.text.clone()))
        .collect();
    for v in view.vpcs.values() {
        if !declared.contains_key(&v.name) && !deleted.contains(v.name.as_str()) {
            sources.push((label(&v.key), v.toml.clone()));
        }
    }
    let file_paths: BTreeSet<PathBuf> = files.iter().map(|f| f.path.clone()).collect();
    let mut vpcs = config::check_vpc_sources(&sources, quotas)
        .map_err(|e| ApplyError::Invalid(for_apply(e, &file_paths)))?;
    // "Declared first" (a peering's requester) is the VPC whose key etcd created first, as
    // every host sees it ([`FleetView::config`]); new keys are all created by this write.
    vpcs.sort_by_cached_key(|v| {
        let rev = view
            .vpcs
            .get(&v.name)
            .map_or(view.revision + 1, |o| o.create_revision);
        (rev, v.name.clone())
    });
    // A stored VPC must declare the VPC its key names (only something else than peerd apply
    // can write it otherwise).
    let mut errors = Vec::new();
    for v in &vpcs {
        if let Some(key) = v
            .name_location
            .file
            .to_str()
            .and_then(|f| f.strip_prefix("etcd:"))
        {
            if key != keys.vpc(&v.name) {
                errors.push(Diagnostic {
                    location: Some(v.name_location.clone()),
                    message: format!("declares VPC \"{}\" under another VPC's key", v.name),
                });
            }
        }
    }
    if !errors.is_empty() {
        return Err(ApplyError::Invalid(ConfigError { errors }));
    }

    let mut ch = Change::default();
    // VPC keys and VNIs.
    let in_use: BTreeSet<u32> = view
        .vpcs
        .values()
        .map(|v| v.vni)
        .filter(|&n| n > 0)
        .collect();
    let mut next = view
        .vni_next
        .max(1)
        .max(in_use.last().map_or(1, |m| m.saturating_add(1)));
    let start_next = next;
    let mut allocate = |ch: &mut Change, name: &str| -> Result<u32, ApplyError> {
        if next > MAX_VNI {
            return Err(ApplyError::VniExhausted);
        }
        let n = next;
        next += 1;
        ch.puts.push((keys.vni(name), n.to_string()));
        Ok(n)
    };
    for f in files {
        for (name, text) in vpc_texts(&f.text) {
            match view.vpcs.get(&name) {
                None => {
                    let vni = allocate(&mut ch, &name)?;
                    ch.lines.push(format!(
                        "VPC {name}: added (VNI {vni}) from {}",
                        f.path.display()
                    ));
                    ch.puts.push((keys.vpc(&name), text));
                }
                Some(old) => {
                    let vni = if old.vni == 0 {
                        allocate(&mut ch, &name)?
                    } else {
                        old.vni
                    };
                    if old.toml != text {
                        ch.lines.push(format!(
                            "VPC {name}: changed (VNI {vni}) from {}",
                            f.path.display()
                        ));
                        ch.puts.push((keys.vpc(&name), text));
                    } else if old.vni == 0 {
                        ch.lines.push(format!("VPC {name}: VNI {vni} allocated"));
                    }
                }
            }
        }
    }
    for v in view.vpcs.values() {
        if deleted.contains(v.name.as_str()) {
            ch.lines
                .push(format!("VPC {}: removed (VNI {})", v.name, v.vni));
            ch.deletes.push(keys.vpc(&v.name));
            ch.deletes.push(keys.vni(&v.name));
        } else if v.vni == 0 && !declared.contains_key(&v.name) {
            let vni = allocate(&mut ch, &v.name)?;
            ch.lines
                .push(format!("VPC {}: VNI {vni} allocated", v.name));
        }
    }
    if next != start_next {
        ch.puts.push((keys.vni_next(), next.to_string()));
    }

    // Peering lifecycle records over the combined set: ids new to etcd are created by this
    // transaction, after every record that exists ("seen later").
    let cfg = config::Config {
        daemon: quotas.clone(),
        vpcs,
        ..Default::default()
    };
    let seen = |id: &str| {
        Some(revision_order(
            view.peerings
                .get(id)
                .map_or(view.revision + 1, |p| p.create_revision),
        ))
    };
    let (peerings, records) = crate::lifecycle::evaluate_ordered(&cfg, &view.records(), &seen, now);
    let mut declared_ids = BTreeSet::new();
    for p in &peerings {
        declared_ids.insert(p.id.clone());
        let Some(rec) = records.get(&p.id) else {
            continue;
        };
        let vpcs = p.vpcs.to_vec();
        let old = view.peerings.get(&p.id);
        let reason = p
            .reason
            .as_ref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default();
        match old {
            None => ch.lines.push(format!(
                "peering {} ({} <-> {}): new, {}{reason}",
                p.id, p.vpcs[0], p.vpcs[1], p.state
            )),
            Some(o) if o.record.state != Some(p.state) => ch.lines.push(format!(
                "peering {} ({} <-> {}): {} -> {}{reason}",
                p.id,
                p.vpcs[0],
                p.vpcs[1],
                o.record
                    .state
                    .map_or("unknown".to_owned(), |s| s.to_string()),
                p.state
            )),
            Some(_) => {}
        }
        if old.is_none_or(|o| o.record != *rec || o.vpcs != vpcs) {
            let value =
                serde_json::to_string(&RecordValue::new(rec, &vpcs)).expect("a record serializes");
            ch.puts.push((keys.peering(&p.id), value));
        }
    }
    for id in view.peerings.keys() {
        if !declared_ids.contains(id) {
            ch.lines.push(format!(
                "peering {id}: removed (no VPC declares it any more)"
            ));
            ch.deletes.push(keys.peering(id));
        }
    }
    Ok(ch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        cluster::view::{FleetPeering, FleetVpc},
        config::PeeringState,
    };

    fn src(path: &str, text: &str) -> Source {
        Source {
            path: PathBuf::from(path),
            text: text.to_owned(),
        }
    }

    const A: &str = "# tenant a\n[[vpc]]\nname = \"a\"\ncidrs = [\"10.1.0.0/16\"]\n\n  [[vpc.peering]]\n  id = \"pcx-ab\"\n  peer = \"b\"\n";
    const B: &str = "[[vpc]]\nname = \"b\"\ncidrs = [\"10.2.0.0/16\"]\n  [[vpc.peering]]\n  id = \"pcx-ab\"\n  peer = \"a\"\n";

    /// A view holding what `ch` writes on top of `view` (create_revision = rev).
    fn written(keys: &Keys, view: &FleetView, ch: &Change, rev: i64) -> FleetView {
        let mut raw = crate::cluster::view::Raw {
            revision: rev,
            ..Default::default()
        };
        let kv = |v: &str, c: i64, m: i64| crate::cluster::view::Kv {
            value: v.as_bytes().to_vec(),
            create_revision: c,
            mod_revision: m,
            lease: 0,
        };
        for v in view.vpcs.values() {
            raw.kvs.insert(
                v.key.clone(),
                kv(&v.toml, v.create_revision, v.mod_revision),
            );
            raw.kvs
                .insert(keys.vni(&v.name), kv(&v.vni.to_string(), 1, 1));
        }
        for p in view.peerings.values() {
            let value = serde_json::to_string(&RecordValue::new(&p.record, &p.vpcs)).unwrap();
            raw.kvs.insert(
                keys.peering(&p.id),
                kv(&value, p.create_revision, p.create_revision),
            );
        }
        raw.kvs
            .insert(keys.vni_next(), kv(&view.vni_next.to_string(), 1, 1));
        for k in &ch.deletes {
            raw.kvs.remove(k);
        }
        for (k, v) in &ch.puts {
            let c = raw.kvs.get(k).map_or(rev, |o| o.create_revision);
            raw.kvs.insert(k.clone(), kv(v, c, rev));
        }
        FleetView::decode(keys, &raw)
    }

    #[test]
    fn vpc_texts_keep_each_table_with_its_comments() {
        let text = format!("{A}\n# tenant b\n{B}");
        let t = vpc_texts(&text);
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].0, "a");
        assert!(t[0].1.starts_with("# tenant a\n[[vpc]]\n"), "{}", t[0].1);
        assert!(!t[0].1.contains("tenant b"), "{}", t[0].1);
        assert!(t[1].1.starts_with("# tenant b\n[[vpc]]"), "{}", t[1].1);
        // Inline arrays of tables are written out by the serializer, with the same content.
        let inline = "vpc = [{ name = \"c\", cidrs = [\"10.3.0.0/16\"] }]\n";
        let t = vpc_texts(inline);
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].0, "c");
        let back: toml::Table = t[0].1.parse().unwrap();
        assert_eq!(
            vpc_tables(&back)[0]["cidrs"][0].as_str(),
            Some("10.3.0.0/16")
        );
        // A header inside a multi-line string does not split the table.
        let tricky = "[[vpc]]\nname = \"d\"\ncidrs = [\"10.4.0.0/16\"]\n[[vpc.route_table]]\nname = \"\"\"\n[[vpc]]\n\"\"\"\n";
        let t = vpc_texts(tricky);
        assert_eq!(t.len(), 1);
        let back: toml::Table = t[0].1.parse().unwrap();
        assert_eq!(vpc_tables(&back), vpc_tables(&tricky.parse().unwrap()));
    }

    #[test]
    fn apply_adds_vpcs_with_vnis_and_records_then_disconnects_on_delete() {
        let keys = Keys::new("/peerd/");
        let q = DaemonConfig::default();
        let empty = FleetView {
            revision: 5,
            vni_next: 1,
            ..Default::default()
        };
        let ch = compute(&keys, &empty, &[src("a.toml", A)], &[], &q, 1000).unwrap();
        assert!(
            ch.lines
                .iter()
                .any(|l| l == "VPC a: added (VNI 1) from a.toml"),
            "{:?}",
            ch.lines
        );
        assert!(
            ch.lines.iter().any(
                |l| l.contains("pcx-ab (a <-> b): new, failed (peer VPC \"b\" does not exist)")
            ),
            "{:?}",
            ch.lines
        );
        let v1 = written(&keys, &empty, &ch, 6);
        assert_eq!(v1.vpcs["a"].vni, 1);
        assert!(v1.vpcs["a"].toml.starts_with("# tenant a"));
        assert_eq!(v1.peerings["pcx-ab"].record.first_seen, 1000);
        assert_eq!(v1.vni_next, 2);

        let ch = compute(&keys, &v1, &[src("b.toml", B)], &[], &q, 1010).unwrap();
        assert!(
            ch.lines
                .iter()
                .any(|l| l.contains("pcx-ab (a <-> b): failed -> active")),
            "{:?}",
            ch.lines
        );
        let v2 = written(&keys, &v1, &ch, 7);
        assert_eq!(v2.vpcs["b"].vni, 2);
        let p = &v2.peerings["pcx-ab"];
        assert_eq!(
            (p.record.state, p.record.activated_at),
            (Some(PeeringState::Active), Some(1010))
        );
        assert_eq!(p.record.first_seen, 1000, "first_seen is kept");

        // Re-applying the same file changes nothing.
        let ch = compute(&keys, &v2, &[src("b.toml", B)], &[], &q, 1020).unwrap();
        assert_eq!(ch, Change::default());

        let ch = compute(&keys, &v2, &[], &["b".into()], &q, 1030).unwrap();
        assert!(
            ch.lines.iter().any(|l| l == "VPC b: removed (VNI 2)"),
            "{:?}",
            ch.lines
        );
        assert!(
            ch.lines
                .iter()
                .any(|l| l.contains("active -> disconnected")),
            "{:?}",
            ch.lines
        );
        let v3 = written(&keys, &v2, &ch, 8);
        assert!(!v3.vpcs.contains_key("b"));
        assert_eq!(
            v3.peerings["pcx-ab"].record.state,
            Some(PeeringState::Disconnected)
        );

        // VNIs are not reused: b back gets a new one.
        let ch = compute(&keys, &v3, &[src("b.toml", B)], &[], &q, 1040).unwrap();
        let v4 = written(&keys, &v3, &ch, 9);
        assert_eq!(v4.vpcs["b"].vni, 3);

        // Deleting a's end and b's: nobody declares pcx-ab, its record goes.
        let ch = compute(&keys, &v4, &[], &["a".into(), "b".into()], &q, 1050).unwrap();
        assert!(ch.deletes.contains(&keys.peering("pcx-ab")), "{ch:?}");
    }

    #[test]
    fn errors_name_files_and_stored_keys() {
        let keys = Keys::new("/peerd/");
        let q = DaemonConfig::default();
        let mut view = FleetView {
            revision: 3,
            vni_next: 2,
            ..Default::default()
        };
        view.vpcs.insert(
            "a".into(),
            FleetVpc {
                name: "a".into(),
                toml: A.into(),
                key: keys.vpc("a"),
                vni: 1,
                create_revision: 2,
                mod_revision: 2,
            },
        );
        // b declares pcx-ab with another peer: the two ends disagree.
        let b_wrong = B.replace("peer = \"a\"", "peer = \"c\"");
        let e = compute(&keys, &view, &[src("b.toml", &b_wrong)], &[], &q, 1)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("etcd:/peerd/v1/vpcs/a:") || e.contains("b.toml:"),
            "{e}"
        );
        assert!(e.contains("disagree"), "{e}");
        // Overlapping CIDRs inside one declaration: the file's line and column.
        let overlap = "[[vpc]]\nname = \"c\"\ncidrs = [\"10.9.0.0/16\", \"10.9.1.0/24\"]\n";
        let e = compute(&keys, &view, &[src("c.toml", overlap)], &[], &q, 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("c.toml:3:"), "{e}");
        // A [daemon] table is not for apply.
        let e = compute(
            &keys,
            &view,
            &[src("d.toml", "[daemon]\nstate_dir = \"/x\"\n")],
            &[],
            &q,
            1,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("d.toml:1:") && e.contains("only [[vpc]] tables"),
            "{e}"
        );
        // --delete of an unknown VPC, or of one being applied.
        assert!(matches!(
            compute(&keys, &view, &[], &["zz".into()], &q, 1),
            Err(ApplyError::NoSuchVpc(_))
        ));
        assert!(matches!(
            compute(&keys, &view, &[src("a.toml", A)], &["a".into()], &q, 1),
            Err(ApplyError::DeleteDeclared { .. })
        ));
        assert!(matches!(
            compute(&keys, &view, &[], &[], &q, 1),
            Err(ApplyError::Nothing)
        ));
    }

    #[test]
    fn vnis_run_out_cleanly_and_duplicates_fail_by_creation_order() {
        let keys = Keys::new("/peerd/");
        let q = DaemonConfig::default();
        let full = FleetView {
            revision: 3,
            vni_next: MAX_VNI + 1,
            ..Default::default()
        };
        assert!(matches!(
            compute(&keys, &full, &[src("a.toml", A)], &[], &q, 1),
            Err(ApplyError::VniExhausted)
        ));

        // Two peerings of one pair: the one whose record was created later fails, whatever
        // its id.
        let two = "[[vpc]]\nname = \"a\"\ncidrs = [\"10.1.0.0/16\"]\n  [[vpc.peering]]\n  id = \"pcx-1\"\n  peer = \"b\"\n  [[vpc.peering]]\n  id = \"pcx-2\"\n  peer = \"b\"\n[[vpc]]\nname = \"b\"\ncidrs = [\"10.2.0.0/16\"]\n  [[vpc.peering]]\n  id = \"pcx-1\"\n  peer = \"a\"\n  [[vpc.peering]]\n  id = \"pcx-2\"\n  peer = \"a\"\n";
        let mut view = FleetView {
            revision: 10,
            vni_next: 1,
            ..Default::default()
        };
        for (id, rev) in [("pcx-1", 9), ("pcx-2", 4)] {
            view.peerings.insert(
                id.into(),
                FleetPeering {
                    id: id.into(),
                    record: Default::default(),
                    vpcs: vec![],
                    create_revision: rev,
                },
            );
        }
        let ch = compute(&keys, &view, &[src("ab.toml", two)], &[], &q, 1).unwrap();
        let v = written(&keys, &view, &ch, 11);
        assert_eq!(v.peerings["pcx-2"].record.state, Some(PeeringState::Active));
        assert_eq!(v.peerings["pcx-1"].record.state, Some(PeeringState::Failed));
    }
}
