//! Reconciler for the backstop: an nftables table of peerd's own that drops (and counts)
//! anything arriving on one of peerd's host-side links that reaches the host's IP stack.
//!
//! In normal operation nothing does: the datapath program redirects or drops every packet at
//! TC ingress (or XDP), before netfilter. Should a program ever be missing from a link — the
//! window between a detach and its repair, a failed attach — the VPC's packets would otherwise
//! be routed or delivered by the host. The counter is exported so that operators can alert on
//! any non-zero value.
//!
//! The table is `inet <name>` with a set `links` of interface names and one prerouting rule at
//! priority -500 (before conntrack); peerd changes only the set's elements, so the counter
//! survives reconciles.
use std::{collections::BTreeSet, fmt, io::Write as _, process::Command};

use super::Report;

/// The table of a daemon whose VPC namespaces start with `netns_prefix`.
pub fn table_name(netns_prefix: &str) -> String {
    let clean: String = netns_prefix
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("peerd_{clean}")
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Have {
    /// The table, its chain and its rule are as peerd makes them.
    pub complete: bool,
    pub links: BTreeSet<String>,
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// (Re)creates the table, its set (with these links), chain and rule.
    Create {
        table: String,
        links: BTreeSet<String>,
    },
    Add {
        table: String,
        links: BTreeSet<String>,
    },
    Remove {
        table: String,
        links: BTreeSet<String>,
    },
    Delete {
        table: String,
    },
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |l: &BTreeSet<String>| l.iter().cloned().collect::<Vec<_>>().join(", ");
        match self {
            Change::Create { table, links } => write!(
                f,
                "created backstop table inet {table} ({} links)",
                links.len()
            ),
            Change::Add { table, links } => {
                write!(f, "backstop {table}: + {}", list(links))
            }
            Change::Remove { table, links } => {
                write!(f, "backstop {table}: - {}", list(links))
            }
            Change::Delete { table } => write!(f, "deleted backstop table inet {table}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("running nft: {0} (is nftables installed?)")]
    Spawn(std::io::Error),
    #[error("nft {what}: {stderr}")]
    Failed { what: &'static str, stderr: String },
    #[error("nft output: {0}")]
    Parse(String),
}

fn nft(args: &[&str], script: Option<&str>, what: &'static str) -> Result<String, Error> {
    let mut cmd = Command::new("nft");
    cmd.args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().map_err(Error::Spawn)?;
    if let (Some(s), Some(mut stdin)) = (script, child.stdin.take()) {
        stdin.write_all(s.as_bytes()).map_err(Error::Spawn)?;
    }
    let out = child.wait_with_output().map_err(Error::Spawn)?;
    if !out.status.success() {
        return Err(Error::Failed {
            what,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Reads the table; a missing table is an empty `Have`.
pub fn observe(table: &str) -> Result<Have, Error> {
    let text = match nft(&["-j", "list", "table", "inet", table], None, "list") {
        Ok(t) => t,
        Err(Error::Failed { stderr, .. }) if stderr.contains("No such file") => {
            return Ok(Have::default())
        }
        Err(e) => return Err(e),
    };
    parse(&text)
}

fn parse(text: &str) -> Result<Have, Error> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| Error::Parse(e.to_string()))?;
    let mut have = Have::default();
    let (mut set, mut chain, mut rule) = (false, false, false);
    for item in v["nftables"].as_array().into_iter().flatten() {
        if let Some(s) = item.get("set").filter(|s| s["name"] == "links") {
            set = true;
            for e in s["elem"].as_array().into_iter().flatten() {
                if let Some(n) = e.as_str() {
                    have.links.insert(n.to_owned());
                }
            }
        }
        if item
            .get("chain")
            .is_some_and(|c| c["name"] == "backstop" && c["hook"] == "prerouting")
        {
            chain = true;
        }
        if let Some(r) = item.get("rule").filter(|r| r["chain"] == "backstop") {
            let exprs = r["expr"].as_array().cloned().unwrap_or_default();
            let drops = exprs.iter().any(|e| e.get("drop").is_some());
            if let Some(c) = exprs.iter().find_map(|e| e.get("counter")) {
                have.packets = c["packets"].as_u64().unwrap_or(0);
                have.bytes = c["bytes"].as_u64().unwrap_or(0);
                rule |= drops;
            }
        }
    }
    have.complete = set && chain && rule;
    Ok(have)
}

pub fn diff(have: &Have, table: &str, want: &BTreeSet<String>) -> Vec<Change> {
    if !have.complete {
        return vec![Change::Create {
            table: table.to_owned(),
            links: want.clone(),
        }];
    }
    let mut out = Vec::new();
    let add: BTreeSet<String> = want.difference(&have.links).cloned().collect();
    let remove: BTreeSet<String> = have.links.difference(want).cloned().collect();
    if !add.is_empty() {
        out.push(Change::Add {
            table: table.to_owned(),
            links: add,
        });
    }
    if !remove.is_empty() {
        out.push(Change::Remove {
            table: table.to_owned(),
            links: remove,
        });
    }
    out
}

fn elements(links: &BTreeSet<String>) -> String {
    links
        .iter()
        .map(|l| format!("\"{l}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

fn script(c: &Change) -> String {
    match c {
        Change::Create { table, links } => {
            let mut s = format!(
                "table inet {table}\ndelete table inet {table}\ntable inet {table} {{\n  set links {{ type ifname; }}\n  chain backstop {{\n    type filter hook prerouting priority -500; policy accept;\n    iifname @links counter drop comment \"peerd backstop: VPC traffic that reached the host stack\"\n  }}\n}}\n"
            );
            if !links.is_empty() {
                s += &format!("add element inet {table} links {{ {} }}\n", elements(links));
            }
            s
        }
        Change::Add { table, links } => {
            format!("add element inet {table} links {{ {} }}\n", elements(links))
        }
        Change::Remove { table, links } => {
            format!(
                "delete element inet {table} links {{ {} }}\n",
                elements(links)
            )
        }
        Change::Delete { table } => format!("table inet {table}\ndelete table inet {table}\n"),
    }
}

/// Applies the changes, each one atomically (`nft -f -`).
pub fn apply(changes: Vec<Change>) -> Report {
    let mut report = Report::default();
    for c in changes {
        match nft(&["-f", "-"], Some(&script(&c)), "apply") {
            Ok(_) => report.actions.push(c.to_string()),
            Err(e) => {
                report.errors.insert("backstop".into(), format!("{c}: {e}"));
            }
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nft_json_and_diffs_set_elements() {
        let json = r#"{"nftables":[{"metainfo":{}},{"table":{"family":"inet","name":"peerd_x","handle":1}},
        {"set":{"family":"inet","name":"links","table":"peerd_x","type":"ifname","handle":2,"elem":["pda","pdb"]}},
        {"chain":{"family":"inet","table":"peerd_x","name":"backstop","handle":1,"type":"filter","hook":"prerouting","prio":-500,"policy":"accept"}},
        {"rule":{"family":"inet","table":"peerd_x","chain":"backstop","handle":3,"expr":[{"match":{}},{"counter":{"packets":4,"bytes":400}},{"drop":null}]}}]}"#;
        let have = parse(json).unwrap();
        assert!(have.complete);
        assert_eq!(have.packets, 4);
        let want: BTreeSet<String> = ["pdb".into(), "pdc".into()].into();
        let c: Vec<String> = diff(&have, "peerd_x", &want)
            .iter()
            .map(|c| c.to_string())
            .collect();
        assert_eq!(c, ["backstop peerd_x: + pdc", "backstop peerd_x: - pda"]);
        // A flushed chain: the table is made again.
        let flushed = json.replace(r#"{"drop":null}"#, r#"{"accept":null}"#);
        assert!(matches!(
            diff(&parse(&flushed).unwrap(), "peerd_x", &want)[0],
            Change::Create { .. }
        ));
        assert_eq!(table_name("pdt123-"), "peerd_pdt123_");
    }
}
