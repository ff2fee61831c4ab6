//! Where a request goes: its one normal path, the route table and the snapshot.

pub(crate) mod path;
pub(crate) mod snapshot;
pub(crate) mod table;
