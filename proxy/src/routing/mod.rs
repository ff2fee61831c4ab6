//! Where a request goes: its one normal path, the route table and the snapshot.

pub mod path;
pub mod snapshot;
pub mod table;
