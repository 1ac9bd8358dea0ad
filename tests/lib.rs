//! Cross-crate tests live in `it/`; this library is empty so the crate can hold them.
