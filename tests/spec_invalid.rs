//! Each file in `manifests/invalid/` holds one kind of mistake: loading it yields exactly one
//! error, at the exact `file:line:column`, saying what is wrong and what is expected.

use std::path::PathBuf;

use codeb::spec::{load_paths, Errors};

fn load(name: &str) -> Errors {
    let path = PathBuf::from("manifests/invalid").join(name);
    load_paths(&[path]).expect_err("an invalid manifest must not load")
}

/// Asserts the one error of `name` is at `line:column` and its message is `message`.
fn assert_one_error(name: &str, line: usize, column: usize, message: &str) {
    let errors = load(name);
    assert_eq!(
        errors.len(),
        1,
        "{name}: expected one error, got:\n{errors}"
    );
    assert_eq!(
        errors.to_string(),
        format!("manifests/invalid/{name}:{line}:{column}: {message}")
    );
}

#[test]
fn a_syntax_error_is_reported_where_the_parser_stopped() {
    assert_one_error(
        "syntax-error.yaml",
        13,
        16,
        "invalid YAML: unclosed bracket '['",
    );
}

#[test]
fn an_unknown_field_lists_the_fields_and_suggests_the_closest() {
    assert_one_error(
        "unknown-field.yaml",
        12,
        7,
        "unknown field `prot` in `spec.environments.production`; expected one of `image`, `port`, \
         `command`, `env`, `envFrom`, `healthCheck`, `promotion`, `gracePeriod`, `migrationGrace`, `stopTimeout`, `hostname`, `resources`, `database`, `cache`, `onDelete` (did you mean `port`?)",
    );
}

#[test]
fn a_value_of_the_wrong_type_names_both_types() {
    assert_one_error(
        "wrong-type.yaml",
        13,
        16,
        "invalid `spec.environments.production.command`: expected a list, found a string",
    );
}

#[test]
fn an_invalid_name_says_what_a_name_may_contain() {
    assert_one_error(
        "invalid-name.yaml",
        20,
        9,
        "invalid name `My_App`: expected a DNS-1123 label (lowercase letters, digits and `-`, \
         starting with a letter, ending with a letter or digit, at most 63 characters)",
    );
}

#[test]
fn an_unknown_kind_suggests_the_closest_kind() {
    assert_one_error(
        "unknown-kind.yaml",
        3,
        7,
        "unknown kind `Projet`; expected one of Host, Zone, Project (did you mean `Project`?)",
    );
}

#[test]
fn a_wrong_api_version_names_the_supported_one() {
    assert_one_error(
        "wrong-api-version.yaml",
        2,
        13,
        "unsupported apiVersion `v1`; expected `codeb.kr/v1`",
    );
}

#[test]
fn a_duplicate_name_names_both_places() {
    assert_one_error(
        "duplicate-name.yaml",
        32,
        9,
        "duplicate Project `hello`: already defined at manifests/invalid/duplicate-name.yaml:20:9",
    );
}

#[test]
fn a_missing_host_reference_lists_the_defined_hosts() {
    assert_one_error(
        "missing-host.yaml",
        22,
        9,
        "unknown host `locl`: no Host with this name (defined: local) (did you mean `local`?)",
    );
}

#[test]
fn a_port_out_of_range_says_the_range() {
    assert_one_error(
        "bad-port.yaml",
        12,
        13,
        "invalid port 99999: expected an integer 1-65535",
    );
}

#[test]
fn a_duration_without_unit_shows_the_expected_format() {
    assert_one_error(
        "bad-duration.yaml",
        13,
        20,
        "invalid duration `90` for `spec.environments.production.gracePeriod` (time unit needed, \
         for example 90sec or 90ms); expected a number with a unit, like `30s`, `5m` or `1h`",
    );
}

#[test]
fn a_mistake_in_a_spec_before_its_kind_is_reported_where_it_is_written() {
    assert_one_error(
        "kind-after-spec.yaml",
        10,
        3,
        "unknown field `tll` in `spec`; expected one of `powerdns`, `ttl`, `externalHostnames` (did you mean `ttl`?)",
    );
}

#[test]
fn an_env_value_of_the_wrong_type_is_not_shown() {
    assert_one_error(
        "secret-env.yaml",
        15,
        20,
        "invalid value of env variable `API_TOKEN` in `spec.environments.production.env`: \
         expected a string (the value is not shown)",
    );
}

#[test]
fn a_hostname_used_twice_names_the_first_user() {
    assert_one_error(
        "hostname-taken.yaml",
        40,
        17,
        "hostname `hello.codeb.test` of shop/production is already used by hello/production at \
         manifests/invalid/hostname-taken.yaml:25:5; each hostname routes to one environment",
    );
}

#[test]
fn every_invalid_file_is_covered_by_a_test() {
    let mut files: Vec<String> = std::fs::read_dir("manifests/invalid")
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    files.sort();
    let source = include_str!("spec_invalid.rs");
    for file in files {
        assert!(
            source.contains(&format!("\"{file}\"")),
            "{file} has no test"
        );
    }
}

#[test]
fn the_whole_directory_reports_every_file_in_order() {
    let errors = load_paths(&[PathBuf::from("manifests/invalid")]).unwrap_err();
    let files: Vec<&str> = errors.iter().map(|e| e.origin().file.as_str()).collect();
    let mut sorted = files.clone();
    sorted.sort();
    assert_eq!(files, sorted);
    for name in [
        "bad-duration.yaml",
        "syntax-error.yaml",
        "wrong-type.yaml",
        "secret-env.yaml",
    ] {
        assert!(
            files.iter().any(|f| f.ends_with(name)),
            "no error from {name}:\n{errors}"
        );
    }
}

#[test]
fn a_database_needs_its_host_to_declare_postgres() {
    assert_one_error(
        "database-without-postgres.yaml",
        28,
        17,
        "`database: postgres` but Host `local` (at manifests/invalid/database-without-postgres.yaml:5:9) \
         declares no `postgres`: add `spec.postgres` to the Host",
    );
}

#[test]
fn an_admin_password_in_a_url_is_refused_and_never_echoed() {
    let errors = load("password-in-url.yaml");
    let text = errors.to_string();
    assert!(!text.contains("hunter2"), "the password is echoed: {text}");
    assert_eq!(errors.len(), 1, "{text}");
    assert!(
        text.starts_with(
            "manifests/invalid/password-in-url.yaml:12:10: invalid postgres url (not shown"
        ),
        "{text}"
    );
    assert!(text.contains("`passwordEnv`"), "{text}");
}

#[test]
fn a_host_selector_its_host_does_not_meet_names_the_label_and_the_host() {
    assert_one_error(
        "host-selector-unmet.yaml",
        26,
        11,
        "spec.hostSelector requires the label `role: app` but Host `edge` (at \
         manifests/invalid/host-selector-unmet.yaml:5:9) does not carry it (it has `role: \
         edge`): add it to the Host's metadata.labels, or put the project on a Host that has it",
    );
}

#[test]
fn a_label_key_that_kubernetes_would_refuse_is_refused() {
    assert_one_error(
        "bad-label.yaml",
        7,
        5,
        "invalid label key `server role` in metadata.labels: expected an optional DNS-subdomain \
         prefix and `/`, then at most 63 letters, digits, `-`, `_` or `.`, starting and ending \
         with a letter or digit (e.g. `role`)",
    );
}
