//! Feast's online serving gRPC API on the router: each call goes on to a worker with a feature
//! store (the least loaded one in rotation), so Feast's gRPC clients work against the fleet.

use crate::router::Fleet;
use flotilla_proto::feast::serving::serving_service_client::ServingServiceClient;
use flotilla_proto::feast::serving::serving_service_server::{ServingService, ServingServiceServer};
use flotilla_proto::feast::serving::{
    GetFeastServingInfoRequest, GetFeastServingInfoResponse, GetOnlineFeaturesRequest, GetOnlineFeaturesResponse,
};
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct Forwarding {
    fleet: Arc<Fleet>,
}

/// The forwarding `feast.serving.ServingService`, ready to add to the router's gRPC routes.
pub fn forwarding(fleet: Arc<Fleet>, max_message_bytes: usize) -> ServingServiceServer<Forwarding> {
    ServingServiceServer::new(Forwarding { fleet })
        .max_decoding_message_size(max_message_bytes)
        .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
        .accept_compressed(tonic::codec::CompressionEncoding::Deflate)
}

impl Forwarding {
    async fn client(&self) -> Result<ServingServiceClient<crate::link::Authorized>, Status> {
        let target =
            self.fleet.feature_worker().ok_or_else(|| Status::unavailable(crate::router::NO_FEATURE_WORKER))?;
        Ok(ServingServiceClient::new(target.channel.clone()).max_decoding_message_size(usize::MAX))
    }
}

#[tonic::async_trait]
impl ServingService for Forwarding {
    async fn get_feast_serving_info(
        &self,
        request: Request<GetFeastServingInfoRequest>,
    ) -> Result<Response<GetFeastServingInfoResponse>, Status> {
        self.client().await?.get_feast_serving_info(request.into_inner()).await
    }

    async fn get_online_features(
        &self,
        request: Request<GetOnlineFeaturesRequest>,
    ) -> Result<Response<GetOnlineFeaturesResponse>, Status> {
        self.client().await?.get_online_features(request.into_inner()).await
    }
}
