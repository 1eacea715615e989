//! Commands that need no store, no daemon and no stack: `version` and `completion`, and reads
//! against a state directory that holds no store.

use std::process::{Command, Output};

fn codeb(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_codeb"))
        .args(args)
        // No state directory anywhere: these commands must not need one.
        .env_remove("CODEB_STATE_DIR")
        .env_remove("XDG_STATE_HOME")
        .env_remove("HOME")
        .output()
        .expect("codeb runs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn version_names_the_release_the_commit_and_its_date_without_a_state_directory() {
    let out = codeb(&["version", "-o", "json"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    let commit = v["commit"].as_str().unwrap();
    assert!(
        commit == "unknown"
            || (commit.len() == 12 && commit.bytes().all(|b| b.is_ascii_hexdigit())),
        "{v}"
    );
    assert!(v["commitDate"].is_string(), "{v}");
    let text = codeb(&["version"]);
    assert_eq!(text.status.code(), Some(0), "{text:?}");
    assert_eq!(
        stdout(&text),
        format!(
            "codeb {} (commit {commit}, {})\n",
            env!("CARGO_PKG_VERSION"),
            v["commitDate"].as_str().unwrap()
        )
    );
}

#[test]
fn bash_sources_the_bash_completion_script_and_registers_it_for_codeb() {
    let script = codeb(&["completion", "bash"]);
    assert_eq!(script.status.code(), Some(0), "{script:?}");
    let out = Command::new("bash")
        .arg("-c")
        .arg(r#"source <("$0" completion bash) && complete -p codeb"#)
        .arg(env!("CARGO_BIN_EXE_codeb"))
        .env_remove("CODEB_STATE_DIR")
        .output()
        .expect("bash runs");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(stdout(&out).contains("-F _codeb codeb"), "{out:?}");
    // Subcommands and their flags are completed.
    let text = stdout(&script);
    for word in ["promote", "rollback", "completion", "--dry-run"] {
        assert!(text.contains(word), "{word} missing");
    }
}

#[test]
fn zsh_and_fish_scripts_are_printed_and_an_unknown_shell_is_a_usage_error() {
    let zsh = codeb(&["completion", "zsh"]);
    assert_eq!(zsh.status.code(), Some(0), "{zsh:?}");
    assert!(stdout(&zsh).starts_with("#compdef codeb"), "{zsh:?}");
    let fish = codeb(&["completion", "fish"]);
    assert_eq!(fish.status.code(), Some(0), "{fish:?}");
    assert!(stdout(&fish).contains("complete -c codeb"), "{fish:?}");
    let tcsh = codeb(&["completion", "tcsh"]);
    assert_eq!(tcsh.status.code(), Some(2), "{tcsh:?}");
}

/// A read against a state directory that holds no store (a mistyped `CODEB_STATE_DIR`) says so,
/// exit 2, and creates nothing; a `diff` plans against nothing recorded, creating nothing either.
#[test]
fn a_read_of_a_state_directory_without_a_store_says_so_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("mistyped");
    let state_s = state.to_str().unwrap();
    for args in [
        vec!["get", "projects"],
        vec!["get", "slots", "-o", "json"],
        vec!["describe", "project", "shop"],
        vec!["audit"],
    ] {
        let mut all = vec!["--state-dir", state_s];
        all.extend(args.iter().copied());
        let out = codeb(&all);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("there is no codeb store in") && err.contains("mistyped"),
            "{args:?}: {err}"
        );
        assert!(!state.exists(), "{args:?} created the state directory");
    }
    let manifests = dir.path().join("m.yaml");
    std::fs::write(
        &manifests,
        "apiVersion: codeb.kr/v1\nkind: Host\nmetadata:\n  name: local\nspec:\n  address: 127.0.0.1\n  podman: unix:///nonexistent/podman.sock\n  caddy:\n    admin: http://127.0.0.1:1\n",
    )
    .unwrap();
    let out = codeb(&[
        "--state-dir",
        state_s,
        "diff",
        "-f",
        manifests.to_str().unwrap(),
    ]);
    // Planned (the unreachable host makes it exit 3, unobserved), not refused for the store.
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Podman is unreachable"),
        "{out:?}"
    );
    assert!(!state.exists(), "diff created the state directory");
}

/// Under `--log-format json` an error is one JSON object on stderr (as the log lines are), with
/// its message and exit code: a run's error and a usage error alike.
#[test]
fn errors_are_json_objects_under_json_logs() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("none");
    for (args, needle) in [
        (
            vec![
                "--log-format",
                "json",
                "--state-dir",
                state.to_str().unwrap(),
                "get",
                "projects",
            ],
            "there is no codeb store in",
        ),
        (
            vec!["--log-format=json", "get", "nothing"],
            "invalid value 'nothing'",
        ),
    ] {
        let out = codeb(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{stderr}");
        let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(v["level"], "ERROR", "{v}");
        assert_eq!(v["fields"]["exit_code"], 2, "{v}");
        assert!(
            v["fields"]["message"].as_str().unwrap().contains(needle),
            "{v}"
        );
    }
    // Text logs: the text error as before.
    let out = codeb(&["--state-dir", state.to_str().unwrap(), "get", "projects"]);
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("error: there is no codeb store"));
}
