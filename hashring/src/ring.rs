//! The lookup structure: every node's points on the circle, sorted, and the clockwise walk that finds owners.

use sha2::{Digest, Sha256};

use crate::layout::Layout;

/// A ring built from one [`Layout`]. Cheap to query (a binary search and a short walk); rebuild it when the
/// layout changes.
#[derive(Debug, Clone)]
pub struct Ring {
    version: u64,
    /// Distinct member nodes; points refer to them by index.
    nodes: Vec<String>,
    /// `(point, node index)`, sorted by point, ties broken by node address so the order never depends on the
    /// order of the layout's node list.
    points: Vec<(u64, usize)>,
    /// Copies per key, at most the number of nodes.
    replicas: usize,
}

/// First 8 bytes of SHA-256, big-endian: the position of `bytes` on the circle.
fn hash64(bytes: &[u8]) -> u64 {
    let digest = Sha256::digest(bytes);
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// Position of a key on the circle.
pub fn key_hash(key: &str) -> u64 {
    hash64(key.as_bytes())
}

/// Position of the `i`-th virtual node of `node`.
pub fn point_hash(node: &str, i: u32) -> u64 {
    hash64(format!("{node}#{i}").as_bytes())
}

impl Ring {
    /// Builds the ring. A node listed twice counts once; `vnodes` and `replication` below 1 count as 1 so
    /// that every member owns something (a validated [`Layout`] never has them).
    pub fn new(layout: &Layout) -> Self {
        let mut nodes: Vec<String> = Vec::with_capacity(layout.nodes.len());
        for n in &layout.nodes {
            if !nodes.contains(n) {
                nodes.push(n.clone());
            }
        }
        let vnodes = layout.vnodes.max(1);
        let mut points: Vec<(u64, usize)> = nodes
            .iter()
            .enumerate()
            .flat_map(|(idx, node)| (0..vnodes).map(move |i| (point_hash(node, i), idx)))
            .collect();
        points.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| nodes[a.1].cmp(&nodes[b.1])));
        let replicas = layout.replication.max(1).min(nodes.len());
        Self {
            version: layout.version,
            nodes,
            points,
            replicas,
        }
    }

    /// Version of the layout this ring was built from.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Member nodes.
    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// Copies each key gets: the replication factor capped by the number of nodes.
    pub fn replicas(&self) -> usize {
        self.replicas
    }

    /// Whether the ring has no nodes (then every key has no owner).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Indices of `key`'s owners, primary first.
    fn owner_indices(&self, key: &str) -> Vec<usize> {
        let mut owners = Vec::with_capacity(self.replicas);
        if self.points.is_empty() {
            return owners;
        }
        let h = key_hash(key);
        // The first point at or after the key's position, wrapping past the top of the circle.
        let start = self.points.partition_point(|p| p.0 < h);
        for step in 0..self.points.len() {
            let (_, idx) = self.points[(start + step) % self.points.len()];
            if !owners.contains(&idx) {
                owners.push(idx);
                if owners.len() == self.replicas {
                    break;
                }
            }
        }
        owners
    }

    /// The nodes holding `key`: `min(replication, nodes)` distinct nodes, primary first. Empty for an empty
    /// ring.
    pub fn owners(&self, key: &str) -> Vec<String> {
        self.owner_indices(key)
            .into_iter()
            .map(|i| self.nodes[i].clone())
            .collect()
    }

    /// The first owner of `key`, if the ring has nodes.
    pub fn primary(&self, key: &str) -> Option<&str> {
        self.owner_indices(key)
            .first()
            .map(|&i| self.nodes[i].as_str())
    }

    /// Whether `node` is one of `key`'s owners.
    pub fn is_owner(&self, node: &str, key: &str) -> bool {
        self.owner_indices(key)
            .into_iter()
            .any(|i| self.nodes[i] == node)
    }
}

/// What migrating `key` from `old` to `new` involves: the nodes that must receive a copy (owners in `new` but
/// not in `old`) and the nodes whose copy must be deleted afterwards (owners in `old` but not in `new`). Both
/// are empty when the key's owners did not change.
pub fn moves(old: &Ring, new: &Ring, key: &str) -> (Vec<String>, Vec<String>) {
    let before = old.owners(key);
    let after = new.owners(key);
    let copy_to = after
        .iter()
        .filter(|n| !before.contains(n))
        .cloned()
        .collect();
    let delete_from = before.into_iter().filter(|n| !after.contains(n)).collect();
    (copy_to, delete_from)
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use super::*;
    use crate::layout::{DEFAULT_REPLICATION, DEFAULT_VNODES};

    const KEYS: usize = 10_000;
    /// Largest node share allowed, relative to the mean.
    const MAX_SKEW: f64 = 1.15;

    /// Keys shaped like the DASH segments the ring stores: 100 videos × 100 chunks.
    fn keys() -> Vec<String> {
        (0..KEYS)
            .map(|n| format!("video-{}/chunk-0-{:05}.m4s", n / 100, n % 100))
            .collect()
    }

    fn layout(ports: std::ops::Range<u16>, replication: usize) -> Layout {
        let nodes = ports.map(|p| format!("127.0.0.1:{p}")).collect();
        Layout::new(nodes, DEFAULT_VNODES, replication).expect("layout")
    }

    /// Copies held by each node over all keys.
    fn load(ring: &Ring, keys: &[String]) -> HashMap<String, usize> {
        let mut load: HashMap<String, usize> =
            ring.nodes().iter().map(|n| (n.clone(), 0)).collect();
        for k in keys {
            for o in ring.owners(k) {
                *load.entry(o).or_default() += 1;
            }
        }
        load
    }

    fn max_over_mean(load: &HashMap<String, usize>) -> f64 {
        let total: usize = load.values().sum();
        let mean = total as f64 / load.len() as f64;
        *load.values().max().expect("nodes") as f64 / mean
    }

    #[test]
    fn hashes_are_fixed_by_the_format() {
        // SHA-256("") starts e3b0c44298fc1c14; a change here would move every blob of every deployed ring.
        assert_eq!(key_hash(""), 0xe3b0_c442_98fc_1c14);
        assert_eq!(hash64(b"127.0.0.1:8090#0"), point_hash("127.0.0.1:8090", 0));
    }

    #[test]
    fn empty_and_small_rings() {
        let empty = Ring::new(&Layout::new(vec![], 16, 2).expect("layout"));
        assert!(empty.is_empty());
        assert!(empty.owners("a/b").is_empty());
        assert_eq!(empty.primary("a/b"), None);

        let one = Ring::new(&layout(8090..8091, 2));
        assert_eq!(one.owners("a/b"), vec!["127.0.0.1:8090".to_string()]);
        assert_eq!(one.replicas(), 1);

        // R larger than the ring: every node, each once.
        let two = Ring::new(&layout(8090..8092, 5));
        let owners: HashSet<String> = two.owners("a/b").into_iter().collect();
        assert_eq!(owners.len(), 2);
    }

    #[test]
    fn placement_ignores_node_order() {
        let a = layout(8090..8094, 2);
        let mut b = a.clone();
        b.nodes.reverse();
        let (ra, rb) = (Ring::new(&a), Ring::new(&b));
        for k in keys().iter().take(1000) {
            assert_eq!(ra.owners(k), rb.owners(k), "{k}");
        }
    }

    #[test]
    fn three_nodes_one_copy_are_balanced() {
        let ring = Ring::new(&layout(8090..8093, 1));
        let keys = keys();
        let load = load(&ring, &keys);
        assert_eq!(load.values().sum::<usize>(), KEYS);
        let skew = max_over_mean(&load);
        assert!(
            skew <= MAX_SKEW,
            "largest share {skew:.3}× the mean: {load:?}"
        );
    }

    #[test]
    fn three_nodes_two_copies_are_distinct_and_balanced() {
        let ring = Ring::new(&layout(8090..8093, DEFAULT_REPLICATION));
        let keys = keys();
        for k in &keys {
            let owners = ring.owners(k);
            assert_eq!(owners.len(), 2, "{k}");
            assert_ne!(owners[0], owners[1], "{k}");
            assert_eq!(ring.primary(k), Some(owners[0].as_str()));
            assert!(owners.iter().all(|o| ring.is_owner(o, k)));
        }
        let load = load(&ring, &keys);
        assert_eq!(load.values().sum::<usize>(), 2 * KEYS);
        let skew = max_over_mean(&load);
        assert!(
            skew <= MAX_SKEW,
            "largest replica load {skew:.3}× the mean: {load:?}"
        );
    }

    #[test]
    fn adding_a_node_moves_only_to_the_new_node() {
        let keys = keys();
        for replication in [1, 2] {
            let old_layout = layout(8090..8093, replication);
            let new_layout = old_layout.with_node("127.0.0.1:8093").expect("add");
            let (old, new) = (Ring::new(&old_layout), Ring::new(&new_layout));
            let mut primary_moved = 0;
            for k in &keys {
                if old.primary(k) != new.primary(k) {
                    primary_moved += 1;
                    assert_eq!(new.primary(k), Some("127.0.0.1:8093"), "{k}");
                }
                let (copy_to, delete_from) = moves(&old, &new, k);
                if copy_to.is_empty() {
                    assert!(delete_from.is_empty(), "{k}");
                    assert_eq!(old.owners(k), new.owners(k), "{k}");
                } else {
                    // The new node gains the key and exactly one old owner gives it up: nothing moves
                    // between old nodes.
                    assert_eq!(copy_to, vec!["127.0.0.1:8093".to_string()], "{k}");
                    assert_eq!(delete_from.len(), 1, "{k}");
                }
            }
            let ideal = KEYS as f64 / 4.0;
            assert!(
                primary_moved as f64 <= 1.2 * ideal,
                "R={replication}: {primary_moved} primaries moved, ideal {ideal}"
            );
            // The new node must also take its fair part, not next to nothing.
            assert!(
                primary_moved as f64 >= 0.8 * ideal,
                "R={replication}: only {primary_moved} primaries moved"
            );
        }
    }

    #[test]
    fn removing_a_node_moves_only_its_keys() {
        let keys = keys();
        for replication in [1, 2] {
            let old_layout = layout(8090..8094, replication);
            let removed = "127.0.0.1:8091";
            let new_layout = old_layout.without_node(removed).expect("remove");
            let (old, new) = (Ring::new(&old_layout), Ring::new(&new_layout));
            let mut changed = 0;
            for k in &keys {
                let (before, after) = (old.owners(k), new.owners(k));
                if before != after {
                    changed += 1;
                    assert!(
                        before.iter().any(|n| n == removed),
                        "{k}: {before:?} → {after:?}"
                    );
                    let (copy_to, delete_from) = moves(&old, &new, k);
                    assert_eq!(delete_from, vec![removed.to_string()], "{k}");
                    assert_eq!(copy_to.len(), 1, "{k}");
                    // The survivors keep their copies.
                    assert!(before
                        .iter()
                        .filter(|n| *n != removed)
                        .all(|n| after.contains(n)));
                } else {
                    assert!(!before.iter().any(|n| n == removed), "{k}");
                }
            }
            let ideal = (replication * KEYS) as f64 / 4.0;
            assert!(
                changed as f64 <= 1.2 * ideal,
                "R={replication}: {changed} keys changed owners, ideal {ideal}"
            );
        }
    }

    #[test]
    fn moves_between_identical_rings_is_empty() {
        let ring = Ring::new(&layout(8090..8093, 2));
        for k in keys().iter().take(100) {
            assert_eq!(moves(&ring, &ring, k), (vec![], vec![]));
        }
    }
}
