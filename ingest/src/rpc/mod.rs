//! EVM logs read over JSON-RPC (issue "Live chain ingest"). So far: the ABI of every watched
//! event and the decoding of raw logs ([`abi`]); following chains, reorgs and publishing come
//! next.

pub mod abi;
