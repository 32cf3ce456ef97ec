//! `[cluster]` in the host file, and checking VPC declarations from several sources (`peerd
//! apply`).
use std::path::{Path, PathBuf};

use super::*;

fn load(text: &str) -> Result<Config, ConfigError> {
    Config::from_str(text, Path::new("/etc/peerd/hv1.toml"))
}

const HOST: &str = "[cluster]\netcd = [\"http://10.0.0.1:2379\"]\nhost = \"hv1\"\nunderlay = \"10.0.0.11\"\nvpcs = [\"web\", \"db\"]\n";

#[test]
fn a_cluster_section_parses_with_defaults() {
    let c = load(HOST).unwrap().daemon.cluster.unwrap();
    assert_eq!(c.host, "hv1");
    assert_eq!(c.underlay, "10.0.0.11".parse::<std::net::IpAddr>().unwrap());
    assert_eq!(c.vpcs, ["web", "db"]);
    assert_eq!(c.key_prefix, "/peerd/");
    assert_eq!(c.lease_ttl.as_secs(), 15);
    assert_eq!(c.vxlan_port, 4789);
    let c = load(&HOST.replace("10.0.0.11", "fd00::11")).unwrap();
    assert!(c.daemon.cluster.unwrap().underlay.is_ipv6());
}

#[test]
fn cluster_mistakes_are_named_where_they_are() {
    let e = load(&format!(
        "{HOST}[[vpc]]\nname = \"x\"\ncidrs = [\"10.1.0.0/16\"]\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("hv1.toml:6:1") && e.contains("peerd apply"),
        "{e}"
    );
    let e = load(&HOST.replace("10.0.0.11", "10.0.0.300"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("hv1.toml:4:") && e.contains("not an IP address"),
        "{e}"
    );
    let e = load(&HOST.replace("http://10.0.0.1:2379", "10.0.0.1:2379"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("not an http:// or https:// URL"), "{e}");
    let e = load(&format!("[daemon]\ndatapath = \"xdp\"\n{HOST}"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("bpf_skb_set_tunnel_key"), "{e}");
    let e = load(&HOST.replace(
        "vpcs = [\"web\", \"db\"]",
        "vpcs = [\"web\", \"web\"]\nlease_ttl = \"1s\"",
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("listed twice") && e.contains("lease_ttl"), "{e}");
}

#[test]
fn vpc_sources_are_checked_together_with_their_own_locations() {
    let a = (
        PathBuf::from("tenant-a.toml"),
        "[[vpc]]\nname = \"a\"\ncidrs = [\"10.1.0.0/16\"]\n  [[vpc.peering]]\n  id = \"pcx-ab\"\n  peer = \"b\"\n".to_owned(),
    );
    let b_wrong = (
        PathBuf::from("etcd:/peerd/v1/vpcs/b"),
        "[[vpc]]\nname = \"b\"\ncidrs = [\"10.2.0.0/16\"]\n  [[vpc.peering]]\n  id = \"pcx-ab\"\n  peer = \"c\"\n".to_owned(),
    );
    let d = DaemonConfig::default();
    let e = check_vpc_sources(&[a.clone(), b_wrong], &d)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("etcd:/peerd/v1/vpcs/b:4:") && e.contains("disagree"),
        "{e}"
    );
    let dup = (PathBuf::from("other.toml"), a.1.clone());
    let e = check_vpc_sources(&[a.clone(), dup], &d)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("other.toml:2:") && e.contains("already defined"),
        "{e}"
    );
    let vpcs = check_vpc_sources(&[a], &d).unwrap();
    assert_eq!(vpcs[0].name, "a");
}
