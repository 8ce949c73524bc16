//! `bare-echo [ADDR]`: the bare tonic echo of `chassis.v1.Chassis/Run` as
//! a process of its own (default 127.0.0.1:0), the peer `cargo xtask
//! bench` drives with `chassis load --remote` next to `chassis serve`.
//! Prints `listening on ADDR` once bound, then serves until killed.

use chassis::grpc::proto::chassis_server::ChassisServer;
use chassis_benches::BareEcho;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".to_string());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on {}", listener.local_addr()?);
    tonic::transport::Server::builder()
        .add_service(ChassisServer::new(BareEcho))
        // Nagle off, as chassis serves its connections.
        .serve_with_incoming(chassis::grpc::accepted(listener))
        .await?;
    Ok(())
}
