//! [`SeedSequence`]: numpy's `np.random.SeedSequence(entropy, spawn_key=…, pool_size=…)` and its
//! `generate_state(n)` (uint32 words), which torchsde uses to seed each node of its Brownian tree.
//! Entropy and spawn-key integers are split into little-endian 32-bit words as numpy does.

const INIT_A: u32 = 0x43b0_d7e5;
const MULT_A: u32 = 0x931e_8875;
const INIT_B: u32 = 0x8b51_f9dd;
const MULT_B: u32 = 0x58f3_8ded;
const MIX_MULT_L: u32 = 0xca01_f9dd;
const MIX_MULT_R: u32 = 0x4973_f715;
const XSHIFT: u32 = 16;

/// The mixed entropy pool of one numpy `SeedSequence`.
#[derive(Debug, Clone)]
pub struct SeedSequence {
    pool: Vec<u32>,
}

/// numpy's `_int_to_uint32_array`: the 32-bit words of `n`, least significant first (0 → `[0]`).
fn words(mut n: u128) -> Vec<u32> {
    let mut out = Vec::new();
    loop {
        out.push(n as u32);
        n >>= 32;
        if n == 0 {
            return out;
        }
    }
}

/// numpy's `hashmix`: the running `hash_const` is shared by every call of one mixing pass.
fn hashmix(value: u32, hash_const: &mut u32) -> u32 {
    let mut v = value ^ *hash_const;
    *hash_const = hash_const.wrapping_mul(MULT_A);
    v = v.wrapping_mul(*hash_const);
    v ^ (v >> XSHIFT)
}

fn mix(x: u32, y: u32) -> u32 {
    let r = MIX_MULT_L
        .wrapping_mul(x)
        .wrapping_sub(MIX_MULT_R.wrapping_mul(y));
    r ^ (r >> XSHIFT)
}

impl SeedSequence {
    /// `SeedSequence(entropy=entropy, spawn_key=spawn_key, pool_size=pool_size)`.
    pub fn new(entropy: u128, spawn_key: &[u128], pool_size: usize) -> Self {
        let mut entropy_words = words(entropy);
        let spawn: Vec<u32> = spawn_key.iter().flat_map(|&k| words(k)).collect();
        // numpy pads the run entropy to the pool size when there is a spawn key, so that a
        // spawned sequence cannot collide with a longer plain entropy.
        if !spawn.is_empty() && entropy_words.len() < pool_size {
            entropy_words.resize(pool_size, 0);
        }
        entropy_words.extend(spawn);
        SeedSequence {
            pool: mix_entropy(pool_size, &entropy_words),
        }
    }

    /// `generate_state(n)` with `dtype=np.uint32`.
    pub fn generate_state(&self, n: usize) -> Vec<u32> {
        let mut hash_const = INIT_B;
        self.pool
            .iter()
            .cycle()
            .take(n)
            .map(|&word| {
                let mut v = word ^ hash_const;
                hash_const = hash_const.wrapping_mul(MULT_B);
                v = v.wrapping_mul(hash_const);
                v ^ (v >> XSHIFT)
            })
            .collect()
    }
}

/// numpy's `mix_entropy`: fold `entropy` into a pool of `size` words.
fn mix_entropy(size: usize, entropy: &[u32]) -> Vec<u32> {
    let mut hash_const = INIT_A;
    let mut pool: Vec<u32> = (0..size)
        .map(|i| hashmix(entropy.get(i).copied().unwrap_or(0), &mut hash_const))
        .collect();
    for src in 0..size {
        for dst in 0..size {
            if src != dst {
                let h = hashmix(pool[src], &mut hash_const);
                pool[dst] = mix(pool[dst], h);
            }
        }
    }
    for &word in entropy.iter().skip(size) {
        for slot in pool.iter_mut() {
            let h = hashmix(word, &mut hash_const);
            *slot = mix(*slot, h);
        }
    }
    pool
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_split_into_little_endian_words() {
        assert_eq!(words(0), vec![0]);
        assert_eq!(words(7), vec![7]);
        assert_eq!(words((5u128 << 32) | 9), vec![9, 5]);
    }

    #[test]
    fn spawn_keys_and_pool_sizes_change_the_state() {
        let plain = SeedSequence::new(42, &[], 4).generate_state(4);
        let spawned = SeedSequence::new(42, &[0, 0], 4).generate_state(4);
        let wider = SeedSequence::new(42, &[], 8).generate_state(4);
        assert_ne!(plain, spawned);
        assert_ne!(plain, wider);
        // generate_state cycles through the pool: more words than the pool keeps going.
        assert_eq!(SeedSequence::new(42, &[], 4).generate_state(9).len(), 9);
    }
}
