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
