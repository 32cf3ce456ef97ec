//! The CNI plugin `peerd-cni` (CNI spec 1.0.0): a container runtime's ADD/DEL/CHECK/VERSION
//! become `peerd attach`/`detach` requests to the running daemon (see docs/workloads.md).
//!
//! The runtime gives the operation in environment variables (`CNI_COMMAND`, `CNI_CONTAINERID`,
//! `CNI_NETNS`, `CNI_IFNAME`, `CNI_PATH`) and the network configuration as JSON on stdin:
//!
//! ```json
//! {"cniVersion":"1.0.0","name":"web","type":"peerd-cni","vpc":"web",
//!  "socket":"/run/peerd/peerd.sock",
//!  "ipam":{"type":"static","addresses":[{"address":"10.1.0.5/24"}]}}
//! ```
//!
//! IPAM "static" is handled here; any other type is run as `<CNI_PATH>/<type>` with the same
//! environment and stdin, and the addresses of its result are attached. The result (ADD) or
//! an error `{"cniVersion","code","msg","details"}` goes to stdout.
use std::{
    collections::BTreeSet,
    io::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use ipnet::IpNet;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::{
    attach::{Attachment, Workload},
    control::{self, Request},
    reconcile::routes::{GATEWAY_V4, GATEWAY_V6},
};

/// The spec versions this plugin speaks.
pub const VERSIONS: &[&str] = &["1.0.0"];

/// Error codes of the spec, and this plugin's own (100 and up).
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const INVALID_CONFIG: u32 = 4;
    pub const INVALID_ENV: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// peerd refused the request (unknown VPC, address outside its CIDRs, ...).
    pub const REFUSED: u32 = 100;
    /// The IPAM plugin is missing, failed or gave an unreadable result.
    pub const IPAM: u32 = 101;
    /// CHECK found the container not as attached.
    pub const CHECK_FAILED: u32 = 102;
}

/// An error as the spec shapes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl Error {
    fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Error {
        Error {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    pub fn to_json(&self, version: &str) -> Value {
        json!({
            "cniVersion": version,
            "code": self.code,
            "msg": self.msg,
            "details": self.details,
        })
    }
}

/// The network configuration (fields of other plugins and the runtime are ignored).
#[derive(Debug, Clone, Deserialize)]
pub struct NetConf {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub vpc: String,
    #[serde(default)]
    pub socket: Option<PathBuf>,
    pub ipam: Ipam,
    #[serde(rename = "prevResult", default)]
    pub prev_result: Option<Value>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Ipam {
    #[serde(rename = "type")]
    pub kind: String,
    /// Static IPAM only.
    #[serde(default)]
    pub addresses: Vec<StaticAddress>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct StaticAddress {
    pub address: IpNet,
}

/// The runtime's environment variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Env {
    pub command: String,
    pub container_id: String,
    /// Empty on a DEL whose namespace is gone.
    pub netns: String,
    pub ifname: String,
    pub path: Vec<PathBuf>,
}

impl Env {
    /// Reads the variables through `var`; ADD and CHECK need a namespace, every command but
    /// VERSION a container id and an interface name.
    pub fn from(var: &dyn Fn(&str) -> Option<String>) -> Result<Env, Error> {
        let get = |k: &str| var(k).filter(|v| !v.is_empty());
        let command = get("CNI_COMMAND")
            .ok_or_else(|| Error::new(code::INVALID_ENV, "CNI_COMMAND is not set", ""))?;
        let path = var("CNI_PATH")
            .unwrap_or_default()
            .split(':')
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .collect();
        let mut env = Env {
            command,
            container_id: String::new(),
            netns: get("CNI_NETNS").unwrap_or_default(),
            ifname: String::new(),
            path,
        };
        if env.command == "VERSION" {
            return Ok(env);
        }
        let need = |k: &str| {
            get(k).ok_or_else(|| {
                Error::new(
                    code::INVALID_ENV,
                    format!("{k} is not set"),
                    format!("CNI_COMMAND {} needs it", env.command),
                )
            })
        };
        env.container_id = need("CNI_CONTAINERID")?;
        env.ifname = need("CNI_IFNAME")?;
        if env.command != "DEL" {
            env.netns = need("CNI_NETNS")?;
        }
        Ok(env)
    }

    /// The attachment's id: the container and its interface.
    fn id(&self) -> String {
        format!("{}/{}", self.container_id, self.ifname)
    }

    fn workload(&self) -> Workload {
        Workload::Netns {
            netns: self.netns.clone(),
            ifname: self.ifname.clone(),
        }
    }
}

/// Parses the configuration on stdin.
pub fn parse(stdin: &[u8]) -> Result<NetConf, Error> {
    let conf: NetConf = serde_json::from_slice(stdin).map_err(|e| {
        Error::new(
            code::INVALID_CONFIG,
            "invalid network configuration",
            e.to_string(),
        )
    })?;
    if !VERSIONS.contains(&conf.cni_version.as_str()) {
        return Err(Error::new(
            code::INCOMPATIBLE_VERSION,
            format!("cniVersion {} is not supported", conf.cni_version),
            format!("supported: {}", VERSIONS.join(", ")),
        ));
    }
    if conf.vpc.is_empty() {
        return Err(Error::new(
            code::INVALID_CONFIG,
            "invalid network configuration",
            "\"vpc\" is empty",
        ));
    }
    if conf.ipam.kind == "static" && conf.ipam.addresses.is_empty() {
        return Err(Error::new(
            code::INVALID_CONFIG,
            "invalid network configuration",
            "static IPAM without addresses",
        ));
    }
    Ok(conf)
}

/// Runs one command: what to print on stdout (ADD's result, VERSION's answer), if anything.
pub fn run(var: &dyn Fn(&str) -> Option<String>, stdin: &[u8]) -> Result<Option<Value>, Error> {
    let env = Env::from(var)?;
    if env.command == "VERSION" {
        return Ok(Some(json!({
            "cniVersion": VERSIONS[VERSIONS.len() - 1],
            "supportedVersions": VERSIONS,
        })));
    }
    let conf = parse(stdin)?;
    let socket = conf
        .socket
        .clone()
        .unwrap_or_else(|| crate::config::DaemonConfig::default().socket);
    match env.command.as_str() {
        "ADD" => add(&env, &conf, &socket, stdin).map(Some),
        "DEL" => del(&env, &conf, &socket, stdin).map(|()| None),
        "CHECK" => check(&env, &conf, &socket, stdin).map(|()| None),
        other => Err(Error::new(
            code::INVALID_ENV,
            format!("unknown CNI_COMMAND {other:?}"),
            "ADD, DEL, CHECK or VERSION",
        )),
    }
}

/// The answer of the daemon, or the error as the runtime should see it.
fn ask(socket: &Path, req: &Request) -> Result<Value, Error> {
    control::request(socket, req).map_err(|e| match e {
        control::Error::Daemon(msg) => Error::new(code::REFUSED, "peerd refused", msg),
        e => Error::new(
            code::TRY_AGAIN_LATER,
            "peerd is not reachable",
            e.to_string(),
        ),
    })
}

fn add(env: &Env, conf: &NetConf, socket: &Path, stdin: &[u8]) -> Result<Value, Error> {
    let (addresses, ipam) = match conf.ipam.kind.as_str() {
        "static" => (
            conf.ipam.addresses.iter().map(|a| a.address).collect(),
            Value::Null,
        ),
        kind => {
            let r = delegate(env, kind, stdin)?.unwrap_or(Value::Null);
            (addresses_of(&r)?, r)
        }
    };
    // What is attached, as the daemon stores it (sorted, deduplicated).
    let attached: BTreeSet<IpNet> = addresses.iter().copied().collect();
    ask(
        socket,
        &Request::Attach {
            attachment: Attachment {
                vpc: conf.vpc.clone(),
                workload: env.workload(),
                addresses,
                id: Some(env.id()),
            },
            check: false,
        },
    )?;
    let mac = mac_of(&env.netns, &env.ifname).unwrap_or_default();
    Ok(result(conf, env, &attached, &mac, &ipam))
}

/// The ADD result: the container's interface, its addresses via the link-local gateway, and
/// the default routes.
pub fn result(
    conf: &NetConf,
    env: &Env,
    addresses: &BTreeSet<IpNet>,
    mac: &str,
    ipam: &Value,
) -> Value {
    let gw = |a: &IpNet| match a {
        IpNet::V4(_) => IpAddr::V4(GATEWAY_V4),
        IpNet::V6(_) => IpAddr::V6(GATEWAY_V6),
    };
    let ips: Vec<Value> = addresses
        .iter()
        .map(|a| json!({ "address": a.to_string(), "gateway": gw(a).to_string(), "interface": 0 }))
        .collect();
    let mut routes = Vec::new();
    if addresses.iter().any(|a| a.addr().is_ipv4()) {
        routes.push(json!({ "dst": "0.0.0.0/0", "gw": GATEWAY_V4.to_string() }));
    }
    if addresses.iter().any(|a| a.addr().is_ipv6()) {
        routes.push(json!({ "dst": "::/0", "gw": GATEWAY_V6.to_string() }));
    }
    let mut iface = json!({ "name": env.ifname, "sandbox": env.netns });
    if !mac.is_empty() {
        iface["mac"] = json!(mac);
    }
    let dns = if ipam["dns"].is_object() {
        ipam["dns"].clone()
    } else {
        json!({})
    };
    json!({
        "cniVersion": conf.cni_version,
        "interfaces": [iface],
        "ips": ips,
        "routes": routes,
        "dns": dns,
    })
}

/// The addresses of a result's "ips".
fn addresses_of(result: &Value) -> Result<Vec<IpNet>, Error> {
    let bad = |d: String| Error::new(code::IPAM, "unreadable IPAM result", d);
    let Some(ips) = result["ips"].as_array() else {
        return Err(bad(format!("no \"ips\" in {result}")));
    };
    ips.iter()
        .map(|ip| {
            ip["address"]
                .as_str()
                .and_then(|a| a.parse().ok())
                .ok_or_else(|| bad(format!("bad address in {ip}")))
        })
        .collect()
}

fn del(env: &Env, conf: &NetConf, socket: &Path, stdin: &[u8]) -> Result<(), Error> {
    if conf.ipam.kind != "static" {
        delegate(env, &conf.ipam.kind, stdin)?;
    }
    ask(
        socket,
        &Request::Detach {
            vpc: conf.vpc.clone(),
            workload: env.workload(),
            id: Some(env.id()),
        },
    )?;
    Ok(())
}

fn check(env: &Env, conf: &NetConf, socket: &Path, stdin: &[u8]) -> Result<(), Error> {
    let addresses = match conf.ipam.kind.as_str() {
        "static" => conf.ipam.addresses.iter().map(|a| a.address).collect(),
        kind => {
            delegate(env, kind, stdin)?;
            let prev = conf
                .prev_result
                .as_ref()
                .ok_or_else(|| Error::new(code::INVALID_CONFIG, "CHECK without prevResult", ""))?;
            addresses_of(prev)?
        }
    };
    let a = Attachment {
        vpc: conf.vpc.clone(),
        workload: env.workload(),
        addresses,
        id: Some(env.id()),
    };
    ask(
        socket,
        &Request::Attach {
            attachment: a.clone(),
            check: true,
        },
    )
    .map_err(|e| Error {
        code: if e.code == code::REFUSED {
            code::CHECK_FAILED
        } else {
            e.code
        },
        ..e
    })?;
    // And inside the container: the interface has the addresses.
    let have = addresses_in(&env.netns, &env.ifname)
        .map_err(|e| Error::new(code::CHECK_FAILED, "cannot look into the namespace", e))?;
    let missing: Vec<String> = a
        .addresses
        .iter()
        .filter(|n| !have.contains(&n.addr()))
        .map(|n| n.to_string())
        .collect();
    if !missing.is_empty() {
        return Err(Error::new(
            code::CHECK_FAILED,
            format!("{} lacks addresses", env.ifname),
            missing.join(", "),
        ));
    }
    Ok(())
}

/// Runs IPAM plugin `kind` from CNI_PATH with our environment and `stdin`; its result.
fn delegate(env: &Env, kind: &str, stdin: &[u8]) -> Result<Option<Value>, Error> {
    let Some(exe) = env.path.iter().map(|d| d.join(kind)).find(|p| p.is_file()) else {
        return Err(Error::new(
            code::IPAM,
            format!("IPAM plugin {kind:?} not found"),
            format!("CNI_PATH: {:?}", env.path),
        ));
    };
    let failed = |e: std::io::Error| {
        Error::new(
            code::IPAM,
            format!("running {}", exe.display()),
            e.to_string(),
        )
    };
    let mut child = Command::new(&exe)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(failed)?;
    if let Some(mut i) = child.stdin.take() {
        i.write_all(stdin).map_err(failed)?;
    }
    let out = child.wait_with_output().map_err(failed)?;
    let v: Option<Value> = serde_json::from_slice(&out.stdout).ok();
    if !out.status.success() {
        // The IPAM plugin's own error, passed on.
        let e = v.unwrap_or(Value::Null);
        return Err(Error {
            code: e["code"]
                .as_u64()
                .and_then(|c| u32::try_from(c).ok())
                .unwrap_or(code::IPAM),
            msg: e["msg"]
                .as_str()
                .map_or_else(|| format!("{} failed", exe.display()), str::to_owned),
            details: e["details"].as_str().unwrap_or_default().to_owned(),
        });
    }
    Ok(v)
}

/// Runs `f` on the interfaces of the namespace at `netns` (a thread enters it).
fn ifaddrs_in<T: Send + 'static>(
    netns: &str,
    f: impl FnOnce(Vec<nix::ifaddrs::InterfaceAddress>) -> T + Send + 'static,
) -> Result<T, String> {
    let path = crate::attach::netns_path(netns);
    crate::netns::run_at(&path, move || {
        nix::ifaddrs::getifaddrs().map(|i| f(i.collect()))
    })
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())
}

/// The MAC of `ifname` in the namespace at `netns`, as "aa:bb:..".
fn mac_of(netns: &str, ifname: &str) -> Option<String> {
    let name = ifname.to_owned();
    ifaddrs_in(netns, move |all| {
        all.into_iter()
            .filter(|i| i.interface_name == name)
            .find_map(|i| i.address?.as_link_addr()?.addr())
    })
    .ok()
    .flatten()
    .map(|m| {
        m.iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    })
}

/// The IP addresses of `ifname` in the namespace at `netns`.
fn addresses_in(netns: &str, ifname: &str) -> Result<BTreeSet<IpAddr>, String> {
    let name = ifname.to_owned();
    ifaddrs_in(netns, move |all| {
        all.into_iter()
            .filter(|i| i.interface_name == name)
            .filter_map(|i| {
                let a = i.address?;
                if let Some(v4) = a.as_sockaddr_in() {
                    return Some(IpAddr::V4(v4.ip()));
                }
                a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
            })
            .collect()
    })
}

/// The plugin's `main`: the text for stdout and the exit code.
pub fn main(var: &dyn Fn(&str) -> Option<String>, stdin: &[u8]) -> (String, u8) {
    match run(var, stdin) {
        Ok(Some(v)) => (v.to_string(), 0),
        Ok(None) => (String::new(), 0),
        Err(e) => {
            // The configuration's version when it has a supported one.
            let version = serde_json::from_slice::<Value>(stdin)
                .ok()
                .and_then(|v| v["cniVersion"].as_str().map(str::to_owned))
                .filter(|v| VERSIONS.contains(&v.as_str()))
                .unwrap_or_else(|| VERSIONS[VERSIONS.len() - 1].to_owned());
            (e.to_json(&version).to_string(), 1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONF: &str = r#"{"cniVersion":"1.0.0","name":"web","type":"peerd-cni","vpc":"a",
        "socket":"/nonexistent/pdt.sock",
        "ipam":{"type":"static","addresses":[{"address":"10.1.0.5/24"},{"address":"fd00:1::5/64"}]}}"#;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let v: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| v.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    }

    fn code_of(out: &str) -> u64 {
        serde_json::from_str::<Value>(out).unwrap()["code"]
            .as_u64()
            .unwrap()
    }

    const ADD: &[(&str, &str)] = &[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c0ffee"),
        ("CNI_NETNS", "/run/netns/pdt-x"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin"),
    ];

    #[test]
    fn version_lists_what_is_supported() {
        let (out, rc) = main(
            &vars(&[("CNI_COMMAND", "VERSION")]),
            b"{\"cniVersion\":\"1.0.0\"}",
        );
        assert_eq!(rc, 0);
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["supportedVersions"], json!(["1.0.0"]));
        assert_eq!(v["cniVersion"], "1.0.0");
    }

    #[test]
    fn bad_configs_env_and_versions_get_the_spec_codes() {
        let (out, rc) = main(&vars(ADD), b"{\"cniVersion\":\"1.0.0\"");
        assert_eq!((code_of(&out), rc), (4, 1), "{out}");
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["cniVersion"], "1.0.0");
        assert!(v["msg"]
            .as_str()
            .unwrap()
            .contains("invalid network configuration"));
        let no_vpc = CONF.replace("\"vpc\":\"a\",", "");
        assert_eq!(code_of(&main(&vars(ADD), no_vpc.as_bytes()).0), 4);
        let old = CONF.replace("1.0.0", "0.2.0");
        assert_eq!(code_of(&main(&vars(ADD), old.as_bytes()).0), 1);
        let no_ns: Vec<_> = ADD
            .iter()
            .filter(|(k, _)| *k != "CNI_NETNS")
            .copied()
            .collect();
        let (out, _) = main(&vars(&no_ns), CONF.as_bytes());
        assert_eq!(code_of(&out), 7, "{out}");
        assert!(out.contains("CNI_NETNS"));
        let (out, _) = main(&vars(&[("CNI_COMMAND", "FROB")]), CONF.as_bytes());
        assert_eq!(code_of(&out), 7);
        // A DEL needs no namespace; with no daemon behind the socket: try again later.
        let del: Vec<_> = no_ns
            .iter()
            .map(|&(k, v)| {
                if k == "CNI_COMMAND" {
                    (k, "DEL")
                } else {
                    (k, v)
                }
            })
            .collect();
        assert_eq!(code_of(&main(&vars(&del), CONF.as_bytes()).0), 11);
        // An IPAM plugin that is nowhere.
        let dhcp = CONF.replace("\"type\":\"static\"", "\"type\":\"pdt-no-ipam\"");
        assert_eq!(code_of(&main(&vars(ADD), dhcp.as_bytes()).0), 101);
    }

    #[test]
    fn the_result_has_the_interface_its_addresses_and_default_routes() {
        let conf = parse(CONF.as_bytes()).unwrap();
        let env = Env::from(&vars(ADD)).unwrap();
        let addrs = conf.ipam.addresses.iter().map(|a| a.address).collect();
        let r = result(&conf, &env, &addrs, "02:00:00:00:00:01", &Value::Null);
        assert_eq!(
            r,
            json!({
                "cniVersion": "1.0.0",
                "interfaces": [{"name": "eth0", "sandbox": "/run/netns/pdt-x", "mac": "02:00:00:00:00:01"}],
                "ips": [
                    {"address": "10.1.0.5/24", "gateway": "169.254.1.1", "interface": 0},
                    {"address": "fd00:1::5/64", "gateway": "fe80::1", "interface": 0},
                ],
                "routes": [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}, {"dst": "::/0", "gw": "fe80::1"}],
                "dns": {},
            })
        );
        assert_eq!(env.id(), "c0ffee/eth0");
    }
}
