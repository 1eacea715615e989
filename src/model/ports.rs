//! Port allocation: the original platform's preferred base, moved to a free pair when taken.
//!
//! Pure: the caller passes every port already taken (recorded allocations and ports observed in use).

use std::collections::BTreeSet;

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
pub fn allocate(project: &str, env: &str, taken: &BTreeSet<u16>) -> Option<u16> {
    let (lo, hi) = range(env);
    let start = preferred_base(project, env);
    let span = hi - lo; // candidate bases lo..=hi-1
    (0..span)
        .map(|i| lo + (start - lo + i) % span)
        .find(|b| !taken.contains(b) && !taken.contains(&(b + 1)))
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
        let taken: BTreeSet<u16> = [4051, 4052].into();
        assert_eq!(allocate("myapp", "production", &taken), Some(4053));
        let half: BTreeSet<u16> = [4052].into();
        assert_eq!(allocate("myapp", "production", &half), Some(4053));
    }

    #[test]
    fn green_never_leaves_the_range() {
        for name in ["a", "zz", "abcdefgh", "x-y-z"] {
            for env in ["production", "staging", "qa"] {
                let (lo, hi) = range(env);
                let b = allocate(name, env, &BTreeSet::new()).unwrap();
                assert!(b >= lo && b < hi, "{name}/{env}: {b}");
            }
        }
    }

    #[test]
    fn a_full_range_allocates_nothing() {
        let taken: BTreeSet<u16> = (4000..=4499).collect();
        assert_eq!(allocate("x", "production", &taken), None);
    }
}
