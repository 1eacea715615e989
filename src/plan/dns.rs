//! Planning DNS: the rrsets every environment calls for, diffed against what each managed zone
//! holds, into at most one write per zone.
//!
//! Pure: no I/O. What an environment calls for: an A record (AAAA for an IPv6 Host address) at its
//! hostname and at both preview hostnames (`blue.` and `green.`), pointing at its Host's
//! `address`, with the Zone's TTL and codeb's mark naming the environment. Previews get records
//! whether or not their slot runs a release: the set of names then depends only on the manifests,
//! so a deploy or a retirement never rewrites DNS (and never moves the serial), and a preview name
//! resolves before its first deploy. Each name goes to the most specific declared Zone holding it;
//! a Zone without `powerdns` is not managed, and a name in no declared Zone gets no record.
//!
//! # Ownership
//! Only rrsets carrying codeb's mark are ever changed or deleted. A name an environment needs is a
//! conflict when it holds a foreign rrset of any type, or codeb's rrset of an environment this run
//! neither wants nor removes (another state directory's, or a project dropped from the manifests
//! without `--prune`: taking it over would make two owners fight over it). Then none of that
//! environment's records are written, and a problem note names the record in the way. codeb's
//! rrsets are deleted when their environment is removed (deleted or pruned) or no longer calls for
//! them (its hostname or address family changed); rrsets marked for environments this run knows
//! nothing about are left alone.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use rustc_hash::{FxHashMap, FxHashSet};

use super::{Action, Note, Observed, Plan, Step};
use crate::backend::{ObservedZone, Rrset, RrsetChange};
use crate::model::dns::{canonical, owner_mark, parse_owner, zone_of, ZoneRef};
use crate::model::{preview_hostname, Desired, EnvKey, Recorded, Slot};

/// What one zone looked like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ZoneObservation {
    Present(ObservedZone),
    /// The server answered, and has no such zone.
    Missing,
    /// The server could not be read; the message names the endpoint.
    Unreachable {
        error: String,
    },
}

/// One rrset change of a zone's write, with what it replaces (for display).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsChange {
    pub change: RrsetChange,
    /// The rrset as observed (`None`: the change creates it).
    pub was: Option<Rrset>,
}

/// An environment's wish: its names, at this address.
struct WantedEnv<'a> {
    key: &'a EnvKey,
    hostname: &'a str,
    address: &'a str,
}

/// One rrset an environment calls for.
struct Want<'a> {
    key: &'a EnvKey,
    /// Canonical.
    name: String,
    rtype: &'static str,
    content: String,
}

/// Everything DNS planning reads.
struct Input<'a> {
    zones: &'a BTreeMap<String, ZoneRef>,
    wanted: Vec<WantedEnv<'a>>,
    /// Environments whose records go (deleted or pruned).
    removed: BTreeSet<&'a EnvKey>,
    /// The zones to create when they do not exist: the declared managed ones on apply, none on
    /// delete. Other zones are planned only when observed (a recorded Zone no longer declared).
    ensure: BTreeSet<&'a str>,
}

/// The DNS steps and notes of an apply: every desired environment's records, and the removal of
/// the records of `prune`d ones. Recorded Zones stand in for Zones no longer declared, so that a
/// pruned project's records are found.
pub fn plan_apply(
    desired: &Desired,
    observed: &Observed,
    recorded: &Recorded,
    prune: &[EnvKey],
    plan: &mut Plan,
) {
    let mut zones = std::borrow::Cow::Borrowed(&desired.zones);
    if !prune.is_empty() {
        for (name, z) in &recorded.zones {
            if !zones.contains_key(name) {
                zones.to_mut().insert(name.clone(), z.clone());
            }
        }
    }
    if !zones.values().any(ZoneRef::is_managed) {
        return; // the common case without DNS management: nothing to compute
    }
    let wanted = desired
        .envs
        .values()
        .filter_map(|d| {
            let host = desired.hosts.get(&d.host)?;
            Some(WantedEnv {
                key: &d.key,
                hostname: &d.hostname,
                address: &host.address,
            })
        })
        .collect();
    let input = Input {
        zones: &zones,
        wanted,
        removed: prune.iter().collect(),
        ensure: desired.zones.keys().map(String::as_str).collect(),
    };
    plan_zones(&input, &observed.zones, plan);
}

/// The DNS steps of `codeb delete`: the records of `keys`, in the recorded Zones. No zone is
/// created.
pub fn plan_delete(keys: &[EnvKey], observed: &Observed, recorded: &Recorded, plan: &mut Plan) {
    let input = Input {
        zones: &recorded.zones,
        wanted: Vec::new(),
        removed: keys.iter().collect(),
        ensure: BTreeSet::new(),
    };
    plan_zones(&input, &observed.zones, plan);
}

/// The managed Zones holding a hostname (or a preview hostname) of these environments: the zones
/// a command has to connect to.
pub fn zones_for<'a>(
    hostnames: impl IntoIterator<Item = &'a str>,
    zones: &'a BTreeMap<String, ZoneRef>,
) -> BTreeMap<String, ZoneRef> {
    let mut out = BTreeMap::new();
    for h in hostnames {
        for name in names(h) {
            if let Some(z) = zone_of(&name, zones).filter(|z| z.is_managed()) {
                out.insert(z.name.clone(), z.clone());
            }
        }
    }
    out
}

/// Drops the `Forget` step of each removed environment whose DNS records could not be planned
/// (a zone holding its names was not observed): forgetting it would orphan those records, which a
/// later `delete` or `--prune` removes once the zone answers. Its containers and routes still go.
pub fn keep_unplanned_records(
    plan: &mut Plan,
    zones: &BTreeMap<String, ZoneRef>,
    recorded: &Recorded,
    observed: &Observed,
) {
    let unplanned = |key: &EnvKey| {
        let Some(rec) = recorded.envs.get(key) else {
            return false;
        };
        names(&rec.hostname).iter().any(|name| {
            zone_of(name, zones).is_some_and(|z| {
                z.is_managed()
                    && !matches!(
                        observed.zones.get(&z.name),
                        Some(ZoneObservation::Present(_) | ZoneObservation::Missing)
                    )
            })
        })
    };
    plan.steps
        .retain(|s| !(matches!(s.action, Action::Forget) && s.key.as_ref().is_some_and(unplanned)));
}

/// A hostname and its two preview hostnames.
fn names(hostname: &str) -> [String; 3] {
    [
        hostname.to_string(),
        preview_hostname(hostname, Slot::Blue),
        preview_hostname(hostname, Slot::Green),
    ]
}

/// A zone in scope, with its observed rrsets and the rrsets wanted in it.
struct ZonePlan<'a> {
    zone: &'a ZoneRef,
    create: bool,
    rrsets: &'a [Rrset],
    wants: Vec<Want<'a>>,
}

fn plan_zones(input: &Input<'_>, observed: &BTreeMap<String, ZoneObservation>, plan: &mut Plan) {
    let mut wants = wants_by_zone(input, plan);
    let mut zones: Vec<ZonePlan<'_>> = Vec::new();
    for zone in input.zones.values().filter(|z| z.is_managed()) {
        let wanted = wants.remove(zone.name.as_str()).unwrap_or_default();
        let ensure = input.ensure.contains(zone.name.as_str());
        if !ensure && wanted.is_empty() && !observed.contains_key(zone.name.as_str()) {
            continue;
        }
        let (create, rrsets): (bool, &[Rrset]) = match observed.get(&zone.name) {
            Some(ZoneObservation::Present(z)) => (false, &z.rrsets),
            Some(ZoneObservation::Missing) if ensure => (true, &[]),
            Some(ZoneObservation::Missing) => continue, // nothing there to delete
            Some(ZoneObservation::Unreachable { error }) => {
                plan.notes.push(unreachable(zone, error));
                continue;
            }
            None => {
                plan.notes.push(unreachable(zone, "not observed"));
                continue;
            }
        };
        zones.push(ZonePlan {
            zone,
            create,
            rrsets,
            wants: wanted,
        });
    }
    // Conflicts first, across every zone: an environment in conflict anywhere gets no write
    // anywhere, so its records never end up half written.
    let known: FxHashSet<&EnvKey> = input.wanted.iter().map(|w| w.key).collect();
    let conflicted = conflicts(&zones, &known, &input.removed, plan);
    for z in &zones {
        if z.create {
            plan.steps.push(step(Action::EnsureZone {
                zone: z.zone.name.clone(),
                api: z
                    .zone
                    .powerdns
                    .as_ref()
                    .map(|p| p.api.clone())
                    .unwrap_or_default(),
            }));
        }
        let changes = diff(z, &conflicted, &known, &input.removed);
        if !changes.is_empty() {
            plan.steps.push(step(Action::DnsPatch {
                zone: z.zone.name.clone(),
                changes,
            }));
        }
    }
}

fn unreachable(zone: &ZoneRef, error: &str) -> Note {
    Note::ZoneUnreachable {
        zone: zone.name.clone(),
        error: error.to_string(),
    }
}

fn step(action: Action) -> Step {
    Step {
        host: String::new(),
        key: None,
        generation: None,
        action,
    }
}

/// The rrsets each managed zone should hold, by zone.
fn wants_by_zone<'a>(input: &Input<'a>, plan: &mut Plan) -> BTreeMap<&'a str, Vec<Want<'a>>> {
    let mut out: BTreeMap<&'a str, Vec<Want<'a>>> = BTreeMap::new();
    for w in &input.wanted {
        // Host addresses are validated IPs; an unparsable one gets no record rather than a bad one.
        let Ok(ip) = w.address.parse::<IpAddr>() else {
            continue;
        };
        let rtype = if ip.is_ipv4() { "A" } else { "AAAA" };
        // PowerDNS answers addresses in this same form (RFC 5952 for IPv6), so that a converged
        // record compares equal.
        let content = ip.to_string();
        if zone_of(w.hostname, input.zones).is_none() {
            plan.notes.push(Note::NoZone {
                key: w.key.clone(),
                hostname: w.hostname.to_string(),
            });
        }
        for name in names(w.hostname) {
            let Some(zone) = zone_of(&name, input.zones).filter(|z| z.is_managed()) else {
                continue;
            };
            out.entry(zone.name.as_str()).or_default().push(Want {
                key: w.key,
                name: canonical(&name),
                rtype,
                content: content.clone(),
            });
        }
    }
    out
}

/// Observed rrsets by name.
fn by_name(rrsets: &[Rrset]) -> FxHashMap<&str, Vec<&Rrset>> {
    let mut out: FxHashMap<&str, Vec<&Rrset>> = FxHashMap::default();
    for r in rrsets {
        out.entry(r.name.as_str()).or_default().push(r);
    }
    out
}

/// Notes every wanted name that holds a foreign rrset, or codeb's rrset of an environment this run
/// neither wants nor removes (another state directory's, or a project dropped from the manifests
/// without `--prune`: taking it over would make two owners fight over it), or that another
/// environment wants too; returns the environments in conflict.
fn conflicts<'a>(
    zones: &[ZonePlan<'a>],
    known: &FxHashSet<&EnvKey>,
    removed: &BTreeSet<&EnvKey>,
    plan: &mut Plan,
) -> FxHashSet<&'a EnvKey> {
    let held = |r: &Rrset| match r.mark.as_deref() {
        None => Some(format!(
            "a foreign {} record ({})",
            r.rtype,
            r.records.join(" ")
        )),
        Some(m) => parse_owner(m)
            .filter(|o| !known.contains(o) && !removed.contains(o))
            .map(|o| {
                format!(
                    "codeb's {} record for {o}, which these manifests do not declare",
                    r.rtype
                )
            }),
    };
    let mut out = FxHashSet::default();
    let mut claimed: FxHashMap<&str, &EnvKey> = FxHashMap::default();
    for z in zones {
        let index = by_name(z.rrsets);
        for w in &z.wants {
            let holder = match claimed.get(w.name.as_str()) {
                Some(other) if *other != w.key => Some(format!("the name {other} wants too")),
                _ => index
                    .get(w.name.as_str())
                    .and_then(|rs| rs.iter().find_map(|r| held(r))),
            };
            claimed.entry(w.name.as_str()).or_insert(w.key);
            if let Some(holder) = holder {
                out.insert(w.key);
                plan.notes.push(Note::DnsConflict {
                    key: w.key.clone(),
                    zone: z.zone.name.clone(),
                    name: w.name.trim_end_matches('.').to_string(),
                    holder,
                });
            }
        }
    }
    out
}

/// The changes that bring one zone's codeb rrsets to what is wanted.
fn diff(
    z: &ZonePlan<'_>,
    conflicted: &FxHashSet<&EnvKey>,
    known: &FxHashSet<&EnvKey>,
    removed: &BTreeSet<&EnvKey>,
) -> Vec<DnsChange> {
    let index = by_name(z.rrsets);
    let mut out = Vec::new();
    let mut wanted: FxHashSet<(&str, &str)> = FxHashSet::default();
    for w in &z.wants {
        // Even a conflicted environment's names are kept from deletion below: its records stay
        // as they are until the conflict is resolved.
        if !wanted.insert((w.name.as_str(), w.rtype)) || conflicted.contains(w.key) {
            continue;
        }
        let mark = owner_mark(w.key);
        let was = index
            .get(w.name.as_str())
            .and_then(|rs| rs.iter().find(|r| r.rtype == w.rtype))
            .copied();
        let converged = was.is_some_and(|r| {
            r.ttl == z.zone.ttl
                && r.records.len() == 1
                && r.records[0] == w.content
                && r.mark.as_deref() == Some(mark.as_str())
        });
        if !converged {
            out.push(DnsChange {
                change: RrsetChange::Replace(Rrset {
                    name: w.name.clone(),
                    rtype: w.rtype.to_string(),
                    ttl: z.zone.ttl,
                    records: vec![w.content.clone()],
                    mark: Some(mark),
                }),
                was: was.cloned(),
            });
        }
    }
    let replaced: FxHashSet<(&str, &str)> = out
        .iter()
        .map(|c| (c.change.name(), c.change.rtype()))
        .collect();
    let mut deletes = Vec::new();
    for r in z.rrsets {
        let id = (r.name.as_str(), r.rtype.as_str());
        let Some(owner) = r.mark.as_deref().and_then(parse_owner) else {
            continue; // foreign, or codeb's without a readable owner: not ours to delete
        };
        if replaced.contains(&id) {
            continue; // overwritten by this same write
        }
        // A removed environment's rrset goes even at a name a conflicted environment wants; a
        // wanted rrset of a known environment stays; any other of a known environment is stale.
        let stale = !wanted.contains(&id) && known.contains(&owner) && !conflicted.contains(&owner);
        if removed.contains(&owner) || stale {
            deletes.push(DnsChange {
                change: RrsetChange::Delete {
                    name: r.name.clone(),
                    rtype: r.rtype.clone(),
                },
                was: Some(r.clone()),
            });
        }
    }
    out.extend(deletes);
    out
}

/// Checks, right before a zone's write, that the write still touches codeb's rrsets only: no name
/// it writes holds a foreign rrset, and no rrset it deletes became foreign. PowerDNS has no
/// conditional write, so this re-read narrows the window in which a record created by hand since
/// the plan could be overwritten to one round trip.
///
/// # Errors
/// What changed, for the message.
pub fn recheck(changes: &[DnsChange], zone: Option<&ObservedZone>) -> Result<(), String> {
    let Some(zone) = zone else {
        return Err("the zone no longer exists".into());
    };
    let index = by_name(&zone.rrsets);
    for c in changes {
        let (name, rtype) = (c.change.name(), c.change.rtype());
        let foreign = index.get(name).and_then(|rs| {
            rs.iter().find(|r| {
                r.mark.is_none()
                    && (matches!(c.change, RrsetChange::Replace(_)) || r.rtype == rtype)
            })
        });
        if let Some(foreign) = foreign {
            return Err(format!(
                "{} now holds a foreign {} record",
                name.trim_end_matches('.'),
                foreign.rtype
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
