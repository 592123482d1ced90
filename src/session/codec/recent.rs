//! A few values kept by key, the least recently used dropped first: an
//! executor runs for weeks while models are retrained, and each weights id
//! it has sampled with would otherwise stay in memory.

/// At most `capacity` values, most recently used last.
#[derive(Debug)]
pub struct Recent<K, V> {
    capacity: usize,
    entries: Vec<(K, V)>,
}

impl<K: PartialEq, V: Clone> Recent<K, V> {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            entries: Vec::new(),
        }
    }

    /// The value for `key`, now the most recently used.
    pub fn get(&mut self, key: &K) -> Option<V> {
        let i = self.entries.iter().position(|(k, _)| k == key)?;
        let entry = self.entries.remove(i);
        let value = entry.1.clone();
        self.entries.push(entry);
        Some(value)
    }

    /// Keeps `value` as the most recently used, dropping the least recently
    /// used beyond capacity (plans still holding it keep it alive).
    pub fn insert(&mut self, key: K, value: V) {
        self.entries.retain(|(k, _)| k != &key);
        self.entries.push((key, value));
        if self.entries.len() > self.capacity {
            self.entries.remove(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Recent;

    #[test]
    fn the_least_recently_used_goes_first() {
        let mut recent = Recent::new(2);
        recent.insert("a", 1);
        recent.insert("b", 2);
        assert_eq!(recent.get(&"a"), Some(1)); // b is now the oldest
        recent.insert("c", 3);
        assert_eq!(recent.get(&"b"), None);
        assert_eq!((recent.get(&"a"), recent.get(&"c")), (Some(1), Some(3)));
        recent.insert("c", 4); // replaced, not duplicated
        recent.insert("d", 5);
        assert_eq!(recent.get(&"a"), None);
        assert_eq!((recent.get(&"c"), recent.get(&"d")), (Some(4), Some(5)));
    }
}
