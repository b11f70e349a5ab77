//! Configuration: the YAML file and environment, translated into a validated model with real types.
//!
//! Owns: the file format (file.rs, one serde type per section), the validated model every
//! other folder reads (model.rs), loading and validation section by section (parse.rs),
//! the one route validator (route.rs) and the rules route fields obey (rules.rs).
//! May import: protocol, storage.
//!
//! Loading never stops at the first mistake: every section is parsed on its own and every
//! value is checked, so `drover serve -t` can print all errors at once, each with its key.

mod file;
mod model;
mod parse;
mod route;
pub mod rules;

pub use model::*;
pub(crate) use route::RouteInput;
