//! The Debian package of the suite, `target/debian/sidekick_<version>-1_amd64.deb`, met as an
//! operator meets it: what `dpkg-deb` says it holds and declares, maintainer scripts that
//! never enable or start a service, `lintian` without an error, binaries that name their
//! build and run from an extracted root, working man pages and completions, units that point
//! at the packaged binaries and pass `systemd-analyze verify`, and the very same build in
//! the package and in the images' labels. `scripts/package` builds the package (`scripts/test`
//! runs it after `scripts/build-images`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BINARIES: [&str; 3] = ["announcer", "lb-sync", "dbhelper"];
/// The static build of `scripts/build-images`, which the package reuses.
const RELEASE_DIR: &str = "target/x86_64-unknown-linux-musl/release";
/// The settings the units read: conffiles, kept across upgrades.
const CONFFILES: [&str; 4] = [
    "/etc/sidekick/dbhelper.env",
    "/etc/sidekick/etcd.env",
    "/etc/sidekick/lb-sync.env",
    "/etc/sidekick/web.env",
];
/// Where every file of the package may land. Nothing in /etc/systemd (an enabled unit
/// is a symlink there), nothing in /opt.
const ALLOWED: [&str; 9] = [
    "usr/bin/",
    "lib/systemd/system/",
    "etc/sidekick/",
    "usr/share/man/man1/",
    "usr/share/bash-completion/completions/",
    "usr/share/zsh/vendor-completions/",
    "usr/share/fish/vendor_completions.d/",
    "usr/share/doc/sidekick/",
    "usr/share/lintian/overrides/",
];

/// This source tree (the test's own path, so a test binary always checks its own tree).
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn deb_version() -> String {
    format!("{}-1", env!("CARGO_PKG_VERSION"))
}

fn deb() -> PathBuf {
    let path = repo().join(format!("target/debian/sidekick_{}_amd64.deb", deb_version()));
    assert!(
        path.is_file(),
        "{} is missing: build it with scripts/package (scripts/test runs it after scripts/build-images)",
        path.display()
    );
    path
}

fn run(program: &Path, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()))
}

fn ok(program: &Path, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "{} {args:?} failed:\n{}{}",
        program.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn dpkg_deb() -> PathBuf {
    testbed::require_program("dpkg-deb", "sudo apt-get install -y dpkg")
}

/// The package extracted with `dpkg -x` into a temporary root.
fn extract() -> tempfile::TempDir {
    let dpkg = testbed::require_program("dpkg", "sudo apt-get install -y dpkg");
    let root = tempfile::tempdir().unwrap();
    ok(&dpkg, &["-x", deb().to_str().unwrap(), root.path().to_str().unwrap()]);
    root
}

/// The control files (control, conffiles, maintainer scripts) extracted with `dpkg-deb -e`.
fn control_files() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let control = dir.path().join("DEBIAN");
    ok(&dpkg_deb(), &["-e", deb().to_str().unwrap(), control.to_str().unwrap()]);
    (dir, control)
}

/// `dpkg-deb --contents`: path (without the leading `.`) -> (mode string, owner).
fn contents() -> BTreeMap<String, (String, String)> {
    let listing = ok(&dpkg_deb(), &["--contents", deb().to_str().unwrap()]);
    listing
        .lines()
        .map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            assert!(words.len() >= 6, "unexpected dpkg-deb --contents line: {line}");
            let path = words[5].trim_start_matches('.').to_owned();
            (path, (words[0].to_owned(), words[1].to_owned()))
        })
        .collect()
}

/// The subcommands a binary's `--help` lists (each gets a man page).
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect()
}

fn repo_units() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(repo().join("units/systemd"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".service"))
        .collect();
    names.sort();
    assert_eq!(names.len(), 7, "units/systemd: {names:?}");
    names
}

#[test]
fn package_holds_binaries_units_settings_man_pages_and_completions_in_place() {
    let files = contents();
    let root = extract();
    let mut expected: Vec<(String, &str)> = Vec::new();
    for bin in BINARIES {
        expected.push((format!("/usr/bin/{bin}"), "-rwxr-xr-x"));
        expected.push((format!("/usr/share/man/man1/{bin}.1.gz"), "-rw-r--r--"));
        let help = ok(&root.path().join("usr/bin").join(bin), &["--help"]);
        let subs = subcommands(&help);
        assert!(!subs.is_empty(), "{bin} --help lists no subcommand:\n{help}");
        for sub in subs {
            expected.push((format!("/usr/share/man/man1/{bin}-{sub}.1.gz"), "-rw-r--r--"));
        }
        expected.push((format!("/usr/share/bash-completion/completions/{bin}"), "-rw-r--r--"));
        expected.push((format!("/usr/share/zsh/vendor-completions/_{bin}"), "-rw-r--r--"));
        expected.push((format!("/usr/share/fish/vendor_completions.d/{bin}.fish"), "-rw-r--r--"));
    }
    for unit in repo_units() {
        expected.push((format!("/lib/systemd/system/{unit}"), "-rw-r--r--"));
    }
    for conf in CONFFILES {
        // etcd.env may carry ETCD_PASSWORD.
        let mode = if conf.ends_with("/etcd.env") {
            "-rw-------"
        } else {
            "-rw-r--r--"
        };
        expected.push((conf.to_owned(), mode));
    }
    for doc in ["copyright", "changelog.Debian.gz"] {
        expected.push((format!("/usr/share/doc/sidekick/{doc}"), "-rw-r--r--"));
    }
    for (path, mode) in &expected {
        let found = files.get(path).map(|(m, _)| m.as_str());
        assert_eq!(found, Some(*mode), "{path} in the package (contents: {files:#?})");
    }
    for (path, (mode, owner)) in &files {
        // dpkg-deb --root-owner-group writes root/root; numeric ids would do as well.
        assert!(owner == "0/0" || owner == "root/root", "{path} is owned by {owner}");
        if mode.starts_with('d') {
            continue;
        }
        assert!(
            ALLOWED.iter().any(|prefix| path.starts_with(&format!("/{prefix}"))),
            "{path} lands outside the package's places {ALLOWED:?}"
        );
    }
    assert!(
        !files
            .keys()
            .any(|p| p.starts_with("/etc/systemd") || p.starts_with("/opt")),
        "nothing enabled by a shipped symlink, nothing in /opt"
    );
    // Secrets are never shipped as files a unit would read.
    for secret in ["db_root_pw", "app_pw", "rackspace_api_key"] {
        assert!(
            !files.contains_key(&format!("/etc/sidekick/{secret}")),
            "{secret} shipped in /etc"
        );
    }
}

#[test]
fn control_fields_conffiles_and_changelog_name_the_suite_and_this_version() {
    let deb = deb();
    let field = |name: &str| {
        ok(&dpkg_deb(), &["--field", deb.to_str().unwrap(), name])
            .trim()
            .to_owned()
    };
    assert_eq!(field("Package"), "sidekick");
    assert_eq!(field("Version"), deb_version());
    assert_eq!(field("Architecture"), "amd64");
    assert_eq!(field("Section"), "admin");
    assert_eq!(field("Priority"), "optional");
    assert!(field("Maintainer").contains('@'), "Maintainer: {}", field("Maintainer"));
    assert_eq!(field("Depends"), "", "static binaries depend on no library");
    assert!(field("Recommends").contains("docker.io"));
    let info = ok(&dpkg_deb(), &["--info", deb.to_str().unwrap()]);
    assert!(info.contains(" Description: "), "no description:\n{info}");
    let installed_kib: u64 = field("Installed-Size").parse().unwrap();
    assert!(
        installed_kib < 3 * 8 * 1024,
        "Installed-Size {installed_kib} KiB: three binaries well under 8 MiB each and text"
    );

    let (_dir, control) = control_files();
    let conffiles = std::fs::read_to_string(control.join("conffiles")).expect("the package declares conffiles");
    let mut conffiles: Vec<&str> = conffiles.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    conffiles.sort_unstable();
    assert_eq!(
        conffiles, CONFFILES,
        "every setting in /etc is a conffile, nothing else is"
    );

    // The changelog's latest entry is this very version.
    let root = extract();
    let gzip = testbed::require_program("gzip", "sudo apt-get install -y gzip");
    let changelog_path = root.path().join("usr/share/doc/sidekick/changelog.Debian.gz");
    let changelog = ok(&gzip, &["-dc", changelog_path.to_str().unwrap()]);
    let first = changelog.lines().next().unwrap_or_default();
    assert!(
        first.starts_with(&format!("sidekick ({}) ", deb_version())),
        "dist/debian/changelog does not start with this version: {first}"
    );
    let copyright = std::fs::read_to_string(root.path().join("usr/share/doc/sidekick/copyright")).unwrap();
    assert!(copyright.contains("License: Apache-2.0") && copyright.contains("/usr/share/common-licenses/Apache-2.0"));
}

/// Lines of a maintainer script that enable or start a service (or let one be started by
/// an init script), as the operator would not expect from an install.
fn enables_or_starts(script: &str) -> Vec<String> {
    const MANAGERS: [&str; 6] = [
        "systemctl",
        "deb-systemd-invoke",
        "deb-systemd-helper",
        "invoke-rc.d",
        "service",
        "update-rc.d",
    ];
    const VERBS: [&str; 9] = [
        "start",
        "restart",
        "try-restart",
        "reload-or-restart",
        "try-reload-or-restart",
        "enable",
        "reenable",
        "defaults",
        "isolate",
    ];
    let mut offending = Vec::new();
    for line in script.lines().map(str::trim).filter(|l| !l.starts_with('#')) {
        let words: Vec<&str> = line
            .split(|c: char| c.is_whitespace() || matches!(c, ';' | '&' | '|' | '(' | ')' | '`'))
            .filter(|w| !w.is_empty())
            .collect();
        for (i, word) in words.iter().enumerate() {
            let program = word.rsplit('/').next().unwrap_or(word);
            if !MANAGERS.contains(&program) {
                continue;
            }
            let args = &words[i + 1..];
            let bad = args.contains(&"--now")
                || args
                    .iter()
                    .filter(|a| !a.starts_with('-') && !a.starts_with('>') && !a.contains("/dev/null"))
                    .take(2)
                    .any(|a| VERBS.contains(a));
            if bad {
                offending.push(line.to_owned());
            }
        }
    }
    offending
}

#[test]
fn the_maintainer_script_check_can_fail() {
    // What cargo-deb's and debhelper's systemd snippets do when told to enable and start.
    for bad in [
        "deb-systemd-helper enable lb-sync.service >/dev/null || true",
        "\t\tdeb-systemd-invoke start announcer-host.service >/dev/null || true",
        "systemctl --system enable --now db.service",
        "if true; then /usr/bin/systemctl restart web@01.service; fi",
        "update-rc.d sidekick defaults >/dev/null",
        "invoke-rc.d sidekick start || exit 1",
    ] {
        assert_eq!(enables_or_starts(bad).len(), 1, "not caught: {bad}");
    }
    for fine in [
        "systemctl --system daemon-reload >/dev/null || true",
        "deb-systemd-invoke stop announcer-host.service lb-sync.service >/dev/null || true",
        "# systemctl enable db.service is yours to run",
        "deb-systemd-helper update-state db.service >/dev/null || true",
    ] {
        assert!(enables_or_starts(fine).is_empty(), "wrongly caught: {fine}");
    }
}

#[test]
fn no_maintainer_script_enables_or_starts_a_service() {
    let (_dir, control) = control_files();
    let sh = testbed::require_program("sh", "sudo apt-get install -y dash");
    let mut scripts = 0;
    for name in ["preinst", "postinst", "prerm", "postrm", "config"] {
        let path = control.join(name);
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        scripts += 1;
        ok(&sh, &["-n", path.to_str().unwrap()]);
        let offending = enables_or_starts(&text);
        assert!(
            offending.is_empty(),
            "{name} enables or starts a service: {offending:#?}\n{text}"
        );
    }
    // The ones we ship (daemon-reload after install and removal, stop on removal).
    assert_eq!(scripts, 3, "postinst, prerm and postrm: {control:?}");
}

#[test]
fn lintian_finds_no_error() {
    let lintian = testbed::require_program("lintian", "sudo apt-get install -y lintian");
    let deb = deb();
    let out = run(&lintian, &["--fail-on", "error", deb.to_str().unwrap()]);
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let errors: Vec<&str> = report.lines().filter(|l| l.starts_with("E:")).collect();
    assert!(
        out.status.success() && errors.is_empty(),
        "lintian {}:\n{report}",
        deb.display()
    );
}

/// `announcer 0.1.0 (git <40 hex>, clean|dirty)` -> (version, commit, tree).
fn parse_version(bin: &str, line: &str) -> (String, String, String) {
    let rest = line
        .strip_prefix(&format!("{bin} "))
        .unwrap_or_else(|| panic!("{bin} --version: {line}"));
    let (version, build) = rest
        .split_once(' ')
        .unwrap_or_else(|| panic!("{bin} --version: {line}"));
    let build = build
        .strip_prefix("(git ")
        .and_then(|b| b.strip_suffix(')'))
        .unwrap_or_else(|| panic!("{bin} --version names no build: {line}"));
    let (commit, tree) = build
        .split_once(", ")
        .unwrap_or_else(|| panic!("{bin} --version: no commit and tree state in {line}"));
    (version.to_owned(), commit.to_owned(), tree.to_owned())
}

fn head_commit() -> String {
    let git = testbed::require_program("git", "sudo apt-get install -y git");
    let out = Command::new(git)
        .args(["-C", repo().to_str().unwrap(), "rev-parse", "HEAD"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the test needs the source tree as a git repository"
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn extracted_binaries_are_static_name_their_build_and_help() {
    let root = extract();
    let ldd = testbed::require_program("ldd", "sudo apt-get install -y libc-bin");
    let head = head_commit();
    for bin in BINARIES {
        let path = root.path().join("usr/bin").join(bin);
        let size = std::fs::metadata(&path).unwrap().len();
        assert!(size < 8 * 1024 * 1024, "{bin} is {size} bytes: over the 8 MiB budget");
        let out = run(&ldd, &[path.to_str().unwrap()]);
        let ldd_says = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            ldd_says.contains("statically linked") || ldd_says.contains("not a dynamic executable"),
            "{bin} is not static: {ldd_says}"
        );

        let line = ok(&path, &["--version"]);
        let (version, commit, tree) = parse_version(bin, line.trim());
        assert_eq!(version, env!("CARGO_PKG_VERSION"), "{line}");
        assert!(
            commit.len() == 40 && commit.bytes().all(|b| b.is_ascii_hexdigit()),
            "{bin} --version names no commit: {line}"
        );
        assert_eq!(
            commit, head,
            "{bin} in the package was built at another commit than HEAD: run scripts/package"
        );
        assert!(tree == "clean" || tree == "dirty", "{line}");

        let help = ok(&path, &["--help"]);
        assert!(
            help.contains(&format!("Usage: {bin} ")) && help.contains("[env: ETCD_ENDPOINTS="),
            "{bin} --help:\n{help}"
        );
    }
}

#[test]
fn man_pages_render_and_bash_completion_completes_subcommands() {
    let root = extract();
    let man = testbed::require_program("man", "sudo apt-get install -y man-db");
    let bash = testbed::require_program("bash", "sudo apt-get install -y bash");
    for bin in BINARIES {
        let page = root.path().join(format!("usr/share/man/man1/{bin}.1.gz"));
        let out = Command::new(&man)
            .args(["-l", page.to_str().unwrap()])
            .env("MANWIDTH", "100")
            .env("MANPAGER", "cat")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("NAME") && text.contains("--etcd-endpoints"),
            "man -l {}:\n{text}{}",
            page.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains(&format!("v{}", env!("CARGO_PKG_VERSION"))),
            "{bin}'s man page names no version:\n{text}"
        );

        let help = ok(&root.path().join("usr/bin").join(bin), &["--help"]);
        let subs = subcommands(&help);
        let completion = root.path().join(format!("usr/share/bash-completion/completions/{bin}"));
        let script = format!(
            "source '{}'\nCOMP_WORDS=({bin} '')\nCOMP_CWORD=1\nCOMP_LINE='{bin} '\nCOMP_POINT=${{#COMP_LINE}}\n\
             fn=$(complete -p {bin} | sed -n 's/.*-F \\([^ ]*\\).*/\\1/p')\n\"$fn\" {bin} '' {bin}\n\
             printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            completion.display()
        );
        let offered = ok(&bash, &["--norc", "--noprofile", "-c", &script]);
        for sub in &subs {
            assert!(
                offered.lines().any(|w| w.trim() == sub),
                "bash completion of `{bin} ` does not offer {sub}: {offered}"
            );
        }
        let zsh =
            std::fs::read_to_string(root.path().join(format!("usr/share/zsh/vendor-completions/_{bin}"))).unwrap();
        assert!(zsh.starts_with(&format!("#compdef {bin}")), "zsh completion of {bin}");
        let fish = std::fs::read_to_string(
            root.path()
                .join(format!("usr/share/fish/vendor_completions.d/{bin}.fish")),
        )
        .unwrap();
        assert!(
            fish.contains(&format!("complete -c {bin} ")),
            "fish completion of {bin}"
        );
    }
}

#[test]
fn packaged_units_run_the_packaged_binaries_and_pass_systemd_analyze_verify() {
    let root = extract();
    let analyze = testbed::require_program("systemd-analyze", "sudo apt-get install -y systemd");
    let dir = tempfile::tempdir().unwrap();
    let mut targets = Vec::new();
    for name in repo_units() {
        let packaged = std::fs::read_to_string(root.path().join("lib/systemd/system").join(&name)).unwrap();
        let repo_text = std::fs::read_to_string(repo().join("units/systemd").join(&name)).unwrap();
        // The units of units/ with the binaries where the package puts them; nothing else changed.
        assert_eq!(
            packaged,
            repo_text.replace("/opt/bin/", "/usr/bin/"),
            "{name} as packaged"
        );
        assert!(!packaged.contains("/opt/bin/"), "{name}");
        let mut text = packaged;
        for bin in BINARIES {
            let packaged_bin = root.path().join("usr/bin").join(bin);
            if text.contains(&format!("/usr/bin/{bin} ")) {
                assert!(
                    packaged_bin.is_file(),
                    "{name} runs /usr/bin/{bin}, which the package lacks"
                );
            }
            // systemd-analyze checks that each command is executable: the extracted ones.
            text = text.replace(&format!("/usr/bin/{bin} "), &format!("{} ", packaged_bin.display()));
        }
        std::fs::write(dir.path().join(&name), text).unwrap();
        targets.push(format!("./{}", name.replace("@.", "@01.")));
    }
    let out = Command::new(analyze)
        .arg("verify")
        .args(&targets)
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // As in units.rs: a host without docker.service is the host's business.
    let complaints: Vec<&str> = stderr.lines().filter(|l| !l.contains("docker.service")).collect();
    assert!(
        out.status.success() && complaints.is_empty(),
        "systemd-analyze verify of the packaged units:\n{stderr}"
    );
}

#[test]
fn package_and_images_carry_the_same_build_and_the_images_name_it() {
    let root = extract();
    let docker = testbed::require_program("docker", "sudo apt-get install -y docker.io");
    let label = |image: &str, name: &str| {
        let format = format!("{{{{index .Config.Labels \"{name}\"}}}}");
        let out = run(&docker, &["image", "inspect", "--format", &format, image]);
        assert!(
            out.status.success(),
            "image {image} is missing: build it with scripts/build-images (scripts/test does)"
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    for bin in BINARIES {
        let packaged = std::fs::read(root.path().join("usr/bin").join(bin)).unwrap();
        let built = std::fs::read(repo().join(RELEASE_DIR).join(bin)).unwrap();
        assert!(
            packaged == built,
            "the package's {bin} is not the static build of scripts/build-images"
        );
        let version_line = ok(&root.path().join("usr/bin").join(bin), &["--version"]);
        let (version, commit, tree) = parse_version(bin, version_line.trim());
        let image = format!("sidekick/{bin}:latest");
        let revision = if tree == "dirty" {
            format!("{commit}-dirty")
        } else {
            commit
        };
        assert_eq!(label(&image, "org.opencontainers.image.version"), version, "{image}");
        assert_eq!(
            label(&image, "org.opencontainers.image.revision"),
            revision,
            "{image} names another build than the package's {bin} ({version_line})"
        );
        let in_image = ok(&docker, &["run", "--rm", &image, "--version"]);
        assert_eq!(in_image.trim(), version_line.trim(), "{image} runs another build");
    }
    // The web and db images get the same labels from `scripts/build-images` (`relabel`), but
    // they are not checked here: the web and db image tests rebuild those shared tags from
    // their build.sh (without the labels) while this test may run, as a full run showed.
}
