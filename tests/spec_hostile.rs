//! Hostile input is refused quickly, in bounded memory, with a clear message and no panic.
//!
//! The time bounds are generous (debug builds on a loaded machine); the measured times are printed
//! (`cargo test --test spec_hostile -- --nocapture`) and are around a millisecond.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use codeb::spec::{load_paths, load_str, Errors};

const PROJECT: &str = "\
apiVersion: codeb.kr/v1
kind: Project
metadata: {name: hello}
spec:
  host: local
  zone: codeb.test
  environments:
    production: {image: a, port: 80}
";

/// Loads `text`, asserts it fails within `limit`, and returns its errors.
fn refused(name: &str, text: &str, limit: Duration) -> Errors {
    let start = Instant::now();
    let result = load_str("hostile.yaml", text);
    let elapsed = start.elapsed();
    eprintln!("{name}: {} bytes refused in {elapsed:?}", text.len());
    assert!(elapsed < limit, "{name} took {elapsed:?}");
    let errors = result.expect_err("hostile input must not load");
    eprintln!("  first error: {}", errors.iter().next().unwrap());
    errors
}

fn assert_message(errors: &Errors, expected: &str) {
    assert!(
        errors.iter().any(|e| e.to_string().contains(expected)),
        "no error contains {expected:?}:\n{errors}"
    );
}

/// The "billion laughs": 10 levels of 10 aliases each, 10^10 nodes once expanded.
fn alias_bomb() -> String {
    let mut text = String::from("bomb:\n  a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..10 {
        let p = i - 1;
        text += &format!("  a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n");
    }
    text + "apiVersion: codeb.kr/v1\nkind: Zone\nmetadata: {name: codeb.test}\n"
}

#[test]
fn an_alias_bomb_is_refused() {
    let errors = refused("alias bomb", &alias_bomb(), Duration::from_secs(2));
    assert_eq!(errors.len(), 1, "{errors}");
    assert_message(
        &errors,
        "hostile.yaml:6:12: input refused: anchors that expand to more than 20000 YAML events \
         (an alias bomb?)",
    );
}

#[test]
fn an_alias_bomb_inside_a_spec_is_refused() {
    let mut text = String::from(PROJECT);
    text = text.replace("port: 80}", "port: 80, command: *a9}");
    let bomb = alias_bomb();
    let anchors = bomb.split("apiVersion").next().unwrap();
    let errors = refused(
        "alias bomb in spec",
        &format!("{anchors}{text}"),
        Duration::from_secs(2),
    );
    assert_message(&errors, "input refused: ");
}

#[test]
fn many_copies_of_a_large_anchor_are_refused() {
    let mut text = format!("big: &big \"{}\"\ncopies:\n", "x".repeat(60_000));
    for _ in 0..250 {
        text += "  - *big\n";
    }
    let errors = refused("anchor copies", &text, Duration::from_secs(2));
    assert_message(&errors, "input refused: ");
}

#[test]
fn deep_flow_nesting_is_refused() {
    let text = format!("deep: {}1{}\n", "[".repeat(10_000), "]".repeat(10_000));
    let errors = refused("10,000-deep flow nesting", &text, Duration::from_secs(2));
    assert_eq!(errors.len(), 1, "{errors}");
    assert_message(&errors, "input refused: nested deeper than 32 levels");
}

#[test]
fn deep_block_nesting_is_refused() {
    let text = format!("deep:\n{}x\n", "- ".repeat(10_000));
    let errors = refused("10,000-deep block nesting", &text, Duration::from_secs(2));
    assert_eq!(errors.len(), 1, "{errors}");
    assert_message(&errors, "input refused: nested deeper than 32 levels");
}

#[test]
fn a_5_mib_string_is_refused_before_parsing() {
    let text = format!("{PROJECT}padding: \"{}\"\n", "x".repeat(5 << 20));
    let errors = refused("5 MiB string", &text, Duration::from_millis(500));
    assert_eq!(
        errors.to_string(),
        "hostile.yaml: input refused: 5.0 MiB is larger than the limit of 4 MiB per file"
    );
}

#[test]
fn a_5_mib_file_is_refused_before_it_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.yaml");
    let file = std::fs::File::create(&path).unwrap();
    // A sparse file: refusing it must not depend on reading it.
    file.set_len(5 << 20).unwrap();
    let start = Instant::now();
    let errors = load_paths(std::slice::from_ref(&path)).unwrap_err();
    eprintln!("5 MiB file: refused in {:?}", start.elapsed());
    assert!(start.elapsed() < Duration::from_millis(500));
    assert_eq!(
        errors.to_string(),
        format!(
            "{}: input refused: 5.0 MiB is larger than the limit of 4 MiB per file",
            path.display()
        )
    );
}

#[test]
fn too_many_documents_are_refused() {
    let errors = refused(
        "2,000 documents",
        &"---\n{}\n".repeat(2_000),
        Duration::from_secs(5),
    );
    assert_message(
        &errors,
        "hostile.yaml: input refused: more than 1000 documents in one file",
    );
    assert_message(&errors, "stopped after 200 errors");
    assert!(errors.len() <= 202, "{}", errors.len());
}

#[test]
fn a_document_of_many_nodes_is_refused() {
    let text: String = (0..30_000).map(|i| format!("k{i}: 1\n")).collect();
    let errors = refused("30,000 keys", &text, Duration::from_secs(5));
    assert_message(
        &errors,
        "input refused: more than 20000 YAML nodes in one document",
    );
}

#[test]
fn unknown_keys_report_a_bounded_number_of_problems() {
    let text: String = (0..5_000).map(|i| format!("k{i}: 1\n")).collect();
    let errors = refused("5,000 unknown keys", &text, Duration::from_secs(5));
    assert!(errors.len() <= 20, "{}", errors.len());
}

#[test]
fn binary_garbage_is_refused_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let path: PathBuf = dir.path().join("garbage.yaml");
    std::fs::write(&path, b"kind: Zone\nname: \xff\xfe\n").unwrap();
    let errors = load_paths(std::slice::from_ref(&path)).unwrap_err();
    assert_eq!(
        errors.to_string(),
        format!(
            "{}:2:7: not valid UTF-8 text; manifests are UTF-8 YAML",
            path.display()
        )
    );
}

#[test]
fn an_alias_bomb_inside_a_spec_before_its_kind_is_refused() {
    let text = PROJECT
        .replace("kind: Project\n", "")
        .replace("port: 80}", "port: 80, command: *a9}")
        + "kind: Project\n";
    let bomb = alias_bomb();
    let anchors = bomb.split("apiVersion").next().unwrap();
    let errors = refused(
        "alias bomb in a spec before its kind",
        &format!("{anchors}{text}"),
        Duration::from_secs(2),
    );
    assert_message(&errors, "input refused: ");
}

/// A spec before its `kind` is read a second time, once per kind: a file of the most documents,
/// every one with `kind` last and of all three kinds, costs at most four reads of it.
#[test]
fn the_most_documents_with_kind_last_load_in_bounded_time() {
    let stream = |kind_last: bool| {
        let doc = |kind: &str, name: String, spec: String| {
            let (before, after) = if kind_last {
                (String::new(), format!("kind: {kind}\n"))
            } else {
                (format!("kind: {kind}\n"), String::new())
            };
            format!("apiVersion: codeb.kr/v1\n{before}metadata: {{name: {name}}}\nspec: {spec}\n{after}")
        };
        let mut docs = Vec::new();
        for i in 0..333 {
            docs.push(doc("Host", format!("h{i}"), "{address: 127.0.0.1, podman: 'unix:///run/p.sock', caddy: {admin: 'http://127.0.0.1:2019'}}".into()));
            docs.push(doc("Zone", format!("z{i}.test"), "{ttl: 60}".into()));
            docs.push(doc("Project", format!("p{i}"), format!("{{host: h{i}, zone: z{i}.test, environments: {{production: {{image: a, port: 80}}}}}}")));
        }
        docs.join("---\n")
    };
    let time = |text: &str| {
        let start = Instant::now();
        let m = load_str("many.yaml", text).expect("valid");
        assert_eq!(
            (m.hosts.len(), m.zones.len(), m.projects.len()),
            (333, 333, 333)
        );
        start.elapsed()
    };
    let (last, first) = (time(&stream(true)), time(&stream(false)));
    eprintln!("999 documents: kind last {last:?}, kind first {first:?}");
    assert!(last < Duration::from_secs(10), "{last:?}");
}
