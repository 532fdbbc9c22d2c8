//! Fuzzes the request-head parser and the chunked decoder (src/http/parser.rs) with
//! arbitrary bytes, checking their invariants, not just that they do not panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use triggerd::http::parser::{
    decode_chunked_in_place, parse_head, scan_chunked, BodyFraming, ChunkedScan, HeadError, BODY_BYTES_MAX,
    HEAD_BYTES_MAX,
};

fuzz_target!(|data: &[u8]| {
    match parse_head(data) {
        Ok(head) => {
            assert!(head.head_bytes <= data.len() && head.head_bytes <= HEAD_BYTES_MAX);
            for range in [Some(head.target.clone()), head.content_type, head.api_key, head.authorization]
                .into_iter()
                .flatten()
            {
                assert!(range.end <= head.head_bytes, "header ranges stay inside the head");
            }
            if let BodyFraming::Length(n) = head.framing {
                assert!(n > 0 && n <= BODY_BYTES_MAX);
            }
            if head.version_minor == 0 {
                assert!(!head.keep_alive);
            }
            let rest = &data[head.head_bytes..];
            if head.framing == BodyFraming::Chunked {
                check_chunked(rest);
            }
        }
        Err(HeadError::Incomplete) => assert!(data.len() < HEAD_BYTES_MAX),
        Err(error) => assert!(error.status() >= 400),
    }
    check_chunked(data);
});

fn check_chunked(encoded: &[u8]) {
    if let Ok(ChunkedScan::Complete { body_bytes, encoded_bytes }) = scan_chunked(encoded, BODY_BYTES_MAX) {
        assert!(body_bytes <= BODY_BYTES_MAX && encoded_bytes <= encoded.len());
        let mut copy = encoded[..encoded_bytes].to_vec();
        assert_eq!(decode_chunked_in_place(&mut copy), Ok(body_bytes), "scan and decode agree");
    }
}
