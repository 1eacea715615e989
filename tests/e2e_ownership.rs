//! Shared-host safety, finding 1 of the issue (in part): a state directory that does not record a
//! project still deletes it, from what the host holds by codeb's marks (containers by label, routes
//! by `@id`, kernel rules by their comment).

mod common;

use common::kernel::nat_rules;
use common::*;

#[test]
fn finding_1_delete_works_from_observed_state_when_the_store_has_no_record() {
    let _l = lock();
    let (owner, fresh) = (Sandbox::new(), Sandbox::new());
    let name = unique("orphan");
    let host = format!("{name}.codeb.test");
    let dir = owner.write(&[ProjectYaml::new(&name, "localhost/codeb-test-app:v1")]);
    let out = owner.apply(&dir);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(owner.get(&host, "/"), (200, "v1".to_string()));
    assert!(!containers(&name).is_empty());
    assert!(nat_rules().contains(&format!("codeb {name}/production")));

    // A state directory that never heard of it: nothing recorded, no host recorded either.
    let out = fresh.codeb(&["delete", "project", &name]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no recorded host"),
        "{}",
        text(&out)
    );
    // With the manifests, it knows the host: it finds the project there and removes it.
    let out = fresh.codeb(&["delete", "-f", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("not recorded in this state directory"),
        "{}",
        text(&out)
    );
    assert!(containers(&name).is_empty(), "{:?}", containers(&name));
    assert!(
        !caddy_config(&owner.stack.caddy_admin).contains(&format!("codeb-{name}_")),
        "its routes are gone"
    );
    assert!(
        !nat_rules().contains(&format!("codeb {name}/")),
        "its kernel rules are gone:\n{}",
        nat_rules()
    );
    // The owner's own store still records it; its delete converges on what is left.
    let out = owner.codeb(&["delete", "project", &name]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

/// `codeb` on `sb`'s state directory as the codeb instance `instance`.
fn as_instance(sb: &Sandbox, instance: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_codeb"))
        .arg("--state-dir")
        .arg(sb.state())
        .args(args)
        .env("CODEB_INSTANCE", instance)
        .output()
        .unwrap()
}

#[test]
fn finding_1_a_second_owner_is_refused_the_host_until_it_adopts_it() {
    let _l = lock();
    let (owner, intruder) = (Sandbox::new(), Sandbox::new());
    let me = std::env::var("CODEB_INSTANCE").expect("deploy/stack.sh env sets CODEB_INSTANCE");
    let name = unique("owned");
    let host = format!("{name}.codeb.test");
    let dir = owner.write(&[ProjectYaml::new(&name, "localhost/codeb-test-app:v1")]);
    let out = owner.apply(&dir);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let ids = containers(&name);
    let config = caddy_config(&owner.stack.caddy_admin);

    // Another codeb instance (its own state directory, as after a reinstall or beside the
    // daemon) is refused the host, told whose it is; it changes nothing there.
    let v2 = intruder.write(&[ProjectYaml::new(&name, "localhost/codeb-test-app:v2")]);
    for verb in ["diff", "apply"] {
        let out = as_instance(&intruder, "intruder", &[verb, "-f", v2.to_str().unwrap()]);
        assert_ne!(out.status.code(), Some(0), "{verb}: {}", text(&out));
        assert!(
            text(&out).contains(&format!("owned by another codeb, {me}")),
            "{verb}: {}",
            text(&out)
        );
    }
    assert_eq!(containers(&name), ids, "nothing changed on the host");
    assert_eq!(caddy_config(&owner.stack.caddy_admin), config);
    assert_eq!(owner.get(&host, "/"), (200, "v1".to_string()));

    // Taking it over is explicit, and then the first owner is the one refused.
    let out = as_instance(&intruder, "intruder", &["host", "adopt", "local"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("was owned by {me}")),
        "{}",
        text(&out)
    );
    let out = owner.apply(&dir);
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("owned by another codeb, intruder"),
        "{}",
        text(&out)
    );
    // Adopted back; applies converge again.
    let out = owner.codeb(&["host", "adopt", "local"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = owner.apply(&dir);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = owner.codeb(&["delete", "project", &name]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[test]
fn a_malformed_codeb_instance_is_invalid_input_and_changes_nothing() {
    let _l = lock();
    let sb = Sandbox::new();
    let name = unique("badinst");
    let dir = sb.write(&[ProjectYaml::new(&name, "localhost/codeb-test-app:v1")]);
    for bad in ["two words", "x\u{1b}[31m", &"a".repeat(65)] {
        let out = as_instance(&sb, bad, &["apply", "-f", dir.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", text(&out));
        assert!(text(&out).contains("CODEB_INSTANCE"), "{}", text(&out));
        assert!(!text(&out).contains('\u{1b}'), "{}", text(&out));
    }
    assert!(containers(&name).is_empty());
}

#[test]
fn delete_host_forgets_a_host_no_project_runs_on_and_releases_its_owner_mark() {
    let _l = lock();
    let sb = Sandbox::new();
    let name = unique("lasthost");
    let dir = sb.write(&[ProjectYaml::new(&name, "localhost/codeb-test-app:v1")]);
    let out = sb.apply(&dir);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let marked = || {
        podman(&["volume", "exists", "codeb-owner"])
            .status
            .success()
    };
    assert!(marked(), "the first apply marks the host");

    // Still in use: refused, naming what runs there; nothing forgotten.
    let out = sb.codeb(&["delete", "host", "local"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("{name}/production")),
        "{}",
        text(&out)
    );
    assert!(marked());
    // Unknown hosts and a wrong kind are usage errors.
    let out = sb.codeb(&["delete", "host", "nowhere"]);
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("no Host nowhere is recorded"),
        "{}",
        text(&out)
    );

    let out = sb.codeb(&["delete", "project", &name]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = sb.codeb(&["delete", "host", "local"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("release this codeb's owner mark"),
        "{}",
        text(&out)
    );
    assert!(!marked(), "the mark is released");
    let out = sb.codeb(&["get", "hosts", "-o", "json"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "[]",
        "{}",
        text(&out)
    );
    // The audit names it.
    let out = sb.codeb(&["audit", "-o", "json"]);
    assert!(text(&out).contains("delete host"), "{}", text(&out));
}

/// The slot port of `project`'s blue slot, as `sb`'s store records it.
fn blue_port(sb: &Sandbox, project: &str) -> u64 {
    sb.slots()
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["project"] == project && s["slot"] == "blue")
        .and_then(|s| s["port"].as_u64())
        .unwrap_or_else(|| panic!("no blue slot of {project} in {}", sb.slots()))
}

#[test]
fn finding_1_a_fresh_state_dir_adopts_what_the_host_runs_without_a_redeploy() {
    let _l = lock();
    let (first, fresh) = (Sandbox::new(), Sandbox::new());
    let name = unique("adopt");
    let host = format!("{name}.codeb.test");
    let v1 = [ProjectYaml::new(&name, "localhost/codeb-test-app:v1")];
    let _cleanup = Cleanup(&first, vec![name.clone()]);
    let out = first.apply(&first.write(&v1));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let (ids, port) = (containers(&name), blue_port(&first, &name));

    // The same codeb instance on a state directory that records nothing (lost, or restored from
    // before the project existed): the plan adopts what runs, and says so.
    let dir = fresh.write(&v1);
    let out = fresh.codeb(&["diff", "-f", dir.to_str().unwrap()]);
    let shown = text(&out);
    assert!(
        shown.contains(&format!(
            "{name}/production: adopt what the host holds by codeb's marks: blue active localhost/codeb-test-app:v1"
        )) && shown.contains(&format!("ports {port}/{}", port + 1)),
        "{shown}"
    );
    assert!(!shown.contains("deploy "), "nothing is deployed: {shown}");
    // Compared with what the host runs: neither new nor changed.
    assert!(
        !shown.contains(&format!("{name}/production: new environment")),
        "{shown}"
    );

    // Applied while the hostname is asked through Caddy all along: not one request fails.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poller = {
        let (stop, http, host) = (stop.clone(), fresh.stack.http.clone(), host.clone());
        std::thread::spawn(move || {
            let mut answers = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || answers.len() < 20 {
                answers.push(http_get(&http, &host, "/"));
            }
            answers
        })
    };
    let out = fresh.apply(&dir);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let answers = poller.join().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("adopt what the host holds"),
        "{}",
        text(&out)
    );
    let failed: Vec<_> = answers.iter().filter(|a| a.0 != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {failed:?}",
        failed.len(),
        answers.len()
    );
    assert_eq!(containers(&name), ids, "the same containers run");
    assert_eq!(blue_port(&fresh, &name), port, "on the same ports");
    assert_eq!(fresh.slot_state(&name, "blue"), "active");

    // Converged: the next plan is empty.
    let out = fresh.codeb(&["diff", "-f", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        !text(&out).contains(&format!("{name}/production: ")),
        "{}",
        text(&out)
    );

    // The adopted environment is this state directory's now: a new release, rollback, promote.
    let out = fresh.apply(&fresh.write(&[ProjectYaml::new(&name, "localhost/codeb-test-app:v2")]));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(fresh.get(&host, "/"), (200, "v2".to_string()));
    let out = fresh.codeb(&["rollback", &name]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(fresh.get(&host, "/"), (200, "v1".to_string()));
    let out = fresh.codeb(&["promote", &name]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(fresh.get(&host, "/"), (200, "v2".to_string()));

    let out = fresh.codeb(&["delete", "project", &name]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(containers(&name).is_empty(), "{:?}", containers(&name));
    let out = first.codeb(&["delete", "project", &name]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        !nat_rules().contains(&format!("codeb {name}/")),
        "{}",
        nat_rules()
    );
}

#[test]
fn finding_1_a_fresh_state_dir_names_what_no_manifest_declares_and_a_prune_naming_it_removes_it() {
    let _l = lock();
    let (first, fresh) = (Sandbox::new(), Sandbox::new());
    let kept = unique("adoptkeep");
    let (a, b) = (format!("{kept}-a"), format!("{kept}-b"));
    let image = "localhost/codeb-test-app:v1";
    let all = [
        ProjectYaml::new(&kept, image),
        ProjectYaml::new(&a, image),
        ProjectYaml::new(&b, image),
    ];
    let _cleanup = Cleanup(&first, vec![kept.clone(), a.clone(), b.clone()]);
    let out = first.apply(&first.write(&all));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // A fresh state directory whose manifests name one of the three: the other two are named,
    // not touched.
    let dir = fresh.write(&[ProjectYaml::new(&kept, image)]);
    for verb in ["diff", "apply"] {
        let out = fresh.codeb(&[verb, "-f", dir.to_str().unwrap()]);
        // Other projects on the shared stack (the same instance) may be named beside them.
        let note = text(&out)
            .lines()
            .find(|l| l.contains("held on host local by codeb's marks, in no manifest"))
            .map(str::to_string)
            .unwrap_or_else(|| panic!("{verb}: {}", text(&out)));
        for name in [&a, &b] {
            assert!(
                note.contains(&format!("{name}/production")),
                "{verb}: {note}"
            );
        }
        assert!(!note.contains(&format!("{kept}/")), "{verb}: {note}");
        assert!(
            note.contains("`codeb apply --prune --prune-project "),
            "{verb}: {note}"
        );
    }
    assert_eq!(containers(&a).len(), 1);
    assert_eq!(
        first.get(&format!("{b}.codeb.test"), "/"),
        (200, "v1".to_string())
    );

    // A prune that names no project removes only what this state directory records: other
    // state directories of the same codeb (every test on the shared stack) may run the rest.
    let prune = ["apply", "-f", dir.to_str().unwrap(), "--prune"];
    let out = fresh.codeb(&prune);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(containers(&a).len(), 1, "an unnamed prune removed {a}");
    assert_eq!(containers(&b).len(), 1, "an unnamed prune removed {b}");
    // Named, they go.
    let only = ["--prune-project", a.as_str(), "--prune-project", b.as_str()];
    let out = fresh.codeb(&[&prune[..], &only[..]].concat());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    for gone in [&a, &b] {
        assert!(
            containers(gone).is_empty(),
            "{gone}: {:?}",
            containers(gone)
        );
        assert!(
            !caddy_config(&first.stack.caddy_admin).contains(&format!("codeb-{gone}_")),
            "{gone}'s routes are gone"
        );
        assert!(
            !nat_rules().contains(&format!("codeb {gone}/")),
            "{}",
            nat_rules()
        );
    }
    // The kept project was adopted, untouched, and nothing is left to say.
    assert_eq!(containers(&kept).len(), 1);
    assert_eq!(
        fresh.get(&format!("{kept}.codeb.test"), "/"),
        (200, "v1".to_string())
    );
    let out = fresh.codeb(&["diff", "-f", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    for name in [&kept, &a, &b] {
        assert!(!text(&out).contains(&format!("{name}/")), "{}", text(&out));
    }

    let out = fresh.codeb(&["delete", "project", &kept]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}
