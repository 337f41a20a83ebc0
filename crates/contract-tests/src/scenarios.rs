//! One `pub async fn` per behaviour. Each panics with a message saying what
//! went wrong when the storage misbehaves.
