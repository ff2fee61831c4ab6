//! The tunnel hub: agents that dialed in, and the byte streams `sekisho tunnel` asks for.
//!
//! An agent connects to the HTTPS listener like any client and asks to upgrade
//! ([`sekisho_wire::AGENT_CONNECT_PATH`]); once its credential checks out, the connection is
//! turned around and the proxy becomes the HTTP/2 client of the agent ([`agent`]). Every live
//! agent connection is a [`Link`] in the [`Hub`], by agent name; several links of one name
//! (several connections, or several machines of one site) share the streams in turn.
//!
//! A tunnel request ([`sekisho_wire::TUNNEL_PATH`]) names its host; the host's tunnel route says
//! who may pass and where the stream goes: a target the proxy dials itself, or a target behind
//! an agent, reached with an HTTP/2 `CONNECT` on one of the agent's links ([`tunnel`]).
//!
//! With several replicas, a tunnel stream for an agent whose links another replica holds is
//! relayed to that replica ([`relay`]); if the connection from the replica it came by is lost,
//! the agent's stream waits a while to be resumed through another ([`resume`]). A renewal or
//! status request for a stream another replica keeps is asked of the others ([`ask`]).
//!
//! The hub outlives configuration reloads (it lives in [`crate::state::Shared`]); after each
//! reload [`Hub::prune`] cuts the links of agents, or keys, that the new configuration no
//! longer has.

pub(crate) mod agent;
pub(crate) mod ask;
pub(crate) mod carry;
pub(crate) mod registry;
pub(crate) mod relay;
pub(crate) mod resume;
pub(crate) mod stream;
pub(crate) mod tunnel;
