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
