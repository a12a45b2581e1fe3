//! Display pipeline (see issue #5).
