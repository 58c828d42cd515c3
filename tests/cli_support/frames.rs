//! Raw ttrpc frames, for requests that no well-behaved client would send.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use protobuf::Message;

/// ttrpc frame header: length, stream id (both big-endian u32), type, flags.
pub const FRAME_HEADER_LEN: usize = 10;
pub const MESSAGE_TYPE_REQUEST: u8 = 1;
pub const MESSAGE_TYPE_RESPONSE: u8 = 2;

/// Writes one ttrpc frame.
pub fn write_frame(stream: &mut UnixStream, stream_id: u32, message_type: u8, payload: &[u8]) {
    let mut frame = Vec::with_capacity(FRAME_HEADER_LEN + payload.len());
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(&stream_id.to_be_bytes());
    frame.push(message_type);
    frame.push(0);
    frame.extend_from_slice(payload);
    stream.write_all(&frame).unwrap();
}

/// Reads one response frame for `stream_id` and decodes it.
pub fn read_response(stream: &mut UnixStream, stream_id: u32) -> ttrpc::Response {
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut header = [0u8; FRAME_HEADER_LEN];
    stream
        .read_exact(&mut header)
        .expect("no response frame from the agent");
    let length = u32::from_be_bytes(header[0..4].try_into().unwrap()) as usize;
    let response_stream_id = u32::from_be_bytes(header[4..8].try_into().unwrap());
    assert_eq!(response_stream_id, stream_id);
    assert_eq!(header[8], MESSAGE_TYPE_RESPONSE);

    let mut payload = vec![0u8; length];
    stream.read_exact(&mut payload).unwrap();
    ttrpc::Response::parse_from_bytes(&payload).unwrap()
}

/// Reads one response frame for `stream_id` and returns its ttrpc status.
pub fn read_response_status(stream: &mut UnixStream, stream_id: u32) -> ttrpc::Status {
    let response = read_response(stream, stream_id);
    response
        .status
        .into_option()
        .expect("response without status")
}

/// Encodes a ttrpc request envelope for `/service/method` around `payload`.
pub fn request_bytes(service: &str, method: &str, payload: Vec<u8>) -> Vec<u8> {
    let mut request = ttrpc::Request::new();
    request.service = service.to_string();
    request.method = method.to_string();
    request.payload = payload;
    request.write_to_bytes().unwrap()
}
