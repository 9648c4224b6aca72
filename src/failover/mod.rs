//! Moving the application and its clients: the application's scripts, its
//! health checks, the guard, and the virtual addresses (the load balancer's
//! health endpoints are the `lb-health` crate).

pub mod checkers;
pub mod guard;
pub mod scripts;
pub mod vip;
