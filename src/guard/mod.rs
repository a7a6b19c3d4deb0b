//! Guards on what handlers may reach and on what clients may send (SPEC
//! §12). Each part is pure policy with its own tests; the handlers and the
//! validation apply them:
//!
//! - [`address`]: which addresses and hosts the `http` handler may connect
//!   to (a default deny list of cloud metadata and unspecified addresses,
//!   `--http-deny`, `--http-allow`), written in [`cidr`] blocks;
//! - [`program`]: the programs `command` may run (`--command-allow`);
//! - [`text`]: NUL characters, which PostgreSQL cannot store.

pub mod address;
pub mod cidr;
pub mod program;
pub mod text;

pub use address::{AddressPolicy, Refusal, Rule};
pub use cidr::Cidr;
pub use program::ProgramAllowList;
