//! The key layout under `<key_prefix>v1/` (documented in `docs/cluster.md`). The version in
//! the prefix lets a later peerd change the layout beside this one.
use std::net::IpAddr;

/// Names of every key peerd uses, for one key prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keys {
    /// `<key_prefix>v1/`.
    root: String,
}

/// What a key under the root is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Key {
    /// Bumped by every apply: the guard of its transaction.
    Serial,
    /// The next VNI to allocate.
    VniNext,
    Vpc(String),
    Vni(String),
    Peering(String),
    Host(String),
    Endpoint {
        vpc: String,
        addr: IpAddr,
        host: String,
    },
    /// Under the root but not a key of this layout (left alone).
    Unknown,
}

impl Keys {
    /// Version of the layout.
    pub const VERSION: &'static str = "v1";

    /// `key_prefix` ends with `/` (checked by the configuration).
    pub fn new(key_prefix: &str) -> Self {
        Self {
            root: format!("{key_prefix}{}/", Self::VERSION),
        }
    }

    pub fn root(&self) -> &str {
        &self.root
    }

    pub fn serial(&self) -> String {
        format!("{}serial", self.root)
    }

    pub fn vni_next(&self) -> String {
        format!("{}vni-next", self.root)
    }

    pub fn vpcs(&self) -> String {
        format!("{}vpcs/", self.root)
    }

    pub fn vpc(&self, name: &str) -> String {
        format!("{}vpcs/{name}", self.root)
    }

    pub fn vnis(&self) -> String {
        format!("{}vnis/", self.root)
    }

    pub fn vni(&self, name: &str) -> String {
        format!("{}vnis/{name}", self.root)
    }

    pub fn peerings(&self) -> String {
        format!("{}peerings/", self.root)
    }

    pub fn peering(&self, id: &str) -> String {
        format!("{}peerings/{id}", self.root)
    }

    pub fn host(&self, name: &str) -> String {
        format!("{}hosts/{name}", self.root)
    }

    /// Every endpoint key of `vpc` (all hosts).
    pub fn endpoints_of(&self, vpc: &str) -> String {
        format!("{}endpoints/{vpc}/", self.root)
    }

    pub fn endpoint(&self, vpc: &str, addr: IpAddr, host: &str) -> String {
        format!("{}endpoints/{vpc}/{addr}/{host}", self.root)
    }

    /// What `key` is (keys outside the root are [`Key::Unknown`]).
    pub fn parse(&self, key: &str) -> Key {
        let Some(rest) = key.strip_prefix(&self.root) else {
            return Key::Unknown;
        };
        let one = |s: &str| (!s.is_empty() && !s.contains('/')).then(|| s.to_owned());
        if rest == "serial" {
            return Key::Serial;
        }
        if rest == "vni-next" {
            return Key::VniNext;
        }
        let parsed = if let Some(n) = rest.strip_prefix("vpcs/") {
            one(n).map(Key::Vpc)
        } else if let Some(n) = rest.strip_prefix("vnis/") {
            one(n).map(Key::Vni)
        } else if let Some(n) = rest.strip_prefix("peerings/") {
            one(n).map(Key::Peering)
        } else if let Some(n) = rest.strip_prefix("hosts/") {
            one(n).map(Key::Host)
        } else if let Some(e) = rest.strip_prefix("endpoints/") {
            // <vpc>/<addr>/<host>: neither the VPC nor the host name holds a '/'.
            e.split_once('/').and_then(|(vpc, r)| {
                let (addr, host) = r.rsplit_once('/')?;
                Some(Key::Endpoint {
                    vpc: one(vpc)?,
                    addr: addr.parse().ok()?,
                    host: one(host)?,
                })
            })
        } else {
            None
        };
        parsed.unwrap_or(Key::Unknown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        let k = Keys::new("/peerd/");
        assert_eq!(k.vpc("web"), "/peerd/v1/vpcs/web");
        assert_eq!(k.parse(&k.vpc("web")), Key::Vpc("web".into()));
        assert_eq!(k.parse(&k.vni("web")), Key::Vni("web".into()));
        assert_eq!(k.parse(&k.peering("pcx-1")), Key::Peering("pcx-1".into()));
        assert_eq!(k.parse(&k.host("hv1.dc")), Key::Host("hv1.dc".into()));
        assert_eq!(k.parse(&k.serial()), Key::Serial);
        assert_eq!(k.parse(&k.vni_next()), Key::VniNext);
        for addr in ["10.1.2.3", "2001:db8::1"] {
            let a: IpAddr = addr.parse().unwrap();
            assert_eq!(
                k.parse(&k.endpoint("web", a, "hv2")),
                Key::Endpoint {
                    vpc: "web".into(),
                    addr: a,
                    host: "hv2".into()
                }
            );
        }
        assert_eq!(k.parse("/peerd/v1/vpcs/"), Key::Unknown);
        assert_eq!(k.parse("/peerd/v1/vpcs/a/b"), Key::Unknown);
        assert_eq!(k.parse("/peerd/v1/endpoints/web/nope/hv1"), Key::Unknown);
        assert_eq!(k.parse("/other/v1/vpcs/web"), Key::Unknown);
        assert_eq!(k.parse("/peerd/v2/vpcs/web"), Key::Unknown);
    }
}
