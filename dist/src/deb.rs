//! `dist deb`: lays out the package's root from the staged files and the static binaries and
//! hands it to `dpkg-deb --build`, Debian's own packager.
//!
//! Why not cargo-deb: it did the same, but installing it (`cargo install cargo-deb`) compiled
//! for eight minutes on a fresh CI machine, which has 20 minutes for the whole suite. What it
//! did for us is small and Debian-defined (Debian Policy 3 and 5, `deb-md5sums(5)`,
//! `deb-conffiles(5)`): copy files with their modes, gzip the man pages and the changelog,
//! write `control`, `conffiles` and `md5sums`. `dpkg-deb` checks the control file and builds
//! the archive with root ownership; lintian (run by `scripts/package`) checks the result.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail, ensure};

pub const PACKAGE: &str = "sidekick";
const MAINTAINER: &str = "sidekick maintainers <maintainers@users.noreply.r-seed-157c2733.example>";
const DESCRIPTION: &str = "\
Static sidekicks for Docker + etcd hosts: announcer, lb-sync and dbhelper
 announcer writes where each Docker container lives into etcd, on a lease;
 lb-sync keeps a load balancer's servers (HAProxy through its Runtime API,
 or a Rackspace Cloud Load Balancer) in step with those records; dbhelper
 waits for MySQL/MariaDB, seeds a database once, atomically, and creates
 the app user.
 .
 Static binaries in /usr/bin, systemd units (none enabled or started by
 installing), example settings in /etc/sidekick, man pages and bash, zsh
 and fish completions.";
/// The static build of `scripts/build-images`, which the package reuses as it is.
const RELEASE_DIR: &str = "target/x86_64-unknown-linux-musl/release";
const DOC_DIR: &str = "usr/share/doc/sidekick";

/// Where a file comes from, relative to the source tree (`dist/stage/...` for what
/// `dist stage` wrote), and where it lands.
#[derive(Debug, Clone, Copy)]
enum Dest {
    /// Into this directory under its own name.
    Dir(&'static str),
    /// Under this exact path.
    File(&'static str),
}

/// Every file of the package: (source glob with at most a `*` in the file name, destination,
/// mode). Files under `etc/` are conffiles: dpkg keeps an operator's edits across upgrades.
const ASSETS: &[(&str, Dest, u32)] = &[
    (
        "target/x86_64-unknown-linux-musl/release/announcer",
        Dest::Dir("usr/bin"),
        0o755,
    ),
    (
        "target/x86_64-unknown-linux-musl/release/lb-sync",
        Dest::Dir("usr/bin"),
        0o755,
    ),
    (
        "target/x86_64-unknown-linux-musl/release/dbhelper",
        Dest::Dir("usr/bin"),
        0o755,
    ),
    ("dist/stage/units/*.service", Dest::Dir("lib/systemd/system"), 0o644),
    // Settings the units read; etcd.env may carry ETCD_PASSWORD.
    ("units/env/etcd.env.example", Dest::File("etc/sidekick/etcd.env"), 0o600),
    (
        "units/env/lb-sync.env.example",
        Dest::File("etc/sidekick/lb-sync.env"),
        0o644,
    ),
    (
        "units/env/dbhelper.env.example",
        Dest::File("etc/sidekick/dbhelper.env"),
        0o644,
    ),
    ("units/env/web.env.example", Dest::File("etc/sidekick/web.env"), 0o644),
    // Secrets are never shipped in /etc: the operator writes them (units/README.md).
    (
        "units/env/db_root_pw.example",
        Dest::Dir("usr/share/doc/sidekick/examples"),
        0o644,
    ),
    (
        "units/env/app_pw.example",
        Dest::Dir("usr/share/doc/sidekick/examples"),
        0o644,
    ),
    (
        "units/env/rackspace_api_key.example",
        Dest::Dir("usr/share/doc/sidekick/examples"),
        0o644,
    ),
    ("dist/stage/man/*.1", Dest::Dir("usr/share/man/man1"), 0o644),
    (
        "dist/stage/completions/bash/*",
        Dest::Dir("usr/share/bash-completion/completions"),
        0o644,
    ),
    (
        "dist/stage/completions/zsh/*",
        Dest::Dir("usr/share/zsh/vendor-completions"),
        0o644,
    ),
    (
        "dist/stage/completions/fish/*",
        Dest::Dir("usr/share/fish/vendor_completions.d"),
        0o644,
    ),
    ("README.md", Dest::File("usr/share/doc/sidekick/README.md"), 0o644),
    (
        "units/README.md",
        Dest::File("usr/share/doc/sidekick/README.units.md"),
        0o644,
    ),
    (
        "dist/debian/copyright",
        Dest::File("usr/share/doc/sidekick/copyright"),
        0o644,
    ),
    (
        "dist/debian/lintian-overrides",
        Dest::File("usr/share/lintian/overrides/sidekick"),
        0o644,
    ),
];
const MAINTAINER_SCRIPTS: [&str; 3] = ["postinst", "prerm", "postrm"];

/// Builds `<out>/sidekick_<version>-1_amd64.deb` from the source tree `src` and returns its path.
pub fn build(src: &Path, out: &Path, version: &str) -> anyhow::Result<PathBuf> {
    let work = out.join("root");
    if work.exists() {
        fs::remove_dir_all(&work).with_context(|| format!("cannot remove {}", work.display()))?;
    }
    ensure!(
        src.join(RELEASE_DIR).join("announcer").is_file(),
        "{} has no static binaries: run scripts/build-images (or the cargo build in scripts/package) first",
        src.join(RELEASE_DIR).display()
    );
    let mut conffiles = Vec::new();
    for (pattern, dest, mode) in ASSETS {
        let sources = expand(&src.join(pattern))?;
        ensure!(!sources.is_empty(), "no file matches {pattern}");
        for from in sources {
            let rel = match dest {
                Dest::Dir(dir) => Path::new(dir).join(from.file_name().context("a file without a name")?),
                Dest::File(file) => PathBuf::from(file),
            };
            let to = work.join(&rel);
            copy(&from, &to, *mode)?;
            if rel.starts_with("etc") {
                conffiles.push(format!("/{}", rel.display()));
            }
        }
    }
    // Debian Policy 12.1 and 12.7: man pages and the changelog are compressed with gzip -9,
    // -n so that the archive does not change with the build time.
    let changelog = work.join(DOC_DIR).join("changelog.Debian");
    copy(&src.join("dist/debian/changelog"), &changelog, 0o644)?;
    gzip(&changelog)?;
    for page in expand(&work.join("usr/share/man/man1/*.1"))? {
        gzip(&page)?;
    }

    let control_dir = work.join("DEBIAN");
    fs::create_dir_all(&control_dir)?;
    let installed_kib = installed_size_kib(&work)?;
    let control = format!(
        "Package: {PACKAGE}\nVersion: {version}\nArchitecture: amd64\nMaintainer: {MAINTAINER}\n\
         Installed-Size: {installed_kib}\nRecommends: docker.io | docker-ce\nSuggests: etcd-client\n\
         Section: admin\nPriority: optional\nDescription: {DESCRIPTION}\n"
    );
    write(&control_dir.join("control"), &control, 0o644)?;
    conffiles.sort();
    write(&control_dir.join("conffiles"), &(conffiles.join("\n") + "\n"), 0o644)?;
    for script in MAINTAINER_SCRIPTS {
        copy(&src.join("dist/debian").join(script), &control_dir.join(script), 0o755)?;
    }
    write(&control_dir.join("md5sums"), &md5sums(&work)?, 0o644)?;

    let deb = out.join(format!("{PACKAGE}_{version}_amd64.deb"));
    let status = Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zxz", "--build"])
        .arg(&work)
        .arg(&deb)
        .stdout(std::process::Stdio::null())
        .status()
        .context("cannot run dpkg-deb (sudo apt-get install -y dpkg)")?;
    ensure!(status.success(), "dpkg-deb --build {} failed: {status}", work.display());
    fs::remove_dir_all(&work).with_context(|| format!("cannot remove {}", work.display()))?;
    Ok(deb)
}

/// The files matching `pattern`, whose `*` (if any) is in the file name only, sorted.
fn expand(pattern: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let name = pattern
        .file_name()
        .and_then(|n| n.to_str())
        .context("a pattern without a file name")?;
    let Some((prefix, suffix)) = name.split_once('*') else {
        return Ok(if pattern.is_file() {
            vec![pattern.to_path_buf()]
        } else {
            Vec::new()
        });
    };
    let dir = pattern.parent().context("a pattern without a directory")?;
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let path = entry?.path();
        let file = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if path.is_file() && file.starts_with(prefix) && file.ends_with(suffix) && file.len() >= name.len() - 1 {
            found.push(path);
        }
    }
    found.sort();
    Ok(found)
}

fn copy(from: &Path, to: &Path, mode: u32) -> anyhow::Result<()> {
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    fs::copy(from, to).with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn write(path: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn gzip(path: &Path) -> anyhow::Result<()> {
    let status = Command::new("gzip")
        .args(["-9", "-n", "-f"])
        .arg(path)
        .status()
        .context("cannot run gzip")?;
    ensure!(status.success(), "gzip {} failed: {status}", path.display());
    Ok(())
}

/// The files under `root` but `DEBIAN/`, relative to it, sorted.
fn files(root: &Path) -> anyhow::Result<Vec<PathBuf>> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
        for entry in fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                if path != root.join("DEBIAN") {
                    walk(root, &path, out)?;
                }
            } else {
                out.push(path.strip_prefix(root)?.to_path_buf());
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(root, root, &mut out)?;
    out.sort();
    Ok(out)
}

/// Installed-Size: the sum of the files' sizes in KiB, each rounded up (Debian Policy 5.6.20).
fn installed_size_kib(root: &Path) -> anyhow::Result<u64> {
    let mut kib = 0;
    for file in files(root)? {
        kib += fs::metadata(root.join(&file))?.len().div_ceil(1024);
    }
    Ok(kib)
}

/// `DEBIAN/md5sums` as `md5sum` writes it, for every file but the control files.
fn md5sums(root: &Path) -> anyhow::Result<String> {
    let files = files(root)?;
    let out = Command::new("md5sum")
        .arg("--")
        .args(&files)
        .current_dir(root)
        .output()
        .context("cannot run md5sum")?;
    if !out.status.success() {
        bail!("md5sum failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    String::from_utf8(out.stdout).context("md5sum wrote something that is not UTF-8")
}
