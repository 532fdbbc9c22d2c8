//! JSON at the edges: the gate every request body passes before anything parses it
//! (`gate`), the shape check of a body's top-level object (`shape`), the writer
//! responses are built with (`write`), spans of members in gated text (`span`), and the per-core scratch space of the gate and
//! simd-json.

pub mod gate;
pub mod shape;
pub mod span;
pub mod write;

pub use gate::{Gate, GateError, DEPTH_MAX};
pub use shape::{object_with_fields, ShapeError};
pub use write::{write_str, write_uuid, ObjectWriter};

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
