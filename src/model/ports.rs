//! Port allocation: the original platform's preferred base, moved to a free pair when taken.
//!
//! Pure: the caller passes every port already taken (recorded allocations and ports observed in use).

/// A set of TCP ports as a 64 Kibit bitmap: planning 10,000 environments marks 30,000 ports taken,
/// which a tree set made a measurable share of the plan's time.
#[derive(Clone)]
pub struct PortSet(Box<[u64; 1024]>);

impl Default for PortSet {
    fn default() -> Self {
        PortSet(Box::new([0; 1024]))
    }
}

impl std::fmt::Debug for PortSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set()
            .entries((0..=u16::MAX).filter(|p| self.contains(*p)))
            .finish()
    }
}

impl PortSet {
    pub fn insert(&mut self, port: u16) {
        self.0[(port >> 6) as usize] |= 1 << (port & 63);
    }

    pub fn contains(&self, port: u16) -> bool {
        self.0[(port >> 6) as usize] & (1 << (port & 63)) != 0
    }
}

impl FromIterator<u16> for PortSet {
    fn from_iter<I: IntoIterator<Item = u16>>(iter: I) -> Self {
        let mut s = PortSet::default();
        iter.into_iter().for_each(|p| s.insert(p));
        s
    }
}

impl Extend<u16> for PortSet {
    fn extend<I: IntoIterator<Item = u16>>(&mut self, iter: I) {
        iter.into_iter().for_each(|p| self.insert(p));
    }
}

/// The port range of an environment: production 4000-4499, staging 4500-4999, others 5000-5499.
pub fn range(env: &str) -> (u16, u16) {
    match env {
        "production" => (4000, 4499),
        "staging" => (4500, 4999),
        _ => (5000, 5499),
    }
}

/// The original platform's preferred base: the sum of the name's character codes modulo 500,
/// clamped so that green (base + 1) stays in the range.
pub fn preferred_base(project: &str, env: &str) -> u16 {
    let (lo, hi) = range(env);
    let sum: u32 = project.chars().map(|c| c as u32).sum();
    let offset = (sum % 500) as u16;
    (lo + offset).min(hi - 1)
}

/// The base of a free pair (base, base + 1), starting at the preferred one and moving up (wrapping
/// within the range). `None` when the range is full.
pub fn allocate(project: &str, env: &str, taken: &PortSet) -> Option<u16> {
    let (lo, hi) = range(env);
    let start = preferred_base(project, env);
    let span = hi - lo; // candidate bases lo..=hi-1
    (0..span)
        .map(|i| lo + (start - lo + i) % span)
        .find(|b| !taken.contains(*b) && !taken.contains(b + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preferred_base_follows_the_original_rule() {
        // "myapp": 109+121+97+112+112 = 551 → 51
        assert_eq!(preferred_base("myapp", "production"), 4051);
        assert_eq!(preferred_base("myapp", "staging"), 4551);
        assert_eq!(preferred_base("myapp", "preview"), 5051);
    }

    #[test]
    fn a_taken_pair_moves_to_the_next_free_one() {
        let taken: PortSet = [4051, 4052].into_iter().collect();
        assert_eq!(allocate("myapp", "production", &taken), Some(4053));
        let half: PortSet = [4052].into_iter().collect();
        assert_eq!(allocate("myapp", "production", &half), Some(4053));
    }

    #[test]
    fn green_never_leaves_the_range() {
        for name in ["a", "zz", "abcdefgh", "x-y-z"] {
            for env in ["production", "staging", "qa"] {
                let (lo, hi) = range(env);
                let b = allocate(name, env, &PortSet::default()).unwrap();
                assert!(b >= lo && b < hi, "{name}/{env}: {b}");
            }
        }
    }

    #[test]
    fn a_full_range_allocates_nothing() {
        let taken: PortSet = (4000..=4499).collect();
        assert_eq!(allocate("x", "production", &taken), None);
    }
}
