//! Live progress and followed logs against the real Podman and Caddy (issue #16): while a slow
//! health check waits, the step's start and its wait states arrive seconds before the apply ends,
//! on a terminal (a pty, through `script`) as a spinner and elsewhere as one line per state change;
//! `apply --timeout` stops with exit 4 and the next apply resumes, and bounds a run whose Podman
//! never answers; the same progress arrives when `codeb watch` answers; `logs -f` receives a line
//! the app writes after it started, control characters replaced, and ends quietly on Ctrl-C, on a
//! closed pipe and when its container goes, locally and through the daemon.
//!
//! The slow app is the test image under a shell that hides `/health` and starts httpd late: no
//! answer (connection refused) for 3 s, then `HTTP 404` for 3 s, then healthy.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// Refused for 3 s, 404 for 3 s more, then healthy.
const SLOW: &str = r#"      command: ["/bin/sh", "-c", "mv /www/health /tmp/health; (sleep 3; httpd -f -p 8080 -h /www) & sleep 6; mv /tmp/health /www/health; wait"]
"#;

/// `HTTP 404` for 12 s, then healthy: longer than the `--timeout` of the test that uses it.
const SLOWER: &str = r#"      command: ["/bin/sh", "-c", "mv /www/health /tmp/health; httpd -f -p 8080 -h /www & sleep 12; mv /tmp/health /www/health; wait"]
"#;

/// The Host, the Zone and one project running `command`, its health timeout 30 s.
fn manifest(sb: &Sandbox, name: &str, image: &str, command: &str) -> String {
    let mut p = ProjectYaml::new(name, image);
    p.timeout = "30s";
    let mut text = sb.stack.host_yaml();
    text.push_str(&p.render());
    text.push_str(command);
    text
}

/// Writes `text` as `DIR/all.yaml` under the sandbox, a directory of its own.
fn write_dir(sb: &Sandbox, dir: &str, text: &str) -> std::path::PathBuf {
    let dir = sb.dir.path().join(dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("all.yaml"), text).unwrap();
    dir
}

/// A child killed and reaped when dropped, so that a failing test leaves no `logs -f` behind.
struct Reaped(std::process::Child);

impl std::ops::Deref for Reaped {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for Reaped {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What a child wrote, chunk by chunk, with when each chunk arrived.
#[derive(Clone, Default)]
struct Timeline(Arc<Mutex<Vec<(Instant, String)>>>);

impl Timeline {
    /// Reads `from` until it ends, recording each chunk as it arrives.
    fn record(&self, mut from: impl Read + Send + 'static) -> std::thread::JoinHandle<()> {
        let chunks = self.0.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = from.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                chunks.lock().unwrap().push((Instant::now(), text));
            }
        })
    }

    /// Lines (split on `\n` and `\r`, as a terminal shows them) with the arrival of their end.
    fn lines(&self) -> Vec<(Instant, String)> {
        let mut lines = Vec::new();
        let mut current = String::new();
        for (at, chunk) in self.0.lock().unwrap().iter() {
            for c in chunk.chars() {
                if c == '\n' || c == '\r' {
                    if !current.is_empty() {
                        lines.push((*at, std::mem::take(&mut current)));
                    }
                } else {
                    current.push(c);
                }
            }
        }
        lines
    }

    /// When the first line containing `needle` arrived.
    fn first(&self, needle: &str) -> Option<Instant> {
        self.lines()
            .into_iter()
            .find(|(_, l)| l.contains(needle))
            .map(|(at, _)| at)
    }

    fn text(&self) -> String {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|(_, c)| c.as_str())
            .collect()
    }

    /// The lines with their time since `start`, for a failure's message and the test's log.
    fn show(&self, start: Instant) -> String {
        self.lines()
            .iter()
            .map(|(at, l)| format!("{:>6.2}s {l}\n", at.duration_since(start).as_secs_f64()))
            .collect()
    }
}

/// Runs `codeb ARGS` to its end, its stdout and stderr recorded as they arrive; (exit code, when
/// it ended, stdout, stderr).
fn run_timed(sb: &Sandbox, args: &[&str]) -> (Option<i32>, Instant, Timeline, Timeline) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_codeb"))
        .arg("--state-dir")
        .arg(sb.state())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (out, err) = (Timeline::default(), Timeline::default());
    let readers = [
        out.record(child.stdout.take().unwrap()),
        err.record(child.stderr.take().unwrap()),
    ];
    let status = child.wait().unwrap();
    let ended = Instant::now();
    for r in readers {
        r.join().unwrap();
    }
    (status.code(), ended, out, err)
}

/// The wait step's text for `name`'s `slot`.
fn waiting(name: &str, slot: &str) -> String {
    format!("{name}/production: wait until {slot} is healthy")
}

/// Asserts the plain progress of a slow deploy into `slot`: the wait's start, then exactly one
/// line per state (refused, 404, passed), then its end with a duration, the start at least 4 s
/// before `ended`.
fn assert_plain_progress(err: &Timeline, name: &str, slot: &str, ended: Instant, start: Instant) {
    let shown = err.show(start);
    let step = waiting(name, slot);
    let lines: Vec<String> = err.lines().into_iter().map(|(_, l)| l).collect();
    let at = |needle: &str| {
        lines
            .iter()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?}:\n{shown}"))
    };
    let started = at(&format!("→ {step}"));
    let refused = at("  … connection refused (after ");
    let not_found = at("  … HTTP 404 (after ");
    let passed = at("  … passed (after ");
    let done = at(&format!("✓ {step}"));
    assert!(
        started < refused && refused < not_found && not_found < passed && passed < done,
        "{shown}"
    );
    for state in ["connection refused", "HTTP 404", "passed"] {
        let n = lines
            .iter()
            .filter(|l| l.starts_with(&format!("  … {state}")))
            .count();
        assert_eq!(n, 1, "one line per state change, {state:?}:\n{shown}");
    }
    assert!(
        lines[done].ends_with(" s)"),
        "its duration: {}",
        lines[done]
    );
    let t_started = err.first(&format!("→ {step}")).unwrap();
    let t_404 = err.first("  … HTTP 404").unwrap();
    assert!(
        ended.duration_since(t_started) >= Duration::from_secs(4),
        "the wait's start arrived {:?} before the end:\n{shown}",
        ended.duration_since(t_started)
    );
    assert!(
        ended.duration_since(t_404) >= Duration::from_secs(2),
        "a state change arrived while it waited:\n{shown}"
    );
}

#[test]
fn progress_arrives_on_a_terminal_while_a_slow_health_check_waits() {
    let _l = lock();
    let sb = Sandbox::new();
    let name = unique("prog-tty");
    let _cleanup = Cleanup(&sb, vec![name.clone()]);
    let dir = write_dir(
        &sb,
        "manifests",
        &manifest(&sb, &name, "localhost/codeb-test-app:v1", SLOW),
    );
    // `script` gives the command a pty for stdin, stdout and stderr, and copies what it shows.
    let command = format!(
        "{} --state-dir {} apply -f {}",
        env!("CARGO_BIN_EXE_codeb"),
        sb.state().display(),
        dir.display()
    );
    let start = Instant::now();
    let mut child = Command::new("script")
        .args(["-q", "-e", "-c", &command, "/dev/null"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("script (util-linux) runs");
    let shown = Timeline::default();
    let reader = shown.record(child.stdout.take().unwrap());
    let status = child.wait().unwrap();
    let ended = Instant::now();
    reader.join().unwrap();
    let log = shown.show(start);
    eprintln!("{log}");
    assert_eq!(status.code(), Some(0), "{log}");

    let step = waiting(&name, "blue");
    let t_started = shown.first(&format!("→ {step}")).expect("the wait's start");
    assert!(
        ended.duration_since(t_started) >= Duration::from_secs(4),
        "the wait's start arrived {:?} before the end:\n{log}",
        ended.duration_since(t_started)
    );
    // The spinner redraws its line (`\r`, erase line) with the elapsed time and the last answer,
    // while the health check waits.
    let raw = shown.text();
    assert!(raw.contains("\r\u{1b}[2K"), "a spinner redraws in place");
    let spinner_lines: Vec<(Instant, String)> = shown
        .lines()
        .into_iter()
        .filter(|(at, l)| *at > t_started && l.contains("HTTP 404"))
        .collect();
    let (first_404, _) = spinner_lines.first().expect("the spinner showed HTTP 404");
    assert!(
        ended.duration_since(*first_404) >= Duration::from_secs(2),
        "a progress update arrived while it waited:\n{log}"
    );
    // Its elapsed time counts up while it waits.
    for secs in ["2s", "4s"] {
        assert!(
            shown
                .lines()
                .iter()
                .any(|(at, l)| *at < ended && l.contains(&format!(" {secs} ")) && !l.contains('→')),
            "the spinner showed {secs} elapsed:\n{log}"
        );
    }
    assert!(
        shown.first(&format!("✓ {step} (")).is_some(),
        "the step's end line with its duration:\n{log}"
    );
}

#[test]
fn without_a_terminal_each_state_change_is_one_line_on_stderr_and_stdout_stays_json() {
    let _l = lock();
    let sb = Sandbox::new();
    let name = unique("prog-plain");
    let _cleanup = Cleanup(&sb, vec![name.clone()]);
    let dir = write_dir(
        &sb,
        "manifests",
        &manifest(&sb, &name, "localhost/codeb-test-app:v1", SLOW),
    );
    let start = Instant::now();
    let (code, ended, out, err) =
        run_timed(&sb, &["apply", "-f", dir.to_str().unwrap(), "-o", "json"]);
    eprintln!("{}", err.show(start));
    assert_eq!(code, Some(0), "{}\n{}", out.text(), err.text());
    assert_plain_progress(&err, &name, "blue", ended, start);
    // Every executed step started and ended on stderr; stdout is the answer alone.
    let answer: serde_json::Value = serde_json::from_str(&out.text()).expect("pure JSON");
    let executed = answer["outcome"]["executed"]
        .as_array()
        .unwrap_or_else(|| panic!("{answer:#}"));
    assert!(!executed.is_empty());
    let stderr = err.text();
    for step in executed {
        let step = step.as_str().unwrap();
        assert!(stderr.contains(&format!("→ {step}\n")), "{step}");
        assert!(stderr.contains(&format!("✓ {step} (")), "{step}");
    }
    // --progress none: nothing on stderr, the same answer.
    let again = sb.codeb(&["apply", "-f", dir.to_str().unwrap(), "--progress", "none"]);
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));
    assert!(again.stderr.is_empty(), "{}", text(&again));
}

#[test]
fn apply_timeout_stops_with_exit_4_leaves_the_slot_deploying_and_the_next_apply_resumes() {
    let _l = lock();
    let sb = Sandbox::new();
    let name = unique("prog-timeout");
    let _cleanup = Cleanup(&sb, vec![name.clone()]);
    let dir = write_dir(
        &sb,
        "manifests",
        &manifest(&sb, &name, "localhost/codeb-test-app:v1", SLOWER),
    );
    let start = Instant::now();
    let (code, ended, out, err) = run_timed(
        &sb,
        &["apply", "-f", dir.to_str().unwrap(), "--timeout", "3s"],
    );
    let took = ended.duration_since(start);
    eprintln!("took {took:?}\n{}", err.show(start));
    assert_eq!(code, Some(4), "{}\n{}", out.text(), err.text());
    assert!(
        (Duration::from_secs(3)..Duration::from_secs(6)).contains(&took),
        "{took:?}"
    );
    let stdout = out.text();
    assert!(stdout.contains("--timeout was reached"), "{stdout}");
    assert!(stdout.contains("stays deploying"), "{stdout}");
    assert_eq!(sb.slot_state(&name, "blue"), "deploying");
    let container = format!("{name}-production-blue");
    let before = containers(&container);
    assert_eq!(before.len(), 1, "{before:?}");
    assert_eq!(before[0].2, "running", "{before:?}");

    // The next apply resumes the health check of the same container: no new deploy. Under
    // --log-format json its progress on stderr is JSON log lines like the rest of stderr.
    let out = sb.codeb(&["apply", "-f", dir.to_str().unwrap(), "--log-format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        events
            .iter()
            .any(|e| e["fields"]["progress"]["type"] == "waiting"
                && e["fields"]["progress"]["state"] == "passed"),
        "{events:#?}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains(": deploy "), "{stdout}");
    assert!(stdout.contains("wait until blue is healthy"), "{stdout}");
    assert_eq!(
        containers(&container)[0].1,
        before[0].1,
        "the same container"
    );
    assert_eq!(sb.slot_state(&name, "blue"), "active");
    assert_eq!(
        sb.get(&format!("{name}.codeb.test"), "/"),
        (200, "v1".to_string())
    );
}

#[test]
fn apply_timeout_bounds_a_run_whose_backend_never_answers() {
    let _l = lock();
    let sb = Sandbox::new();
    let name = unique("prog-hang");
    // A Podman that accepts connections and never answers: the observation waits on it (its
    // client gives up only after 30 s), so no step starts and the run is abandoned at the bound.
    let socket = sb.dir.path().join("silent-podman.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let held = std::thread::spawn(move || {
        let mut kept = Vec::new();
        for stream in listener.incoming().take(8).flatten() {
            kept.push(stream);
        }
        kept
    });
    let text = manifest(&sb, &name, "localhost/codeb-test-app:v1", "").replace(
        &format!("podman: {}", sb.stack.podman),
        &format!("podman: unix://{}", socket.display()),
    );
    assert!(text.contains("silent-podman.sock"), "{text}");
    let dir = write_dir(&sb, "manifests", &text);
    let start = Instant::now();
    let (code, ended, out, err) = run_timed(
        &sb,
        &["apply", "-f", dir.to_str().unwrap(), "--timeout", "1s"],
    );
    let took = ended.duration_since(start);
    eprintln!("took {took:?}\n{}{}", out.text(), err.text());
    assert_eq!(code, Some(4), "{}\n{}", out.text(), err.text());
    assert!(
        (Duration::from_secs(11)..Duration::from_secs(15)).contains(&took),
        "the timeout and 10 s: {took:?}"
    );
    assert!(err.text().contains("was abandoned"), "{}", err.text());
    assert!(containers(&name).is_empty());
    drop(held);
}

/// Waits until `codeb watch` answers on its socket.
fn wait_socket(sb: &Sandbox, w: &WatchProcess) {
    assert!(
        eventually(Duration::from_secs(30), || sb
            .state()
            .join("codeb.sock")
            .exists()),
        "{}",
        w.log()
    );
}

#[test]
fn the_same_progress_arrives_when_codeb_watch_answers() {
    let _l = lock();
    let sb = Sandbox::new();
    let name = unique("prog-daemon");
    let _cleanup = Cleanup(&sb, vec![name.clone()]);
    // The daemon watches the Host alone; the project is applied through its socket.
    let watched = write_dir(&sb, "watched", &sb.stack.host_yaml());
    let w = sb.watch(&watched, &["--resync", "10m"]);
    wait_socket(&sb, &w);
    let dir = write_dir(
        &sb,
        "manifests",
        &manifest(&sb, &name, "localhost/codeb-test-app:v1", SLOW),
    );
    let start = Instant::now();
    let (code, ended, out, err) = run_timed(&sb, &["apply", "-f", dir.to_str().unwrap()]);
    eprintln!("{}", err.show(start));
    assert_eq!(code, Some(0), "{}\n{}", out.text(), err.text());
    assert!(
        out.text().contains("codeb watch leaves them as applied"),
        "answered by the daemon: {}",
        out.text()
    );
    assert_plain_progress(&err, &name, "blue", ended, start);
    drop(w);
}

/// `podman exec CONTAINER sh -c SCRIPT`: writes to the app's stdout through PID 1's.
fn exec(container: &str, script: &str) {
    let out = podman(&["exec", container, "sh", "-c", script]);
    assert!(out.status.success(), "{}", text(&out));
}

/// `codeb logs NAME -f --tail TAIL` started, its stdout and stderr recorded as they arrive.
fn follow(
    sb: &Sandbox,
    name: &str,
    tail: &str,
) -> (Reaped, Timeline, Timeline, [std::thread::JoinHandle<()>; 2]) {
    let mut child = Reaped(
        Command::new(env!("CARGO_BIN_EXE_codeb"))
            .arg("--state-dir")
            .arg(sb.state())
            .args(["logs", name, "-f", "--tail", tail])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let (out, err) = (Timeline::default(), Timeline::default());
    let readers = [
        out.record(child.stdout.take().unwrap()),
        err.record(child.stderr.take().unwrap()),
    ];
    (child, out, err, readers)
}

/// Follows `name`'s log (`codeb logs NAME -f --tail 5`), writes a line with an escape sequence
/// into the app's stdout once the tail arrived, and checks that it arrives with the escape
/// replaced; then Ctrl-C ends it with exit 0. Returns how long the line took.
fn follow_then_interrupt(sb: &Sandbox, name: &str, mark: &str) -> Duration {
    let (mut child, out, err, readers) = follow(sb, name, "5");
    // The tail first: the app's start-up line, written before `logs -f` started.
    assert!(
        eventually(Duration::from_secs(10), || out
            .text()
            .contains("listening on :8080")),
        "{}{}",
        out.text(),
        err.text()
    );
    let container = format!("{name}-production-blue");
    let written = Instant::now();
    exec(
        &container,
        &format!("printf '{mark} \\033[31mred\\033[0m \\a\\n' > /proc/1/fd/1"),
    );
    assert!(
        eventually(Duration::from_secs(10), || out.text().contains(mark)),
        "{}{}",
        out.text(),
        err.text()
    );
    let took = out.first(mark).unwrap().duration_since(written);
    let line = out
        .lines()
        .into_iter()
        .find(|(_, l)| l.contains(mark))
        .unwrap()
        .1;
    assert_eq!(
        line,
        format!("{mark} \u{fffd}[31mred\u{fffd}[0m \u{fffd}"),
        "control characters replaced"
    );
    assert!(!out.text().contains('\u{1b}'));
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = child.wait().unwrap();
    for r in readers {
        r.join().unwrap();
    }
    assert_eq!(
        status.code(),
        Some(0),
        "Ctrl-C ends it quietly: {}",
        err.text()
    );
    assert!(!err.text().contains("error"), "{}", err.text());
    took
}

/// `codeb logs NAME -f --tail 0 | head -n 1`: once head has its line and exits, the next line
/// meets a closed pipe, which ends codeb quietly with exit 0.
fn follow_into_a_closed_pipe(sb: &Sandbox, name: &str) {
    let script = format!(
        "{} --state-dir {} logs {name} -f --tail 0 | head -n 1; echo \"rc=${{PIPESTATUS[0]}}\"",
        env!("CARGO_BIN_EXE_codeb"),
        sb.state().display()
    );
    let mut child = Reaped(
        Command::new("bash")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let out = Timeline::default();
    let reader = out.record(child.stdout.take().unwrap());
    let container = format!("{name}-production-blue");
    // Lines until the pipeline ends: the first reaches head, a later one the closed pipe.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut n = 0;
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "{}", out.text());
        n += 1;
        exec(&container, &format!("echo pipe-line-{n} > /proc/1/fd/1"));
        std::thread::sleep(Duration::from_millis(300));
    }
    reader.join().unwrap();
    let text = out.text();
    assert!(text.starts_with("pipe-line-"), "{text}");
    assert!(text.contains("rc=0"), "{text}");
}

#[test]
fn logs_follow_gets_a_line_written_after_it_started_locally_and_through_codeb_watch() {
    let _l = lock();
    let sb = Sandbox::new();
    let name = unique("prog-logs");
    let _cleanup = Cleanup(&sb, vec![name.clone()]);
    // The image's own command: it prints a start-up line, then httpd.
    let dir = sb.write(&[ProjectYaml::new(&name, "localhost/codeb-test-app:v1")]);
    let out = sb.apply(&dir);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    let local = follow_then_interrupt(&sb, &name, "local-mark");
    follow_into_a_closed_pipe(&sb, &name);

    let w = sb.watch(&dir, &["--resync", "10m"]);
    wait_socket(&sb, &w);
    let daemon = follow_then_interrupt(&sb, &name, "daemon-mark");
    follow_into_a_closed_pipe(&sb, &name);
    eprintln!(
        "a written line reached `logs -f`: locally in {local:?}, through codeb watch in {daemon:?}"
    );
    // The daemon dropped the followed logs whose clients went away, and still answers.
    let get = sb.codeb(&["get", "slots"]);
    assert_eq!(get.status.code(), Some(0), "{}", text(&get));
    drop(w);

    // A follow ends by itself, exit 0, when its container goes (here: the project is deleted).
    let (mut child, out, err, readers) = follow(&sb, &name, "1");
    assert!(
        eventually(Duration::from_secs(10), || !out.text().is_empty()),
        "the tail: {}",
        err.text()
    );
    let delete = sb.codeb(&["delete", "project", &name]);
    assert_eq!(delete.status.code(), Some(0), "{}", text(&delete));
    assert!(
        eventually(Duration::from_secs(20), || child
            .try_wait()
            .unwrap()
            .is_some()),
        "the follow ended with its container: {}",
        err.text()
    );
    let status = child.wait().unwrap();
    for r in readers {
        r.join().unwrap();
    }
    assert_eq!(status.code(), Some(0), "{}", err.text());
    assert!(
        err.text()
            .contains(&format!("the log of {name}-production-blue ended")),
        "{}",
        err.text()
    );
}

/// The slot a `logs` request can name: blue, green or active; `--lines` still works for `--tail`.
#[test]
fn logs_tail_takes_tail_or_lines_and_slot_active() {
    let _l = lock();
    let sb = Sandbox::new();
    let name = unique("prog-tail");
    let _cleanup = Cleanup(&sb, vec![name.clone()]);
    let dir = sb.write(&[ProjectYaml::new(&name, "localhost/codeb-test-app:v1")]);
    assert_eq!(sb.apply(&dir).status.code(), Some(0));
    for args in [
        ["--tail", "1", "--slot", "active"],
        ["--lines", "1", "--slot", "blue"],
    ] {
        let mut all = vec!["logs", name.as_str()];
        all.extend(args);
        let out = sb.codeb(&all);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(stdout.lines().count(), 1, "{stdout}");
        assert!(stdout.contains("listening on :8080"), "{stdout}");
    }
}
