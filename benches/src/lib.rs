//! Benchmarks of chassis next to peers measured in the same run; see
//! `benches/` and `cargo xtask bench`, which writes BENCHMARKS.md.
//!
//! The library holds the peers the benches share: [`BareEcho`], a bare
//! tonic server of chassis's own gRPC service that answers `Run` with its
//! input, served in-process by the gRPC bench and as a process of its own
//! by `bare-echo` for the served-product comparison.

use chassis::grpc::proto::chassis_server::Chassis;
use chassis::grpc::proto::{self, RegisterModuleChunk};
use tonic::{Request, Response, Status, Streaming};

/// The peer: the same service answering `Run` with the input, nothing else.
#[derive(Debug, Default)]
pub struct BareEcho;

#[tonic::async_trait]
impl Chassis for BareEcho {
    /// Takes the module and names it, so a load client that registers
    /// before it runs (`chassis load --remote`) drives this server as it
    /// drives chassis; nothing is compiled.
    async fn register_module(
        &self,
        request: Request<Streaming<RegisterModuleChunk>>,
    ) -> Result<Response<proto::ModuleInfo>, Status> {
        let mut chunks = request.into_inner();
        let mut size = 0u64;
        while let Some(chunk) = chunks.message().await? {
            size += chunk.data.len() as u64;
        }
        Ok(Response::new(proto::ModuleInfo {
            id: format!("bare-echo-{size}"),
            ..Default::default()
        }))
    }
    async fn list_modules(
        &self,
        _: Request<proto::ListModulesRequest>,
    ) -> Result<Response<proto::ListModulesResponse>, Status> {
        Err(Status::unimplemented("bare echo"))
    }
    async fn remove_module(
        &self,
        _: Request<proto::RemoveModuleRequest>,
    ) -> Result<Response<proto::RemoveModuleResponse>, Status> {
        Err(Status::unimplemented("bare echo"))
    }
    async fn list_policies(
        &self,
        _: Request<proto::ListPoliciesRequest>,
    ) -> Result<Response<proto::ListPoliciesResponse>, Status> {
        Err(Status::unimplemented("bare echo"))
    }
    async fn run(
        &self,
        request: Request<proto::RunRequest>,
    ) -> Result<Response<proto::RunResponse>, Status> {
        Ok(Response::new(proto::RunResponse {
            output: request.into_inner().input,
            ..Default::default()
        }))
    }
    type RunStreamStream = tokio_stream::Empty<Result<proto::RunEvent, Status>>;
    async fn run_stream(
        &self,
        _: Request<proto::RunRequest>,
    ) -> Result<Response<Self::RunStreamStream>, Status> {
        Err(Status::unimplemented("bare echo"))
    }
    async fn submit_runbook(
        &self,
        _: Request<proto::SubmitRunbookRequest>,
    ) -> Result<Response<proto::SubmitRunbookResponse>, Status> {
        Err(Status::unimplemented("bare echo"))
    }
    async fn get_runbook(
        &self,
        _: Request<proto::GetRunbookRequest>,
    ) -> Result<Response<proto::RunbookStatus>, Status> {
        Err(Status::unimplemented("bare echo"))
    }
    type WatchRunbookStream = tokio_stream::Empty<Result<proto::RunbookEvent, Status>>;
    async fn watch_runbook(
        &self,
        _: Request<proto::WatchRunbookRequest>,
    ) -> Result<Response<Self::WatchRunbookStream>, Status> {
        Err(Status::unimplemented("bare echo"))
    }
}
