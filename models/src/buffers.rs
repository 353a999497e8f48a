//! Large parameter buffers recycled across rounds. A real-size model's
//! buffer (tens of MiB) that is freed and allocated again comes back from
//! the OS as fresh pages (glibc maps blocks this large on their own), and
//! the first write to each page then faults: for aggregation that streams
//! each byte once, those faults cost as much as the arithmetic. Buffers of
//! at least `MIN_LEN` values return here when their `Params` drops, and
//! the next buffer of the same length is taken from here, its pages already
//! mapped. Bounded in count and bytes; smaller buffers bypass the pool.

use std::sync::Mutex;

/// 1 MiB of f32: below this, allocation is cheap next to the work.
pub const MIN_LEN: usize = 256 * 1024;
/// At most this many buffers are kept...
const MAX_KEPT: usize = 8;
/// ...holding at most this many bytes together.
const MAX_BYTES: usize = 1 << 30;

static POOL: Mutex<Vec<Vec<f32>>> = Mutex::new(Vec::new());

/// A buffer of `len` values whose contents are unspecified (a recycled
/// buffer keeps its old values; a new one is zeroed): the caller writes
/// every value.
pub fn take(len: usize) -> Vec<f32> {
    if len >= MIN_LEN {
        // A poisoned lock only means another thread panicked mid-push: the
        // vector is still a valid list of buffers.
        let mut pool = POOL.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = pool.iter().position(|b| b.len() == len) {
            return pool.swap_remove(i);
        }
    }
    vec![0.0; len]
}

/// Keep `buffer` for a later `take`, if it is large. The oldest buffers
/// make room: those of a model no longer in use must not crowd out the
/// current one's.
pub fn give(buffer: Vec<f32>) {
    if buffer.len() < MIN_LEN || buffer.len() * 4 > MAX_BYTES {
        return;
    }
    let mut pool = POOL.lock().unwrap_or_else(|p| p.into_inner());
    let bytes = |pool: &Vec<Vec<f32>>| pool.iter().map(|b| b.len() * 4).sum::<usize>();
    while !pool.is_empty() && (pool.len() >= MAX_KEPT || bytes(&pool) + buffer.len() * 4 > MAX_BYTES) {
        pool.remove(0);
    }
    pool.push(buffer);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_buffers_come_back_and_small_ones_do_not() {
        // A length no other test uses, so parallel tests do not take it.
        let len = MIN_LEN + 12_345;
        let mut a = take(len);
        a[7] = 3.5;
        let ptr = a.as_ptr();
        give(a);
        let b = take(len);
        assert_eq!(b.as_ptr(), ptr, "the same allocation, its pages mapped");
        assert_eq!(b.len(), len);
        let small = take(16);
        assert_eq!(small, vec![0.0; 16]);
        give(small);
        give(b);
    }

    #[test]
    fn the_pool_is_bounded_and_the_newest_buffers_stay() {
        let (old, new) = (MIN_LEN + 54_321, MIN_LEN + 54_322);
        for _ in 0..MAX_KEPT {
            give(vec![1.0; old]);
        }
        // A model of another size arrives: its buffers push out the old ones.
        give(vec![2.0; new]);
        let pool = POOL.lock().unwrap();
        assert!(pool.len() <= MAX_KEPT, "{}", pool.len());
        assert!(pool.iter().any(|b| b.len() == new));
        drop(pool);
        while POOL
            .lock()
            .unwrap()
            .iter()
            .any(|b| b.len() == old || b.len() == new)
        {
            take(old);
            take(new);
        }
    }
}
