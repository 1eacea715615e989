//! `codeb env` through the real binary, on a state directory of its own and no stack: versions,
//! history, diff and restore across ten versions, protected keys, bad input (file:line, names,
//! NUL, a 10 MB value), a missing or wrong key file, a state directory others may write, a backup
//! round trip, and a kill before the commit of a version. Environments here are not declared by
//! any manifest, so a change writes a version and rolls nothing out (`e2e_env` does that against
//! the real Podman and Caddy).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

struct Dir {
    tmp: tempfile::TempDir,
}

impl Dir {
    fn new() -> Dir {
        Dir {
            tmp: tempfile::tempdir().unwrap(),
        }
    }

    fn state(&self) -> PathBuf {
        self.tmp.path().join("state")
    }

    fn codeb(&self, args: &[&str]) -> Output {
        codeb_in(&self.state(), args, &[])
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.codeb(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&a)).unwrap()
    }

    fn file(&self, name: &str, content: &[u8]) -> PathBuf {
        let p = self.tmp.path().join(name);
        std::fs::write(&p, content).unwrap();
        p
    }

    /// Every byte of every file under the state directory.
    fn state_bytes(&self) -> Vec<u8> {
        let mut all = Vec::new();
        for e in std::fs::read_dir(self.state()).unwrap() {
            let p = e.unwrap().path();
            if p.is_file() {
                all.extend(std::fs::read(&p).unwrap());
            }
        }
        all
    }
}

fn codeb_in(state: &Path, args: &[&str], vars: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_codeb"))
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .env_remove("CREDENTIALS_DIRECTORY")
        .envs(vars.iter().copied())
        .output()
        .expect("codeb runs")
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

fn names(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn history_diff_and_restore_across_ten_versions_and_restoring_v1_makes_v11_equal_to_it() {
    let d = Dir::new();
    for i in 1..=10 {
        let value = format!("A=value-{i}");
        let mut args = vec!["env", "set", "app", value.as_str()];
        let extra;
        if i % 3 == 0 {
            extra = format!("EXTRA_{i}=x");
            args.push(&extra);
        }
        let v = d.json(&args);
        assert_eq!(v["version"], i, "{v}");
    }
    let history = d.json(&["env", "history", "app"]);
    let rows = history.as_array().unwrap();
    assert_eq!(rows.len(), 10);
    assert_eq!(names(&rows[0]["added"]), ["A"]);
    assert_eq!(names(&rows[1]["changed"]), ["A"]);
    assert_eq!(names(&rows[2]["added"]), ["EXTRA_3"]);
    assert!(rows
        .iter()
        .all(|r| r["by"].as_str().unwrap().starts_with("cli (uid")));

    let diff = d.json(&["env", "diff", "app", "1", "10"]);
    assert_eq!(names(&diff["changed"]), ["A"]);
    assert_eq!(names(&diff["added"]), ["EXTRA_3", "EXTRA_6", "EXTRA_9"]);
    assert!(names(&diff["removed"]).is_empty());
    let table = d.ok(&["env", "diff", "app", "10", "1"]);
    assert!(
        table.contains("- EXTRA_3") && table.contains("~ A"),
        "{table}"
    );
    assert!(!table.contains("value-"), "names only: {table}");

    let restored = d.json(&["env", "restore", "app", "--version", "1"]);
    assert_eq!(restored["version"], 11, "{restored}");
    assert_eq!(
        names(&restored["removed"]),
        ["EXTRA_3", "EXTRA_6", "EXTRA_9"]
    );
    assert_eq!(d.ok(&["env", "get", "app", "A"]).trim(), "value-1");
    let same = d.json(&["env", "diff", "app", "1", "11"]);
    for k in ["added", "changed", "removed"] {
        assert!(names(&same[k]).is_empty(), "v11 equals v1: {same}");
    }
    let list = d.json(&["env", "list", "app"]);
    assert_eq!(list["version"], 11);
    let v1 = d.json(&["env", "history", "app"]);
    assert_eq!(v1[10]["restoredFrom"], 1);
    // History is never rewritten: version 10 still opens as it was.
    assert_eq!(
        d.json(&["env", "history", "app"]).as_array().unwrap().len(),
        11
    );
    // A restore of a version that is not there says where to look.
    let out = d.codeb(&["env", "restore", "app", "--version", "99"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("env history"), "{}", text(&out));
    // Export is dotenv that import reads back to the same values.
    let exported = d.ok(&["env", "export", "app"]);
    let f = d.file("back.env", exported.as_bytes());
    let again = d.json(&["env", "import", "app", f.to_str().unwrap()]);
    assert!(again["version"].is_null(), "nothing changed: {again}");
}

#[test]
fn protected_keys_are_kept_without_the_flag_and_changed_by_an_admin_with_it() {
    let d = Dir::new();
    d.ok(&[
        "env",
        "set",
        "app",
        "--protected",
        "DATABASE_URL=postgres://original",
    ]);
    let f = d.file(
        "upload.env",
        b"DATABASE_URL=postgres://evil\nREDIS_URL=redis://evil\nAPP_MODE=fast\n",
    );
    let v = d.json(&["env", "import", "app", f.to_str().unwrap()]);
    assert_eq!(names(&v["kept"]), ["DATABASE_URL", "REDIS_URL"], "{v}");
    assert_eq!(names(&v["added"]), ["APP_MODE"], "{v}");
    assert_eq!(
        d.ok(&["env", "get", "app", "DATABASE_URL"]).trim(),
        "postgres://original"
    );
    let out = d.codeb(&["env", "get", "app", "REDIS_URL"]);
    assert_eq!(out.status.code(), Some(2), "not set: {}", text(&out));
    let human = d.ok(&["env", "set", "app", "DATABASE_URL=postgres://again"]);
    assert!(
        human.contains("kept as stored: DATABASE_URL is protected"),
        "{human}"
    );
    let v = d.json(&[
        "env",
        "set",
        "app",
        "--protected",
        "DATABASE_URL=postgres://new",
    ]);
    assert!(names(&v["kept"]).is_empty(), "{v}");
    assert_eq!(names(&v["changed"]), ["DATABASE_URL"]);
    assert_eq!(
        d.ok(&["env", "get", "app", "DATABASE_URL"]).trim(),
        "postgres://new"
    );
    // Unset of a protected key without the flag keeps it too.
    let v = d.json(&["env", "unset", "app", "DATABASE_URL"]);
    assert_eq!(names(&v["kept"]), ["DATABASE_URL"], "{v}");
    let list = d.json(&["env", "list", "app"]);
    let row = list["vars"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "DATABASE_URL")
        .unwrap()
        .clone();
    assert_eq!(row["protected"], true);
    assert_eq!(row["digest"].as_str().unwrap().len(), 12);
}

#[test]
fn a_manifest_value_for_a_protected_key_is_refused_at_load_with_file_line_and_column() {
    let d = Dir::new();
    let m = d.file(
        "m.yaml",
        b"apiVersion: codeb.kr/v1\nkind: Host\nmetadata: {name: h}\nspec: {address: 127.0.0.1, podman: 'unix:///nowhere.sock', caddy: {admin: 'http://127.0.0.1:1'}}\n---\napiVersion: codeb.kr/v1\nkind: Zone\nmetadata: {name: z.test}\n---\napiVersion: codeb.kr/v1\nkind: Project\nmetadata: {name: p}\nspec:\n  host: h\n  zone: z.test\n  environments:\n    production:\n      image: a\n      port: 80\n      env:\n        MODE: fast\n        DATABASE_URL: postgres://inline-secret\n",
    );
    let out = d.codeb(&["diff", "-f", m.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("m.yaml:22:9"), "{err}");
    assert!(err.contains("protected"), "{err}");
    assert!(!err.contains("inline-secret"), "{err}");
}

#[test]
fn bad_input_is_refused_with_where_and_why_and_changes_nothing() {
    let d = Dir::new();
    d.ok(&["env", "set", "app", "KEEP=1"]);
    let before = d.json(&["env", "history", "app"]);
    let refused = |args: &[&str], want: &str| {
        let out = d.codeb(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        let t = text(&out);
        assert!(t.contains(want), "{args:?} wants {want:?}: {t}");
        assert!(!t.contains("s3cret-canary"), "{t}");
    };
    let f = d.file(
        "bad.env",
        b"A=1\n# fine\nthis line is broken s3cret-canary\n",
    );
    refused(
        &["env", "import", "app", f.to_str().unwrap()],
        "bad.env:3: malformed line",
    );
    let f = d.file("names.env", b"GOOD=1\n\n9LIVES=s3cret-canary\n");
    refused(
        &["env", "import", "app", f.to_str().unwrap()],
        "names.env:3: invalid env key name",
    );
    refused(
        &["env", "set", "app", "BAD-NAME=s3cret-canary"],
        "invalid env key name",
    );
    refused(&["env", "set", "app", "NOVALUE"], "expected KEY=VALUE");
    let f = d.file("nul.env", b"A=s3cret\0canary\n");
    refused(&["env", "import", "app", f.to_str().unwrap()], "nul.env:1");
    refused(&["env", "import", "app", f.to_str().unwrap()], "NUL byte");
    let mut big = b"BIG=".to_vec();
    big.extend(std::iter::repeat_n(b'x', 10 << 20));
    big.push(b'\n');
    let f = d.file("big.env", &big);
    refused(&["env", "import", "app", f.to_str().unwrap()], "64 KiB");
    assert_eq!(
        d.json(&["env", "history", "app"]),
        before,
        "nothing changed"
    );
}

#[test]
fn without_the_key_file_or_with_another_key_codeb_says_which_file_and_changes_nothing() {
    let d = Dir::new();
    d.ok(&["env", "set", "app", "A=1"]);
    let key = d.state().join("env.key");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let saved = std::fs::read(&key).unwrap();
    std::fs::remove_file(&key).unwrap();
    for args in [
        vec!["env", "set", "app", "A=2"],
        vec!["env", "get", "app", "A"],
        vec!["env", "export", "app"],
    ] {
        let out = d.codeb(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        let t = text(&out);
        assert!(
            t.contains(key.to_str().unwrap()) && t.contains("missing"),
            "{t}"
        );
        assert!(t.contains("nothing was changed"), "{t}");
    }
    assert!(!key.exists(), "no new key over sealed env");
    std::fs::write(&key, [7u8; 32]).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = d.codeb(&["env", "set", "app", "A=2"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("not the key"), "{}", text(&out));
    std::fs::write(&key, b"short").unwrap();
    let out = d.codeb(&["env", "get", "app", "A"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("expected 32 random bytes"),
        "{}",
        text(&out)
    );
    std::fs::write(&key, &saved).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = d.codeb(&["env", "get", "app", "A"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("chmod 600"), "{}", text(&out));
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(d.ok(&["env", "get", "app", "A"]).trim(), "1");
    assert_eq!(d.json(&["env", "list", "app"])["version"], 1);
    // The key may come as a systemd credential instead (hex, with a newline).
    let creds = d.tmp.path().join("creds");
    std::fs::create_dir(&creds).unwrap();
    std::fs::rename(&key, creds.join("codeb-env-key")).unwrap();
    let out = codeb_in(
        &d.state(),
        &["env", "get", "app", "A"],
        &[("CREDENTIALS_DIRECTORY", creds.to_str().unwrap())],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[test]
fn a_state_directory_others_may_write_is_refused() {
    let d = Dir::new();
    std::fs::create_dir(d.state()).unwrap();
    std::fs::set_permissions(d.state(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = d.codeb(&["env", "set", "app", "A=1"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("writable by group or others"),
        "{}",
        text(&out)
    );
    assert!(!d.state().join("env.key").exists());
}

#[test]
fn a_backup_holds_no_value_and_restores_into_an_empty_store_with_the_same_key() {
    let d = Dir::new();
    d.ok(&["env", "set", "app", "TOKEN=canary-b4ck"]);
    d.ok(&["env", "set", "app", "--env", "staging", "TOKEN=canary-st4g"]);
    d.ok(&["env", "set", "app", "TOKEN=canary-b4ck-2"]);
    let backup = d.tmp.path().join("backup");
    let out = d.ok(&["env", "backup", "--to", backup.to_str().unwrap()]);
    assert!(out.contains("3 env versions"), "{out}");
    let file = backup.join("codeb-env-backup.json");
    let bytes = std::fs::read(&file).unwrap();
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    for canary in ["canary-b4ck", "canary-st4g"] {
        assert!(!contains(&bytes, canary), "sealed in the backup");
        assert!(!contains(&d.state_bytes(), canary), "sealed in the store");
    }
    let other = Dir::new();
    // The key first (it is never in the backup): without it, refused.
    let out = other.codeb(&["env", "restore-backup", "--from", backup.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("env.key"), "{}", text(&out));
    std::fs::copy(d.state().join("env.key"), other.state().join("env.key")).unwrap();
    other.ok(&["env", "restore-backup", "--from", backup.to_str().unwrap()]);
    assert_eq!(
        other.ok(&["env", "get", "app", "TOKEN"]).trim(),
        "canary-b4ck-2"
    );
    assert_eq!(
        other
            .ok(&["env", "get", "app", "--env", "staging", "TOKEN"])
            .trim(),
        "canary-st4g"
    );
    assert_eq!(
        other.json(&["env", "history", "app"]),
        d.json(&["env", "history", "app"])
    );
    // Into a store that has versions: refused.
    let out = other.codeb(&["env", "restore-backup", "--from", backup.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("empty"), "{}", text(&out));
}

#[test]
fn a_kill_before_a_version_commits_leaves_the_previous_version_whole() {
    let d = Dir::new();
    d.ok(&["env", "set", "app", "A=old", "B=old"]);
    let out = codeb_in(
        &d.state(),
        &["env", "set", "app", "A=new", "B=new"],
        &[("CODEB_FAULT_KILL_BEFORE_ENV_COMMIT", "1")],
    );
    assert_eq!(out.status.code(), None, "killed: {}", text(&out));
    assert_eq!(d.json(&["env", "list", "app"])["version"], 1);
    assert_eq!(
        d.ok(&["env", "export", "app"]).matches("\"old\"").count(),
        2
    );
    // The next change takes the next number.
    assert_eq!(d.json(&["env", "set", "app", "A=new"])["version"], 2);
}

#[test]
fn every_env_command_shows_examples_in_its_help() {
    let d = Dir::new();
    let help = d.ok(&["env", "set", "--help"]);
    assert!(
        help.contains("codeb env set myapp API_TOKEN=abc123"),
        "{help}"
    );
    assert!(help.contains("--protected"), "{help}");
    for sub in [
        "import", "list", "get", "export", "history", "diff", "restore", "backup",
    ] {
        let h = d.ok(&["env", sub, "--help"]);
        assert!(h.contains("Example"), "{sub}: {h}");
    }
}
