//! Health endpoints that cloud and on-premises load balancers probe to find the node
//! that serves a tandem module (`/primary/{module}`, `/secondary/{module}`, `/health`…).
//! The server itself arrives with load-balancer mode; this crate stays dependency-light
//! so it can be embedded on its own.
