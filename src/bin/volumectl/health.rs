//! `check` and `version`: the Health service.

use protocols::health::CheckRequest;
use protocols::health_ttrpc::HealthClient;

use crate::error::CliError;
use crate::Session;

/// Sends Health.Check and prints the serving status.
pub async fn check(session: &Session) -> Result<(), CliError> {
    let client = HealthClient::new(session.connect().await?);
    let response = client
        .check(session.context(), &CheckRequest::new())
        .await
        .map_err(|error| CliError::from_rpc("Check", &session.address, session.timeout, error))?;

    let status = match response.status.enum_value() {
        Ok(status) => format!("{status:?}"),
        Err(number) => format!("UNKNOWN({number})"),
    };
    if session.json {
        println!("{}", serde_json::json!({ "status": status }));
    } else {
        println!("{status}");
    }
    Ok(())
}

/// Sends Health.Version and prints the agent and protocol versions.
pub async fn version(session: &Session) -> Result<(), CliError> {
    let client = HealthClient::new(session.connect().await?);
    let response = client
        .version(session.context(), &CheckRequest::new())
        .await
        .map_err(|error| CliError::from_rpc("Version", &session.address, session.timeout, error))?;

    if session.json {
        let object = serde_json::json!({
            "agent_version": response.agent_version,
            "grpc_version": response.grpc_version,
        });
        println!("{object}");
    } else {
        println!("agent version: {}", response.agent_version);
        println!("API version:   {}", response.grpc_version);
    }
    Ok(())
}
