//! The machine the announcer runs on: its hostname and its public and private IPv4
//! addresses, as every record of this host carries them.
//!
//! Addresses come from `--public-ipv4` / `--private-ipv4` (env `COREOS_PUBLIC_IPV4`,
//! `COREOS_PRIVATE_IPV4`), else from the `KEY=VALUE` lines of `/etc/environment` (the
//! CoreOS convention; the path is `--environment-file`). The choice is a pure function
//! ([`choose_address`]) so it is table-tested; only [`Machine::resolve`] reads files.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;

use crate::Error;

/// The `/etc/environment` key of the public address.
pub const PUBLIC_KEY: &str = "COREOS_PUBLIC_IPV4";
/// The `/etc/environment` key of the private address.
pub const PRIVATE_KEY: &str = "COREOS_PRIVATE_IPV4";

/// Facts about this host that go into every record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Machine {
    /// The `host` field of records; also how this host recognises the records it owns.
    pub hostname: String,
    /// The address clients outside the cluster use (`None`: not configured; the `value`
    /// layout does not need it).
    pub public_ipv4: Option<Ipv4Addr>,
    /// The address other machines of the cluster use.
    pub private_ipv4: Ipv4Addr,
    /// Where the public address came from, for `explain`.
    pub public_source: String,
    /// Where the private address came from, for `explain`.
    pub private_source: String,
}

/// Parses `KEY=VALUE` lines: blank lines and `#` comments are skipped, an optional
/// `export ` prefix is dropped, and one pair of surrounding quotes is removed.
#[must_use]
pub fn parse_environment(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let key = key.trim();
        let mut value = value.trim();
        for q in ['"', '\''] {
            if value.len() >= 2 && value.starts_with(q) && value.ends_with(q) {
                value = &value[1..value.len() - 1];
            }
        }
        if !key.is_empty() {
            out.insert(key.to_owned(), value.to_owned());
        }
    }
    out
}

/// Chooses one address: the flag (or its env twin) wins, else the environment file's `key`.
///
/// Returns the address and a description of where it came from, or `None` when neither
/// has it.
///
/// # Errors
/// [`Error::Address`] naming the file, key and value when the file's value is not an IPv4 address.
pub fn choose_address(
    flag: Option<Ipv4Addr>,
    flag_name: &str,
    file: &BTreeMap<String, String>,
    file_path: &Path,
    key: &str,
) -> Result<Option<(Ipv4Addr, String)>, Error> {
    if let Some(ip) = flag {
        return Ok(Some((ip, format!("{flag_name} / {key}"))));
    }
    match file.get(key).map(|v| v.trim()).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => v
            .parse::<Ipv4Addr>()
            .map(|ip| Some((ip, format!("{key} in {}", file_path.display()))))
            .map_err(|_| Error::Address {
                what: key.to_owned(),
                value: v.to_owned(),
                reason: format!("in {} is not an IPv4 address", file_path.display()),
            }),
    }
}

impl Machine {
    /// Resolves the hostname and both addresses. The environment file is read only when a
    /// flag is missing.
    ///
    /// # Errors
    /// [`Error::Address`] when no private address is known or a file value is no address;
    /// [`Error::Hostname`] when the hostname cannot be found.
    pub fn resolve(
        hostname: Option<&str>,
        public: Option<Ipv4Addr>,
        private: Option<Ipv4Addr>,
        environment_file: &Path,
    ) -> Result<Machine, Error> {
        let (file, file_note) = if public.is_some() && private.is_some() {
            (BTreeMap::new(), String::new())
        } else {
            match std::fs::read_to_string(environment_file) {
                Ok(text) => (parse_environment(&text), String::new()),
                Err(e) => (
                    BTreeMap::new(),
                    format!(" ({} is not readable: {e})", environment_file.display()),
                ),
            }
        };
        let public = choose_address(public, "--public-ipv4", &file, environment_file, PUBLIC_KEY)?;
        let private = choose_address(private, "--private-ipv4", &file, environment_file, PRIVATE_KEY)?;
        let Some((private_ipv4, private_source)) = private else {
            return Err(Error::Address {
                what: "private IPv4 address".into(),
                value: String::new(),
                reason: format!(
                    "not given: use --private-ipv4, set {PRIVATE_KEY}, or add {PRIVATE_KEY}=... to {}{file_note}",
                    environment_file.display()
                ),
            });
        };
        let (public_ipv4, public_source) = match public {
            Some((ip, src)) => (Some(ip), src),
            None => (
                None,
                format!("none (no --public-ipv4, {PUBLIC_KEY} or file entry){file_note}"),
            ),
        };
        let hostname = match hostname.map(str::trim).filter(|h| !h.is_empty()) {
            Some(h) => h.to_owned(),
            None => system_hostname()?,
        };
        Ok(Machine {
            hostname,
            public_ipv4,
            private_ipv4,
            public_source,
            private_source,
        })
    }
}

/// The kernel's hostname (what `hostname` prints).
fn system_hostname() -> Result<String, Error> {
    for path in ["/proc/sys/kernel/hostname", "/etc/hostname"] {
        if let Ok(s) = std::fs::read_to_string(path) {
            let h = s.trim();
            if !h.is_empty() {
                return Ok(h.to_owned());
            }
        }
    }
    Err(Error::Hostname)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_file_table() {
        let text = "# CoreOS\nCOREOS_PUBLIC_IPV4=162.242.255.73\n\
                    export COREOS_PRIVATE_IPV4=\"10.208.201.226\"\n\
                    EMPTY=\n  SPACED = 'x y' \nnot a pair\n=novalue\n";
        let env = parse_environment(text);
        let want: &[(&str, &str)] = &[
            ("COREOS_PRIVATE_IPV4", "10.208.201.226"),
            ("COREOS_PUBLIC_IPV4", "162.242.255.73"),
            ("EMPTY", ""),
            ("SPACED", "x y"),
        ];
        let got: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn address_choice_table() {
        let path = Path::new("/etc/environment");
        let file = parse_environment("COREOS_PRIVATE_IPV4=10.0.0.2\nBAD=nope\nBLANK=\n");
        let flag = Some(Ipv4Addr::new(10, 0, 0, 9));
        // (flag, key, expected address, expected source fragment, error?)
        type Case<'a> = (Option<Ipv4Addr>, &'a str, Option<Ipv4Addr>, &'a str, bool);
        let cases: &[Case] = &[
            (flag, PRIVATE_KEY, flag, "--private-ipv4", false),
            (
                None,
                PRIVATE_KEY,
                Some(Ipv4Addr::new(10, 0, 0, 2)),
                "in /etc/environment",
                false,
            ),
            (None, PUBLIC_KEY, None, "", false),
            (None, "BLANK", None, "", false),
            (None, "BAD", None, "", true),
            (flag, "BAD", flag, "--private-ipv4", false),
        ];
        for (flag, key, want, source, err) in cases {
            let got = choose_address(*flag, "--private-ipv4", &file, path, key);
            if *err {
                let e = got.unwrap_err().to_string();
                assert!(e.contains("\"nope\"") && e.contains("BAD"), "{e}");
                continue;
            }
            let got = got.unwrap();
            assert_eq!(got.as_ref().map(|g| g.0), *want, "key {key}");
            if let Some((_, src)) = got {
                assert!(src.contains(source), "{src}");
            }
        }
    }

    #[test]
    fn resolve_needs_a_private_address_and_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("environment");
        let err = Machine::resolve(Some("h"), None, None, &missing)
            .unwrap_err()
            .to_string();
        assert!(err.contains("private IPv4") && err.contains("environment"), "{err}");

        std::fs::write(&missing, "COREOS_PRIVATE_IPV4=10.1.1.1\nCOREOS_PUBLIC_IPV4=1.2.3.4\n").unwrap();
        let m = Machine::resolve(Some("core01"), None, None, &missing).unwrap();
        assert_eq!(m.private_ipv4, Ipv4Addr::new(10, 1, 1, 1));
        assert_eq!(m.public_ipv4, Some(Ipv4Addr::new(1, 2, 3, 4)));
        assert_eq!(m.hostname, "core01");

        // Flags win over the file; the system hostname is used when none is given.
        let m = Machine::resolve(None, Some(Ipv4Addr::LOCALHOST), None, &missing).unwrap();
        assert_eq!(m.public_ipv4, Some(Ipv4Addr::LOCALHOST));
        assert!(!m.hostname.is_empty());
    }
}
