//! Structures shared with Xen, one definition each.
