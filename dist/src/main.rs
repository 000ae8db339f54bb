//! `dist`: generates what the Debian package holds besides the binaries, from the sources,
//! so that nothing in it can drift from them (the packaging's xtask; `scripts/package` runs it).
//!
//! `dist stage [DIR]` (default `dist/stage/`, removed and rewritten) writes:
//! - `man/`: a page per binary and per subcommand, from each binary's clap `Args`
//!   (`announcer.1`, `announcer-container.1`, …; `clap_mangen`);
//! - `completions/{bash,zsh,fish}/`: under the names each shell looks for (`clap_complete`);
//! - `units/`: the plain-systemd units of `units/systemd/` with the binaries in `/usr/bin/`
//!   where the package puts them, not `/opt/bin/`; nothing else changes.
//!
//!
//! `dist deb [DIR]` (default `target/debian/`) then builds the package from those and the
//! static binaries (`deb.rs`: which files land where, and why dpkg-deb rather than cargo-deb).

mod deb;

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::CommandFactory;
use clap_complete::Shell;

/// Where the binaries live on a host that installed the package, and in the units.
const PACKAGED_BIN_DIR: &str = "/usr/bin/";
/// Where the binaries live in `units/` (hosts that copy them by hand, fleet).
const UNITS_BIN_DIR: &str = "/opt/bin/";

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    match (args.next().as_deref(), args.next(), args.next()) {
        (Some("stage"), out, None) => {
            let out = out.map_or_else(|| dist_dir().join("stage"), PathBuf::from);
            stage(&out)?;
            println!("dist: staged man pages, completions and units in {}", out.display());
            Ok(())
        }
        (Some("deb"), out, None) => {
            let out = out.map_or_else(|| dist_dir().join("../target/debian"), PathBuf::from);
            std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
            let version = format!("{}-1", env!("CARGO_PKG_VERSION"));
            let deb = deb::build(&dist_dir().join(".."), &out, &version)?;
            println!("{}", deb.display());
            Ok(())
        }
        _ => bail!("usage: dist stage [DIR] | dist deb [DIR]"),
    }
}

/// The `dist/` directory of the source tree this tool was built from.
fn dist_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Each binary's command line as its own parser sees it. `X::Args::command()` picks an
/// inherent `command` first (dbhelper renames a shared flag there), clap's derive otherwise.
fn commands() -> [clap::Command; 3] {
    [
        announcer::Args::command(),
        lb_sync::Args::command(),
        dbhelper::Args::command(),
    ]
}

fn stage(out: &Path) -> anyhow::Result<()> {
    if out.exists() {
        fs::remove_dir_all(out).with_context(|| format!("cannot remove {}", out.display()))?;
    }
    for cmd in commands() {
        man_pages(cmd.clone(), &out.join("man"))?;
        completions(cmd, &out.join("completions"))?;
    }
    units(&dist_dir().join("../units/systemd"), &out.join("units"))
}

/// One page for the binary and one for each (visible) subcommand, as `man announcer` and
/// `man announcer-container` expect.
fn man_pages(cmd: clap::Command, dir: &Path) -> anyhow::Result<()> {
    fn page(cmd: clap::Command, source: &str, dir: &Path) -> anyhow::Result<()> {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            page(sub.clone(), source, dir)?;
        }
        let man = clap_mangen::Man::new(cmd).manual("sidekick").source(source);
        let path = man
            .generate_to(dir)
            .with_context(|| format!("cannot write a man page into {}", dir.display()))?;
        anyhow::ensure!(fs::metadata(&path)?.len() > 0, "empty man page {}", path.display());
        Ok(())
    }
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let source = format!("sidekick {}", cmd.get_version().unwrap_or_default());
    page(cmd, &source, dir)
}

/// The completion scripts, named where bash-completion, zsh and fish load them from.
fn completions(mut cmd: clap::Command, dir: &Path) -> anyhow::Result<()> {
    let name = cmd.get_name().to_owned();
    for (shell, file) in [
        (Shell::Bash, name.clone()),
        (Shell::Zsh, format!("_{name}")),
        (Shell::Fish, format!("{name}.fish")),
    ] {
        let shell_dir = dir.join(shell.to_string());
        fs::create_dir_all(&shell_dir).with_context(|| format!("cannot create {}", shell_dir.display()))?;
        let path = shell_dir.join(file);
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut cmd, &name, &mut script);
        fs::write(&path, script).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// Copies the units, pointing every `/opt/bin/` at `/usr/bin/`.
fn units(from: &Path, to: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(to).with_context(|| format!("cannot create {}", to.display()))?;
    let mut copied = 0;
    for entry in fs::read_dir(from).with_context(|| format!("cannot read {}", from.display()))? {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "service") {
            continue;
        }
        let text = fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let name = path.file_name().context("unit without a name")?;
        fs::write(to.join(name), text.replace(UNITS_BIN_DIR, PACKAGED_BIN_DIR))
            .with_context(|| format!("cannot write {}", to.join(name).display()))?;
        copied += 1;
    }
    anyhow::ensure!(copied > 0, "no units in {}", from.display());
    Ok(())
}
