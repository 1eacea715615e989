//! Issue 13, findings 6 and 7, against the real `codeb` binary (and, where a check needs what an
//! earlier apply recorded, the real stack): each test reproduces the finding and shows it is now
//! refused with exit 2 and a message naming file:line:column (or the file), nothing applied.
//!
//! Run with the stack's variables loaded (`eval "$(deploy/stack.sh env)"`); a missing stack is a
//! loud failure.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// How long a refused command may take: it must not hang on a FIFO, walk `/` or drain an
/// endless stdin. Generous for a loaded machine; the measured times are printed.
const REFUSED_WITHIN: Duration = Duration::from_secs(20);

/// Waits for `child` for at most [`REFUSED_WITHIN`], killing it (and failing) if it hangs.
fn finish(mut child: Child, what: &str) -> Output {
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > REFUSED_WITHIN {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("{what} hung for {REFUSED_WITHIN:?}:\n{}", text(&out));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    eprintln!("{what}: finished in {:?}", start.elapsed());
    child.wait_with_output().unwrap()
}

/// `codeb ARGS` with the sandbox's state, output captured, bounded in time.
fn codeb_within(sb: &Sandbox, args: &[&str]) -> Output {
    let child = Command::new(env!("CARGO_BIN_EXE_codeb"))
        .arg("--state-dir")
        .arg(sb.state())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("codeb runs");
    finish(child, &args.join(" "))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_refused(out: &Output, expected: &str) {
    assert_eq!(out.status.code(), Some(2), "{}", text(out));
    assert!(
        stderr(out).contains(expected),
        "expected {expected:?} in:\n{}",
        text(out)
    );
}

fn dir_str(dir: &Path) -> &str {
    dir.to_str().unwrap()
}

/// A Project document with one environment `env` (the stack's Host and Zone, an image that
/// exists), `extra` lines under the environment.
fn project_doc(name: &str, env: &str, extra: &str) -> String {
    format!(
        "---\napiVersion: codeb.kr/v1\nkind: Project\nmetadata:\n  name: {name}\nspec:\n  host: local\n  \
         zone: codeb.test\n  environments:\n    {env}:\n      image: localhost/codeb-test-app:v1\n      \
         port: 8080\n      healthCheck: {{path: /health, timeout: 15s}}\n      promotion: auto\n{extra}"
    )
}

/// Writes the stack's Host and Zone and `docs` to `manifests/all.yaml`.
fn write_manifests(sb: &Sandbox, docs: &[String]) -> std::path::PathBuf {
    sb.write_docs(&format!("{}{}", sb.stack.host_yaml(), docs.concat()), &[])
}

// The Host and Zone take 17 lines: a Project written after them starts at line 18 (`---`), its
// environment's name is on line 27, column 5, its health check on line 30 and its first `extra`
// line is line 32; a second Project's environment name is on line 41.

#[test]
fn finding_6_two_projects_that_need_one_container_name_are_refused_naming_both() {
    let sb = Sandbox::new();
    let dir = write_manifests(
        &sb,
        &[
            project_doc("a", "b-c", ""),
            project_doc("a-b", "c", "      hostname: other.codeb.test\n"),
        ],
    );
    let file = dir.join("all.yaml");
    for command in ["apply", "diff"] {
        let out = codeb_within(&sb, &[command, "-f", dir_str(&dir)]);
        assert_refused(
            &out,
            &format!(
                "{}:41:5: project `a-b` environment `c` needs the container names `a-b-c-blue` and \
                 `a-b-c-green`, as project `a` environment `b-c` at {}:27:5 does",
                file.display(),
                file.display()
            ),
        );
    }
}

#[test]
fn finding_6_a_hostname_whose_preview_names_exceed_dns_limits_is_refused() {
    let sb = Sandbox::new();
    // 250 characters: a valid DNS name, but `green.` before it is 256.
    let long = format!(
        "{}.{}.{}.{}.codeb.test",
        "a".repeat(60),
        "b".repeat(60),
        "c".repeat(60),
        "d".repeat(56)
    );
    assert_eq!(long.len(), 250);
    let dir = write_manifests(
        &sb,
        &[project_doc(
            "long",
            "production",
            &format!("      hostname: {long}\n"),
        )],
    );
    let out = codeb_within(&sb, &["apply", "--dry-run", "-f", dir_str(&dir)]);
    assert_refused(
        &out,
        &format!("{}:32:17: hostname `aaaa", dir.join("all.yaml").display()),
    );
    assert_refused(
        &out,
        "is too long for its preview hostnames: `green.` before its 250 characters is over DNS's \
         253; expected at most 247 characters",
    );
}

#[test]
fn finding_6_a_100y_timeout_and_a_duration_that_wraps_as_milliseconds_are_refused() {
    let sb = Sandbox::new();
    let dir = write_manifests(
        &sb,
        &[project_doc(
            "slow",
            "production",
            "      gracePeriod: 18446744073709552s\n",
        )
        .replace("timeout: 15s", "timeout: 100y")],
    );
    let file = dir.join("all.yaml");
    let out = codeb_within(&sb, &["apply", "-f", dir_str(&dir)]);
    assert_refused(
        &out,
        &format!(
            "{}:30:45: invalid health check timeout `100y`: expected at most `1h`",
            file.display()
        ),
    );
    assert_refused(
        &out,
        &format!(
            "{}:32:20: invalid grace period `18446744073709552s`: expected at most `30d`",
            file.display()
        ),
    );
}

/// Applies `first` for real, then shows that `second` is refused by `apply --dry-run` and
/// `apply` with `expected` in the message, with nothing applied; cleans up.
fn refused_after_an_earlier_apply(first: &str, second: &[String], expected: &[String]) {
    let _l = lock();
    let sb = Sandbox::new();
    let earlier = sb.write(&[ProjectYaml::new(first, "localhost/codeb-test-app:v1")]);
    let out = sb.apply(&earlier);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let projects_before = sb.codeb(&["get", "projects", "-o", "json"]).stdout;
    let containers_before = containers(first);
    assert!(!containers_before.is_empty(), "the earlier apply deployed");

    // Other manifests, in another directory: the earlier project is only in the store.
    let other = tempfile::tempdir().unwrap();
    std::fs::write(
        other.path().join("all.yaml"),
        format!("{}{}", sb.stack.host_yaml(), second.concat()),
    )
    .unwrap();
    for args in [&["apply", "--dry-run"][..], &["apply"][..]] {
        let mut args = args.to_vec();
        args.extend(["-f", dir_str(other.path())]);
        let out = codeb_within(&sb, &args);
        for e in expected {
            assert_refused(
                &out,
                &e.replace(
                    "{file}",
                    &other.path().join("all.yaml").display().to_string(),
                ),
            );
        }
    }
    assert_eq!(
        sb.codeb(&["get", "projects", "-o", "json"]).stdout,
        projects_before,
        "nothing was recorded"
    );
    assert_eq!(containers(first), containers_before, "nothing was deployed");
    cleanup(&sb, first);
}

#[test]
fn finding_6_a_container_name_an_earlier_apply_recorded_for_another_project_is_refused() {
    // `{u}-web` production and `{u}` web-production both need `{u}-web-production-blue`.
    let u = unique("c6");
    let first = format!("{u}-web");
    refused_after_an_earlier_apply(
        &first,
        &[project_doc(&u, "web-production", "")],
        &[format!(
            "{{file}}:27:5: project `{u}` environment `web-production` needs the container names \
             `{first}-production-blue` and `{first}-production-green`, which project `{first}` \
             environment `production` (recorded on Host `local` by an earlier apply) holds"
        )],
    );
}

#[test]
fn finding_6_a_hostname_an_earlier_apply_recorded_for_another_environment_is_refused_naming_the_holder(
) {
    let first = unique("h6");
    let second = format!("{first}-b");
    refused_after_an_earlier_apply(
        &first,
        &[project_doc(
            &second,
            "production",
            &format!("      hostname: {first}.codeb.test\n"),
        )],
        &[format!(
            "{{file}}:32:17: the hostname `{first}.codeb.test` of project `{second}` environment \
             `production` is the hostname of project `{first}` environment `production` \
             (recorded on Host `local` by an earlier apply); each hostname routes to one \
             environment: choose another hostname, or free it first (`codeb delete project \
             {first}`"
        )],
    );
}

fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(status.success());
}

#[test]
fn finding_7_a_fifo_named_yaml_is_refused_without_hanging() {
    let sb = Sandbox::new();
    let dir = sb.write(&[]);
    let fifo = dir.join("x.yaml");
    mkfifo(&fifo);
    let expected = format!(
        "{}: not read: a FIFO; manifests are read from regular files only",
        fifo.display()
    );
    // In the directory given, and named on the command line.
    for path in [dir.as_path(), fifo.as_path()] {
        let out = codeb_within(&sb, &["apply", "-f", dir_str(path)]);
        assert_refused(&out, &expected);
    }
}

#[test]
fn finding_7_a_symlink_to_the_root_in_the_manifest_directory_is_refused_not_walked() {
    let sb = Sandbox::new();
    let dir = sb.write(&[]);
    std::os::unix::fs::symlink("/", dir.join("root")).unwrap();
    let out = codeb_within(&sb, &["diff", "-f", dir_str(&dir)]);
    assert_refused(
        &out,
        &format!(
            "{}/root: not read: a symlink to `/`, outside `{}`; symlinks in a manifest directory \
             are followed only inside it",
            dir.display(),
            dir.display()
        ),
    );
    // One error, about the link: no file of the machine was read or named.
    let errors = stderr(&out);
    assert_eq!(errors.trim().lines().count(), 1, "{errors}");
}

#[test]
fn finding_7_a_manifest_symlink_named_on_the_command_line_is_followed() {
    let _l = lock();
    let sb = Sandbox::new();
    let dir = sb.write(&[]);
    let link = sb.dir.path().join("current.yaml");
    std::os::unix::fs::symlink(dir.join("all.yaml"), &link).unwrap();
    let out = codeb_within(&sb, &["apply", "--dry-run", "-f", dir_str(&link)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[test]
fn finding_7_an_endless_stdin_is_refused_after_the_file_limit() {
    let sb = Sandbox::new();
    let mut child = Command::new(env!("CARGO_BIN_EXE_codeb"))
        .arg("--state-dir")
        .arg(sb.state())
        .args(["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // Writes until codeb closes its end (a broken pipe), at most 1 GiB.
    let writer = std::thread::spawn(move || {
        let chunk = vec![b'#'; 64 * 1024];
        let mut written = 0u64;
        while written < 1 << 30 && stdin.write_all(&chunk).is_ok() {
            written += chunk.len() as u64;
        }
        written
    });
    let out = finish(child, "apply -f - with an endless stdin");
    let written = writer.join().unwrap();
    eprintln!("stdin: {written} bytes written before codeb closed it");
    assert_refused(&out, "<stdin>: input refused: larger than 4 MiB");
    assert!(written < 64 << 20, "codeb read {written} bytes of stdin");
}
