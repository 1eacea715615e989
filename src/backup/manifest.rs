//! What a backup is: its id, its manifest (`manifest.json`), and the pure decisions about backups
//! (which ones retention deletes, whether one is due).
//!
//! No I/O here: [`super::dest`] reads and writes manifests.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

/// The version of the manifest's format, written into every manifest; a manifest of a newer
/// format is refused rather than half understood.
pub const FORMAT: u32 = 1;

/// The largest `manifest.json` read (a database with 10,000 tables writes about 600 KB).
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;

/// What a backup holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// `pg_dump` (custom format) of the environment's database.
    Database,
    /// The environment's Redis keys.
    Cache,
    /// The env store's versions, still sealed (what `codeb env backup` writes), of every project:
    /// kept under [`ENV_STORE`].
    Env,
}

/// The `{project}/{env}` directory of env-store backups: `_codeb/env` (a project name is a DNS
/// label, never `_codeb`).
pub const ENV_STORE: (&str, &str) = ("_codeb", "env");

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Database, Kind::Cache, Kind::Env];

    pub const fn as_str(self) -> &'static str {
        match self {
            Kind::Database => "database",
            Kind::Cache => "cache",
            Kind::Env => "env",
        }
    }

    /// The name of the backup's data file.
    pub const fn file(self) -> &'static str {
        match self {
            Kind::Database => "database.dump",
            Kind::Cache => "cache.keys",
            // The name `codeb env restore-backup --from DIR` reads.
            Kind::Env => "codeb-env-backup.json",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "database" => Ok(Kind::Database),
            "cache" => Ok(Kind::Cache),
            "env" => Ok(Kind::Env),
            other => Err(format!(
                "unknown backup kind {other:?} (database, cache or env)"
            )),
        }
    }
}

/// One file of a backup as its manifest records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// A plain file name inside the backup's directory (no `/`, never `..`).
    pub name: String,
    /// Lowercase hex.
    pub sha256: String,
    pub size: u64,
}

/// `manifest.json`: what a backup is, written last (after its files are complete and hashed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub id: String,
    pub kind: Kind,
    pub project: String,
    pub env: String,
    /// The database's name, or the cache's key prefix.
    pub source: String,
    /// RFC 3339, UTC, seconds.
    pub created: String,
    pub codeb_version: String,
    /// The server's version (`server_version`, `redis_version`): a restore needs the same or a
    /// newer one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_version: Option<String>,
    pub files: Vec<FileEntry>,
    /// Database: the rows of every table (`schema.table`), counted in the snapshot the dump
    /// was taken of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tables: Option<BTreeMap<String, u64>>,
    /// Cache: how many keys the file holds; env: how many versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<u64>,
}

impl Manifest {
    /// The bytes of every file.
    pub fn size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// Rows over all tables, or keys.
    pub fn items(&self) -> u64 {
        match (&self.tables, self.keys) {
            (Some(t), _) => t.values().sum(),
            (None, Some(k)) => k,
            (None, None) => 0,
        }
    }

    /// Checks what a manifest read from disk must hold to be trusted with paths: the format, the
    /// id, the kind in the id, plain file names.
    pub fn check(&self) -> Result<(), String> {
        if self.format > FORMAT {
            return Err(format!(
                "format {} is newer than this codeb's ({FORMAT})",
                self.format
            ));
        }
        let Some((_, kind)) = parse_id(&self.id) else {
            return Err(format!("{:?} is not a backup id", self.id));
        };
        if kind != self.kind {
            return Err(format!("id {} is not a {} backup's", self.id, self.kind));
        }
        if self.files.is_empty() {
            return Err("it lists no file".into());
        }
        for f in &self.files {
            if !plain_name(&f.name) || f.name == "manifest.json" {
                return Err(format!("{:?} is not a plain file name", f.name));
            }
        }
        Ok(())
    }
}

/// A name that stays inside its directory: not empty, no `/` or `\0`, not `.` or `..`, no
/// leading `.` (temporary directories start with one).
pub fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && !name.contains(['/', '\\', '\0'])
}

/// A backup's id: its time (UTC, to the second, sortable) and its kind,
/// `20261207T121500Z-database`. A second backup of one kind within the same second gets `-2`,
/// `-3`, … after it (see [`super::dest`]).
pub fn id(created: SystemTime, kind: Kind) -> String {
    format!("{}-{}", compact_time(created), kind)
}

/// `20261207T121500Z`.
pub fn compact_time(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t)
        .to_string()
        .replace(['-', ':'], "")
}

/// RFC 3339 to the second: `2026-12-07T12:15:00Z`.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// `(time part, kind)` of an id, or `None` when it is not one: the only ids a path is built
/// from.
pub fn parse_id(id: &str) -> Option<(&str, Kind)> {
    let (time, rest) = id.split_once('-')?;
    let ok_time = time.len() == 16
        && time.as_bytes()[8] == b'T'
        && time.ends_with('Z')
        && time[..8].bytes().all(|b| b.is_ascii_digit())
        && time[9..15].bytes().all(|b| b.is_ascii_digit());
    if !ok_time {
        return None;
    }
    let (kind, seq) = match rest.split_once('-') {
        Some((k, n)) => (k, Some(n)),
        None => (rest, None),
    };
    if let Some(n) = seq {
        if n.is_empty() || n.len() > 4 || !n.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
    }
    Some((time, kind.parse().ok()?))
}

/// The instant of an id's time part.
pub fn id_time(id: &str) -> Option<SystemTime> {
    let (t, _) = parse_id(id)?;
    let text = format!(
        "{}-{}-{}T{}:{}:{}Z",
        &t[..4],
        &t[4..6],
        &t[6..8],
        &t[9..11],
        &t[11..13],
        &t[13..15]
    );
    humantime::parse_rfc3339(&text).ok()
}

/// Orders ids by time, then by their `-N` sequence (`…Z-database-10` after `…Z-database-9`).
fn order_key(id: &str) -> (String, u32) {
    let (time, _) = parse_id(id).unwrap_or(("", Kind::Database));
    let seq = id
        .rsplit_once('-')
        .and_then(|(_, n)| n.parse::<u32>().ok())
        .unwrap_or(1);
    (time.to_string(), seq)
}

/// Sorts ids oldest first.
pub fn sort_ids(ids: &mut [String]) {
    ids.sort_by_key(|a| order_key(a));
}

/// Of one environment's backups of one kind, the ids retention deletes: all but the newest
/// `keep` (at least one is always kept).
pub fn beyond_keep(ids: &[String], keep: u32) -> Vec<String> {
    let mut ids = ids.to_vec();
    sort_ids(&mut ids);
    let keep = (keep.max(1) as usize).min(ids.len());
    ids.truncate(ids.len() - keep);
    ids
}

/// Whether a new backup is due: none yet, or the newest is at least `every` old (a schedule the
/// daemon missed while it was down runs at once when it is back). A newest backup dated in the
/// future (a clock set back) does not make one due before `every` has passed since it.
pub fn due(newest: Option<SystemTime>, every: Duration, now: SystemTime) -> bool {
    match newest {
        None => true,
        Some(t) => now.duration_since(t).is_ok_and(|age| age >= every),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    // 2026-12-07T12:15:00Z
    const T: u64 = 1_796_645_700;

    #[test]
    fn ids_sort_by_time_and_carry_their_kind() {
        let id = id(at(T), Kind::Database);
        assert_eq!(id, "20261207T121500Z-database");
        assert_eq!(parse_id(&id), Some(("20261207T121500Z", Kind::Database)));
        assert_eq!(id_time(&id), Some(at(T)));
        assert_eq!(
            parse_id("20261207T121500Z-cache-2").map(|p| p.1),
            Some(Kind::Cache)
        );
        for bad in [
            "../../etc",
            "20261207T121500Z",
            "20261207T121500Z-other",
            "20261207T121500Z-cache-",
            "20261207T121500Z-cache-x",
            "2026120XT121500Z-cache",
            "20261207T121500Z-cache/..",
        ] {
            assert_eq!(parse_id(bad), None, "{bad}");
        }
        let mut ids: Vec<String> = [
            "20261207T121500Z-database-10",
            "20261208T000000Z-database",
            "20261207T121500Z-database-9",
            "20261207T121500Z-database",
        ]
        .map(String::from)
        .into();
        sort_ids(&mut ids);
        assert_eq!(
            ids,
            [
                "20261207T121500Z-database",
                "20261207T121500Z-database-9",
                "20261207T121500Z-database-10",
                "20261208T000000Z-database"
            ]
        );
    }

    #[test]
    fn retention_deletes_the_oldest_beyond_keep_and_never_the_last() {
        let ids: Vec<String> = (0..5)
            .map(|d| id(at(T + d * 86_400), Kind::Database))
            .collect();
        assert_eq!(beyond_keep(&ids, 3), ids[..2].to_vec());
        assert!(beyond_keep(&ids, 7).is_empty());
        assert_eq!(beyond_keep(&ids, 0), ids[..4].to_vec());
        assert!(beyond_keep(&[], 1).is_empty());
    }

    #[test]
    fn a_backup_is_due_when_none_or_the_newest_is_older_than_every() {
        let day = Duration::from_secs(86_400);
        assert!(due(None, day, at(T)));
        assert!(!due(Some(at(T)), day, at(T + 86_399)));
        assert!(due(Some(at(T)), day, at(T + 86_400)));
        assert!(
            due(Some(at(T)), day, at(T + 10 * 86_400)),
            "a missed one runs"
        );
        assert!(!due(Some(at(T + 100)), day, at(T)), "a future newest waits");
    }

    #[test]
    fn a_manifest_with_a_path_for_a_file_name_is_refused() {
        let mut m = Manifest {
            format: FORMAT,
            id: id(at(T), Kind::Cache),
            kind: Kind::Cache,
            project: "shop".into(),
            env: "production".into(),
            source: "shop:production:".into(),
            created: rfc3339(at(T)),
            codeb_version: "0.1.0".into(),
            server_version: None,
            files: vec![FileEntry {
                name: "cache.keys".into(),
                sha256: "00".into(),
                size: 1,
            }],
            tables: None,
            keys: Some(3),
        };
        assert_eq!(m.check(), Ok(()));
        let json = serde_json::to_string(&m).unwrap();
        assert!(json.contains(r#""kind":"cache""#), "{json}");
        assert_eq!(serde_json::from_str::<Manifest>(&json).unwrap(), m);
        for bad in ["../x", ".hidden", "a/b", "manifest.json", ""] {
            m.files[0].name = bad.into();
            assert!(m.check().is_err(), "{bad}");
        }
        m.files[0].name = "cache.keys".into();
        m.kind = Kind::Database;
        assert!(m.check().is_err(), "the id says cache");
        m.kind = Kind::Cache;
        m.format = FORMAT + 1;
        assert!(m.check().is_err());
    }
}
