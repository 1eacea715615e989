//! The cache backup: one environment's Redis keys (those under its prefix `{project}:{env}:`)
//! written as `DUMP` payloads with their TTLs into one file, and their restore.
//!
//! # The file (`cache.keys`)
//! All integers big-endian.
//!
//! ```text
//! magic    "CODEB-CACHE\n"                 12 bytes
//! format   u32                             1
//! prefix   u32 length, bytes               the prefix the keys were under (information)
//! record*  u8 1
//!          u32 length, bytes               the key without the prefix
//!          i64                             PTTL in milliseconds at the backup (-1: none)
//!          u32 length, bytes               DUMP's payload (RDB-encoded, with its checksum)
//! end      u8 0, u64                       the number of records
//! ```
//!
//! Keys are stored without the prefix, and a restore puts the prefix of the environment it
//! restores into in front of them: a cache restore can write nothing outside that prefix.
//!
//! # Consistency
//! Each key is read whole (`DUMP` and `PTTL` in one pipeline), but the keys are not one
//! instant: a key written while `SCAN` runs may or may not be in the backup (what Redis offers
//! short of an RDB of the whole instance). Keys that expire during the backup are left out.
//!
//! # Restore semantics
//! `RESTORE key ttl payload REPLACE`: a key of the backup replaces the live key of that name; live
//! keys the backup does not hold are left. A key gets the TTL it had left at the backup, counted
//! from the restore. It overwrites live data, so it is only done when asked explicitly
//! (`replace`). The payload is the server's RDB encoding: restore into the same Redis version or
//! a newer one.

use std::collections::HashSet;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::time::{Instant, SystemTime};

use serde::{Deserialize, Serialize};

use super::dest::{self, Dest};
use super::manifest::{self, Kind, Manifest};
use super::postgres::finish;
use super::{Done, Error, Result};
use crate::model::data::{url_host, CacheNames};
use crate::model::vars::SecretText;
use crate::model::EnvKey;

const MAGIC: &[u8; 12] = b"CODEB-CACHE\n";
const FORMAT: u32 = 1;
/// The longest key suffix and payload a reader accepts (Redis's own limits are 512 MB for both;
/// a key over 1 MiB is a mistake, a value over 512 MiB cannot be restored).
const MAX_KEY: u32 = 1 << 20;
const MAX_PAYLOAD: u32 = 512 << 20;
/// Keys per `SCAN` step and per `RESTORE` pipeline.
const BATCH: usize = 500;

/// One key as the file holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The key without the prefix.
    pub suffix: Vec<u8>,
    /// Milliseconds left at the backup; -1: no expiry.
    pub pttl: i64,
    pub payload: Vec<u8>,
}

/// Writes the format to `w`.
pub struct Writer<W: Write> {
    w: W,
    count: u64,
}

impl<W: Write> Writer<W> {
    pub fn new(mut w: W, prefix: &str) -> io::Result<Self> {
        w.write_all(MAGIC)?;
        w.write_all(&FORMAT.to_be_bytes())?;
        put_bytes(&mut w, prefix.as_bytes())?;
        Ok(Writer { w, count: 0 })
    }

    pub fn key(&mut self, suffix: &[u8], pttl: i64, payload: &[u8]) -> io::Result<()> {
        self.w.write_all(&[1])?;
        put_bytes(&mut self.w, suffix)?;
        self.w.write_all(&pttl.to_be_bytes())?;
        put_bytes(&mut self.w, payload)?;
        self.count += 1;
        Ok(())
    }

    /// Writes the end record; the writer and the number of keys.
    pub fn finish(mut self) -> io::Result<(W, u64)> {
        self.w.write_all(&[0])?;
        self.w.write_all(&self.count.to_be_bytes())?;
        self.w.flush()?;
        Ok((self.w, self.count))
    }
}

fn put_bytes(w: &mut impl Write, b: &[u8]) -> io::Result<()> {
    let n = u32::try_from(b.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "over 4 GiB"))?;
    w.write_all(&n.to_be_bytes())?;
    w.write_all(b)
}

/// Reads the format from `r`; every error is a sentence for [`Error::BadFormat`].
pub struct Reader<R: Read> {
    r: R,
    pub prefix: String,
    count: u64,
    done: bool,
}

impl<R: Read> Reader<R> {
    pub fn new(mut r: R) -> Result<Self, String> {
        let mut magic = [0u8; 12];
        read_exact(&mut r, &mut magic)?;
        if &magic != MAGIC {
            return Err("not a codeb cache dump (no CODEB-CACHE header)".into());
        }
        let format = u32::from_be_bytes(take(&mut r)?);
        if format != FORMAT {
            return Err(format!("format {format}; this codeb reads format {FORMAT}"));
        }
        let prefix = String::from_utf8(get_bytes(&mut r, MAX_KEY)?)
            .map_err(|_| "the prefix is not UTF-8".to_string())?;
        Ok(Reader {
            r,
            prefix,
            count: 0,
            done: false,
        })
    }

    /// The next key; `None` after the end record (whose count must match what was read).
    pub fn next_record(&mut self) -> Result<Option<Record>, String> {
        if self.done {
            return Ok(None);
        }
        let [tag] = take::<1>(&mut self.r)?;
        match tag {
            0 => {
                let n = u64::from_be_bytes(take(&mut self.r)?);
                if n != self.count {
                    return Err(format!(
                        "the end record says {n} keys, the file holds {}",
                        self.count
                    ));
                }
                let mut rest = [0u8; 1];
                if self.r.read(&mut rest).map_err(|e| e.to_string())? != 0 {
                    return Err("bytes after the end record".into());
                }
                self.done = true;
                Ok(None)
            }
            1 => {
                let suffix = get_bytes(&mut self.r, MAX_KEY)?;
                let pttl = i64::from_be_bytes(take(&mut self.r)?);
                let payload = get_bytes(&mut self.r, MAX_PAYLOAD)?;
                self.count += 1;
                Ok(Some(Record {
                    suffix,
                    pttl,
                    payload,
                }))
            }
            t => Err(format!("unknown record tag {t} after {} keys", self.count)),
        }
    }
}

fn read_exact(r: &mut impl Read, buf: &mut [u8]) -> Result<(), String> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => "truncated (no end record)".to_string(),
        _ => e.to_string(),
    })
}

fn take<const N: usize>(r: &mut impl Read) -> Result<[u8; N], String> {
    let mut b = [0u8; N];
    read_exact(r, &mut b)?;
    Ok(b)
}

fn get_bytes(r: &mut impl Read, max: u32) -> Result<Vec<u8>, String> {
    let n = u32::from_be_bytes(take(r)?);
    if n > max {
        return Err(format!("a field of {n} bytes, over the {max} allowed"));
    }
    let mut b = Vec::new();
    r.take(u64::from(n))
        .read_to_end(&mut b)
        .map_err(|e| e.to_string())?;
    if b.len() != n as usize {
        return Err("truncated (no end record)".into());
    }
    Ok(b)
}

/// The admin connection a Host declares (`spec.redis`), with the password read from its
/// variable.
#[derive(Clone)]
pub struct RedisAdmin {
    /// Without a password: `redis://127.0.0.1:6379` (user `default` unless it names one).
    pub url: String,
    pub password: SecretText,
}

impl RedisAdmin {
    pub fn endpoint(&self) -> String {
        url_host(&self.url).unwrap_or(&self.url).to_string()
    }

    fn err(&self, e: redis::RedisError) -> Error {
        Error::Redis {
            endpoint: self.endpoint(),
            message: e.to_string(),
        }
    }

    async fn connect(&self) -> Result<redis::aio::MultiplexedConnection> {
        use redis::IntoConnectionInfo;
        let info = self
            .url
            .as_str()
            .into_connection_info()
            .map_err(|e| self.err(e))?;
        let mut settings = info.redis_settings().clone();
        if !self.password.0.is_empty() {
            settings = settings.set_password(&self.password.0);
        }
        let info = info.set_redis_settings(settings);
        let client = redis::Client::open(info).map_err(|e| self.err(e))?;
        let connect = client.get_multiplexed_async_connection();
        match tokio::time::timeout(std::time::Duration::from_secs(10), connect).await {
            Ok(c) => c.map_err(|e| self.err(e)),
            Err(_) => Err(Error::Redis {
                endpoint: self.endpoint(),
                message: "no answer within 10 s".into(),
            }),
        }
    }
}

/// `*`, `?`, `[`, `]` and `\` escaped for a `SCAN MATCH` pattern.
pub fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Backs up the keys under `key`'s prefix into `dest`, verifies the backup in place, then deletes
/// that environment's cache backups beyond `keep`.
///
/// # Errors
/// [`Error::Redis`], [`Error::Io`]; nothing is left in `dest` on failure.
pub async fn backup(
    admin: &RedisAdmin,
    dest: &Dest,
    key: &EnvKey,
    keep: u32,
    now: SystemTime,
) -> Result<Done> {
    let start = Instant::now();
    let names = CacheNames::of(key);
    let staging = dest.stage(&key.project, &key.env, Kind::Cache, now)?;
    let mut conn = admin.connect().await?;
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut conn)
        .await
        .map_err(|e| admin.err(e))?;
    let version = info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .map(|v| v.trim().to_string());

    let path = staging.file(Kind::Cache.file());
    let file = std::fs::File::create(&path).map_err(Error::io(&path))?;
    // Plain buffered writes from the async task: each flush is 64 KiB into the page cache.
    let mut w = Writer::new(BufWriter::with_capacity(64 << 10, file), &names.prefix)
        .map_err(Error::io(&path))?;
    let pattern = format!("{}*", glob_escape(&names.prefix));
    let mut seen: HashSet<Vec<u8>> = HashSet::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(BATCH)
            .query_async(&mut conn)
            .await
            .map_err(|e| admin.err(e))?;
        // SCAN may return a key twice.
        let keys: Vec<Vec<u8>> = keys
            .into_iter()
            .filter(|k| seen.insert(k.clone()))
            .collect();
        if !keys.is_empty() {
            let mut pipe = redis::pipe();
            for k in &keys {
                pipe.cmd("PTTL").arg(k).cmd("DUMP").arg(k);
            }
            let values: Vec<redis::Value> = pipe
                .query_async(&mut conn)
                .await
                .map_err(|e| admin.err(e))?;
            for (k, pair) in keys.iter().zip(values.chunks(2)) {
                let (redis::Value::Int(pttl), redis::Value::BulkString(payload)) =
                    (&pair[0], &pair[1])
                else {
                    continue; // gone (expired or deleted) between SCAN and DUMP
                };
                if *pttl == -2 {
                    continue;
                }
                let suffix = &k[names.prefix.len()..];
                w.key(suffix, *pttl, payload).map_err(Error::io(&path))?;
            }
        }
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    let (_, count) = w.finish().map_err(Error::io(&path))?;
    let m = Manifest {
        format: manifest::FORMAT,
        id: staging.id.clone(),
        kind: Kind::Cache,
        project: key.project.clone(),
        env: key.env.clone(),
        source: names.prefix.clone(),
        created: manifest::rfc3339(now),
        codeb_version: env!("CARGO_PKG_VERSION").to_string(),
        server_version: version,
        files: Vec::new(),
        tables: None,
        keys: Some(count),
    };
    finish(dest, key, staging, m, &[Kind::Cache.file()], keep, start).await
}

/// What a cache restore did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoredKeys {
    pub id: String,
    pub prefix: String,
    /// Keys in the backup, and keys written.
    pub expected: u64,
    pub restored: u64,
    pub elapsed_ms: u64,
}

/// Writes backup `id`'s keys back under `key`'s prefix (`RESTORE … REPLACE`, TTLs kept), after
/// checking every file's size and SHA-256. Refused unless `replace` (it overwrites live keys).
///
/// # Errors
/// [`Error::Refused`] without `replace` or for a backup of another kind; [`Error::Checksum`] /
/// [`Error::Size`] (nothing written); [`Error::BadFormat`]; [`Error::Redis`] (keys written
/// before it stay written).
pub async fn restore(
    admin: &RedisAdmin,
    dest: &Dest,
    key: &EnvKey,
    id: &str,
    replace: bool,
) -> Result<RestoredKeys> {
    let start = Instant::now();
    let names = CacheNames::of(key);
    let (dir, m) = dest.open(&key.project, &key.env, id)?;
    if m.kind != Kind::Cache {
        return Err(Error::Refused(format!(
            "backup {id} is a {} backup: restore it as one",
            m.kind
        )));
    }
    if !replace {
        return Err(Error::Refused(format!(
            "restoring cache backup {id} writes its {} keys over the live keys under {} (keys it does not hold are left): ask for it explicitly (--replace-keys)",
            m.keys.unwrap_or(0),
            names.prefix
        )));
    }
    let checked = (dir.clone(), m.clone());
    tokio::task::spawn_blocking(move || dest::verify(&checked.0, &checked.1))
        .await
        .map_err(|e| Error::Refused(format!("a restore task failed: {e}")))??;

    let path = dir.join(Kind::Cache.file());
    let shown = path.display().to_string();
    let bad = |reason: String| Error::BadFormat {
        file: shown.clone(),
        reason,
    };
    let file = std::fs::File::open(&path).map_err(Error::io(&path))?;
    let mut r = Reader::new(BufReader::with_capacity(64 << 10, file)).map_err(bad)?;
    let mut conn = admin.connect().await?;
    let mut restored = 0u64;
    let mut pipe = redis::pipe();
    let mut batched = 0usize;
    loop {
        let rec = r.next_record().map_err(bad)?;
        if let Some(rec) = &rec {
            let mut k = names.prefix.as_bytes().to_vec();
            k.extend_from_slice(&rec.suffix);
            // RESTORE's TTL 0 means none; a key that had 0 ms left gets 1.
            let ttl = match rec.pttl {
                -1 => 0,
                t => t.max(1),
            };
            pipe.cmd("RESTORE")
                .arg(k)
                .arg(ttl)
                .arg(&rec.payload)
                .arg("REPLACE")
                .ignore();
            batched += 1;
        }
        if batched > 0 && (batched >= BATCH || rec.is_none()) {
            pipe.query_async::<()>(&mut conn)
                .await
                .map_err(|e| admin.err(e))?;
            restored += batched as u64;
            batched = 0;
            pipe = redis::pipe();
        }
        if rec.is_none() {
            break;
        }
    }
    Ok(RestoredKeys {
        id: id.to_string(),
        prefix: names.prefix,
        expected: m.keys.unwrap_or(0),
        restored,
        elapsed_ms: start.elapsed().as_millis() as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_format_round_trips_and_a_cut_file_is_refused() {
        let mut w = Writer::new(Vec::new(), "shop:prod:").unwrap();
        w.key(b"a", -1, b"\x00\x01payload").unwrap();
        w.key(b"b:c", 1500, b"").unwrap();
        let (bytes, n) = w.finish().unwrap();
        assert_eq!(n, 2);
        let mut r = Reader::new(&bytes[..]).unwrap();
        assert_eq!(r.prefix, "shop:prod:");
        let a = r.next_record().unwrap().unwrap();
        assert_eq!((a.suffix.as_slice(), a.pttl), (&b"a"[..], -1));
        assert_eq!(a.payload, b"\x00\x01payload");
        assert_eq!(r.next_record().unwrap().unwrap().pttl, 1500);
        assert_eq!(r.next_record().unwrap(), None);

        for cut in [bytes.len() - 1, bytes.len() - 9, 30] {
            let mut r = Reader::new(&bytes[..cut]).unwrap();
            let e = loop {
                match r.next_record() {
                    Ok(Some(_)) => {}
                    Ok(None) => panic!("a file cut at {cut} read to its end"),
                    Err(e) => break e,
                }
            };
            assert!(e.contains("truncated"), "{cut}: {e}");
        }
        let mut extra = bytes.clone();
        extra.push(0);
        let mut r = Reader::new(&extra[..]).unwrap();
        let end = loop {
            match r.next_record() {
                Ok(Some(_)) => {}
                other => break other,
            }
        };
        assert_eq!(end, Err("bytes after the end record".to_string()));
        assert!(Reader::new(&b"CODEB-CACHE\n\0\0\0\x02"[..]).is_err());
        assert!(Reader::new(&b"REDIS0011"[..]).is_err());
    }

    #[test]
    fn a_length_over_the_limit_is_refused_before_it_is_read() {
        let mut bytes = Writer::new(Vec::new(), "p:e:").unwrap().w;
        bytes.push(1);
        bytes.extend_from_slice(&u32::MAX.to_be_bytes());
        let mut r = Reader::new(&bytes[..]).unwrap();
        assert!(r.next_record().unwrap_err().contains("over"));
    }

    #[test]
    fn the_scan_pattern_matches_the_prefix_literally() {
        assert_eq!(glob_escape("a:b:"), "a:b:");
        assert_eq!(glob_escape("a*[x]?\\"), "a\\*\\[x\\]\\?\\\\");
    }
}
