//! Puts the git commit and whether the tree was dirty into `SIDEKICK_VERSION` (what
//! `--version` prints); see `sidekick/build/version.rs`.

#[path = "../sidekick/build/version.rs"]
mod version;

fn main() {
    version::emit();
}
