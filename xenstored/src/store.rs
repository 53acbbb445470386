//! The node tree: each node has a value, a permission list, its children's
//! names (in creation order, as C xenstored lists them) and a generation
//! count that changes on every write, which is what transactions check.

use crate::errno::Errno;
use crate::path::{join, parent};
use crate::perms::Perms;
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

/// C xenstored's fixed per-node record size (generation, counts): the
/// node-size quota counts it.
pub const NODE_HEADER_SIZE: usize = 24;
/// C xenstored's size of one permission entry in a record.
pub const PERM_SIZE: usize = 8;

/// One node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// The value (any bytes).
    pub value: Vec<u8>,
    /// Who may do what.
    pub perms: Perms,
    /// The children's names, in creation order.
    pub children: Vec<String>,
    /// Changes on every write of this node (unique across the store).
    pub generation: u64,
}

impl Node {
    /// An empty node with `perms`.
    pub fn new(perms: Perms) -> Self {
        Self {
            value: Vec::new(),
            perms,
            children: Vec::new(),
            generation: 0,
        }
    }

    /// The record size the node-size quota limits.
    pub fn size(&self) -> usize {
        NODE_HEADER_SIZE
            + PERM_SIZE * self.perms.len()
            + self.value.len()
            + self.children.iter().map(|c| c.len() + 1).sum::<usize>()
    }

    /// The children as the wire lists them: each name and a NUL.
    pub fn children_wire(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.children.iter().map(|c| c.len() + 1).sum());
        for c in &self.children {
            out.extend_from_slice(c.as_bytes());
            out.push(0);
        }
        out
    }
}

/// The committed tree, with per-owner node counts.
#[derive(Clone, Debug)]
pub struct Store {
    nodes: BTreeMap<String, Node>,
    generation: u64,
    owned: BTreeMap<u16, u32>,
    bytes: BTreeMap<u16, u64>,
}

/// What a node costs its owner against the memory quota: its record and
/// its path.
pub fn node_cost(path: &str, node: &Node) -> u64 {
    (node.size() + path.len()) as u64
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

impl Store {
    /// The tree C xenstored starts with: `/`, `/tool`, `/tool/xenstored`,
    /// owned by dom0, no access for others.
    pub fn new() -> Self {
        let mut store = Self {
            nodes: BTreeMap::new(),
            generation: 0,
            owned: BTreeMap::new(),
            bytes: BTreeMap::new(),
        };
        store.set("/", Some(Node::new(Perms::owner_only(0))));
        for (dir, name) in [("/", "tool"), ("/tool", "xenstored")] {
            let mut node = store
                .nodes
                .get(dir)
                .cloned()
                .unwrap_or_else(|| Node::new(Perms::owner_only(0)));
            node.children.push(name.to_string());
            store.set(dir, Some(node));
            store.set(&join(dir, name), Some(Node::new(Perms::owner_only(0))));
        }
        store
    }

    /// The node at `path`.
    pub fn get(&self, path: &str) -> Option<&Node> {
        self.nodes.get(path)
    }

    /// How many nodes exist.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Never true: the root always exists.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Every node, by path.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Node)> {
        self.nodes.iter()
    }

    /// Bytes of the nodes `domid` owns ([`node_cost`]).
    pub fn owned_bytes(&self, domid: u16) -> u64 {
        self.bytes.get(&domid).copied().unwrap_or(0)
    }

    /// How many nodes `domid` owns.
    pub fn owned(&self, domid: u16) -> u32 {
        self.owned.get(&domid).copied().unwrap_or(0)
    }

    /// A fresh generation count.
    pub fn next_generation(&mut self) -> u64 {
        self.generation += 1;
        self.generation
    }

    fn count(&mut self, owner: u16, delta: i64) {
        let entry = self.owned.entry(owner).or_insert(0);
        *entry = (i64::from(*entry) + delta).clamp(0, i64::from(u32::MAX)) as u32;
        if *entry == 0 {
            self.owned.remove(&owner);
        }
    }

    fn charge(&mut self, owner: u16, cost: u64, add: bool) {
        let entry = self.bytes.entry(owner).or_insert(0);
        *entry = if add {
            entry.saturating_add(cost)
        } else {
            entry.saturating_sub(cost)
        };
        if *entry == 0 {
            self.bytes.remove(&owner);
        }
    }

    /// Replace (or with `None` delete) the node at `path`, giving it a new
    /// generation and keeping the owner counts. The caller keeps the tree
    /// consistent (parents list their children).
    pub fn set(&mut self, path: &str, node: Option<Node>) {
        let old = self
            .nodes
            .get(path)
            .map(|n| (n.perms.owner(), node_cost(path, n)));
        if let Some((owner, cost)) = old {
            self.count(owner, -1);
            self.charge(owner, cost, false);
        }
        match node {
            Some(mut node) => {
                node.generation = self.next_generation();
                self.count(node.perms.owner(), 1);
                self.charge(node.perms.owner(), node_cost(path, &node), true);
                self.nodes.insert(path.to_string(), node);
            }
            None => {
                self.nodes.remove(path);
            }
        }
    }

    /// A domain is gone: its nodes pass to `heir`, its other entries are
    /// dropped (generations are kept: this is not a write).
    pub fn forget_domain(&mut self, domid: u16, heir: u16) {
        let mut moved = 0i64;
        let mut moved_bytes = 0u64;
        let mut recharged: Vec<(u16, u64, u64)> = Vec::new();
        for (path, node) in self.nodes.iter_mut() {
            let owned = node.perms.owner() == domid;
            let before = node_cost(path, node);
            if node.perms.forget_domain(domid, heir) {
                let after = node_cost(path, node);
                if owned {
                    moved += 1;
                    moved_bytes += before;
                    recharged.push((heir, 0, after));
                } else {
                    recharged.push((node.perms.owner(), before, after));
                }
            }
        }
        if moved > 0 {
            self.count(domid, -moved);
            self.count(heir, moved);
            self.charge(domid, moved_bytes, false);
        }
        for (owner, before, after) in recharged {
            self.charge(owner, before, false);
            self.charge(owner, after, true);
        }
    }

    /// Check the tree's invariants: the root exists, every other node's
    /// parent exists and lists it exactly once, every listed child exists,
    /// names are well-formed, the owner counts match.
    pub fn check(&self) -> Result<(), String> {
        if !self.nodes.contains_key("/") {
            return Err("no root".into());
        }
        let mut owned: BTreeMap<u16, u32> = BTreeMap::new();
        let mut bytes: BTreeMap<u16, u64> = BTreeMap::new();
        for (path, node) in &self.nodes {
            *owned.entry(node.perms.owner()).or_insert(0) += 1;
            *bytes.entry(node.perms.owner()).or_insert(0) += node_cost(path, node);
            if node.perms.is_empty() {
                return Err(format!("{path}: no permissions"));
            }
            if node.generation > self.generation {
                return Err(format!("{path}: generation from the future"));
            }
            for (i, c) in node.children.iter().enumerate() {
                if c.is_empty() || c.contains('/') || node.children[..i].contains(c) {
                    return Err(format!("{path}: bad or repeated child {c:?}"));
                }
                if !self.nodes.contains_key(&join(path, c)) {
                    return Err(format!("{path}: child {c} missing"));
                }
            }
            if let Some(p) = parent(path) {
                let listed = self.nodes.get(p).map(|pn| {
                    pn.children
                        .iter()
                        .filter(|c| **c == crate::path::basename(path))
                        .count()
                });
                if listed != Some(1) {
                    return Err(format!("{path}: parent lists it {listed:?} times"));
                }
            }
        }
        if owned != self.owned {
            return Err(format!("owner counts {:?} != {owned:?}", self.owned));
        }
        if bytes != self.bytes {
            return Err(format!("owner bytes {:?} != {bytes:?}", self.bytes));
        }
        Ok(())
    }
}

/// A node change an operation makes, applied to the store or to a
/// transaction only once the whole operation has been checked.
#[derive(Clone, Debug)]
pub struct Change {
    /// The node's path.
    pub path: String,
    /// Its new content, or `None` to delete it.
    pub node: Option<Node>,
}

/// A watch event an operation causes: fired at once, or at commit for a
/// transaction.
#[derive(Clone, Debug)]
pub struct Event {
    /// The path that changed (absolute or special).
    pub path: String,
    /// Match only watches on exactly this path (the children of a removed
    /// subtree), not every watch on an ancestor.
    pub exact: bool,
    /// A watcher sees the event if any of these grants it read (the
    /// node's permissions, old and new, and its parent's).
    pub readers: Vec<Perms>,
}

/// A transaction: the nodes it changed, and the generation of every node
/// it touched when it first touched it (`None`: did not exist). Commit
/// fails with `EAGAIN` if any of those changed in the store meanwhile.
#[derive(Clone, Debug, Default)]
pub struct Transaction {
    overlay: BTreeMap<String, Option<Node>>,
    accessed: BTreeMap<String, Option<u64>>,
    events: Vec<Event>,
    created: bool,
    bytes: u64,
}

impl Transaction {
    /// How many nodes it touched.
    pub fn accessed(&self) -> usize {
        self.accessed.len()
    }

    /// How many nodes `domid` would own more (or fewer) in `store` after
    /// commit.
    pub fn owned_delta(&self, store: &Store, domid: u16) -> i64 {
        let mut delta = 0;
        for (path, node) in &self.overlay {
            if store.get(path).is_some_and(|n| n.perms.owner() == domid) {
                delta -= 1;
            }
            if node.as_ref().is_some_and(|n| n.perms.owner() == domid) {
                delta += 1;
            }
        }
        delta
    }

    /// A domain is gone: see [`Store::forget_domain`].
    pub fn forget_domain(&mut self, domid: u16, heir: u16) {
        for node in self.overlay.values_mut().flatten() {
            node.perms.forget_domain(domid, heir);
        }
        for ev in &mut self.events {
            for perms in &mut ev.readers {
                perms.forget_domain(domid, heir);
            }
        }
    }

    /// What it holds against its domain's memory quota: every node it
    /// wrote (replaced versions too) and every path it touched.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Whether it created any node (then commit checks the node quota).
    pub fn created(&self) -> bool {
        self.created
    }
}

/// What an operation sees: the store, through a transaction if any.
pub struct View<'a> {
    store: &'a Store,
    tx: Option<&'a mut Transaction>,
    limit: usize,
}

impl<'a> View<'a> {
    /// A view of `store` through `tx`, which may touch at most `limit`
    /// nodes.
    pub fn new(store: &'a Store, tx: Option<&'a mut Transaction>, limit: usize) -> Self {
        Self { store, tx, limit }
    }

    /// What the view's transaction holds (0 outside one).
    pub fn tx_bytes(&self) -> u64 {
        self.tx.as_deref().map_or(0, |tx| tx.bytes)
    }

    /// The store beneath.
    pub fn store(&self) -> &Store {
        self.store
    }

    /// Whether this view is inside a transaction.
    pub fn in_transaction(&self) -> bool {
        self.tx.is_some()
    }

    /// Note that the operation looks at `path` (transactions remember the
    /// generation it had): `ENOSPC` past the transaction-nodes quota.
    pub fn touch(&mut self, path: &str) -> Result<(), Errno> {
        if let Some(tx) = self.tx.as_deref_mut() {
            if !tx.accessed.contains_key(path) {
                if tx.accessed.len() >= self.limit {
                    return Err(Errno::Enospc);
                }
                let generation = self.store.get(path).map(|n| n.generation);
                tx.bytes += path.len() as u64 + 8;
                tx.accessed.insert(path.to_string(), generation);
            }
        }
        Ok(())
    }

    /// The node at `path` as this view sees it, without touching it.
    pub fn peek(&self, path: &str) -> Option<&Node> {
        if let Some(tx) = self.tx.as_deref() {
            if let Some(entry) = tx.overlay.get(path) {
                return entry.as_ref();
            }
        }
        self.store.get(path)
    }

    /// Touch and read.
    pub fn get(&mut self, path: &str) -> Result<Option<&Node>, Errno> {
        self.touch(path)?;
        Ok(self.peek(path))
    }

    /// How many nodes `domid` owns as this view sees it.
    pub fn owned(&self, domid: u16) -> u32 {
        let delta = self
            .tx
            .as_deref()
            .map_or(0, |tx| tx.owned_delta(self.store, domid));
        (i64::from(self.store.owned(domid)) + delta).max(0) as u32
    }

    /// Queue `changes` and `events` in the transaction. Outside one this
    /// returns them for the caller to apply to the store and fire.
    pub fn apply(
        &mut self,
        changes: Vec<Change>,
        events: Vec<Event>,
    ) -> Option<(Vec<Change>, Vec<Event>)> {
        let Some(tx) = self.tx.as_deref_mut() else {
            return Some((changes, events));
        };
        for change in changes {
            let existed = match tx.overlay.get(&change.path) {
                Some(entry) => entry.is_some(),
                None => self.store.get(&change.path).is_some(),
            };
            tx.created |= !existed && change.node.is_some();
            if let Some(node) = &change.node {
                tx.bytes += node_cost(&change.path, node);
            }
            tx.overlay.insert(change.path, change.node);
        }
        tx.events.extend(events);
        None
    }
}

/// Commit `tx` to `store`: `EAGAIN` if a node it touched changed since;
/// else its changes are applied and its events returned for firing.
pub fn commit(store: &mut Store, tx: Transaction) -> Result<Vec<Event>, Errno> {
    for (path, seen) in &tx.accessed {
        if store.get(path).map(|n| n.generation) != *seen {
            return Err(Errno::Eagain);
        }
    }
    for (path, node) in tx.overlay {
        store.set(&path, node);
    }
    Ok(tx.events)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_initial_tree_is_consistent() {
        let s = Store::new();
        s.check().unwrap();
        assert_eq!(s.get("/").unwrap().children, ["tool"]);
        assert_eq!(s.owned(0), 3);
    }

    #[test]
    fn check_finds_broken_trees() {
        let mut s = Store::new();
        s.set("/orphan/x", Some(Node::new(Perms::owner_only(1))));
        assert!(s.check().is_err());
        let mut s = Store::new();
        let mut root = s.get("/").unwrap().clone();
        root.children.push("ghost".into());
        s.set("/", Some(root));
        assert!(s.check().is_err());
    }

    #[test]
    fn node_size_counts_as_c_does() {
        let mut n = Node::new(Perms::owner_only(1));
        n.value = alloc::vec![0; 10];
        n.children = alloc::vec!["ab".into(), "c".into()];
        assert_eq!(n.size(), 24 + 8 + 10 + 5);
        assert_eq!(n.children_wire(), b"ab\0c\0");
    }
}
