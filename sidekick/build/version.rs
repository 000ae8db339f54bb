//! Names the build. Shared by the build scripts of announcer, lb-sync and dbhelper (each
//! includes this file with `#[path]`), so it runs at build time and is never part of a binary.
//!
//! Sets `SIDEKICK_VERSION` for the crate: `<crate version> (git <commit>, clean|dirty)`, or
//! `<crate version> (git unknown)` where there is no `git` or no repository (a source
//! tarball). Each binary's `--version` prints it and `scripts/build-images` copies it into
//! the image labels. "dirty": a tracked file differed from the commit when this ran;
//! untracked files do not count (as with `git describe --dirty`).
//!
//! It reruns, and so recompiles its crate, only when the commit can have changed (`HEAD`, the
//! branch it names, `packed-refs`) or when the sources the binary is built from change (its
//! own crate, the shared `sidekick` crate, `Cargo.lock`: they recompile it anyway). Another
//! file of the tree changing never rebuilds a binary, so the flag can say "clean" while a
//! README is edited: it speaks for the sources that went into the binary.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Prints the `cargo:` lines: the version variable and what to watch.
pub fn emit() {
    let crate_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let version = std::env::var("CARGO_PKG_VERSION").unwrap_or_default();
    let build = match git(&crate_dir, &["rev-parse", "--verify", "HEAD"]) {
        Some(commit) => {
            let tree = match git(&crate_dir, &["status", "--porcelain", "--untracked-files=no"]) {
                Some(changes) if changes.is_empty() => "clean",
                Some(_) => "dirty",
                None => "unknown",
            };
            format!("{version} (git {commit}, {tree})")
        }
        None => format!("{version} (git unknown)"),
    };
    println!("cargo:rustc-env=SIDEKICK_VERSION={build}");
    for path in watched(&crate_dir) {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}

/// The files whose change can change the version string or the binary.
fn watched(crate_dir: &Path) -> Vec<PathBuf> {
    let workspace = crate_dir.join("..");
    let mut paths = vec![
        crate_dir.join("build.rs"),
        crate_dir.join("Cargo.toml"),
        crate_dir.join("src"),
        workspace.join("sidekick/src"),
        workspace.join("sidekick/Cargo.toml"),
        workspace.join("sidekick/build/version.rs"),
        workspace.join("Cargo.lock"),
    ];
    let mut git_files = vec!["HEAD".to_owned(), "packed-refs".to_owned()];
    // The branch HEAD points at (none when detached: then HEAD itself holds the commit).
    git_files.extend(git(crate_dir, &["symbolic-ref", "-q", "HEAD"]));
    for name in git_files {
        // In a linked worktree HEAD is per worktree and branches are in the common dir:
        // `--git-path` knows which.
        if let Some(path) = git(crate_dir, &["rev-parse", "--git-path", &name]) {
            paths.push(crate_dir.join(path));
        }
    }
    // A missing path would make cargo rerun on every build (a branch only in packed-refs).
    paths.retain(|p| p.exists());
    paths
}

/// Runs `git` in `dir` without taking optional locks (a `status` that rewrote the index
/// would look like a change to the next build); `None` if git is missing or says no.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("--no-optional-locks")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}
