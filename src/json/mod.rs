//! JSON below the API: the gate every request body passes before anything parses it
//! (`gate`), and the per-core scratch space of both the gate and simd-json. A leaf: it
//! uses nothing else of the crate.

pub mod gate;

pub use gate::{Gate, GateError, DEPTH_MAX};

/// Reusable space for reading request bodies; one per HTTP core, used by one request
/// at a time.
pub struct JsonScratch {
    pub gate: Gate,
    /// simd-json's tape and string buffers.
    pub buffers: simd_json::Buffers,
}

impl Default for JsonScratch {
    fn default() -> Self {
        JsonScratch { gate: Gate::new(), buffers: simd_json::Buffers::new(4096) }
    }
}
