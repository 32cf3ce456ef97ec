//! A consistent picture of the fleet at one etcd revision, decoded from the keys under the
//! root ([`super::Keys`]), and what a host derives from it: the VPC declarations parsed with
//! the configuration's own parser, and the peering states.
use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::PathBuf,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use super::keys::{Key, Keys};
use crate::{
    config::{self, Config, DaemonConfig, Peering, PeeringState, Vpc},
    lifecycle,
    state::PeeringRecord,
};

/// One key as read from etcd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Kv {
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub lease: i64,
}

impl From<&etcd_client::KeyValue> for Kv {
    fn from(kv: &etcd_client::KeyValue) -> Self {
        Kv {
            value: kv.value().to_vec(),
            create_revision: kv.create_revision(),
            mod_revision: kv.mod_revision(),
            lease: kv.lease(),
        }
    }
}

/// Every key under the root at one revision.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Raw {
    pub revision: i64,
    pub kvs: BTreeMap<String, Kv>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FleetVpc {
    pub name: String,
    /// The VPC's `[[vpc]]` table, as applied.
    pub toml: String,
    /// Its etcd key (`<key_prefix>v1/vpcs/<name>`).
    pub key: String,
    /// Fleet-wide id, the VXLAN VNI of traffic to this VPC; 0 when missing (never written so
    /// by `peerd apply`: such a VPC is left out by [`FleetView::config`]).
    pub vni: u32,
    pub create_revision: i64,
    pub mod_revision: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FleetPeering {
    pub id: String,
    /// Lifecycle record (`slot` is per host and unused here: 0).
    pub record: PeeringRecord,
    /// The VPCs of the peering when it was last evaluated (information for operators).
    pub vpcs: Vec<String>,
    /// etcd's creation revision of the record's key: "seen later" among peerings of one pair.
    pub create_revision: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FleetHost {
    pub name: String,
    pub underlay: IpAddr,
    pub vxlan_port: u16,
    /// VPCs placed on the host (`[cluster] vpcs`).
    pub vpcs: Vec<String>,
    /// peerd version of the host.
    pub version: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub vpc: String,
    pub addr: IpAddr,
    pub host: String,
    /// When several hosts publish one address (a workload moving), the most recent wins.
    pub mod_revision: i64,
}

/// The fleet at one revision.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FleetView {
    pub revision: i64,
    pub vpcs: BTreeMap<String, FleetVpc>,
    pub peerings: BTreeMap<String, FleetPeering>,
    pub hosts: BTreeMap<String, FleetHost>,
    /// Sorted by VPC, address, then mod_revision.
    pub endpoints: Vec<Endpoint>,
    /// Keys whose values do not decode (left out of the view), as messages.
    pub problems: Vec<String>,
    /// Value of the apply serial key, and its mod_revision (0: never applied).
    pub serial: u64,
    pub serial_revision: i64,
    /// The next VNI `peerd apply` gives (1 before the first).
    pub vni_next: u32,
}

/// `peerings/<id>` value.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct RecordValue {
    pub first_seen: u64,
    #[serde(default)]
    pub activated_at: Option<u64>,
    #[serde(default)]
    pub ended_at: Option<u64>,
    #[serde(default)]
    pub state: Option<PeeringState>,
    #[serde(default)]
    pub vpcs: Vec<String>,
}

impl RecordValue {
    pub fn new(r: &PeeringRecord, vpcs: &[String]) -> Self {
        Self {
            first_seen: r.first_seen,
            activated_at: r.activated_at,
            ended_at: r.ended_at,
            state: r.state,
            vpcs: vpcs.to_vec(),
        }
    }

    pub fn record(&self) -> PeeringRecord {
        PeeringRecord {
            slot: 0,
            first_seen: self.first_seen,
            activated_at: self.activated_at,
            ended_at: self.ended_at,
            state: self.state,
        }
    }
}

/// `hosts/<name>` value.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct HostValue {
    pub underlay: IpAddr,
    pub vxlan_port: u16,
    #[serde(default)]
    pub vpcs: Vec<String>,
    #[serde(default)]
    pub version: String,
}

impl From<&FleetHost> for HostValue {
    fn from(h: &FleetHost) -> Self {
        Self {
            underlay: h.underlay,
            vxlan_port: h.vxlan_port,
            vpcs: h.vpcs.clone(),
            version: h.version.clone(),
        }
    }
}

/// The largest VNI (24 bits).
pub const MAX_VNI: u32 = (1 << 24) - 1;

/// How a stored VPC is named in validation messages: `etcd:<key>`, so its errors read
/// `etcd:/peerd/v1/vpcs/web:3:5: ...`.
pub fn label(key: &str) -> PathBuf {
    PathBuf::from(format!("etcd:{key}"))
}

/// A creation revision as an ordering key for [`lifecycle::evaluate_ordered`].
pub(crate) fn revision_order(rev: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(rev.max(0) as u64)
}

fn text(kv: &Kv) -> Result<&str, String> {
    std::str::from_utf8(&kv.value).map_err(|e| format!("not UTF-8: {e}"))
}

fn number<T: std::str::FromStr>(kv: &Kv) -> Result<T, String> {
    let t = text(kv)?;
    t.trim()
        .parse()
        .map_err(|_| format!("{t:?} is not a number"))
}

impl FleetView {
    pub(crate) fn decode(keys: &Keys, raw: &Raw) -> FleetView {
        let mut v = FleetView {
            revision: raw.revision,
            vni_next: 1,
            ..Default::default()
        };
        let mut vnis: BTreeMap<String, u32> = BTreeMap::new();
        for (key, kv) in &raw.kvs {
            let r: Result<(), String> = (|| {
                match keys.parse(key) {
                    Key::Serial => {
                        v.serial = number(kv)?;
                        v.serial_revision = kv.mod_revision;
                    }
                    Key::VniNext => v.vni_next = number(kv)?,
                    Key::Vpc(name) => {
                        v.vpcs.insert(
                            name.clone(),
                            FleetVpc {
                                name,
                                toml: text(kv)?.to_owned(),
                                key: key.clone(),
                                vni: 0,
                                create_revision: kv.create_revision,
                                mod_revision: kv.mod_revision,
                            },
                        );
                    }
                    Key::Vni(name) => {
                        let n: u32 = number(kv)?;
                        if n == 0 || n > MAX_VNI {
                            return Err(format!("VNI {n} is outside 1..={MAX_VNI}"));
                        }
                        vnis.insert(name, n);
                    }
                    Key::Peering(id) => {
                        let r: RecordValue =
                            serde_json::from_slice(&kv.value).map_err(|e| e.to_string())?;
                        v.peerings.insert(
                            id.clone(),
                            FleetPeering {
                                id,
                                record: r.record(),
                                vpcs: r.vpcs,
                                create_revision: kv.create_revision,
                            },
                        );
                    }
                    Key::Host(name) => {
                        let h: HostValue =
                            serde_json::from_slice(&kv.value).map_err(|e| e.to_string())?;
                        v.hosts.insert(
                            name.clone(),
                            FleetHost {
                                name,
                                underlay: h.underlay,
                                vxlan_port: h.vxlan_port,
                                vpcs: h.vpcs,
                                version: h.version,
                            },
                        );
                    }
                    Key::Endpoint { vpc, addr, host } => v.endpoints.push(Endpoint {
                        vpc,
                        addr,
                        host,
                        mod_revision: kv.mod_revision,
                    }),
                    Key::Unknown => {}
                }
                Ok(())
            })();
            if let Err(e) = r {
                v.problems.push(format!("{key}: {e}"));
            }
        }
        for (name, n) in vnis {
            if let Some(vpc) = v.vpcs.get_mut(&name) {
                vpc.vni = n;
            }
        }
        v.endpoints.sort_by(|a, b| {
            (&a.vpc, a.addr, a.mod_revision, &a.host).cmp(&(
                &b.vpc,
                b.addr,
                b.mod_revision,
                &b.host,
            ))
        });
        v
    }

    /// The host of each (VPC, address): of several hosts publishing one address, the one
    /// that published it last (largest mod_revision).
    pub fn endpoint_hosts(&self) -> BTreeMap<(&str, IpAddr), &Endpoint> {
        let mut out: BTreeMap<(&str, IpAddr), &Endpoint> = BTreeMap::new();
        for e in &self.endpoints {
            let slot = out.entry((e.vpc.as_str(), e.addr)).or_insert(e);
            if e.mod_revision > slot.mod_revision {
                *slot = e;
            }
        }
        out
    }

    /// The host `addr` of `vpc` is on, if any publishes it.
    pub fn locate(&self, vpc: &str, addr: IpAddr) -> Option<&str> {
        self.endpoint_hosts()
            .get(&(vpc, addr))
            .map(|e| e.host.as_str())
    }

    /// The VPC declarations, parsed and checked with `daemon`'s quotas as `peerd check` would.
    /// A VPC that does not parse, has no VNI, or conflicts with the others (possible only if
    /// etcd was written by something else than `peerd apply`) is left out; the messages say
    /// why (`etcd:<key>:line:col: ...`).
    pub fn config(&self, daemon: &DaemonConfig) -> (Vec<Vpc>, Vec<String>) {
        let mut errors: Vec<String> = self.problems.clone();
        let mut ok: Vec<(PathBuf, String)> = Vec::new();
        // In the order etcd created them: a peering's requester is the end declared first.
        let mut ordered: Vec<&FleetVpc> = self.vpcs.values().collect();
        ordered.sort_by_key(|v| (v.create_revision, &v.name));
        for v in ordered {
            let src = (label(&v.key), v.toml.clone());
            match config::check_vpc_sources(std::slice::from_ref(&src), daemon) {
                Err(e) => errors.push(e.to_string()),
                Ok(parsed) if parsed.len() != 1 || parsed[0].name != v.name => {
                    errors.push(format!(
                        "{}: must declare exactly the VPC \"{}\"",
                        src.0.display(),
                        v.name
                    ))
                }
                Ok(_) if v.vni == 0 => errors.push(format!(
                    "{}: VPC \"{}\" has no VNI ({} is missing)",
                    src.0.display(),
                    v.name,
                    v.key.replace("/vpcs/", "/vnis/")
                )),
                Ok(_) => ok.push(src),
            }
        }
        // Together: drop the VPCs named by cross-VPC errors until the rest is consistent.
        loop {
            match config::check_vpc_sources(&ok, daemon) {
                Ok(vpcs) => return (vpcs, errors),
                Err(e) => {
                    let bad: Vec<PathBuf> = e
                        .errors
                        .iter()
                        .filter_map(|d| d.location.as_ref().map(|l| l.file.clone()))
                        .collect();
                    errors.push(e.to_string());
                    let before = ok.len();
                    ok.retain(|(p, _)| !bad.contains(p));
                    if ok.len() == before {
                        // Nothing to blame: keep none rather than loop.
                        return (Vec::new(), errors);
                    }
                }
            }
        }
    }

    /// The lifecycle records, by id.
    pub fn records(&self) -> BTreeMap<String, PeeringRecord> {
        self.peerings
            .iter()
            .map(|(id, p)| (id.clone(), p.record.clone()))
            .collect()
    }

    /// The peering states of `vpcs` (from [`FleetView::config`]) at `now` (Unix seconds), as
    /// `peerd apply` computed them: lifecycle over the records in etcd, "seen later" by the
    /// records' creation revision. Also returns the records as they would be updated (a host
    /// does not write them back: `peerd apply` does).
    pub fn evaluate(
        &self,
        vpcs: Vec<Vpc>,
        daemon: &DaemonConfig,
        now: u64,
    ) -> (Vec<Peering>, BTreeMap<String, PeeringRecord>) {
        let cfg = Config {
            daemon: daemon.clone(),
            vpcs,
            ..Default::default()
        };
        let seen = |id: &str| {
            self.peerings
                .get(id)
                .map(|p| revision_order(p.create_revision))
        };
        lifecycle::evaluate_ordered(&cfg, &self.records(), &seen, now)
    }
}
