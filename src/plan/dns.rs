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
use crate::model::dns::{canonical, owner_mark, owner_of, zone_of, ZoneRef, OWNER_PREFIX};
use crate::model::observed::ObservedZone;
use crate::model::writes::{Rrset, RrsetChange};
use crate::model::{preview_hostname, Desired, DesiredEnv, EnvKey, Recorded, Slot};

/// What one zone looked like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ZoneObservation {
    Present(ObservedZone),
    /// The server answered, and has no such zone.
    Missing,
    /// The server could not be read; the message names the endpoint. `retryable`: reading it
    /// again may succeed with nothing else changed (see `backend::Error::retryable`); false for a
    /// refused key, for instance.
    Unreachable {
        error: String,
        retryable: bool,
    },
}

/// One rrset change of a zone's write, with what it replaces (for display).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsChange {
    pub change: RrsetChange,
    /// The rrset as observed (`None`: the change creates it).
    pub was: Option<Rrset>,
}

/// An environment's wish: its names, with this record.
struct WantedEnv<'a> {
    key: &'a EnvKey,
    hostname: &'a str,
    /// `A` or `AAAA`.
    rtype: &'static str,
    /// The Host address in the form PowerDNS answers with (RFC 5952 for IPv6), so that a
    /// converged record compares equal.
    content: &'a str,
    /// Lowered during a migration (see [`lowered_ttl`]).
    lowered: bool,
}

/// One rrset an environment calls for.
struct Want<'a> {
    key: &'a EnvKey,
    /// Canonical.
    name: String,
    rtype: &'static str,
    content: &'a str,
    lowered: bool,
}

/// The TTL of a want in a zone whose TTL is `ttl`.
fn want_ttl(w: &Want<'_>, ttl: u32) -> u32 {
    if w.lowered {
        ttl.min(super::migrate::MIGRATION_TTL)
    } else {
        ttl
    }
}

/// Which host's address an environment's records name, and whether their TTL is lowered: the
/// recorded host until a migration's `Dns` phase, then the target; lowered from the migration's
/// start until its grace period.
fn serving_host<'a>(d: &'a DesiredEnv, recorded: &'a Recorded) -> (&'a str, bool) {
    use crate::model::MigrationPhase;
    match recorded.envs.get(&d.key) {
        None => (&d.host, false),
        Some(r) => match r.migration.as_deref() {
            None => (&r.host, false),
            Some(m) if m.phase < MigrationPhase::Dns => (&m.source.host, true),
            Some(m) => (&r.host, m.phase < MigrationPhase::Grace),
        },
    }
}

/// An environment as `(project, environment)`, borrowed: how ownership marks are compared without
/// allocating (planning 10,000 converged environments reads 30,000 marks).
type Owner<'a> = (&'a str, &'a str);

fn owner(key: &EnvKey) -> Owner<'_> {
    (key.project.as_str(), key.env.as_str())
}

/// How many rrsets of the observed zones carry `key`'s mark (for an adoption's line).
pub fn marked_rrsets(key: &EnvKey, observed: &Observed) -> usize {
    let mine = owner(key);
    observed
        .zones
        .values()
        .filter_map(|z| match z {
            ZoneObservation::Present(z) => Some(z),
            _ => None,
        })
        .flat_map(|z| &z.rrsets)
        .filter(|r| r.mark.as_deref().and_then(owner_of) == Some(mine))
        .count()
}

/// Everything DNS planning reads.
struct Input<'a> {
    zones: &'a BTreeMap<String, ZoneRef>,
    wanted: Vec<WantedEnv<'a>>,
    /// Environments whose records go (deleted or pruned).
    removed: FxHashSet<Owner<'a>>,
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
    // Per host, once: Host addresses are validated IPs; an unparsable one gets no record rather
    // than a bad one.
    // Recorded Hosts too: a migration's source may no longer be declared.
    let records: BTreeMap<&str, (&'static str, String)> = recorded
        .hosts
        .iter()
        .chain(desired.hosts.iter())
        .filter_map(|(name, h)| {
            let ip = h.address.parse::<IpAddr>().ok()?;
            let rtype = if ip.is_ipv4() { "A" } else { "AAAA" };
            Some((name.as_str(), (rtype, ip.to_string())))
        })
        .collect();
    let wanted = desired
        .envs
        .values()
        .filter_map(|d| {
            let (host, lowered) = serving_host(d, recorded);
            let (rtype, content) = records.get(host)?;
            Some(WantedEnv {
                key: &d.key,
                hostname: &d.hostname,
                rtype,
                content,
                lowered,
            })
        })
        .collect();
    let input = Input {
        zones: &zones,
        wanted,
        removed: prune.iter().map(owner).collect(),
        ensure: desired.zones.keys().map(String::as_str).collect(),
    };
    plan_zones(&input, &observed.zones, plan);
}

/// The steps and notes of one managed zone, exactly as [`plan_apply`] plans them for the whole
/// manifests: what `codeb watch` runs per zone. Every desired environment counts, not only those
/// with a name in the zone: one whose hostname moved elsewhere has a stale record here, and one
/// that is not known at all would leave its records alone.
///
/// # Assumptions
/// `observed` holds `zone` and the other zones of [`zone_scope`]: conflicts are found across the
/// zones observed, so an environment in conflict in one of them gets no write in this one either.
/// Notes about other zones are left to those zones' plans.
pub fn plan_zone(
    zone: &str,
    desired: &Desired,
    observed: &Observed,
    recorded: &Recorded,
    prune: &[EnvKey],
) -> Plan {
    let mut plan = Plan::default();
    plan_apply(desired, observed, recorded, prune, &mut plan);
    plan.steps.retain(|s| s.action.zone() == Some(zone));
    plan.notes.retain(|n| match n {
        Note::DnsConflict { zone: z, .. } | Note::ZoneUnreachable { zone: z, .. } => z == zone,
        _ => false,
    });
    plan
}

/// The managed zones whose observation [`plan_zone`] needs for `zone`: the zone itself, and the
/// zones holding any name of an environment that has a name in it or owns an rrset `observed` in
/// it (whether that environment is in conflict is decided across all its zones). Usually `zone`
/// alone: another zone joins only when one environment's names span two Zones.
pub fn zone_scope(
    zone: &str,
    desired: &Desired,
    observed: Option<&ObservedZone>,
) -> BTreeSet<String> {
    let owners: FxHashSet<Owner<'_>> = observed
        .into_iter()
        .flat_map(|z| &z.rrsets)
        .filter_map(|r| r.mark.as_deref().and_then(owner_of))
        .collect();
    let mut out = BTreeSet::from([zone.to_string()]);
    for d in desired.envs.values() {
        let theirs = zones_for([d.hostname.as_str()], &desired.zones);
        if theirs.contains_key(zone) || owners.contains(&owner(&d.key)) {
            out.extend(theirs.into_keys());
        }
    }
    out
}

/// The managed zones of `new` whose plan may differ from their plan under `old`: all of them when
/// a Zone or a Host address changed; otherwise those holding an old or a new name of an
/// environment that appeared, went, or changed its host or hostname. A new image changes no zone.
pub fn zones_changed(old: &Desired, new: &Desired) -> BTreeSet<String> {
    let addresses = |d: &Desired| -> BTreeMap<String, String> {
        d.hosts
            .iter()
            .map(|(name, h)| (name.clone(), h.address.clone()))
            .collect()
    };
    if old.zones != new.zones || addresses(old) != addresses(new) {
        return new
            .zones
            .values()
            .filter(|z| z.is_managed())
            .map(|z| z.name.clone())
            .collect();
    }
    fn dns(e: Option<&DesiredEnv>) -> Option<(&str, &str)> {
        e.map(|e| (e.host.as_str(), e.hostname.as_str()))
    }
    let mut out = BTreeSet::new();
    for key in old.envs.keys().chain(new.envs.keys()) {
        let (was, now) = (old.envs.get(key), new.envs.get(key));
        if dns(was) == dns(now) {
            continue;
        }
        let hostnames = [was, now]
            .into_iter()
            .flatten()
            .map(|e| e.hostname.as_str());
        out.extend(zones_for(hostnames, &new.zones).into_keys());
    }
    out
}

/// The DNS steps of `codeb delete`: the records of `keys`, in the recorded Zones. No zone is
/// created.
pub fn plan_delete(keys: &[EnvKey], observed: &Observed, recorded: &Recorded, plan: &mut Plan) {
    let input = Input {
        zones: &recorded.zones,
        wanted: Vec::new(),
        removed: keys.iter().map(owner).collect(),
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

/// A zone in scope: its observed rrsets and the rrsets wanted in it, gathered by name in one map,
/// so that planning touches each rrset and each want with one hash lookup (planning 10,000
/// converged environments compares 30,000 rrsets; separate maps per question cost three times as
/// much, in cache misses).
struct ZonePlan<'a> {
    zone: &'a ZoneRef,
    create: bool,
    wants: &'a [Want<'a>],
    names: FxHashMap<&'a str, Name<'a>>,
}

/// Everything at one name of a zone.
#[derive(Default)]
struct Name<'a> {
    /// The observed rrsets at the name; most names hold one, which then costs no allocation.
    first: Option<&'a Rrset>,
    more: Vec<&'a Rrset>,
    /// The first want of the name (an index into the zone's wants).
    claim: Option<usize>,
    /// Wants of the same name by other environments (refused).
    rivals: Vec<usize>,
}

impl<'a> Name<'a> {
    fn rrsets(&self) -> impl Iterator<Item = &'a Rrset> + '_ {
        self.first.into_iter().chain(self.more.iter().copied())
    }
}

impl<'a> ZonePlan<'a> {
    fn new(zone: &'a ZoneRef, create: bool, observed: &'a [Rrset], wants: &'a [Want<'a>]) -> Self {
        let mut names: FxHashMap<&'a str, Name<'a>> = FxHashMap::with_capacity_and_hasher(
            observed.len().max(wants.len()),
            Default::default(),
        );
        for r in observed {
            let n = names.entry(r.name.as_str()).or_default();
            match n.first {
                None => n.first = Some(r),
                Some(_) => n.more.push(r),
            }
        }
        for (i, w) in wants.iter().enumerate() {
            let n = names.entry(w.name.as_str()).or_default();
            match n.claim {
                None => n.claim = Some(i),
                Some(c) if wants[c].key == w.key => {} // cannot happen: one want per name and key
                Some(_) => n.rivals.push(i),
            }
        }
        ZonePlan {
            zone,
            create,
            wants,
            names,
        }
    }
}

/// Whose rrsets may go or be taken over: the environments this run wants, and those it removes.
struct Owners<'a> {
    known: FxHashSet<Owner<'a>>,
    removed: &'a FxHashSet<Owner<'a>>,
}

impl Owners<'_> {
    /// True when codeb may not take `r` over for `claimant`: a foreign rrset, or codeb's of an
    /// environment this run neither wants nor removes (another state directory's, or a project
    /// dropped from the manifests without `--prune`: taking it over would make two owners fight).
    fn holds(&self, r: &Rrset, claimant: &EnvKey) -> bool {
        match r.mark.as_deref() {
            None => true,
            Some(m) if is_mark_of(m, claimant) => false,
            Some(m) => {
                owner_of(m).is_some_and(|o| !self.known.contains(&o) && !self.removed.contains(&o))
            }
        }
    }
}

fn plan_zones(input: &Input<'_>, observed: &BTreeMap<String, ZoneObservation>, plan: &mut Plan) {
    let wants = wants_by_zone(input, plan);
    let owners = Owners {
        known: input.wanted.iter().map(|w| owner(w.key)).collect(),
        removed: &input.removed,
    };
    let mut zones: Vec<ZonePlan<'_>> = Vec::new();
    for zone in input.zones.values().filter(|z| z.is_managed()) {
        let wanted = wants.get(zone.name.as_str()).map_or(&[][..], Vec::as_slice);
        let ensure = input.ensure.contains(zone.name.as_str());
        if !ensure && wanted.is_empty() && !observed.contains_key(zone.name.as_str()) {
            continue;
        }
        let (create, rrsets): (bool, &[Rrset]) = match observed.get(&zone.name) {
            Some(ZoneObservation::Present(z)) => (false, &z.rrsets),
            Some(ZoneObservation::Missing) if ensure => (true, &[]),
            Some(ZoneObservation::Missing) => continue, // nothing there to delete
            Some(ZoneObservation::Unreachable { error, .. }) => {
                plan.notes.push(unreachable(zone, error));
                continue;
            }
            None => {
                plan.notes.push(unreachable(zone, "not observed"));
                continue;
            }
        };
        zones.push(ZonePlan::new(zone, create, rrsets, wanted));
    }
    // Conflicts first, across every zone: an environment in conflict anywhere gets no write
    // anywhere, so its records never end up half written.
    let conflicted = conflicts(&zones, &owners, plan);
    for z in &zones {
        if z.create {
            let api = z.zone.powerdns.as_ref().map(|p| p.api.clone());
            plan.steps.push(step(Action::EnsureZone {
                zone: z.zone.name.clone(),
                api: api.unwrap_or_default(),
            }));
        }
        let changes = diff(z, &conflicted, &owners);
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
        let zone = zone_of(w.hostname, input.zones);
        if zone.is_none() {
            plan.notes.push(Note::NoZone {
                key: w.key.clone(),
                hostname: w.hostname.to_string(),
            });
        }
        let mut push = |zone: Option<&'a ZoneRef>, name: String| {
            if let Some(z) = zone.filter(|z| z.is_managed()) {
                out.entry(z.name.as_str()).or_default().push(Want {
                    key: w.key,
                    name,
                    rtype: w.rtype,
                    content: w.content,
                    lowered: w.lowered,
                });
            }
        };
        push(zone, canonical(w.hostname));
        for slot in Slot::ALL {
            let preview = format!("{slot}.{}.", w.hostname);
            // A preview name is in the hostname's zone, unless a Zone is declared at it.
            let own = input.zones.get(&preview[..preview.len() - 1]);
            push(own.or(zone), preview);
        }
    }
    out
}

/// `mark == owner_mark(key)`, without allocating.
fn is_mark_of(mark: &str, key: &EnvKey) -> bool {
    mark.strip_prefix(OWNER_PREFIX)
        .and_then(|r| r.strip_prefix(key.project.as_str()))
        .and_then(|r| r.strip_prefix('/'))
        == Some(key.env.as_str())
}

/// Observed rrsets by name.
fn by_name(rrsets: &[Rrset]) -> FxHashMap<&str, Vec<&Rrset>> {
    let mut out: FxHashMap<&str, Vec<&Rrset>> = FxHashMap::default();
    for r in rrsets {
        out.entry(r.name.as_str()).or_default().push(r);
    }
    out
}

/// Notes every wanted name held by an rrset codeb may not take over (see [`Owners::holds`]), or
/// wanted by two environments (the second is refused); returns the environments in conflict.
/// Notes come in the order of the wants (zone, then environment), whatever the map's order.
fn conflicts<'a>(
    zones: &[ZonePlan<'a>],
    owners: &Owners<'_>,
    plan: &mut Plan,
) -> FxHashSet<Owner<'a>> {
    let mut out = FxHashSet::default();
    for z in zones {
        let mut found: Vec<(usize, String)> = Vec::new();
        for n in z.names.values() {
            let Some(c) = n.claim else { continue };
            let claimant = z.wants[c].key;
            for &i in &n.rivals {
                found.push((i, format!("the record codeb writes for {claimant}")));
            }
            if let Some(r) = n.rrsets().find(|r| owners.holds(r, claimant)) {
                found.push((c, describe(r)));
            }
        }
        found.sort_by_key(|(i, _)| *i);
        for (i, holder) in found {
            let w = &z.wants[i];
            out.insert(owner(w.key));
            plan.notes.push(Note::DnsConflict {
                key: w.key.clone(),
                zone: z.zone.name.clone(),
                name: w.name.trim_end_matches('.').to_string(),
                holder,
            });
        }
    }
    out
}

/// An rrset codeb may not take over, as a conflict note names it.
fn describe(r: &Rrset) -> String {
    match r.mark.as_deref().and_then(owner_of) {
        Some((p, e)) => format!(
            "codeb's {} record for {p}/{e}, which these manifests do not declare",
            r.rtype
        ),
        None => format!("a foreign {} record ({})", r.rtype, r.records.join(" ")),
    }
}

/// The changes that bring one zone's codeb rrsets to what is wanted: writes in the order of the
/// wants, then deletions by name.
fn diff(
    z: &ZonePlan<'_>,
    conflicted: &FxHashSet<Owner<'_>>,
    owners: &Owners<'_>,
) -> Vec<DnsChange> {
    let mut writes: Vec<(usize, DnsChange)> = Vec::new();
    let mut deletes: Vec<DnsChange> = Vec::new();
    for n in z.names.values() {
        let claim = n.claim.map(|c| (c, &z.wants[c]));
        // A conflicted environment's records stay as they are until the conflict is resolved.
        let writing = claim.filter(|(_, w)| !conflicted.contains(&owner(w.key)));
        if let Some((c, w)) = writing {
            let was = n.rrsets().find(|r| r.rtype == w.rtype);
            let ttl = want_ttl(w, z.zone.ttl);
            if !was.is_some_and(|r| converged(r, w, ttl)) {
                writes.push((c, replace(w, ttl, was)));
            }
        }
        for r in n.rrsets() {
            let claimed = claim.is_some_and(|(_, w)| w.rtype == r.rtype);
            if claimed && writing.is_some() {
                continue; // written or converged above
            }
            let Some(o) = r.mark.as_deref().and_then(owner_of) else {
                continue; // foreign, or codeb's without a readable owner: not ours to delete
            };
            // A removed environment's rrset goes, even where a conflicted environment wants the
            // name; otherwise a known environment's rrset its environment no longer calls for is
            // stale, unless that environment is in conflict (its records stay as they are).
            let stale = !claimed && owners.known.contains(&o) && !conflicted.contains(&o);
            if owners.removed.contains(&o) || stale {
                deletes.push(DnsChange {
                    change: RrsetChange::Delete {
                        name: r.name.clone(),
                        rtype: r.rtype.clone(),
                    },
                    was: Some(r.clone()),
                });
            }
        }
    }
    writes.sort_by_key(|(c, _)| *c);
    deletes.sort_by(|a, b| {
        (a.change.name(), a.change.rtype()).cmp(&(b.change.name(), b.change.rtype()))
    });
    writes.into_iter().map(|(_, c)| c).chain(deletes).collect()
}

/// True when `r` is exactly what `w` calls for.
fn converged(r: &Rrset, w: &Want<'_>, ttl: u32) -> bool {
    r.ttl == ttl
        && r.records.len() == 1
        && r.records[0] == w.content
        && r.mark.as_deref().is_some_and(|m| is_mark_of(m, w.key))
}

fn replace(w: &Want<'_>, ttl: u32, was: Option<&Rrset>) -> DnsChange {
    DnsChange {
        change: RrsetChange::Replace(Rrset {
            name: w.name.clone(),
            rtype: w.rtype.to_string(),
            ttl,
            records: vec![w.content.to_string()],
            mark: Some(owner_mark(w.key)),
        }),
        was: was.cloned(),
    }
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
