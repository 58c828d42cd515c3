//! Generated protobuf messages and async ttrpc services of the agent API
//! subset that volume-agent serves.

macro_rules! generated {
    ($name:ident) => {
        #[allow(clippy::all, dead_code, unused_mut, unused_imports, unknown_lints)]
        #[allow(
            missing_docs,
            non_camel_case_types,
            non_snake_case,
            non_upper_case_globals
        )]
        pub mod $name {
            include!(concat!(env!("OUT_DIR"), "/", stringify!($name), ".rs"));
        }
    };
}

generated!(agent);
generated!(agent_ttrpc);
generated!(csi);
generated!(health);
generated!(health_ttrpc);
generated!(oci);
generated!(types);
