//! Calls to the services with messages known only by their descriptors,
//! over the mesh's client stack (`mesh::client`: deadlines, trace context,
//! TLS modes, several connections per service).

use std::collections::HashMap;

use amaos_mesh::client::{Dialer, MeshChannel};
use amaos_mesh::config::{Config, ServiceEndpoint};
use prost::Message as _;
use prost_reflect::{DynamicMessage, MessageDescriptor, MethodDescriptor};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::MetadataMap;

/// Channels to every service the gateway fronts.
#[derive(Clone, Debug)]
pub struct Upstreams {
    channels: HashMap<&'static str, MeshChannel>,
    max_message_bytes: usize,
}

/// Why the upstream channels could not be made.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The TLS material is unusable.
    #[error(transparent)]
    Tls(#[from] amaos_mesh::tls::TlsError),
    /// A service URL is invalid.
    #[error(transparent)]
    Channel(#[from] amaos_mesh::client::ChannelError),
}

impl Upstreams {
    /// Channels from the gateway's identity to each service's `url`.
    pub fn new(config: &Config) -> Result<Self, UpstreamError> {
        let dialer = Dialer::new(config, "gateway")?;
        let endpoints: [(&'static str, &dyn ServiceEndpoint); 6] = [
            ("orchestrator", &config.orchestrator),
            ("router", &config.router),
            ("agents", &config.agents),
            ("tools", &config.tools),
            ("memory", &config.memory),
            ("auth", &config.auth),
        ];
        let mut channels = HashMap::new();
        for (name, endpoint) in endpoints {
            channels.insert(name, dialer.channel(name, endpoint.url())?);
        }
        Ok(Self {
            channels,
            max_message_bytes: config.limits.max_message_bytes,
        })
    }

    fn client(&self, service: &str) -> Result<tonic::client::Grpc<MeshChannel>, tonic::Status> {
        let channel = self
            .channels
            .get(service)
            .ok_or_else(|| tonic::Status::internal(format!("no channel to {service}")))?;
        Ok(tonic::client::Grpc::new(channel.clone())
            .max_decoding_message_size(self.max_message_bytes)
            .max_encoding_message_size(self.max_message_bytes))
    }

    /// A unary call.
    pub async fn unary(
        &self,
        service: &str,
        rpc: &MethodDescriptor,
        message: DynamicMessage,
        metadata: MetadataMap,
    ) -> Result<DynamicMessage, tonic::Status> {
        let mut client = self.client(service)?;
        ready(&mut client).await?;
        let request = tonic::Request::from_parts(metadata, Default::default(), message);
        let response = client
            .unary(request, path(rpc)?, DynamicCodec(rpc.output()))
            .await?;
        Ok(response.into_inner())
    }

    /// A server-streaming call.
    pub async fn server_streaming(
        &self,
        service: &str,
        rpc: &MethodDescriptor,
        message: DynamicMessage,
        metadata: MetadataMap,
    ) -> Result<tonic::Streaming<DynamicMessage>, tonic::Status> {
        let mut client = self.client(service)?;
        ready(&mut client).await?;
        let request = tonic::Request::from_parts(metadata, Default::default(), message);
        let response = client
            .server_streaming(request, path(rpc)?, DynamicCodec(rpc.output()))
            .await?;
        Ok(response.into_inner())
    }
}

async fn ready(client: &mut tonic::client::Grpc<MeshChannel>) -> Result<(), tonic::Status> {
    client
        .ready()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("service not ready: {e}")))
}

fn path(rpc: &MethodDescriptor) -> Result<http::uri::PathAndQuery, tonic::Status> {
    let text = format!("/{}/{}", rpc.parent_service().full_name(), rpc.name());
    http::uri::PathAndQuery::try_from(text)
        .map_err(|e| tonic::Status::internal(format!("bad RPC path: {e}")))
}

/// Encodes any message; decodes the response type it was made with.
#[derive(Clone, Debug)]
struct DynamicCodec(MessageDescriptor);

impl Codec for DynamicCodec {
    type Encode = DynamicMessage;
    type Decode = DynamicMessage;
    type Encoder = DynamicEncoder;
    type Decoder = DynamicDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        DynamicEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        DynamicDecoder(self.0.clone())
    }
}

#[derive(Debug)]
struct DynamicEncoder;

impl Encoder for DynamicEncoder {
    type Item = DynamicMessage;
    type Error = tonic::Status;

    fn encode(&mut self, item: Self::Item, dst: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        item.encode(dst)
            .map_err(|e| tonic::Status::internal(format!("cannot encode the request: {e}")))
    }
}

#[derive(Debug)]
struct DynamicDecoder(MessageDescriptor);

impl Decoder for DynamicDecoder {
    type Item = DynamicMessage;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Self::Error> {
        DynamicMessage::decode(self.0.clone(), src)
            .map(Some)
            .map_err(|e| tonic::Status::internal(format!("cannot decode the response: {e}")))
    }
}
