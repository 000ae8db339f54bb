//! The unit files of `units/` cannot drift from the binaries: every `ExecStart=` that runs
//! one of our binaries goes through that binary's own parser (`--validate`, with the
//! environment the unit's `EnvironmentFile=` lines would give it), the co-location and
//! lifetime rules of the walkthrough are checked, no secret sits on a command line, the
//! plain-systemd units are the fleet units minus `[X-Fleet]`, and `systemd-analyze verify`
//! finds nothing to say about any of them.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// One unit file: section -> list of (key, value), in order.
#[derive(Debug, Default)]
struct Unit {
    name: String,
    sections: BTreeMap<String, Vec<(String, String)>>,
}

impl Unit {
    fn parse(path: &Path) -> Unit {
        let text = std::fs::read_to_string(path).unwrap();
        let mut unit = Unit {
            name: path.file_name().unwrap().to_string_lossy().into_owned(),
            ..Unit::default()
        };
        let mut section = String::new();
        let mut pending = String::new();
        for raw in text.lines() {
            let line = raw.trim_end();
            if pending.is_empty() && (line.trim_start().starts_with('#') || line.trim_start().starts_with(';')) {
                continue;
            }
            if let Some(cont) = line.strip_suffix('\\') {
                pending.push_str(cont);
                pending.push(' ');
                continue;
            }
            let full = format!("{pending}{line}");
            pending.clear();
            let full = full.trim();
            if full.is_empty() {
                continue;
            }
            if full.starts_with('[') && full.ends_with(']') {
                section = full[1..full.len() - 1].to_owned();
                unit.sections.entry(section.clone()).or_default();
                continue;
            }
            let (k, v) = full
                .split_once('=')
                .unwrap_or_else(|| panic!("{}: not key=value: {full}", unit.name));
            assert!(!section.is_empty(), "{}: {full} outside a section", unit.name);
            unit.sections
                .entry(section.clone())
                .or_default()
                .push((k.trim().to_owned(), v.trim().to_owned()));
        }
        unit
    }

    fn all(&self, section: &str, key: &str) -> Vec<&str> {
        self.sections
            .get(section)
            .map(|kv| kv.iter().filter(|(k, _)| k == key).map(|(_, v)| v.as_str()).collect())
            .unwrap_or_default()
    }

    fn one(&self, section: &str, key: &str) -> Option<&str> {
        self.all(section, key).last().copied()
    }
}

fn units_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../units")
}

fn load(dir: &str) -> BTreeMap<String, Unit> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(units_dir().join(dir)).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "service") {
            let u = Unit::parse(&path);
            out.insert(u.name.clone(), u);
        }
    }
    out
}

const EXPECTED: [&str; 7] = [
    "announcer-host.service",
    "db.service",
    "dbhelper.service",
    "lb-sync.service",
    "mondb.service",
    "monweb@.service",
    "web@.service",
];

/// The environment a unit's process would get: `/etc/environment` of a CoreOS host and the
/// example files of `units/env/` standing for `/etc/sidekick/*.env`.
fn unit_env(unit: &Unit) -> Vec<(String, String)> {
    let mut env = vec![("PATH".to_owned(), "/usr/bin:/bin".to_owned())];
    for file in unit.all("Service", "EnvironmentFile") {
        let file = file.trim_start_matches('-');
        let text = if file == "/etc/environment" {
            "COREOS_PUBLIC_IPV4=203.0.113.10\nCOREOS_PRIVATE_IPV4=10.0.0.10\n".to_owned()
        } else {
            let name = Path::new(file).file_name().unwrap().to_string_lossy().into_owned();
            assert!(
                file.starts_with("/etc/sidekick/"),
                "{}: unexpected EnvironmentFile {file}",
                unit.name
            );
            let example = units_dir().join("env").join(format!("{name}.example"));
            std::fs::read_to_string(&example)
                .unwrap_or_else(|_| panic!("{}: {file} has no example at {}", unit.name, example.display()))
        };
        for line in text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let (k, v) = line.split_once('=').unwrap();
            env.push((k.to_owned(), v.to_owned()));
        }
    }
    env
}

/// Expands `%i`, `%n`, `%H`, `%%` and `${VAR}` as systemd would for instance `01`.
fn expand(unit: &Unit, value: &str, env: &[(String, String)]) -> String {
    let instance_name = unit.name.replace("@.", "@01.");
    let mut s = value
        .replace("%%", "\u{0}")
        .replace("%i", "01")
        .replace("%n", &instance_name)
        .replace("%H", "core01");
    s = s.replace('\u{0}', "%");
    for (k, v) in env {
        s = s.replace(&format!("${{{k}}}"), v);
    }
    assert!(!s.contains("${"), "{}: unexpanded variable in {s}", unit.name);
    s
}

/// `/etc/sidekick/NAME` (a password or key file a unit names) -> `units/env/NAME.example`.
fn secret_files_to_examples(line: &str) -> String {
    line.split_whitespace()
        .map(|w| match w.strip_prefix("/etc/sidekick/") {
            // A whole word only: `-v /etc/sidekick/x:/run/secrets/x` is Docker's business.
            Some(name) if !name.contains(':') => {
                let example = units_dir().join("env").join(format!("{name}.example"));
                assert!(example.is_file(), "{w} has no example at {}", example.display());
                example.to_string_lossy().into_owned()
            }
            _ => w.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn our_binary(program: &str) -> Option<&'static str> {
    ["announcer", "lb-sync", "dbhelper"]
        .into_iter()
        .find(|b| program == format!("/opt/bin/{b}"))
}

#[test]
fn fleet_and_systemd_units_are_all_there_and_agree() {
    let fleet = load("fleet");
    let systemd = load("systemd");
    assert_eq!(fleet.keys().map(String::as_str).collect::<Vec<_>>(), EXPECTED);
    assert_eq!(systemd.keys().map(String::as_str).collect::<Vec<_>>(), EXPECTED);
    for (name, f) in &fleet {
        let s = &systemd[name];
        assert!(
            !s.sections.contains_key("X-Fleet"),
            "{name}: plain systemd unit has [X-Fleet]"
        );
        for section in ["Unit", "Service"] {
            assert_eq!(
                f.sections.get(section),
                s.sections.get(section),
                "{name}: [{section}] differs between fleet and systemd"
            );
        }
        assert_eq!(
            s.one("Install", "WantedBy"),
            Some("multi-user.target"),
            "{name}: systemd unit is not enabled anywhere"
        );
    }
}

#[test]
fn units_keep_the_walkthroughs_placement_and_lifetimes() {
    let u = load("fleet");
    let dbhelper = &u["dbhelper.service"];
    assert_eq!(dbhelper.one("Service", "Type"), Some("oneshot"));
    assert_eq!(dbhelper.one("Service", "RemainAfterExit"), Some("yes"));
    assert_eq!(dbhelper.one("X-Fleet", "X-ConditionMachineOf"), Some("db.service"));
    assert!(
        dbhelper.one("Service", "Restart").is_none(),
        "a oneshot seeder must not be restarted forever"
    );

    let mondb = &u["mondb.service"];
    assert_eq!(mondb.one("Unit", "BindsTo"), Some("db.service"));
    assert_eq!(mondb.one("X-Fleet", "X-ConditionMachineOf"), Some("db.service"));
    let exec = mondb.one("Service", "ExecStart").unwrap();
    assert!(
        exec.contains("container db ") && exec.contains("--layout value") && exec.contains("--instance db_private_ip")
    );

    let web = &u["web@.service"];
    assert!(
        web.one("Service", "ExecStart").unwrap().contains(":180%i:80"),
        "web@ publishes 180%i"
    );
    let monweb = &u["monweb@.service"];
    assert_eq!(monweb.one("Unit", "BindsTo"), Some("web@%i.service"));
    assert_eq!(monweb.one("X-Fleet", "X-ConditionMachineOf"), Some("web@%i.service"));
    let exec = monweb.one("Service", "ExecStart").unwrap();
    assert!(
        exec.contains("container web-%i ") && exec.contains("--instance web%i") && exec.contains("--layout fields")
    );

    assert!(
        u["lb-sync.service"]
            .one("Service", "ExecStart")
            .unwrap()
            .contains("--election-key")
    );
    assert!(
        u["announcer-host.service"]
            .one("Service", "ExecStart")
            .unwrap()
            .ends_with(" host")
    );
    assert_eq!(u["announcer-host.service"].one("X-Fleet", "Global"), Some("true"));
}

/// Words that name a secret. A variable or flag may name a secret's *file* (`*_FILE`,
/// `--*-file`), never carry the secret itself.
const SECRET_WORDS: [&str; 5] = ["PASSWORD", "PW", "API_KEY", "APIKEY", "SECRET"];

fn names_a_secret(word: &str) -> bool {
    let upper = word.to_uppercase().replace('-', "_");
    upper.split('_').any(|part| SECRET_WORDS.contains(&part)) || SECRET_WORDS.iter().any(|w| upper.contains(w))
}

#[test]
fn no_secret_is_on_a_command_line() {
    for (name, unit) in load("fleet") {
        for key in ["ExecStart", "ExecStartPre", "ExecStop"] {
            for line in unit.all("Service", key) {
                let words: Vec<&str> = line.split_whitespace().collect();
                for (i, word) in words.iter().enumerate() {
                    // `-e NAME=value` / `--env NAME=value` / a bare `NAME=value`.
                    let assignment = if matches!(*word, "-e" | "--env") {
                        words.get(i + 1).copied()
                    } else {
                        Some(*word)
                    };
                    if let Some((var, _)) = assignment.and_then(|a| a.split_once('='))
                        && !var.starts_with('-')
                        && names_a_secret(var)
                    {
                        assert!(var.ends_with("_FILE"), "{name}: {key} puts a secret in {var}: {line}");
                    }
                    // `--password x` / `--api-key x`: only files may be named.
                    if let Some(flag) = word.strip_prefix("--")
                        && names_a_secret(flag)
                    {
                        assert!(
                            flag.ends_with("-file"),
                            "{name}: {key} passes a secret flag --{flag}: {line}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn the_secret_check_can_fail() {
    assert!(names_a_secret("MYSQL_ROOT_PASSWORD") && names_a_secret("APP_PW") && names_a_secret("api-key"));
    assert!(!names_a_secret("APP_USER") && !names_a_secret("ETCD_ENDPOINTS") && !names_a_secret("PORT"));
}

#[test]
fn every_exec_start_of_our_binaries_passes_their_own_parser() {
    let dump = testbed::world_dump();
    let mut checked = 0;
    for dir in ["fleet", "systemd"] {
        for (name, unit) in load(dir) {
            let env = unit_env(&unit);
            for line in unit.all("Service", "ExecStart") {
                let line = secret_files_to_examples(
                    &expand(&unit, line, &env).replace("/opt/share/world_innodb.sql", &dump.to_string_lossy()),
                );
                let words: Vec<&str> = line.split_whitespace().collect();
                let Some(bin) = our_binary(words[0]) else {
                    assert_eq!(words[0], "/usr/bin/docker", "{name}: unexpected program {}", words[0]);
                    continue;
                };
                let out = Command::new(testbed::bin(bin))
                    .arg("--validate")
                    .args(&words[1..])
                    .env_clear()
                    .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                    .output()
                    .unwrap();
                let stdout = String::from_utf8_lossy(&out.stdout);
                assert!(
                    out.status.success() && stdout.starts_with(&format!("{bin}: configuration OK")),
                    "{dir}/{name}: `{line}` refused by {bin}:\n{stdout}{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 2 * 5, "five units per directory run our binaries");
}

#[test]
fn a_unit_with_a_bad_command_line_is_caught() {
    // The check above must be able to fail: the same path with a typo is refused.
    let unit = Unit::parse(&units_dir().join("fleet/monweb@.service"));
    let env = unit_env(&unit);
    let line =
        expand(&unit, unit.one("Service", "ExecStart").unwrap(), &env).replace("--layout fields", "--layout yaml");
    let words: Vec<&str> = line.split_whitespace().collect();
    let out = Command::new(testbed::bin("announcer"))
        .arg("--validate")
        .args(&words[1..])
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("yaml"));
}

#[test]
fn systemd_analyze_verify_finds_nothing_to_say() {
    let analyze = testbed::require_program("systemd-analyze", "sudo apt-get install -y systemd");
    let dir = tempfile::tempdir().unwrap();
    let mut targets = Vec::new();
    for (name, unit) in load("systemd") {
        let text = std::fs::read_to_string(units_dir().join("systemd").join(&name)).unwrap();
        // The binaries live in /opt/bin on a host; here they are the ones just built.
        let mut text = text;
        for bin in ["announcer", "lb-sync", "dbhelper"] {
            text = text.replace(&format!("/opt/bin/{bin}"), &testbed::bin(bin).to_string_lossy());
        }
        std::fs::write(dir.path().join(&name), text).unwrap();
        targets.push(unit.name.replace("@.", "@01."));
    }
    let out = Command::new(analyze)
        .arg("verify")
        .args(targets.iter().map(|t| format!("./{t}")))
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Units the host does not have (docker.service on a machine without the engine) are
    // the host's business, not the unit files'.
    let complaints: Vec<&str> = stderr.lines().filter(|l| !l.contains("docker.service")).collect();
    assert!(
        out.status.success() && complaints.is_empty(),
        "systemd-analyze verify:\n{stderr}"
    );
}
