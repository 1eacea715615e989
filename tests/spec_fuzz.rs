//! Property tests over the manifest loader (issue 13: "property tests or a fuzz target over the
//! manifest loader: random bytes in, no panic, bounded memory"). Three kinds of input, 2,000
//! cases each: random bytes (through a file, so the UTF-8 and size checks run too), random
//! YAML-ish text built from YAML's punctuation and the manifests' own words (anchors, aliases,
//! tags, flow and block collections, durations), and a valid manifest set with random edits.
//!
//! Each load must end without a panic, within a bound per case, with either manifests or errors
//! that each name the input; and the process's peak memory must grow by less than 256 MiB over
//! all cases together (every input is a few KiB, so an expansion would show). Measured on the
//! development machine (debug build): the 6,000 cases take about 5 s, peak memory does not grow.

use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use codeb::spec::{load_paths, load_str, Errors, Manifests};

const CASES: u32 = 2_000;
/// Per case; a small input loads in well under a millisecond (debug build, most of it I/O).
const CASE_LIMIT: Duration = Duration::from_secs(1);

const VALID: &str = "\
apiVersion: codeb.kr/v1
kind: Host
metadata: {name: local}
spec:
  address: 127.0.0.1
  podman: unix:///run/podman/podman.sock
  caddy: {admin: 'http://127.0.0.1:2019', listen: [':80'], tls: off}
---
apiVersion: codeb.kr/v1
kind: Zone
metadata: {name: codeb.test}
spec:
  powerdns: {api: 'http://127.0.0.1:8081', apiKeyEnv: PDNS_API_KEY}
---
apiVersion: codeb.kr/v1
kind: Project
metadata: {name: hello}
spec:
  host: local
  zone: codeb.test
  environments:
    production:
      image: localhost/app:v1
      port: 8080
      command: [/app, --serve]
      env: {LOG_LEVEL: info, TOKEN: s3cr3t}
      healthCheck: {path: /health, timeout: 60s}
      promotion: auto
      gracePeriod: 1h
      hostname: hello.codeb.test
    staging: {image: a, port: 80}
";

/// Words and punctuation YAML and manifests are made of.
const TOKENS: &[&str] = &[
    "\n",
    "\n  ",
    "\n    ",
    "\n- ",
    " ",
    "  ",
    ": ",
    ":",
    "- ",
    "-",
    "---\n",
    "...\n",
    "[",
    "]",
    "{",
    "}",
    ", ",
    "&a ",
    "*a",
    "&b ",
    "*b",
    "<<: *a",
    "!!str ",
    "!!map ",
    "!custom ",
    "'",
    "\"",
    "#",
    "|\n  ",
    ">\n  ",
    "?",
    "%YAML 1.2\n",
    "\t",
    "\\",
    "\u{feff}",
    "\u{0}",
    "é",
    "apiVersion",
    "codeb.kr/v1",
    "kind",
    "Host",
    "Zone",
    "Project",
    "metadata",
    "name",
    "spec",
    "environments",
    "production",
    "staging",
    "image",
    "port",
    "command",
    "env",
    "healthCheck",
    "path",
    "timeout",
    "gracePeriod",
    "promotion",
    "hostname",
    "host",
    "zone",
    "address",
    "podman",
    "caddy",
    "admin",
    "listen",
    "tls",
    "powerdns",
    "api",
    "apiKeyEnv",
    "ttl",
    "0",
    "80",
    "65536",
    "-1",
    "1e309",
    "60s",
    "100y",
    "18446744073709552s",
    "30d",
    "1h",
    "null",
    "~",
    "true",
    "auto",
    "manual",
    "off",
    "a-b",
    "codeb.test",
    "/",
    "unix:///x",
    "http://x:1",
];

fn yamlish() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(TOKENS), 0..300).prop_map(|t| t.concat())
}

/// An edit of the valid set: at a position, remove some bytes and insert some tokens.
fn edited() -> impl Strategy<Value = String> {
    let edit = (
        0..VALID.len(),
        0usize..20,
        prop::collection::vec(prop::sample::select(TOKENS), 0..4),
    );
    prop::collection::vec(edit, 1..6).prop_map(|edits| {
        let mut text = VALID.to_string();
        for (at, remove, insert) in edits {
            let mut at = at.min(text.len());
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            let mut end = (at + remove).min(text.len());
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.replace_range(at..end, &insert.concat());
        }
        text
    })
}

fn runner() -> TestRunner {
    TestRunner::new(Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::default()
    })
}

/// A load ended within the limit, and every error it gave names the input.
fn check(
    result: Result<Manifests, Errors>,
    file: &str,
    took: Duration,
) -> Result<(), TestCaseError> {
    prop_assert!(took < CASE_LIMIT, "one load took {took:?}");
    if let Err(errors) = result {
        for e in &errors {
            prop_assert!(e.to_string().starts_with(file), "{e}");
            prop_assert!(!e.message().is_empty());
        }
    }
    Ok(())
}

/// The process's peak resident memory, in KiB.
fn peak_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .expect("VmHWM in /proc/self/status")
}

#[test]
fn the_loader_never_panics_and_stays_bounded_on_random_input() {
    let start = Instant::now();
    let peak_before = peak_kib();

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fuzz.yaml");
    let label = file.display().to_string();
    runner()
        .run(&prop::collection::vec(any::<u8>(), 0..4096), |bytes| {
            std::fs::write(&file, &bytes).unwrap();
            let t = Instant::now();
            let result = load_paths(std::slice::from_ref(&file));
            check(result, &label, t.elapsed())
        })
        .unwrap();
    let bytes_took = start.elapsed();

    runner()
        .run(&yamlish(), |text| {
            let t = Instant::now();
            check(load_str("fuzz.yaml", &text), "fuzz.yaml", t.elapsed())
        })
        .unwrap();
    runner()
        .run(&edited(), |text| {
            let t = Instant::now();
            check(load_str("fuzz.yaml", &text), "fuzz.yaml", t.elapsed())
        })
        .unwrap();

    let took = start.elapsed();
    let grew_mib = peak_kib().saturating_sub(peak_before) / 1024;
    eprintln!(
        "{} cases in {took:?} (random bytes: {bytes_took:?}); peak memory grew by {grew_mib} MiB",
        3 * CASES
    );
    assert!(grew_mib < 256, "peak memory grew by {grew_mib} MiB");
    assert!(took < Duration::from_secs(60), "{took:?}");
}

#[test]
fn the_valid_set_the_edits_start_from_loads() {
    let m = load_str("fuzz.yaml", VALID).unwrap();
    assert_eq!(m.projects["hello"].spec.environments.len(), 2);
}
