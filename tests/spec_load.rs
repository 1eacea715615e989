//! Loading manifests: the examples, directories, multi-document streams, collecting every error,
//! and never showing an `env` value.

use std::path::PathBuf;
use std::time::Duration;

use codeb::spec::{load_paths, load_str, Promotion, Tls};

#[test]
fn the_example_stack_loads_with_its_defaults() {
    let m = load_paths(&[PathBuf::from("manifests/examples")]).unwrap();
    assert_eq!(m.hosts.keys().collect::<Vec<_>>(), ["local"]);
    assert_eq!(m.zones.keys().collect::<Vec<_>>(), ["codeb.test"]);
    assert_eq!(
        m.projects.keys().collect::<Vec<_>>(),
        ["hello", "notes", "shop"]
    );
    let local = &m.hosts["local"];
    assert_eq!(local.spec.caddy.tls, Tls::Off);
    assert_eq!(local.spec.publish_address, "127.0.0.1");
    assert_eq!(
        local.origin.to_string(),
        "manifests/examples/stack.yaml:9:9"
    );
    let hello = &m.projects["hello"].spec.environments["staging"];
    assert_eq!(hello.promotion, Promotion::Auto);
    assert_eq!(hello.health_check.path, "/health");
    assert_eq!(hello.health_check.timeout, Duration::from_secs(60));
    assert_eq!(hello.grace_period, Duration::from_secs(3600));
    assert_eq!(
        m.projects["shop"].spec.environments["production"].promotion,
        Promotion::Manual
    );
}

#[test]
fn default_hostnames_follow_project_environment_and_zone() {
    let m = load_paths(&[PathBuf::from("manifests/examples/stack.yaml")]).unwrap();
    assert_eq!(
        m.hostname("hello", "production").unwrap(),
        "hello.codeb.test"
    );
    assert_eq!(
        m.hostname("hello", "staging").unwrap(),
        "hello-staging.codeb.test"
    );
    assert_eq!(m.hostname("shop", "staging"), None);
    assert_eq!(m.hostname("nope", "production"), None);
}

const HOST_AND_ZONE: &str = "\
apiVersion: codeb.kr/v1
kind: Host
metadata: {name: local}
spec: {address: 127.0.0.1, podman: 'unix:///run/p.sock', caddy: {admin: 'http://127.0.0.1:2019'}}
---
apiVersion: codeb.kr/v1
kind: Zone
metadata: {name: codeb.test}
";

fn project(name: &str, environment: &str) -> String {
    format!(
        "apiVersion: codeb.kr/v1\nkind: Project\nmetadata: {{name: {name}}}\nspec:\n  host: local\n  \
         zone: codeb.test\n  environments:\n    {environment}\n"
    )
}

#[test]
fn an_explicit_hostname_replaces_the_default() {
    let text = format!(
        "{HOST_AND_ZONE}---\n{}",
        project(
            "web",
            "production: {image: a, port: 80, hostname: www.codeb.test}"
        )
    );
    let m = load_str("t.yaml", &text).unwrap();
    assert_eq!(m.hostname("web", "production").unwrap(), "www.codeb.test");
}

/// A project may not take traffic for any name it likes: a hostname outside its zone needs the
/// Zone's grant (`externalHostnames`: an exact name, or `*.` and a parent for the names under it).
#[test]
fn a_hostname_outside_its_zone_needs_the_zones_grant() {
    let with = |grants: &str, hostname: &str| {
        let zone = HOST_AND_ZONE.replace(
            "metadata: {name: codeb.test}",
            &format!("metadata: {{name: codeb.test}}\nspec: {{externalHostnames: [{grants}]}}"),
        );
        format!(
            "{zone}---\n{}",
            project(
                "web",
                &format!("production: {{image: a, port: 80, hostname: {hostname}}}")
            )
        )
    };
    let err = load_str("t.yaml", &with("", "www.example.com")).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("t.yaml:18:48: hostname `www.example.com` is outside zone `codeb.test`")
            && text.contains("`externalHostnames` of the Zone at t.yaml:"),
        "{text}"
    );
    for (grants, hostname) in [
        ("www.example.com", "www.example.com"),
        ("'*.example.com'", "www.example.com"),
        ("'*.example.com'", "a.b.example.com"),
        ("other.org, '*.example.com'", "shop.example.com"),
    ] {
        let m = load_str("t.yaml", &with(grants, hostname))
            .unwrap_or_else(|e| panic!("{grants} / {hostname}: {e}"));
        assert_eq!(m.hostname("web", "production").unwrap(), hostname);
    }
    for (grants, hostname) in [
        ("'*.example.com'", "example.com"),
        ("'*.example.com'", "wwwexample.com"),
        ("www.example.com", "api.example.com"),
    ] {
        assert!(
            load_str("t.yaml", &with(grants, hostname)).is_err(),
            "{grants} granted {hostname}"
        );
    }
    let bad = load_str("t.yaml", &with("'*.'", "www.codeb.test")).unwrap_err();
    assert!(
        bad.to_string().contains("invalid external hostname `*.`"),
        "{bad}"
    );
}

/// A team's project may not place itself on any Host of the manifest set: a Host that lists
/// `projects` admits only those (exact names, or a prefix and `*`).
#[test]
fn a_project_runs_only_on_a_host_that_admits_it() {
    let with = |grants: &str, name: &str| {
        let host = HOST_AND_ZONE.replace(
            "caddy: {admin: 'http://127.0.0.1:2019'}}",
            &format!("caddy: {{admin: 'http://127.0.0.1:2019'}}, projects: [{grants}]}}"),
        );
        format!(
            "{host}---\n{}",
            project(name, "production: {image: a, port: 80}")
        )
    };
    let err = load_str("t.yaml", &with("shop, 'team-a-*'", "web")).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("t.yaml:14:9: project `web` may not run on Host `local`")
            && text.contains("admits only `shop`, `team-a-*`")
            && text.contains("`projects` of the Host at t.yaml:"),
        "{text}"
    );
    for (grants, name) in [
        ("shop", "shop"),
        ("'team-a-*'", "team-a-web"),
        ("web, 'x*'", "web"),
    ] {
        let m = load_str("t.yaml", &with(grants, name))
            .unwrap_or_else(|e| panic!("{grants} / {name}: {e}"));
        assert!(m.projects.contains_key(name));
    }
    for (grants, name) in [
        ("'team-a-*'", "team-b-web"),
        ("shop", "shopping"),
        ("", "web"),
    ] {
        assert!(
            load_str("t.yaml", &with(grants, name)).is_err(),
            "{grants} admitted {name}"
        );
    }
    let none = load_str("t.yaml", &with("", "web")).unwrap_err();
    assert!(none.to_string().contains("admits no project"), "{none}");
    let bad = load_str("t.yaml", &with("'*'", "web")).unwrap_err();
    assert!(bad.to_string().contains("invalid project `*`"), "{bad}");
    // Without `projects`, any project.
    let any = format!(
        "{HOST_AND_ZONE}---\n{}",
        project("web", "production: {image: a, port: 80}")
    );
    assert!(load_str("t.yaml", &any).is_ok());
}

#[test]
fn a_directory_is_read_recursively_in_name_order_and_only_yaml() {
    let dir = tempfile::tempdir().unwrap();
    let write = |path: &str, text: &str| {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    write("a-base.yaml", HOST_AND_ZONE);
    write(
        "b/one.yml",
        &project("one", "production: {image: a, port: 80}"),
    );
    write(
        "b/two.yaml",
        &project("two", "production: {image: a, port: 80}"),
    );
    write("c.txt", "not yaml");
    write(".hidden/x.yaml", "broken: [");
    let m = load_paths(&[dir.path().to_path_buf()]).unwrap();
    assert_eq!(m.projects.keys().collect::<Vec<_>>(), ["one", "two"]);
    assert!(m.projects["one"].origin.file.ends_with("b/one.yml"));
}

#[test]
fn a_directory_without_manifests_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let errors = load_paths(&[dir.path().to_path_buf()]).unwrap_err();
    assert!(errors
        .to_string()
        .ends_with(": no `*.yaml` or `*.yml` file in this directory"));
}

#[test]
fn a_missing_file_is_an_error_naming_it() {
    let errors = load_paths(&[PathBuf::from("manifests/nope.yaml")]).unwrap_err();
    assert!(errors
        .to_string()
        .starts_with("manifests/nope.yaml: cannot read: "));
}

#[test]
fn every_document_of_every_file_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.yaml");
    let b = dir.path().join("b.yaml");
    std::fs::write(
        &a,
        format!(
            "{}---\n{}",
            project("one", "production: {image: a, prot: 80}"),
            project("two", "production: {image: a, port: 99999}")
        ),
    )
    .unwrap();
    std::fs::write(
        &b,
        "apiVersion: codeb.kr/v1\nkind: Zone\nmetadata: {name: Bad_Zone}\n",
    )
    .unwrap();
    let errors = load_paths(&[a.clone(), b.clone()]).unwrap_err();
    let lines: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    assert_eq!(lines.len(), 3, "{errors}");
    assert!(lines[0].starts_with(&format!("{}:8:28: unknown field `prot`", a.display())));
    assert!(lines[1].starts_with(&format!("{}:17:34: invalid port 99999", a.display())));
    assert!(lines[2].starts_with(&format!(
        "{}:3:18: invalid Zone name `Bad_Zone`",
        b.display()
    )));
}

#[test]
fn semantic_errors_are_all_reported_at_their_values() {
    let text = format!(
        "{HOST_AND_ZONE}---\n{}",
        project(
            "web",
            "Prod: {image: 'a b', port: 0, command: [], env: {1A: x}, \
             healthCheck: {path: health, timeout: 0s}, hostname: -x.y}"
        )
    );
    let errors = load_str("t.yaml", &text).unwrap_err();
    let messages: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    let expected = [
        "t.yaml:17:5: invalid environment name `Prod`",
        "t.yaml:17:19: invalid image `a b`",
        "t.yaml:17:32: invalid port 0",
        "t.yaml:17:44: `command` is empty",
        "t.yaml:17:54: invalid env variable name `1A`",
        "t.yaml:17:82: invalid health check path `health`",
        "t.yaml:17:99: invalid health check timeout 0s",
        "t.yaml:17:114: invalid hostname `-x.y`",
    ];
    assert_eq!(messages.len(), expected.len(), "{errors}");
    for (message, expected) in messages.iter().zip(expected) {
        assert!(
            message.starts_with(expected),
            "{message}\ndoes not start with\n{expected}"
        );
    }
}

#[test]
fn references_are_not_checked_when_a_document_failed_to_load() {
    // The Host failed to load, so "no Host `local`" would be noise.
    let text = format!(
        "apiVersion: codeb.kr/v1\nkind: Host\nmetadata: {{name: local}}\nspec: {{adress: x}}\n---\n{}",
        project("web", "production: {image: a, port: 80}")
    );
    let errors = load_str("t.yaml", &text).unwrap_err();
    assert_eq!(errors.len(), 1, "{errors}");
    assert!(errors.to_string().contains("unknown field `adress`"));
}

#[test]
fn a_secret_env_value_never_appears_in_an_error() {
    let secret = "hunter2-s3cr3t";
    // Each case is the whole environment; every one is a mistake.
    let environments = [
        format!("{{image: a, port: 80, env: {{A: [{secret}]}}}}"),
        format!("{{image: a, port: 80, env: {{A: {{k: {secret}}}}}}}"),
        format!("{{image: a, port: 80, env: {{A: !!binary {secret}}}}}"),
        format!("{{image: a, port: 80, env: {{A: !!int {secret}}}}}"),
        format!("{{image: a, port: 80, env: {{A: ~}}, B: {secret}}}"),
        format!("{{image: a, port: 80, env: {{A: {secret}, A: {secret}-2}}}}"),
        format!("{{image: a, port: 80, env: {{A: \"{secret}}}}}"),
        format!("{{image: a, port: 80, env: {{A: {secret}: x}}}}"),
        format!("{{image: a, port: 80, env: {{bad-name: {secret}}}}}"),
        format!("{{image: a, port: 80, env: {{A: {secret}}}, prot: 1}}"),
        // Aliases of an env value used elsewhere are not shown either.
        format!("{{image: a, port: 80, env: {{A: &s {secret}}}, promotion: *s}}"),
        format!("{{image: a, port: 80, env: {{A: &s {secret}}}, gracePeriod: *s}}"),
        format!("{{image: a, port: 80, env: {{A: &s {secret}_x}}, hostname: *s}}"),
        format!("{{port: 80, env: {{A: &s '{secret} x'}}, image: *s}}"),
        format!("{{image: a, port: 80, env: {{A: &s {secret}}}, healthCheck: {{path: *s}}}}"),
        format!("{{image: a, env: {{A: &s {secret}}}, port: *s}}"),
        format!("{{image: a, port: 80, env: {{A: &s {secret}}}, command: *s}}"),
        format!("{{image: a, port: 80, env: {{A: &s {secret}}}, command: [*s], promotion: *s}}"),
    ];
    let mut texts: Vec<String> = environments
        .iter()
        .map(|environment| {
            format!(
                "{HOST_AND_ZONE}---\n{}",
                project("web", &format!("production: {environment}"))
            )
        })
        .collect();
    // Block style: a neighbouring line is wrong, the secret is on the line before.
    texts.push(format!(
        "{HOST_AND_ZONE}---\n{}      env:\n        A: {secret}\n      port: [80]\n",
        project("web", "production:\n      image: a")
    ));
    texts.push(format!(
        "{HOST_AND_ZONE}---\n{}      env:\n        A: {secret}\n      kind: x\n\tbroken\n",
        project("web", "production:\n      image: a\n      port: 80")
    ));
    let mut failed = 0;
    for text in &texts {
        if let Err(errors) = load_str("t.yaml", text) {
            failed += 1;
            for error in &errors {
                assert!(
                    !error.to_string().contains("s3cr3t"),
                    "a secret was shown: {error}\nfor:\n{text}"
                );
            }
        }
    }
    assert_eq!(failed, texts.len());
}

#[test]
fn a_symlink_loop_in_a_directory_is_read_once() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("base.yaml"), HOST_AND_ZONE).unwrap();
    std::os::unix::fs::symlink(dir.path(), dir.path().join("loop")).unwrap();
    let m = load_paths(&[dir.path().to_path_buf()]).unwrap();
    assert_eq!(m.hosts.len(), 1);
}

#[test]
fn a_file_named_twice_is_read_once() {
    let path = PathBuf::from("manifests/examples/stack.yaml");
    let m = load_paths(&[path.clone(), PathBuf::from("manifests/examples"), path]).unwrap();
    assert_eq!(m.projects.len(), 3);
}

#[test]
fn a_missing_field_is_reported_at_the_mapping_it_is_missing_from() {
    let text = "apiVersion: codeb.kr/v1\nkind: Project\nmetadata: {name: a}\nspec:\n  host: h\n  \
                environments: {}\n";
    assert_eq!(
        load_str("t.yaml", text).unwrap_err().to_string(),
        "t.yaml:5:3: missing field `zone` in `spec`"
    );
}

#[test]
fn a_zone_with_powerdns_gets_its_defaults_and_one_without_is_unmanaged() {
    let text = "\
apiVersion: codeb.kr/v1
kind: Zone
metadata: {name: codeb.kr}
spec:
  powerdns: {api: 'http://127.0.0.1:8081', apiKeyEnv: PDNS_API_KEY}
---
apiVersion: codeb.kr/v1
kind: Zone
metadata: {name: codeb.test}
";
    let m = load_str("z.yaml", text).unwrap();
    let kr = &m.zones["codeb.kr"].spec;
    let pdns = kr.powerdns.as_ref().unwrap();
    assert_eq!(pdns.server_id, "localhost");
    assert_eq!(pdns.api_key_env, "PDNS_API_KEY");
    assert_eq!(kr.ttl, 300);
    assert_eq!(m.zones["codeb.test"].spec.powerdns, None);
}

#[test]
fn an_api_key_written_in_a_manifest_is_refused_without_echoing_it() {
    let text = "\
apiVersion: codeb.kr/v1
kind: Zone
metadata: {name: codeb.kr}
spec:
  powerdns: {api: 'http://127.0.0.1:8081', apiKey: hunter2-pdns-key, apiKeyEnv: PDNS_API_KEY}
";
    let errors = load_str("z.yaml", text).unwrap_err().to_string();
    assert!(errors.contains("unknown field `apiKey`"), "{errors}");
    assert!(!errors.contains("hunter2"), "{errors}");
}

#[test]
fn a_hostname_that_is_another_environments_preview_hostname_is_refused() {
    let text = format!(
        "{HOST_AND_ZONE}---\n{}---\n{}",
        project("web", "production: {image: a, port: 80}"),
        project(
            "other",
            "production: {image: a, port: 80, hostname: green.web.codeb.test}"
        )
    );
    let errors = load_str("t.yaml", &text).unwrap_err().to_string();
    assert!(
        errors.contains(
            "hostname `green.web.codeb.test` of other/production is the green preview hostname of web/production"
        ),
        "{errors}"
    );
}

/// The three documents of a stack with `kind` written last (`spec` before it), or first.
fn stack_with_kind(last: bool) -> String {
    let docs = [
        (
            "Host",
            "metadata: {name: local}\nspec:\n  address: 127.0.0.1\n  podman: 'unix:///run/p.sock'\n  caddy: {admin: 'http://127.0.0.1:2019', tls: off}\n",
        ),
        ("Zone", "metadata: {name: codeb.test}\nspec: {ttl: 120}\n"),
        (
            "Project",
            "spec:\n  host: local\n  zone: codeb.test\n  environments:\n    production: {image: a, port: 80}\nmetadata: {name: web}\n",
        ),
    ];
    docs.iter()
        .map(|(kind, body)| {
            if last {
                format!("apiVersion: codeb.kr/v1\n{body}kind: {kind}\n")
            } else {
                format!("kind: {kind}\napiVersion: codeb.kr/v1\n{body}")
            }
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

#[test]
fn kind_may_come_after_spec_in_every_kind_of_document() {
    let last = load_str("t.yaml", &stack_with_kind(true)).unwrap();
    let first = load_str("t.yaml", &stack_with_kind(false)).unwrap();
    assert_eq!(last.hosts["local"].spec, first.hosts["local"].spec);
    assert_eq!(last.hosts["local"].spec.caddy.tls, Tls::Off);
    assert_eq!(
        last.zones["codeb.test"].spec,
        first.zones["codeb.test"].spec
    );
    assert_eq!(last.zones["codeb.test"].spec.ttl, 120);
    assert_eq!(last.projects["web"].spec, first.projects["web"].spec);
    // Origins are where the names are written, whichever order the keys are in.
    assert_eq!(last.hosts["local"].origin.to_string(), "t.yaml:2:18");
}

#[test]
fn mistakes_in_specs_before_their_kind_are_reported_where_they_are_written() {
    // Line by line: a Host whose `spec` has a value of the wrong type, a valid Zone in the usual
    // order, a Project whose `spec` has an unknown field deep inside, and a Project whose port is
    // out of range (a check after loading, located through the node tree), each `kind` last.
    let text = "\
apiVersion: codeb.kr/v1
metadata: {name: local}
spec:
  address: 127.0.0.1
  podman: 'unix:///run/p.sock'
  caddy:
    admin: 'http://127.0.0.1:2019'
    listen: 80
kind: Host
---
apiVersion: codeb.kr/v1
kind: Zone
metadata: {name: codeb.test}
---
apiVersion: codeb.kr/v1
metadata: {name: web}
spec:
  host: local
  zone: codeb.test
  environments:
    production:
      image: a
      port: 80
      healthCheck: {path: /health, timout: 5s}
kind: Project
---
spec:
  host: local
  zone: codeb.test
  environments:
    production: {image: a, port: 0}
apiVersion: codeb.kr/v1
metadata: {name: api}
kind: Project
";
    let errors = load_str("t.yaml", text).unwrap_err();
    let messages: Vec<String> = errors.to_string().lines().map(str::to_string).collect();
    let expected = [
        "t.yaml:8:13: invalid `spec.caddy.listen`: expected a list, found",
        "t.yaml:24:36: unknown field `timout` in `spec.environments.production.healthCheck`",
        "t.yaml:31:34: invalid port 0: expected an integer 1-65535",
    ];
    assert_eq!(messages.len(), expected.len(), "{errors}");
    for (message, expected) in messages.iter().zip(expected) {
        assert!(
            message.starts_with(expected),
            "{message}\ndoes not start with\n{expected}"
        );
    }
}

#[test]
fn a_spec_before_a_kind_codeb_does_not_read_is_not_read() {
    let text =
        "apiVersion: codeb.kr/v1\nmetadata: {name: x}\nspec: {anything: [1, 2]}\nkind: Hots\n";
    let errors = load_str("t.yaml", text).unwrap_err();
    assert_eq!(errors.len(), 1, "{errors}");
    assert!(
        errors
            .to_string()
            .starts_with("t.yaml:4:7: unknown kind `Hots`; expected one of Host, Zone, Project (did you mean `Host`?)"),
        "{errors}"
    );
}
