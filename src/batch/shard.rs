//! `--shard I/N`: a deterministic slice of a job list, so cluster schedulers can split one file.
//!
//! [`Shard`] parses the spec and answers [`Shard::owns`] for an entry's position; entry `k` (0-based,
//! counted after sweep expansion) belongs to shard `k mod N + 1`, which keeps shards within one job.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("shard {given:?}: {reason} (write I/N with 1 ≤ I ≤ N, e.g. 2/8)")]
pub struct ShardError {
    pub given: String,
    pub reason: &'static str,
}

/// Shard `index` of `count`, both 1-based as users write them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl Shard {
    /// The whole file.
    pub const ALL: Shard = Shard { index: 1, count: 1 };

    /// Round-robin rather than contiguous blocks: sweeps put similar (equally slow) jobs next to
    /// each other, and interleaving spreads them evenly over the shards.
    pub fn owns(self, position: usize) -> bool {
        position as u64 % u64::from(self.count) == u64::from(self.index - 1)
    }

    pub fn is_all(self) -> bool {
        self.count == 1
    }
}

impl FromStr for Shard {
    type Err = ShardError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| ShardError {
            given: s.to_string(),
            reason,
        };
        let (i, n) = s.trim().split_once('/').ok_or_else(|| err("no `/`"))?;
        let i: u32 = i
            .trim()
            .parse()
            .map_err(|_| err("I is not a whole number"))?;
        let n: u32 = n
            .trim()
            .parse()
            .map_err(|_| err("N is not a whole number"))?;
        if n == 0 {
            return Err(err("N must be at least 1"));
        }
        if i == 0 {
            return Err(err("I counts from 1"));
        }
        if i > n {
            return Err(err("I is larger than N"));
        }
        Ok(Shard { index: i, count: n })
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_position_belongs_to_exactly_one_shard() {
        for n in 1..=7u32 {
            let shards: Vec<Shard> = (1..=n)
                .map(|i| format!("{i}/{n}").parse().unwrap())
                .collect();
            let mut sizes = vec![0usize; n as usize];
            for pos in 0..50 {
                let owners: Vec<usize> = (0..n as usize).filter(|&k| shards[k].owns(pos)).collect();
                assert_eq!(owners.len(), 1, "position {pos} of {n} shards: {owners:?}");
                sizes[owners[0]] += 1;
            }
            let (lo, hi) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
            assert!(hi - lo <= 1, "{n} shards are uneven: {sizes:?}");
        }
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        for (spec, why) in [
            ("0/3", "counts from 1"),
            ("4/3", "larger than N"),
            ("1/0", "at least 1"),
            ("a/3", "I is not"),
            ("1/b", "N is not"),
            ("3", "no `/`"),
            ("-1/3", "I is not"),
        ] {
            let e = spec.parse::<Shard>().unwrap_err().to_string();
            assert!(e.contains(why) && e.contains(spec), "{spec}: {e}");
        }
        assert_eq!(
            " 2 / 8 ".parse::<Shard>().unwrap(),
            Shard { index: 2, count: 8 }
        );
    }
}
