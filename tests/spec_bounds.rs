//! What the loader opens and how much it reads (issue 13, finding 7): only regular files, no
//! symlink out of a directory given, and bounds on files, directory entries and documents in all
//! inputs together. Each test would hang, roam or read without bound before the fix, so each runs
//! the load on a thread and fails after a few seconds instead of hanging the test binary.

use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use codeb::spec::limits::{MAX_DIRECTORY_ENTRIES, MAX_DOCUMENTS, MAX_FILES};
use codeb::spec::{load_paths, load_sources, Errors, Manifests, Source};

/// A valid manifest set (a Host, a Zone and three Projects).
fn valid() -> String {
    std::fs::read_to_string("manifests/examples/stack.yaml").unwrap()
}

/// Loads `paths` on a thread; panics if it takes more than 10 s (a hang).
fn load_within(paths: &[PathBuf]) -> Result<Manifests, Errors> {
    let (tx, rx) = mpsc::channel();
    let paths = paths.to_vec();
    std::thread::spawn(move || tx.send(load_paths(&paths)).unwrap());
    rx.recv_timeout(Duration::from_secs(10))
        .expect("the load must not hang")
}

fn refused(paths: &[PathBuf]) -> String {
    load_within(paths).expect_err("must be refused").to_string()
}

fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(status.success());
}

#[test]
fn a_fifo_named_yaml_in_a_directory_is_refused_without_hanging() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("base.yaml"), valid()).unwrap();
    mkfifo(&dir.path().join("x.yaml"));
    let errors = refused(&[dir.path().to_path_buf()]);
    assert_eq!(
        errors,
        format!(
            "{}/x.yaml: not read: a FIFO; manifests are read from regular files only (a FIFO, \
             socket or device can block or never end); pipe a stream to `-f -`",
            dir.path().display()
        )
    );
}

#[test]
fn a_fifo_a_socket_or_a_device_named_on_the_command_line_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("x.yaml");
    mkfifo(&fifo);
    let socket = dir.path().join("s.yaml");
    let _listener = UnixListener::bind(&socket).unwrap();
    for (path, what) in [
        (fifo, "a FIFO"),
        (socket, "a socket"),
        (PathBuf::from("/dev/zero"), "a device"),
    ] {
        let errors = refused(std::slice::from_ref(&path));
        assert!(
            errors.starts_with(&format!("{}: not read: {what}; ", path.display())),
            "{errors}"
        );
    }
}

#[test]
fn a_socket_in_a_directory_is_refused_and_other_special_files_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("base.yaml"), valid()).unwrap();
    let _listener = UnixListener::bind(dir.path().join("api.yml")).unwrap();
    mkfifo(&dir.path().join("notes.fifo"));
    let errors = refused(&[dir.path().to_path_buf()]);
    assert!(errors.contains("api.yml: not read: a socket;"), "{errors}");
    assert!(!errors.contains("notes.fifo"), "{errors}");
}

#[test]
fn a_symlink_to_the_root_inside_a_manifest_directory_is_refused_not_walked() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("base.yaml"), valid()).unwrap();
    std::os::unix::fs::symlink("/", dir.path().join("root")).unwrap();
    let errors = refused(&[dir.path().to_path_buf()]);
    assert_eq!(
        errors,
        format!(
            "{0}/root: not read: a symlink to `/`, outside `{0}`; symlinks in a manifest \
             directory are followed only inside it (name a file outside on the command line)",
            dir.path().display()
        )
    );
}

#[test]
fn a_symlink_named_yaml_that_leads_outside_is_refused_and_one_not_named_yaml_is_ignored() {
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().join("other.yaml");
    std::fs::write(&target, valid()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("base.yaml"), valid()).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", dir.path().join("README")).unwrap();
    load_within(&[dir.path().to_path_buf()]).expect("a link that is not a manifest is ignored");
    std::os::unix::fs::symlink(&target, dir.path().join("other.yaml")).unwrap();
    let errors = refused(&[dir.path().to_path_buf()]);
    assert!(
        errors.starts_with(&format!(
            "{}/other.yaml: not read: a symlink to `",
            dir.path().display()
        )),
        "{errors}"
    );
}

#[test]
fn symlinks_that_resolve_inside_the_directory_are_followed_as_a_config_map_volume_has_them() {
    // A Kubernetes ConfigMap volume: `x.yaml -> ..data/x.yaml`, `..data -> ..2024_01_01`.
    let dir = tempfile::tempdir().unwrap();
    let version = dir.path().join("..2024_01_01");
    std::fs::create_dir(&version).unwrap();
    std::fs::write(version.join("stack.yaml"), valid()).unwrap();
    std::os::unix::fs::symlink("..2024_01_01", dir.path().join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/stack.yaml", dir.path().join("stack.yaml")).unwrap();
    let m = load_within(&[dir.path().to_path_buf()]).unwrap();
    assert_eq!(
        m.hosts["local"].origin.file,
        format!("{}/stack.yaml", dir.path().display())
    );
}

#[test]
fn a_symlink_named_on_the_command_line_is_followed() {
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().join("v3.yaml");
    std::fs::write(&target, valid()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("current.yaml");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let m = load_within(&[link]).unwrap();
    assert_eq!(m.hosts.len(), 1);
}

#[test]
fn more_files_than_the_limit_are_refused_before_they_are_read() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..=MAX_FILES {
        std::fs::write(dir.path().join(format!("{i:05}.yaml")), "").unwrap();
    }
    let errors = refused(&[dir.path().to_path_buf()]);
    assert_eq!(
        errors,
        format!(
            "{}: input refused: more than {MAX_FILES} manifest files in this directory and \
             those below it",
            dir.path().display()
        )
    );
}

#[test]
fn a_directory_of_more_entries_than_the_limit_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("base.yaml"), valid()).unwrap();
    let junk = dir.path().join("target");
    std::fs::create_dir(&junk).unwrap();
    for i in 0..MAX_DIRECTORY_ENTRIES {
        std::fs::write(junk.join(format!("{i}.o")), "").unwrap();
    }
    let errors = refused(&[dir.path().to_path_buf()]);
    assert_eq!(
        errors,
        format!(
            "{}: input refused: more than {MAX_DIRECTORY_ENTRIES} entries in this directory and \
             those below it; expected a directory of manifests",
            dir.path().display()
        )
    );
}

#[test]
fn more_documents_than_the_limit_in_all_inputs_together_are_refused() {
    // Each file stays under the per-file limit; together they pass the total. The documents
    // are valid (Zones), so the load does not stop at the error limit first.
    let per_file = 900;
    let files = MAX_DOCUMENTS / per_file + 1;
    let zone = |i: usize, j: usize| {
        format!("---\napiVersion: codeb.kr/v1\nkind: Zone\nmetadata: {{name: z{i}-{j}.test}}\n")
    };
    let sources: Vec<Source> = (0..files)
        .map(|i| Source {
            name: format!("f{i}.yaml"),
            text: (0..per_file).map(|j| zone(i, j)).collect(),
        })
        .collect();
    let errors = load_sources(&sources).unwrap_err();
    assert_eq!(
        errors.to_string(),
        format!(
            "f{}.yaml: input refused: more than {MAX_DOCUMENTS} documents in all inputs together",
            files - 1
        )
    );
}

#[test]
fn more_sources_than_the_file_limit_are_refused_even_when_empty() {
    let sources: Vec<Source> = (0..=MAX_FILES)
        .map(|i| Source {
            name: format!("f{i}.yaml"),
            text: String::new(),
        })
        .collect();
    let errors = load_sources(&sources).unwrap_err().to_string();
    assert!(
        errors.ends_with(&format!(
            "f{MAX_FILES}.yaml: input refused: more than {MAX_FILES} files in one load"
        )),
        "{errors}"
    );
}
