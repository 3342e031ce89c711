//! # mdm-hub: where a model comes from
//!
//! Loading apart from the networks (`mdm-models` holds the networks, the families and the weight
//! readers, and no network client):
//! - [`hub`]: Hugging Face repositories by name (`--hf owner/name`), fetched into the Hugging
//!   Face cache, resumed, and used offline from it.
//! - [`source`]: [`ModelSource`], the one way every program turns its flags into a model (the
//!   memory check before anything is read, the tokenizer and chat template that go with it), and
//!   [`ModelArgs`] (feature `clap`), the model flags every program flattens.

pub mod hub;
pub mod source;

pub use hub::Hub;
#[cfg(feature = "clap")]
pub use source::ModelArgs;
pub use source::ModelSource;
