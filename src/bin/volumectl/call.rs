//! `call`: one raw ttrpc request with an empty payload.

use clap::Args;

use crate::error::CliError;
use crate::Session;

#[derive(Debug, Args)]
pub struct CallArgs {
    /// Method name, e.g. ExecProcess for /grpc.AgentService/ExecProcess.
    pub method: String,

    /// Service the method belongs to.
    #[arg(long, default_value = "grpc.AgentService")]
    pub service: String,
}

/// Sends an empty request to `/SERVICE/METHOD` and prints the reply status:
/// `OK`, or the status code and message. Exits with status 1 unless OK.
pub async fn call(session: &Session, args: &CallArgs) -> Result<(), CliError> {
    let client = session.connect().await?;
    let mut request = ttrpc::Request::new();
    request.service = args.service.clone();
    request.method = args.method.clone();
    request.timeout_nano = i64::try_from(session.timeout.as_nanos()).unwrap_or(i64::MAX);

    let path = format!("/{}/{}", args.service, args.method);
    let (code, message) = match client.request(request).await {
        Ok(_) => (ttrpc::Code::OK, String::new()),
        Err(ttrpc::Error::RpcStatus(status)) => (
            status.code.enum_value_or(ttrpc::Code::UNKNOWN),
            status.message,
        ),
        Err(error) => {
            return Err(CliError::from_rpc(
                "raw",
                &session.address,
                session.timeout,
                error,
            ))
        }
    };

    if session.json {
        let object = serde_json::json!({
            "method": path,
            "code": format!("{code:?}"),
            "message": message,
        });
        println!("{object}");
    } else if code == ttrpc::Code::OK {
        println!("{path}: OK");
    } else {
        println!("{path}: {code:?}: {message}");
    }
    if code == ttrpc::Code::OK {
        Ok(())
    } else {
        Err(CliError::Status { code, message })
    }
}
