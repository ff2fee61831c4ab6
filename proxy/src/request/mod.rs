//! One request's life: the context it carries, the errors it can end in, and the pipeline of
//! phases that decides and forwards it ([`pipeline`]).

pub(crate) mod context;
pub(crate) mod error;
pub(crate) mod pipeline;
