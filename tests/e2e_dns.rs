//! End to end against the real PowerDNS (and Podman and Caddy) of `deploy/stack.sh`: codeb's names
//! resolve, foreign records are never touched, a converged zone gets no write, conflicts are
//! refused, drift is repaired, removed projects take their records with them, and the API key
//! never shows.
//!
//! Each test uses a zone of its own, seeded through the API with foreign records before codeb runs.

mod common;

use common::*;
use serde_json::json;

/// The foreign records the issue names: A, CNAME, TXT (with an SPF string), MX, plus NS and a
/// commented A, seeded before codeb runs.
fn seed(pdns: &Pdns, zone: &str) {
    let rr = |name: &str, rtype: &str, contents: &[&str]| {
        json!({
            "name": name, "type": rtype, "ttl": 3600,
            "records": contents.iter().map(|c| json!({"content": c, "disabled": false})).collect::<Vec<_>>(),
        })
    };
    let mut www = rr(&format!("www.{zone}."), "A", &["192.0.2.10"]);
    www["comments"] = json!([{"content": "set by hand", "account": "ops"}]);
    pdns.create_zone(
        zone,
        json!([
            www,
            rr(
                &format!("alias.{zone}."),
                "CNAME",
                &[&format!("www.{zone}.")]
            ),
            rr(
                &format!("{zone}."),
                "TXT",
                &["\"v=spf1 include:_spf.example.com ~all\""]
            ),
            rr(&format!("{zone}."), "MX", &[&format!("10 mail.{zone}.")]),
            rr(&format!("mail.{zone}."), "A", &["192.0.2.25"]),
            rr(&format!("taken.{zone}."), "CNAME", &["www.example.com."]),
        ]),
    );
}

fn zone_name(prefix: &str) -> String {
    format!("{}.test", unique(prefix))
}

/// Removes the test's projects and its zone.
fn cleanup_all(sb: &Sandbox, pdns: &Pdns, zone: &str, projects: &[&str]) {
    for p in projects {
        cleanup(sb, p);
    }
    pdns.delete_zone(zone);
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn names_resolve_and_foreign_records_survive_apply_reapply_drift_repair_prune_and_delete() {
    let _l = lock();
    let (sb, pdns) = (Sandbox::new(), Pdns::get());
    let zone = zone_name("zdns");
    let (a, b) = (unique("dnsa"), unique("dnsb"));
    seed(&pdns, &zone);
    let foreign = pdns.foreign(&zone);
    let head = format!(
        "{}{}",
        sb.stack.host_doc("127.0.0.1"),
        managed_zone(&zone, &pdns.api, "PDNS_API_KEY")
    );
    let project = |name| {
        let mut p = ProjectYaml::new(name, "localhost/codeb-test-app:v1");
        p.zone = &zone;
        p
    };
    let dir = sb.write_docs(&head, &[project(&a), project(&b)]);

    // First apply: every name resolves to the Host address, one PATCH, foreign records untouched.
    let serial0 = pdns.serial(&zone);
    let out = sb.apply(&dir);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        stdout(&out).matches("in one PATCH").count(),
        1,
        "{}",
        text(&out)
    );
    assert_eq!(
        pdns.serial(&zone),
        serial0 + 1,
        "one write moved the serial once"
    );
    for p in [&a, &b] {
        for name in [
            format!("{p}.{zone}"),
            format!("blue.{p}.{zone}"),
            format!("green.{p}.{zone}"),
        ] {
            assert_eq!(pdns.dig(&name, "A"), "127.0.0.1", "{name}");
        }
    }
    assert_eq!(sb.get(&format!("{a}.{zone}"), "/"), (200, "v1".to_string()));
    assert_eq!(pdns.foreign(&zone), foreign);
    let marks: Vec<String> = pdns.codeb_rrsets(&zone).into_iter().map(|r| r.3).collect();
    assert!(
        marks.contains(&format!("managed by codeb: {a}/production")),
        "{marks:?}"
    );

    // A no-op apply: nothing to do, the serial does not move.
    let serial1 = pdns.serial(&zone);
    let again = sb.apply(&dir);
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));
    assert!(stdout(&again).contains("nothing to do"), "{}", text(&again));
    assert_eq!(pdns.serial(&zone), serial1);
    assert_eq!(pdns.foreign(&zone), foreign);
    let diff = sb.codeb(&["diff", "-f", dir.to_str().unwrap()]);
    assert_eq!(diff.status.code(), Some(0), "{}", text(&diff));

    // Drift: one of codeb's records deleted by hand, another changed (its comment kept).
    pdns.patch(
        &zone,
        json!([
            {"name": format!("{a}.{zone}."), "type": "A", "changetype": "DELETE"},
            {"name": format!("blue.{b}.{zone}."), "type": "A", "ttl": 60, "changetype": "REPLACE",
             "records": [{"content": "10.9.9.9", "disabled": false}]},
        ]),
    );
    assert_eq!(pdns.dig(&format!("{a}.{zone}"), "A"), "");
    assert_eq!(pdns.dig(&format!("blue.{b}.{zone}"), "A"), "10.9.9.9");
    let serial2 = pdns.serial(&zone);
    let dry = sb.codeb(&["apply", "--dry-run", "-f", dir.to_str().unwrap()]);
    assert_eq!(dry.status.code(), Some(0), "{}", text(&dry));
    let shown = stdout(&dry);
    assert!(
        shown.contains(&format!(
            "+ A {a}.{zone} 127.0.0.1 ttl 300 ({a}/production)"
        )),
        "{shown}"
    );
    assert!(
        shown.contains(&format!(
            "~ A blue.{b}.{zone} 127.0.0.1 ttl 300 ({b}/production), was 10.9.9.9 ttl 60"
        )),
        "{shown}"
    );
    assert_eq!(pdns.serial(&zone), serial2, "a dry run writes nothing");
    let diff = sb.codeb(&["diff", "-f", dir.to_str().unwrap()]);
    assert_eq!(diff.status.code(), Some(1), "{}", text(&diff));
    let repair = sb.apply(&dir);
    assert_eq!(repair.status.code(), Some(0), "{}", text(&repair));
    assert_eq!(pdns.dig(&format!("{a}.{zone}"), "A"), "127.0.0.1");
    assert_eq!(pdns.dig(&format!("blue.{b}.{zone}"), "A"), "127.0.0.1");
    assert_eq!(pdns.serial(&zone), serial2 + 1);
    assert_eq!(pdns.foreign(&zone), foreign);

    // Pruning `a` removes its records, and only its.
    let dir = sb.write_docs(&head, &[project(&b)]);
    let prune = sb.codeb(&["apply", "--prune", "-f", dir.to_str().unwrap()]);
    assert_eq!(prune.status.code(), Some(0), "{}", text(&prune));
    for name in [
        format!("{a}.{zone}"),
        format!("blue.{a}.{zone}"),
        format!("green.{a}.{zone}"),
    ] {
        assert_eq!(pdns.dig(&name, "A"), "", "{name}");
    }
    assert_eq!(pdns.dig(&format!("{b}.{zone}"), "A"), "127.0.0.1");
    assert_eq!(pdns.foreign(&zone), foreign);

    // Deleting `b` (from the store, without manifests) removes the rest; the zone stays.
    let delete = sb.codeb(&["delete", "project", &b]);
    assert_eq!(delete.status.code(), Some(0), "{}", text(&delete));
    assert_eq!(pdns.dig(&format!("green.{b}.{zone}"), "A"), "");
    assert!(pdns.codeb_rrsets(&zone).is_empty());
    assert_eq!(pdns.foreign(&zone), foreign);
    assert!(pdns.zone(&zone).is_some(), "codeb never deletes a zone");
    cleanup_all(&sb, &pdns, &zone, &[&a, &b]);
}

#[test]
fn a_hostname_held_by_a_foreign_cname_is_refused_and_the_other_project_still_deploys() {
    let _l = lock();
    let (sb, pdns) = (Sandbox::new(), Pdns::get());
    let zone = zone_name("zconf");
    let (taken, ok) = (unique("taken"), unique("fine"));
    seed(&pdns, &zone);
    let foreign = pdns.foreign(&zone);
    let head = format!(
        "{}{}",
        sb.stack.host_doc("127.0.0.1"),
        managed_zone(&zone, &pdns.api, "PDNS_API_KEY")
    );
    let taken_host = format!("taken.{zone}");
    let mut p1 = ProjectYaml::new(&taken, "localhost/codeb-test-app:v1");
    p1.zone = &zone;
    p1.hostname = Some(&taken_host);
    let mut p2 = ProjectYaml::new(&ok, "localhost/codeb-test-app:v1");
    p2.zone = &zone;
    let dir = sb.write_docs(&head, &[p1, p2]);

    let out = sb.apply(&dir);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stdout(&out).contains(&format!(
            "! {taken}/production: taken.{zone} already holds a foreign CNAME record (www.example.com.) in Zone {zone}"
        )),
        "{}",
        text(&out)
    );
    assert_eq!(pdns.foreign(&zone), foreign, "the foreign CNAME survives");
    assert_eq!(pdns.dig(&taken_host, "CNAME"), "www.example.com.");
    assert_eq!(pdns.dig(&format!("blue.{taken_host}"), "A"), "");
    // The other project deploys and resolves; container and Caddy work of the refused one too.
    assert_eq!(pdns.dig(&format!("{ok}.{zone}"), "A"), "127.0.0.1");
    assert_eq!(
        sb.get(&format!("{ok}.{zone}"), "/"),
        (200, "v1".to_string())
    );
    assert_eq!(sb.get(&taken_host, "/"), (200, "v1".to_string()));

    let serial = pdns.serial(&zone);
    let again = sb.apply(&dir);
    assert_eq!(again.status.code(), Some(1), "{}", text(&again));
    assert_eq!(
        pdns.serial(&zone),
        serial,
        "a refused project gets no write"
    );
    assert_eq!(pdns.foreign(&zone), foreign);
    cleanup(&sb, &taken);
    cleanup(&sb, &ok);
    assert_eq!(
        pdns.foreign(&zone),
        foreign,
        "deleting both projects leaves it too"
    );
    pdns.delete_zone(&zone);
}

#[test]
fn a_missing_zone_is_created_and_an_ipv6_host_gets_aaaa_records_that_stay_converged() {
    let _l = lock();
    let (sb, pdns) = (Sandbox::new(), Pdns::get());
    let zone = zone_name("znew");
    let name = unique("six");
    assert!(pdns.zone(&zone).is_none());
    let head = format!(
        "{}{}",
        sb.stack.host_doc("::1"),
        managed_zone(&zone, &pdns.api, "PDNS_API_KEY")
    );
    let mut p = ProjectYaml::new(&name, "localhost/codeb-test-app:v1");
    p.zone = &zone;
    let dir = sb.write_docs(&head, &[p]);
    let out = sb.apply(&dir);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let z = pdns.zone(&zone).expect("codeb created the zone");
    assert_eq!(z["kind"], "Native");
    assert!(
        !pdns.dig(&zone, "SOA").is_empty(),
        "the default SOA is served"
    );
    assert_eq!(pdns.dig(&format!("{name}.{zone}"), "AAAA"), "::1");
    assert_eq!(pdns.dig(&format!("green.{name}.{zone}"), "AAAA"), "::1");
    assert_eq!(pdns.dig(&format!("{name}.{zone}"), "A"), "");
    let serial = pdns.serial(&zone);
    let again = sb.apply(&dir);
    assert!(stdout(&again).contains("nothing to do"), "{}", text(&again));
    assert_eq!(pdns.serial(&zone), serial);
    cleanup_all(&sb, &pdns, &zone, &[&name]);
}

#[test]
fn the_api_key_never_shows_and_a_missing_or_wrong_key_or_a_dead_powerdns_names_zone_and_endpoint() {
    let _l = lock();
    let (sb, pdns) = (Sandbox::new(), Pdns::get());
    let zone = zone_name("zkey");
    let name = unique("keyed");
    let write = |api: &str, key_env: &str| {
        let head = format!(
            "{}{}",
            sb.stack.host_doc("127.0.0.1"),
            managed_zone(&zone, api, key_env)
        );
        let mut p = ProjectYaml::new(&name, "localhost/codeb-test-app:v1");
        p.zone = &zone;
        sb.write_docs(&head, &[p])
    };
    let mut outputs = Vec::new();

    // The variable is not set: invalid input, exit 2, nothing applied.
    let dir = write(&pdns.api, "CODEB_TEST_NO_SUCH_KEY");
    let out = sb.apply(&dir);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("Zone {zone}")) && err.contains("CODEB_TEST_NO_SUCH_KEY"),
        "{err}"
    );
    assert!(containers(&name).is_empty(), "nothing was applied");

    // A wrong key: exit 1 naming the zone, the endpoint and the variable; the deploy goes on.
    let dir = write(&pdns.api, "CODEB_TEST_WRONG_KEY");
    let wrong = "wrong-key-0123456789";
    let out = sb.codeb_env(
        &["apply", "-f", dir.to_str().unwrap()],
        &[("CODEB_TEST_WRONG_KEY", wrong)],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stdout(&out).contains(&format!(
            "zone {zone}: PowerDNS at {} refused the API key from $CODEB_TEST_WRONG_KEY",
            pdns.api
        )),
        "{}",
        text(&out)
    );
    assert!(!text(&out).contains(wrong), "{}", text(&out));
    assert_eq!(
        sb.get(&format!("{name}.{zone}"), "/"),
        (200, "v1".to_string())
    );

    // PowerDNS unreachable: exit 1 naming the zone and the endpoint; diff exits 3.
    let dead = "http://127.0.0.1:1";
    let dir = write(dead, "PDNS_API_KEY");
    let out = sb.apply(&dir);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stdout(&out).contains(&format!(
            "zone {zone}: cannot reach PowerDNS's API at {dead}"
        )),
        "{}",
        text(&out)
    );
    let diff = sb.codeb(&["diff", "-f", dir.to_str().unwrap()]);
    assert_eq!(diff.status.code(), Some(3), "{}", text(&diff));
    outputs.extend([out, diff]);

    // The right key: every command's output, the logs at -vv, and the store, never hold it.
    let dir = write(&pdns.api, "PDNS_API_KEY");
    let d = dir.to_str().unwrap();
    outputs.push(sb.codeb(&["apply", "--dry-run", "-f", d]));
    outputs.push(sb.codeb(&["-vvv", "apply", "-f", d]));
    outputs.push(sb.codeb(&["-vvv", "--log-format", "json", "diff", "-f", d]));
    outputs.push(sb.codeb(&["get", "projects", "-o", "yaml"]));
    outputs.push(sb.codeb(&["describe", "project", &name]));
    assert_eq!(outputs[3].status.code(), Some(0), "{}", text(&outputs[3]));
    assert_eq!(pdns.dig(&format!("{name}.{zone}"), "A"), "127.0.0.1");
    outputs.push(sb.codeb(&["-vvv", "delete", "project", &name]));
    for out in &outputs {
        assert!(!text(out).contains(&pdns.key), "{}", text(out));
    }
    for entry in std::fs::read_dir(sb.state()).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        assert!(
            !bytes
                .windows(pdns.key.len())
                .any(|w| w == pdns.key.as_bytes()),
            "the key is in the store"
        );
    }
    cleanup_all(&sb, &pdns, &zone, &[&name]);
}
