//! Records the git commit codeb is built from, for `codeb version`: its short hash and its commit
//! date (not the build time, so that two builds of one commit are identical). Outside a git
//! checkout (a source tarball) both are `unknown`.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !text.is_empty()).then_some(text)
}

fn main() {
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let date = git(&["log", "-1", "--format=%cs"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=CODEB_GIT_COMMIT={commit}");
    println!("cargo:rustc-env=CODEB_GIT_DATE={date}");
    // A commit moves HEAD's reflog (in a worktree too): rebuild then, and only then.
    if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
        println!("cargo:rerun-if-changed={dir}/HEAD");
        println!("cargo:rerun-if-changed={dir}/logs/HEAD");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
