//! Generates the protobuf messages and async ttrpc stubs from `protos/`.
//! Pure Rust (protobuf-parse), so no `protoc` is needed at build time.

use ttrpc_codegen::{Codegen, Customize, ProtobufCustomize};

const PROTOS: &[&str] = &[
    "protos/agent.proto",
    "protos/csi.proto",
    "protos/health.proto",
    "protos/oci.proto",
    "protos/types.proto",
];

fn main() {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }

    let out_dir = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR for build scripts");
    Codegen::new()
        .out_dir(&out_dir)
        .inputs(PROTOS)
        .include("protos")
        .rust_protobuf()
        .customize(Customize {
            async_all: true,
            ..Default::default()
        })
        .rust_protobuf_customize(ProtobufCustomize::default().gen_mod_rs(false))
        .run()
        .expect("generating ttrpc code from protos/ failed");

    // The generated files start with inner attributes (`#![allow(..)]`) and inner doc comments,
    // which `include!` rejects; lib.rs sets the same allowances on each
    // module instead.
    for entry in std::fs::read_dir(&out_dir).expect("OUT_DIR is readable") {
        let path = entry.expect("OUT_DIR entry is readable").path();
        if path.extension().is_some_and(|ext| ext == "rs") {
            let text = std::fs::read_to_string(&path).expect("generated file is UTF-8");
            let kept: Vec<&str> = text
                .lines()
                .filter(|line| !line.starts_with("#![") && !line.starts_with("//!"))
                .collect();
            std::fs::write(&path, kept.join("\n")).expect("generated file is writable");
        }
    }
}
